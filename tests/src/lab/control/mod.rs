//! The lab's control plane, pure: what the API server, kubelet and
//! endpoints controller would hold for a scenario at each step. ClusterIPs,
//! nodePorts and healthCheckNodePorts are allocated deterministically in file
//! order; pod addresses follow LAB.md.
//!
//! Split by job: this file holds the cluster and applies a step's objects;
//! `alloc` fills in what the API server would (ClusterIPs, nodePorts);
//! `slices` is the endpoints controller; `render` writes the objects the
//! agents read.

mod alloc;
mod render;
mod slices;
#[cfg(test)]
mod tests;

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use serde_json::{Value, json};

use super::scenario::{Family, Invalid, IpFamily, PodSpec, Scenario, Step};

use alloc::Alloc;

pub type ObjKey = (String, String, String); // kind, namespace, name

#[derive(Clone, Debug)]
pub struct Pod {
    pub spec: PodSpec,
    /// 0-based node index.
    pub node: usize,
    /// 0-based index among the node's pods (address .10 + i).
    pub slot: usize,
}

impl Pod {
    pub fn ip4(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, self.node as u8 + 1, 10 + self.slot as u8)
    }
    pub fn ip6(&self) -> Ipv6Addr {
        Ipv6Addr::new(
            0xfd00,
            0x244,
            self.node as u16 + 1,
            0,
            0,
            0,
            0,
            10 + self.slot as u16,
        )
    }
    pub fn ip(&self, f: Family) -> IpAddr {
        match f {
            Family::IPv4 => IpAddr::V4(self.ip4()),
            Family::IPv6 => IpAddr::V6(self.ip6()),
        }
    }
    pub fn id(&self) -> String {
        format!("{}/{}", self.spec.namespace, self.spec.name)
    }
}

pub fn node_ip(k: usize, f: Family) -> IpAddr {
    match f {
        Family::IPv4 => IpAddr::V4(Ipv4Addr::new(10, 100, 0, k as u8 + 1)),
        Family::IPv6 => IpAddr::V6(Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, k as u16 + 1)),
    }
}

pub fn external_ip(f: Family) -> IpAddr {
    match f {
        Family::IPv4 => IpAddr::V4(Ipv4Addr::new(10, 100, 0, 200)),
        Family::IPv6 => IpAddr::V6(Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 0x200)),
    }
}

#[derive(Clone, Debug)]
pub struct Cluster {
    pub ip_family: IpFamily,
    pub nodes: Vec<String>,
    /// Extra labels of each node's Node object.
    pub node_labels: BTreeMap<String, BTreeMap<String, String>>,
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pub pods: Vec<Pod>,
    /// User objects in file order (allocated and substituted).
    pub objects: Vec<(ObjKey, Value)>,
    alloc: Alloc,
}

fn key_of(v: &Value) -> ObjKey {
    let s = |p: &str| {
        v.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let kind = s("/kind");
    let ns = if matches!(kind.as_str(), "Namespace" | "Node") {
        String::new()
    } else {
        v.pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string()
    };
    (kind, ns, s("/metadata/name"))
}

fn str_at<'a>(v: &'a Value, p: &str) -> Option<&'a str> {
    v.pointer(p).and_then(Value::as_str)
}

impl Cluster {
    pub fn new(s: &Scenario) -> Self {
        let nodes = s.node_names();
        let mut per_node = vec![0usize; nodes.len()];
        let mut pods = Vec::new();
        for (i, p) in s.pods.iter().enumerate() {
            let node = p.node.as_ref().map_or(i % nodes.len(), |n| {
                nodes.iter().position(|x| x == n).unwrap_or(0)
            });
            pods.push(Pod {
                spec: p.clone(),
                node,
                slot: per_node[node],
            });
            per_node[node] += 1;
        }
        Self {
            ip_family: s.ip_family,
            nodes,
            node_labels: s.node_labels.clone(),
            namespaces: s.namespaces.clone(),
            pods,
            objects: Vec::new(),
            alloc: Alloc::default(),
        }
    }

    pub fn families(&self) -> Vec<Family> {
        self.ip_family.families()
    }

    pub fn pod(&self, id: &str) -> Option<&Pod> {
        self.pods.iter().find(|p| p.id() == id)
    }

    /// A node's `topology.kubernetes.io/zone` label.
    pub fn zone_of(&self, node: &str) -> Option<&str> {
        self.node_labels
            .get(node)
            .and_then(|l| l.get("topology.kubernetes.io/zone"))
            .map(String::as_str)
            .filter(|z| !z.is_empty())
    }

