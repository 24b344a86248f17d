//! Every object the agents read, rendered as the API server holds it.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{Cluster, Pod, node_ip};
use crate::lab::scenario::Family;

impl Cluster {
    /// Namespaces: declared ones, and those pods or objects use.
    fn all_namespaces(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        let mut m = self.namespaces.clone();
        for p in &self.pods {
            m.entry(p.spec.namespace.clone()).or_default();
        }
        for (k, _) in &self.objects {
            if !k.1.is_empty() {
                m.entry(k.1.clone()).or_default();
            }
        }
        for (n, labels) in m.iter_mut() {
            labels.insert("kubernetes.io/metadata.name".into(), n.clone());
        }
        m
    }

    /// Every object the agents read, one file each, by file name.
    pub fn render(&self) -> BTreeMap<String, String> {
        let mut files = BTreeMap::new();
        let mut put = |name: String, v: &Value| {
            files.insert(
                format!("{name}.yaml"),
                serde_json::to_string_pretty(v).expect("json") + "\n",
            );
        };
        for (ns, labels) in self.all_namespaces() {
            put(
                format!("namespace-{ns}"),
                &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}}),
            );
        }
        for (k, n) in self.nodes.iter().enumerate() {
            let mut addrs = Vec::new();
            let mut cidrs = Vec::new();
            for f in [Family::IPv4, Family::IPv6] {
                addrs.push(json!({"type": "InternalIP", "address": node_ip(k, f).to_string()}));
            }
            if self.families().contains(&Family::IPv4) {
                cidrs.push(format!("10.244.{}.0/24", k + 1));
            }
            if self.families().contains(&Family::IPv6) {
                cidrs.push(format!("fd00:244:{:x}::/64", k + 1));
            }
            let mut labels = self.node_labels.get(n).cloned().unwrap_or_default();
            labels.insert("kubernetes.io/hostname".into(), n.clone());
            put(
                format!("node-{n}"),
                &json!({
                    "apiVersion": "v1", "kind": "Node", "metadata": {"name": n, "labels": labels},
                    "spec": {"podCIDR": cidrs[0], "podCIDRs": cidrs},
                    "status": {"addresses": addrs}
                }),
            );
        }
        for p in &self.pods {
            put(
                format!("pod-{}-{}", p.spec.namespace, p.spec.name),
                &self.pod_object(p),
            );
        }
        for (k, v) in &self.objects {
            put(
                format!(
                    "{}-{}-{}",
                    k.0.to_lowercase(),
                    if k.1.is_empty() { "_" } else { &k.1 },
                    k.2
                ),
                v,
            );
            if k.0 == "Service" {
                for (i, s) in self.slices(v).iter().enumerate() {
                    put(format!("endpointslice-{}-{}-{i}", k.1, k.2), s);
                }
            }
        }
        files
    }

    fn pod_object(&self, p: &Pod) -> Value {
        let ips: Vec<Value> = self
            .families()
            .iter()
            .map(|f| json!({"ip": p.ip(*f).to_string()}))
            .collect();
        let ports: Vec<Value> = p
            .spec
            .ports
            .iter()
            .map(|pp| {
                let mut v = json!({"containerPort": pp.port, "protocol": pp.protocol.as_str()});
                if let Some(n) = &pp.name {
                    v["name"] = json!(n);
                }
                v
            })
            .collect();
        let mut meta =
            json!({"name": p.spec.name, "namespace": p.spec.namespace, "labels": p.spec.labels});
        if p.spec.terminating {
            meta["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"nodeName": self.nodes[p.node], "containers": [{"name": "app", "image": "lab", "ports": ports}]},
            "status": {"phase": "Running", "podIP": ips[0]["ip"], "podIPs": ips,
                       "conditions": [{"type": "Ready", "status": if p.spec.ready && !p.spec.terminating { "True" } else { "False" }}]}
        })
    }
}
