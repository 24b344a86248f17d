//! The endpoints controller: a Service's EndpointSlices.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{Cluster, Pod, families_in, str_at};
use crate::lab::scenario::{Family, Protocol};

impl Cluster {
    /// The endpoints controller's slices for a Service: one per family (and
    /// per distinct resolution of named ports), conditions from readiness
    /// and termination.
    pub fn slices(&self, svc: &Value) -> Vec<Value> {
        let ns = str_at(svc, "/metadata/namespace").unwrap_or("default");
        let name = str_at(svc, "/metadata/name").unwrap_or_default();
        if str_at(svc, "/spec/type") == Some("ExternalName") {
            return vec![];
        }
        let Some(selector) = svc
            .pointer("/spec/selector")
            .and_then(Value::as_object)
            .filter(|s| !s.is_empty())
        else {
            return vec![];
        };
        let fams: Vec<Family> = match svc.pointer("/spec/ipFamilies").and_then(Value::as_array) {
            Some(a) => families_in(a),
            None => self.families(),
        };
        let distribution = str_at(svc, "/spec/trafficDistribution");
        let sports: Vec<&Value> = svc
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default();
        let pods: Vec<&Pod> = self
            .pods
            .iter()
            .filter(|p| {
                p.spec.namespace == ns
                    && selector
                        .iter()
                        .all(|(k, v)| p.spec.labels.get(k).map(String::as_str) == v.as_str())
            })
            .collect();
        let mut out = Vec::new();
        for f in fams {
            // resolved ports per pod -> pods
            let mut groups: BTreeMap<Vec<Option<u16>>, Vec<&Pod>> = BTreeMap::new();
            for p in &pods {
                let resolved: Vec<Option<u16>> =
                    sports.iter().map(|sp| resolve_port(sp, p)).collect();
                groups.entry(resolved).or_default().push(p);
            }
            if groups.is_empty() {
                groups.insert(
                    sports
                        .iter()
                        .map(|sp| sp.get("port").and_then(Value::as_u64).map(|p| p as u16))
                        .collect(),
                    vec![],
                );
            }
            for (resolved, members) in groups {
                let ports: Vec<Value> = sports
                    .iter()
                    .zip(&resolved)
                    .filter_map(|(sp, r)| {
                        r.map(|port| json!({"name": sp.get("name").and_then(Value::as_str).unwrap_or(""), "port": port, "protocol": sp.get("protocol").and_then(Value::as_str).unwrap_or("TCP")}))
                    })
                    .collect();
                let eps: Vec<Value> = members
                    .iter()
                    .map(|p| {
                        let ready = p.spec.ready && !p.spec.terminating;
                        let node = &self.nodes[p.node];
                        let mut ep = json!({
                            "addresses": [p.ip(f).to_string()],
                            "conditions": {"ready": ready, "serving": p.spec.ready, "terminating": p.spec.terminating},
                            "nodeName": node,
                            "targetRef": {"kind": "Pod", "namespace": p.spec.namespace, "name": p.spec.name}
                        });
                        let zone = self.zone_of(node);
                        if let Some(z) = zone {
                            ep["zone"] = json!(z);
                        }
                        // The EndpointSlice controller's hints for
                        // trafficDistribution: ready endpoints only, for
                        // their own zone (and node, for PreferSameNode).
                        if ready && matches!(distribution, Some("PreferClose" | "PreferSameZone" | "PreferSameNode")) {
                            let mut hints = serde_json::Map::new();
                            if let Some(z) = zone {
                                hints.insert("forZones".into(), json!([{"name": z}]));
                            }
                            if distribution == Some("PreferSameNode") {
                                hints.insert("forNodes".into(), json!([{"name": node}]));
                            }
                            if !hints.is_empty() {
                                ep["hints"] = Value::Object(hints);
                            }
                        }
                        ep
                    })
                    .collect();
                let n = out.len();
                out.push(json!({
                    "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": format!("{name}-{}-{n}", f.as_str().to_lowercase()), "namespace": ns,
                                 "labels": {"kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by": "lab"}},
                    "addressType": f.as_str(), "endpoints": eps, "ports": ports
                }));
            }
        }
        out
    }
}

/// A Service port's target on one pod: a number, or the pod's container
/// port of that name and protocol (None when the pod has no such port).
fn resolve_port(sp: &Value, p: &Pod) -> Option<u16> {
    let proto = match sp.get("protocol").and_then(Value::as_str) {
        Some("UDP") => Protocol::UDP,
        _ => Protocol::TCP,
    };
    match sp.get("targetPort") {
        Some(Value::Number(n)) => n.as_u64().map(|n| n as u16),
        Some(Value::String(s)) => match s.parse::<u16>() {
            Ok(n) => Some(n),
            Err(_) => p
                .spec
                .ports
                .iter()
                .find(|pp| pp.name.as_deref() == Some(s) && pp.protocol == proto)
                .map(|pp| pp.port),
        },
        _ => sp.get("port").and_then(Value::as_u64).map(|n| n as u16),
    }
}