    pub fn node_index(&self, n: &str) -> Option<usize> {
        self.nodes.iter().position(|x| x == n)
    }

    pub fn object(&self, kind: &str, ns: &str, name: &str) -> Option<&Value> {
        self.objects
            .iter()
            .find(|(k, _)| k.0 == kind && k.1 == ns && k.2 == name)
            .map(|(_, v)| v)
    }

    /// Replaces `${podIP:ns/name}`, `${podIP6:ns/name}`, `${nodeIP:NODE}`.
    fn substitute(&self, text: &str, at: &str) -> Result<String, Invalid> {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let end = rest[start..]
                .find('}')
                .ok_or_else(|| Invalid(format!("{at}: unterminated `${{`")))?
                + start;
            let inner = &rest[start + 2..end];
            let (what, arg) = inner
                .split_once(':')
                .ok_or_else(|| Invalid(format!("{at}: unknown substitution `${{{inner}}}`")))?;
            let value = match what {
                "podIP" | "podIP6" => {
                    let pod = self
                        .pod(arg)
                        .ok_or_else(|| Invalid(format!("{at}: `${{{inner}}}` names no pod")))?;
                    pod.ip(if what == "podIP" {
                        Family::IPv4
                    } else {
                        Family::IPv6
                    })
                    .to_string()
                }
                "nodeIP" => {
                    let k = self
                        .node_index(arg)
                        .ok_or_else(|| Invalid(format!("{at}: `${{{inner}}}` names no node")))?;
                    node_ip(
                        k,
                        if self.ip_family == IpFamily::IPv6 {
                            Family::IPv6
                        } else {
                            Family::IPv4
                        },
                    )
                    .to_string()
                }
                _ => {
                    return Err(Invalid(format!(
                        "{at}: unknown substitution `${{{inner}}}`"
                    )));
                }
            };
            out.push_str(&value);
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// Applies one step's changes (not its probes).
    pub fn apply(&mut self, step: &Step, at: &str) -> Result<(), Invalid> {
        for (ns, labels) in &step.namespaces {
            self.namespaces.insert(ns.clone(), labels.clone());
        }
        for (i, u) in step.pods.iter().enumerate() {
            let id = format!("{}/{}", u.namespace, u.name);
            let pod = self
                .pods
                .iter_mut()
                .find(|p| p.id() == id)
                .ok_or_else(|| Invalid(format!("{at}pods[{i}]: no pod {id}")))?;
            if let Some(l) = &u.labels {
                pod.spec.labels = l.clone();
            }
            if let Some(r) = u.ready {
                pod.spec.ready = r;
            }
            if let Some(t) = u.terminating {
                pod.spec.terminating = t;
            }
        }
        for (i, d) in step.delete.iter().enumerate() {
            let ns = d.namespace.clone().unwrap_or_else(|| {
                if matches!(d.kind.as_str(), "Namespace" | "Node") {
                    String::new()
                } else {
                    "default".into()
                }
            });
            let before = self.objects.len();
            self.objects
                .retain(|(k, _)| !(k.0 == d.kind && k.1 == ns && k.2 == d.name));
            if self.objects.len() == before {
                return Err(Invalid(format!(
                    "{at}delete[{i}]: no {} {ns}/{} to delete",
                    d.kind, d.name
                )));
            }
        }
        for (i, o) in step.objects.iter().enumerate() {
            let field = format!("{at}objects[{i}]");
            let text = serde_json::to_string(o).expect("json");
            let o: Value = serde_json::from_str(&self.substitute(&text, &field)?).expect("json");
            let mut o = o;
            if !o.is_object() {
                return Err(Invalid(format!("{field}: not a Kubernetes object")));
            }
            if o.pointer("/metadata/namespace").is_none()
                && !matches!(str_at(&o, "/kind"), Some("Namespace" | "Node"))
            {
                o["metadata"]["namespace"] = json!("default");
            }
            lb_agent::source::manifest::parse_object(&o)
                .map_err(|e| Invalid(format!("{field}: {e}")))?;
            if str_at(&o, "/kind") == Some("Service") {
                self.allocate(&mut o);
            }
            let key = key_of(&o);
            match self.objects.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = o,
                None => self.objects.push((key, o)),
            }
        }
        Ok(())
    }
}

/// `spec.ipFamilies` as families (unknown names ignored: the API refuses them).
fn families_in(list: &[Value]) -> Vec<Family> {
    list.iter()
        .filter_map(|f| match f.as_str() {
            Some("IPv4") => Some(Family::IPv4),
            Some("IPv6") => Some(Family::IPv6),
            _ => None,
        })
        .collect()
}
