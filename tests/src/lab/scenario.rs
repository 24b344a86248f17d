//! The scenario file (LAB.md): typed, with unknown fields refused, and
//! checked for bad references before anything is created.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub enum IpFamily {
    #[default]
    IPv4,
    IPv6,
    DualStack,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    IPv4,
    IPv6,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::IPv4 => "IPv4",
            Family::IPv6 => "IPv6",
        }
    }
}

impl IpFamily {
    pub fn families(self) -> Vec<Family> {
        match self {
            IpFamily::IPv4 => vec![Family::IPv4],
            IpFamily::IPv6 => vec![Family::IPv6],
            IpFamily::DualStack => vec![Family::IPv4, Family::IPv6],
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    #[default]
    TCP,
    UDP,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::TCP => "TCP",
            Protocol::UDP => "UDP",
        }
    }
}

fn yes() -> bool {
    true
}
fn one() -> u32 {
    1
}
fn second() -> u64 {
    1000
}
fn default_ns() -> String {
    "default".into()
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Scenario {
    #[serde(default)]
    pub ip_family: IpFamily,
    #[serde(default)]
    pub nodes: Option<Vec<String>>,
    #[serde(default)]
    pub agent_args: Vec<String>,
    /// Extra labels of Node objects, by node (e.g. its
    /// `topology.kubernetes.io/zone`).
    #[serde(default)]
    pub node_labels: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    pub pods: Vec<PodSpec>,
    #[serde(default)]
    pub objects: Vec<serde_json::Value>,
    #[serde(default)]
    pub probes: Vec<Probe>,
    #[serde(default)]
    pub steps: Vec<Step>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodSpec {
    pub name: String,
    /// The MTU of the pod's link (both ends; default the veth's 1500).
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default = "default_ns")]
    pub namespace: String,
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default = "yes")]
    pub ready: bool,
    #[serde(default)]
    pub terminating: bool,
    #[serde(default)]
    pub ports: Vec<PodPort>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodPort {
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Probe {
    pub from: String,
    pub to: String,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default = "one")]
    pub count: u32,
    #[serde(default = "second")]
    pub timeout_ms: u64,
    #[serde(default)]
    pub ip_family: Option<Family>,
    #[serde(default)]
    pub source_port: Option<u16>,
    #[serde(default)]
    pub via: Option<String>,
    #[serde(default)]
    pub hold: Option<String>,
    #[serde(default)]
    pub reuse: Option<String>,
    /// Open new TCP connections (UDP: requests on new sockets, or from
    /// `sourcePort`, or on one connected socket with `sameSocket`) back to
    /// back for this many seconds (one output line for the whole run).
    #[serde(default)]
    pub churn_secs: Option<u32>,
    /// UDP churn: every request on one connected socket (a DNS client's).
    #[serde(default)]
    pub same_socket: bool,
    /// UDP: the request padded to this many bytes and sent with "don't
    /// fragment" (path MTU discovery): a path too small for it reports
    /// `message too long` once an ICMP error says so.
    #[serde(default)]
    pub payload_bytes: Option<u32>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeleteRef {
    pub kind: String,
    #[serde(default)]
    pub namespace: Option<String>,
    pub name: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodUpdate {
    pub name: String,
    #[serde(default = "default_ns")]
    pub namespace: String,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub ready: Option<bool>,
    #[serde(default)]
    pub terminating: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Step {
    #[serde(default)]
    pub objects: Vec<serde_json::Value>,
    #[serde(default)]
    pub delete: Vec<DeleteRef>,
    #[serde(default)]
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    pub pods: Vec<PodUpdate>,
    #[serde(default)]
    pub probes: Vec<Probe>,
    /// While this step's probes run, every node's agent is killed (SIGKILL)
    /// and started again every this many milliseconds.
    #[serde(default)]
    pub restart_agents_every_ms: Option<u64>,
}

/// An invalid scenario: exit 2, nothing created. The message names the field.
#[derive(Debug, thiserror::Error)]
#[error("invalid scenario: {0}")]
pub struct Invalid(pub String);

impl Scenario {
    pub fn parse(text: &str) -> Result<Self, Invalid> {
        let s: Scenario = serde_saphyr::from_str(text).map_err(|e| Invalid(e.to_string()))?;
        s.check_basics()?;
        Ok(s)
    }

    pub fn node_names(&self) -> Vec<String> {
        self.nodes.clone().unwrap_or_else(|| vec!["node-1".into()])
    }

    /// Every step as (objects, probes ...): step 0 is the top level.
    pub fn steps(&self) -> Vec<Step> {
        let mut v = vec![Step {
            objects: self.objects.clone(),
            probes: self.probes.clone(),
            ..Default::default()
        }];
        v.extend(self.steps.iter().cloned());
        v
    }

    fn check_basics(&self) -> Result<(), Invalid> {
        let nodes = self.node_names();
        if nodes.is_empty() {
            return Err(Invalid("nodes: at least one node is needed".into()));
        }
        let mut seen = BTreeSet::new();
        for (i, n) in nodes.iter().enumerate() {
            let valid = !n.is_empty()
                && n.len() <= 40
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
            if !valid {
                return Err(Invalid(format!(
                    "nodes[{i}]: `{n}` is not a valid node name"
                )));
            }
            if !seen.insert(n) {
                return Err(Invalid(format!("nodes[{i}]: duplicate node `{n}`")));
            }
        }
        if nodes.len() > 200 {
            return Err(Invalid("nodes: at most 200 nodes".into()));
        }
        if let Some(n) = self.node_labels.keys().find(|n| !nodes.contains(n)) {
            return Err(Invalid(format!(
                "nodeLabels.{n}: no node `{n}` (nodes: {})",
                nodes.join(", ")
            )));
        }
        let mut pods = BTreeSet::new();
        for (i, p) in self.pods.iter().enumerate() {
            if !pods.insert((p.namespace.clone(), p.name.clone())) {
                return Err(Invalid(format!(
                    "pods[{i}]: duplicate pod {}/{}",
                    p.namespace, p.name
                )));
            }
            if let Some(n) = &p.node
                && !nodes.contains(n)
            {
                return Err(Invalid(format!(
                    "pods[{i}].node: no node `{n}` (nodes: {})",
                    nodes.join(", ")
                )));
            }
            let mut ports = BTreeSet::new();
            for (j, port) in p.ports.iter().enumerate() {
                if port.port == 0 || !ports.insert((port.port, port.protocol)) {
                    return Err(Invalid(format!(
                        "pods[{i}].ports[{j}]: port {} {} is zero or duplicate",
                        port.port,
                        port.protocol.as_str()
                    )));
                }
            }
        }
        for (s, step) in self.steps().iter().enumerate() {
            let at = if s == 0 {
                String::new()
            } else {
                format!("steps[{}].", s - 1)
            };
            for (i, u) in step.pods.iter().enumerate() {
                if !pods.contains(&(u.namespace.clone(), u.name.clone())) {
                    return Err(Invalid(format!(
                        "{at}pods[{i}]: no pod {}/{}",
                        u.namespace, u.name
                    )));
                }
            }
            for (i, pr) in step.probes.iter().enumerate() {
                if pr.count == 0 {
                    return Err(Invalid(format!(
                        "{at}probes[{i}].count: must be at least 1"
                    )));
                }
                if let Some(v) = &pr.via
                    && !nodes.contains(v)
                {
                    return Err(Invalid(format!("{at}probes[{i}].via: no node `{v}`")));
                }
                if let Some(f) = pr.ip_family
                    && !self.ip_family.families().contains(&f)
                {
                    return Err(Invalid(format!(
                        "{at}probes[{i}].ipFamily: {} is not in this {:?} scenario",
                        f.as_str(),
                        self.ip_family
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_field_is_named() {
        let e = Scenario::parse("nodes: [a]\npods:\n  - {name: p, namespace: x, labls: {}}\n")
            .unwrap_err();
        assert!(e.0.contains("labls"), "{e}");
    }

    #[test]
    fn duplicate_pod_and_bad_node_are_invalid() {
        let e = Scenario::parse("pods: [{name: p, namespace: x}, {name: p, namespace: x}]\n")
            .unwrap_err();
        assert!(e.0.contains("pods[1]") && e.0.contains("duplicate"), "{e}");
        let e = Scenario::parse("pods: [{name: p, namespace: x, node: nope}]\n").unwrap_err();
        assert!(e.0.contains("pods[0].node"), "{e}");
    }

    #[test]
    fn defaults_follow_lab_md() {
        let s = Scenario::parse("pods: [{name: p}]\nprobes: [{from: x/p, to: '*', port: 80}]\n")
            .unwrap();
        assert_eq!(s.node_names(), ["node-1"]);
        assert_eq!(s.ip_family, IpFamily::IPv4);
        assert_eq!(s.pods[0].namespace, "default");
        assert!(s.pods[0].ready);
        assert_eq!(s.probes[0].count, 1);
        assert_eq!(s.probes[0].timeout_ms, 1000);
        assert_eq!(s.probes[0].protocol, Protocol::TCP);
    }
}
