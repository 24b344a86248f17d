//! Kubernetes objects from YAML: every document is parsed into its
//! k8s-openapi type and serialized back; an input key the round trip lost is
//! a misspelt or unknown field, reported with its path instead of ignored.

use crate::model::snapshot::{ServiceInfo, SliceInfo, service_info, slice_info};
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
    /// A Service already in the snapshot's form (`compact`).
    ServiceInfo(Box<ServiceInfo>),
    /// An EndpointSlice already in the snapshot's form (`compact`).
    SliceInfo(Box<SliceInfo>),
}

impl Object {
    /// The object in the snapshot's form where it has one: a typed object
    /// is several times larger, and a source that holds a listing until
    /// it is complete (100,000 Services and their slices) holds it in this
    /// form. One the snapshot would refuse stays typed, to be refused
    /// there with its reason.
    pub fn compact(self) -> Self {
        match self {
            Self::Service(s) => match service_info(&s) {
                Ok(i) => Self::ServiceInfo(Box::new(i)),
                Err(_) => Self::Service(s),
            },
            Self::EndpointSlice(s) => match slice_info(&s) {
                Ok(i) => Self::SliceInfo(Box::new(i)),
                Err(_) => Self::EndpointSlice(s),
            },
            other => other,
        }
    }
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
    /// What is wrong, without the object's name.
    pub fn reason(&self) -> String {
        match self {
            Self::Yaml(m) => format!("YAML: {m}"),
            Self::UnknownField { path, .. } => format!("unknown field `{path}`"),
            Self::Invalid { message, .. } => message.clone(),
            Self::UnsupportedKind {
                kind, api_version, ..
            } => format!("unsupported kind `{kind}` (apiVersion `{api_version}`)"),
        }
    }

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

/// One document of a YAML stream: its number among the stream's documents
/// (from 1), the line its content starts on, and what it holds.
#[derive(Debug)]
pub struct Document {
    pub index: usize,
    pub line: usize,
    /// A keyed hash of the document's text: equal texts, equal digests
    /// (within this process).
    pub digest: u64,
    pub result: Result<Object, ManifestError>,
}

/// Keyed per process: the text is the user's, so no one can aim two
/// documents at one digest.
fn digest(text: &str) -> u64 {
    use std::hash::BuildHasher as _;
    static KEYS: std::sync::OnceLock<std::hash::RandomState> = std::sync::OnceLock::new();
    KEYS.get_or_init(std::hash::RandomState::new).hash_one(text)
}

impl Document {
    /// `document N (line L)`: where a document that names no object is.
    pub fn place(&self) -> String {
        format!("document {} (line {})", self.index, self.line)
    }
}

/// Parses every document of a YAML stream. Each document fails on its own:
/// a bad one does not hide the good ones beside it. (The outer error is
/// kept for callers; a stream no longer fails whole.)
pub fn parse_documents(text: &str) -> Result<Vec<Result<Object, ManifestError>>, ManifestError> {
    Ok(parse_documents_at(text).map(|d| d.result).collect())
}

/// Parses every document of a YAML stream, each on its own, with its place.
///
/// The stream is cut at its document markers (`---`, `...` at the start of
/// a line: YAML forbids them inside any scalar) and each document is parsed
/// alone, under serde-saphyr's default budget per document. So a file may
/// hold any number of documents (serde-saphyr's whole-stream budget stops
/// at 1,024), and a syntax error costs only the document it is in.
///
/// Lazily, one document at a time: a caller that keeps each object in a
/// smaller form never holds a large file's objects all at once.
pub fn parse_documents_at(text: &str) -> impl Iterator<Item = Document> + '_ {
    split_documents(text)
        .into_iter()
        .filter_map(|(line, first, chunk)| {
            let result = match serde_saphyr::from_str_with_options::<Value>(
                chunk,
                serde_saphyr::options! { with_snippet: false },
            ) {
                Ok(v) if v.is_null() => return None,
                Ok(v) => parse_object(&v),
                Err(e) => Err(ManifestError::Yaml(in_stream(
                    &one_line(&e.to_string()),
                    first,
                ))),
            };
            Some((line, digest(chunk), result))
        })
        .enumerate()
        .map(|(i, (line, digest, result))| Document {
            index: i + 1,
            line,
            digest,
            result,
        })
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A parser message about a document that starts at line `first` of its
/// stream, with its `line N` counted in the stream.
fn in_stream(msg: &str, first: usize) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find("line ") {
        out.push_str(&rest[..i + 5]);
        rest = &rest[i + 5..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        match rest[..digits].parse::<usize>() {
            Ok(n) => out.push_str(&(n + first - 1).to_string()),
            Err(_) => out.push_str(&rest[..digits]),
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

/// A document marker line: `---` or `...` alone or followed by white space.
fn marker(line: &str, m: &str) -> bool {
    line.strip_prefix(m)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r']))
}

/// Nothing but white space or a comment.
fn blank(line: &str) -> bool {
    let t = line.trim_start();
    t.is_empty() || t.starts_with('#')
}

/// The documents of a stream as (line of their first content, line they
/// start on, text), with documents holding nothing left out. Directives (`%YAML`) and comments
/// before a `---` stay with the document they introduce.
fn split_documents(text: &str) -> Vec<(usize, usize, &str)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    let (mut start, mut first) = (0, 1);
    // Has the current chunk passed its `---`, and which line holds its
    // first content?
    let mut opened = false;
    let mut content: Option<usize> = None;
    let mut pos = 0;
    for (n, raw) in text.split_inclusive('\n').enumerate() {
        let line = raw.trim_end_matches(['\n', '\r']);
        let lineno = n + 1;
        if marker(line, "---") {
            if opened || content.is_some() {
                if let Some(l) = content {
                    out.push((l, first, &text[start..pos]));
                }
                (start, first) = (pos, lineno);
                content = None;
            }
            opened = true;
            if !blank(&line[3..]) {
                content = Some(lineno);
            }
        } else if marker(line, "...") {
            if let Some(l) = content {
                out.push((l, first, &text[start..pos + raw.len()]));
            }
            (start, first) = (pos + raw.len(), lineno + 1);
            opened = false;
            content = None;
        } else if content.is_none() && !blank(line) && (opened || !line.starts_with('%')) {
            content = Some(lineno);
        }
        pos += raw.len();
    }
    if let Some(l) = content {
        out.push((l, first, &text[start..]));
    }
    out
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
    fn compact_holds_what_the_snapshot_takes_and_leaves_what_it_refuses_typed() {
        let docs = parse_documents(
            "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: x}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: b, namespace: x}\nspec: {clusterIP: 10.96.0.300, ports: [{port: 80}]}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: a-1, namespace: x, labels: {kubernetes.io/service-name: a}}\naddressType: IPv4\nendpoints: [{addresses: [10.0.0.1]}]\n",
        )
        .unwrap();
        let [Ok(good), Ok(bad), Ok(slice)] = <[_; 3]>::try_from(docs).unwrap() else {
            panic!("three objects")
        };
        let Object::Service(typed) = good.clone() else {
            panic!("a Service")
        };
        assert_eq!(
            good.compact(),
            Object::ServiceInfo(Box::new(service_info(&typed).unwrap()))
        );
        assert!(
            matches!(bad.clone().compact(), Object::Service(_)),
            "refused: kept typed"
        );
        assert_eq!(bad.clone().compact(), bad);
        let Object::EndpointSlice(typed) = slice.clone() else {
            panic!("an EndpointSlice")
        };
        assert_eq!(
            slice.compact(),
            Object::SliceInfo(Box::new(slice_info(&typed).unwrap()))
        );
    }

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
    fn thousands_of_documents_in_one_stream_parse() {
        // serde-saphyr's default budget refuses a stream of more than 1,024
        // documents whole.
        let y: String = (0..5000)
            .map(|i| format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: n{i}}}\n---\n"))
            .collect();
        let docs = parse_documents(&y).unwrap();
        assert_eq!(docs.len(), 5000);
        assert!(docs.iter().all(Result::is_ok));
    }

    #[test]
    fn a_broken_document_fails_alone_named_by_its_place() {
        let y = "# leading comment\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: b\n---\n--- # an empty one\n...\n%YAML 1.2\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: c}\n";
        let docs: Vec<Document> = parse_documents_at(y).collect();
        assert_eq!(docs.len(), 3, "{docs:?}");
        assert!(matches!(docs[0].result, Ok(Object::Namespace(_))));
        assert!(matches!(docs[2].result, Ok(Object::Namespace(_))));
        assert_eq!((docs[1].index, docs[1].line), (2, 6));
        assert_eq!((docs[2].index, docs[2].line), (3, 14));
        // the parser's line is the stream's
        assert!(
            matches!(&docs[1].result, Err(ManifestError::Yaml(m)) if m.contains("line 8")),
            "{:?}",
            docs[1]
        );
    }

    #[test]
    fn markers_inside_a_line_do_not_split() {
        let y = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  labels: {x: '--- not a marker'}\n---\n";
        let docs: Vec<Document> = parse_documents_at(y).collect();
        assert_eq!(docs.len(), 1);
        assert!(docs[0].result.is_ok(), "{docs:?}");
    }

    #[test]
    fn broken_yaml_is_an_error() {
        assert!(matches!(
            &parse_documents("a: [1, 2\n").unwrap()[..],
            [Err(ManifestError::Yaml(_))]
        ));
    }
}
