//! What the API server fills in, allocated deterministically in file order.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, Ipv6Addr},
};

use serde_json::{Value, json};

use super::{Cluster, families_in, str_at};
use crate::lab::scenario::Family;

#[derive(Clone, Debug, Default)]
pub(super) struct Alloc {
    next_v4: u32,
    next_v6: u128,
    next_port: u16,
    used_ports: std::collections::BTreeSet<u16>,
    cluster_ips: HashMap<(String, String), Vec<String>>,
    node_ports: HashMap<(String, String, usize), u16>,
    hc_ports: HashMap<(String, String), u16>,
}

impl Alloc {
    fn port(&mut self) -> u16 {
        while self.used_ports.contains(&(30000 + self.next_port)) {
            self.next_port += 1;
        }
        let p = 30000 + self.next_port;
        self.used_ports.insert(p);
        self.next_port += 1;
        p
    }
    fn ip(&mut self, f: Family) -> String {
        match f {
            Family::IPv4 => {
                let base = u32::from(Ipv4Addr::new(10, 96, 0, 10));
                self.next_v4 += 1;
                Ipv4Addr::from(base + self.next_v4 - 1).to_string()
            }
            Family::IPv6 => {
                let base = u128::from("fd00:96::a".parse::<Ipv6Addr>().unwrap());
                self.next_v6 += 1;
                Ipv6Addr::from(base + self.next_v6 - 1).to_string()
            }
        }
    }
}

impl Cluster {
    /// What the API server fills in: ClusterIPs, families, nodePorts,
    /// healthCheckNodePort. A replaced Service keeps what it had.
    pub(super) fn allocate(&mut self, svc: &mut Value) {
        let ns = str_at(svc, "/metadata/namespace")
            .unwrap_or("default")
            .to_string();
        let name = str_at(svc, "/metadata/name")
            .unwrap_or_default()
            .to_string();
        let id = (ns, name);
        let spec = svc
            .as_object_mut()
            .expect("object")
            .entry("spec")
            .or_insert_with(|| json!({}));
        let Some(spec) = spec.as_object_mut() else {
            return;
        };
        let ty = spec
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
            .to_string();
        if ty == "ExternalName" {
            return;
        }
        let given: Vec<String> = match spec.get("clusterIPs").and_then(Value::as_array) {
            Some(a) if !a.is_empty() => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            _ => spec
                .get("clusterIP")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(|s| vec![s.to_string()])
                .unwrap_or_default(),
        };
        let ips = if !given.is_empty() {
            given
        } else if let Some(prev) = self.alloc.cluster_ips.get(&id) {
            prev.clone()
        } else {
            let policy = spec
                .get("ipFamilyPolicy")
                .and_then(Value::as_str)
                .unwrap_or("");
            let fams: Vec<Family> = match spec.get("ipFamilies").and_then(Value::as_array) {
                Some(a) if !a.is_empty() => families_in(a),
                // A DualStack lab gives Services both families unless asked
                // for one (so every probe family has a ClusterIP).
                _ if policy == "SingleStack" => self.families().into_iter().take(1).collect(),
                _ => self.families(),
            };
            fams.into_iter().map(|f| self.alloc.ip(f)).collect()
        };
        self.alloc.cluster_ips.insert(id.clone(), ips.clone());
        if ips.first().map(String::as_str) != Some("None") {
            let fams: Vec<&str> = ips
                .iter()
                .map(|i| if i.contains(':') { "IPv6" } else { "IPv4" })
                .collect();
            spec.insert("ipFamilies".into(), json!(fams));
            if !spec.contains_key("ipFamilyPolicy") {
                spec.insert(
                    "ipFamilyPolicy".into(),
                    json!(if ips.len() > 1 {
                        "PreferDualStack"
                    } else {
                        "SingleStack"
                    }),
                );
            }
        }
        spec.insert("clusterIP".into(), json!(ips[0]));
        spec.insert("clusterIPs".into(), json!(ips));
        if ty == "NodePort" || ty == "LoadBalancer" {
            let n = spec
                .get("ports")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            for i in 0..n {
                let given = spec["ports"][i]
                    .get("nodePort")
                    .and_then(Value::as_u64)
                    .map(|p| p as u16);
                let p = match given.or_else(|| {
                    self.alloc
                        .node_ports
                        .get(&(id.0.clone(), id.1.clone(), i))
                        .copied()
                }) {
                    Some(p) => {
                        self.alloc.used_ports.insert(p);
                        p
                    }
                    None => self.alloc.port(),
                };
                self.alloc
                    .node_ports
                    .insert((id.0.clone(), id.1.clone(), i), p);
                spec["ports"][i]["nodePort"] = json!(p);
            }
        }
        if ty == "LoadBalancer"
            && spec.get("externalTrafficPolicy").and_then(Value::as_str) == Some("Local")
            && spec.get("healthCheckNodePort").is_none()
        {
            let p = match self.alloc.hc_ports.get(&id) {
                Some(p) => *p,
                None => self.alloc.port(),
            };
            self.alloc.hc_ports.insert(id, p);
            spec.insert("healthCheckNodePort".into(), json!(p));
        }
    }
}
