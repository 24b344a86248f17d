//! Kubernetes objects from YAML: every document is parsed into its
//! k8s-openapi type and serialized back; an input key the round trip lost is
//! a misspelt or unknown field, reported with its path instead of ignored.

use k8s_openapi::{
    api::{
        core::v1::{Namespace, Node, Pod, Service},
        discovery::v1::EndpointSlice,
        networking::v1::NetworkPolicy,
    },
    serde::Serialize,
    serde::de::DeserializeOwned,
};
use serde_json::Value;

/// One Kubernetes object of a kind the agent reads.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    Node(Box<Node>),
    Namespace(Box<Namespace>),
    Pod(Box<Pod>),
    NetworkPolicy(Box<NetworkPolicy>),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum ManifestError {
    #[error("YAML: {0}")]
    Yaml(String),
    #[error("{object}: unknown field `{path}`")]
    UnknownField { object: String, path: String },
    #[error("{object}: {message}")]
    Invalid { object: String, message: String },
    #[error("{object}: unsupported kind `{kind}` (apiVersion `{api_version}`)")]
    UnsupportedKind {
        object: String,
        kind: String,
        api_version: String,
    },
}

impl ManifestError {
    /// The object this error is about, when the document named one.
    pub fn object(&self) -> Option<&str> {
        match self {
            Self::Yaml(_) => None,
            Self::UnknownField { object, .. }
            | Self::Invalid { object, .. }
            | Self::UnsupportedKind { object, .. } => Some(object),
        }
    }
}

/// `Kind ns/name` (or `Kind name` for cluster-scoped objects), for messages.
pub fn describe(doc: &Value) -> String {
    let kind = doc
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("<no kind>");
    let meta = doc.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("<no name>");
    match meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
    {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// Parses every document of a YAML stream. Each document fails on its own:
/// a bad one does not hide the good ones beside it.
pub fn parse_documents(text: &str) -> Result<Vec<Result<Object, ManifestError>>, ManifestError> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(text).map_err(|e| ManifestError::Yaml(e.to_string()))?;
    Ok(docs
        .into_iter()
        .filter(|d| !d.is_null())
        .map(|d| parse_object(&d))
        .collect())
}

pub fn parse_object(doc: &Value) -> Result<Object, ManifestError> {
    let object = describe(doc);
    let api_version = doc
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
    let obj = match (api_version, kind) {
        ("v1", "Service") => Object::Service(Box::new(typed(doc, &object)?)),
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            Object::EndpointSlice(Box::new(typed(doc, &object)?))
        }
        ("v1", "Node") => Object::Node(Box::new(typed(doc, &object)?)),
        ("v1", "Namespace") => Object::Namespace(Box::new(typed(doc, &object)?)),
        ("v1", "Pod") => Object::Pod(Box::new(typed(doc, &object)?)),
        ("networking.k8s.io/v1", "NetworkPolicy") => {
            Object::NetworkPolicy(Box::new(typed(doc, &object)?))
        }
        _ => {
            return Err(ManifestError::UnsupportedKind {
                object,
                kind: kind.to_string(),
                api_version: api_version.to_string(),
            });
        }
    };
    Ok(obj)
}

/// `doc` as a `T`, refusing any key the typed round trip loses (a misspelt
/// or unknown field). `object` names the document in errors.
pub fn typed<T: DeserializeOwned + Serialize>(
    doc: &Value,
    object: &str,
) -> Result<T, ManifestError> {
    let t: T = serde_json::from_value(doc.clone()).map_err(|e| ManifestError::Invalid {
        object: object.to_string(),
        message: e.to_string(),
    })?;
    let back = serde_json::to_value(&t).map_err(|e| ManifestError::Invalid {
        object: object.to_string(),
        message: e.to_string(),
    })?;
    if let Some(path) = lost_key(doc, &back, String::new()) {
        return Err(ManifestError::UnknownField {
            object: object.to_string(),
            path,
        });
    }
    Ok(t)
}

/// The first key path present (and not null) in `input` but not in `back`.
fn lost_key(input: &Value, back: &Value, path: String) -> Option<String> {
    match (input, back) {
        (Value::Object(i), Value::Object(b)) => i.iter().find_map(|(k, v)| {
            let p = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            match b.get(k) {
                None if !v.is_null() => Some(p),
                None => None,
                Some(bv) => lost_key(v, bv, p),
            }
        }),
        (Value::Array(i), Value::Array(b)) => i
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(n, (iv, bv))| lost_key(iv, bv, format!("{path}[{n}]"))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misspelt_field_is_named_with_its_path() {
        let y = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: x}\nspec:\n  ports: [{port: 80, targetport: 8080}]\n";
        let docs = parse_documents(y).unwrap();
        assert_eq!(
            docs[0],
            Err(ManifestError::UnknownField {
                object: "Service x/web".into(),
                path: "spec.ports[0].targetport".into()
            })
        );
    }

    #[test]
    fn several_documents_fail_alone() {
        let y = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: x}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: b, namespace: x}\nspec: {clusterIP: 7}\n---\nkind: Gadget\napiVersion: v9\nmetadata: {name: g}\n";
        let docs = parse_documents(y).unwrap();
        assert_eq!(docs.len(), 3);
        assert!(matches!(docs[0], Ok(Object::Service(_))));
        assert!(
            matches!(&docs[1], Err(ManifestError::Invalid { object, .. }) if object == "Service x/b")
        );
        assert!(
            matches!(&docs[2], Err(ManifestError::UnsupportedKind { kind, .. }) if kind == "Gadget")
        );
    }

    #[test]
    fn nulls_and_known_fields_pass() {
        let y = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s, namespace: x, creationTimestamp: null, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nendpoints: [{addresses: [10.0.0.1], conditions: {ready: true}}]\nports: [{name: http, port: 80, protocol: TCP}]\n";
        assert!(matches!(
            parse_documents(y).unwrap()[0],
            Ok(Object::EndpointSlice(_))
        ));
    }

    #[test]
    fn broken_yaml_is_an_error() {
        assert!(matches!(
            parse_documents("a: [1, 2\n"),
            Err(ManifestError::Yaml(_))
        ));
    }
}
