//! Pods, Namespaces and NetworkPolicies as the policy stage reads them:
//! labels, addresses, named ports, and policies parsed into selectors,
//! peers and port specs, every error naming the object and field.

use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::{
    api::{
        core::v1::{Namespace, Pod},
        networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort},
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};

use crate::model::{
    cidr::Cidr,
    snapshot::{ObjRef, Proto},
};

pub type Labels = BTreeMap<String, String>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedPort {
    pub name: String,
    pub port: u16,
    pub proto: Proto,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub key: ObjRef,
    pub labels: Labels,
    pub node: Option<String>,
    /// Host-network pods are their node's address: never selected by a
    /// podSelector, reachable through ipBlock only.
    pub host_network: bool,
    /// Empty until the pod has addresses, and again once it finished.
    pub ips: Vec<IpAddr>,
    pub ports: Vec<NamedPort>,
}

impl PodInfo {
    /// Takes part in policy: has addresses and its own network namespace.
    pub fn is_endpoint(&self) -> bool {
        !self.host_network && !self.ips.is_empty()
    }

    pub fn named_port(&self, name: &str, proto: Proto) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.name == name && p.proto == proto)
            .map(|p| p.port)
    }
}

pub fn pod_info(pod: &Pod) -> Result<PodInfo, String> {
    let name = pod
        .metadata
        .name
        .as_deref()
        .ok_or("Pod: metadata.name is missing")?;
    let key = ObjRef::new(pod.metadata.namespace.as_deref().unwrap_or("default"), name);
    let object = format!("Pod {key}");
    let spec = pod.spec.clone().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    let finished = matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"));
    let mut raw: Vec<String> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.clone())
        .collect();
    if raw.is_empty() {
        raw.extend(status.pod_ip.clone());
    }
    let mut ips = Vec::new();
    if !finished {
        for (i, ip) in raw.iter().enumerate() {
            ips.push(ip.parse::<IpAddr>().map_err(|_| {
                format!("{object}: status.podIPs[{i}].ip: `{ip}` is not an IP address")
            })?);
        }
    }
    let mut ports = Vec::new();
    for (ci, c) in spec.containers.iter().enumerate() {
        for (pi, p) in c.ports.iter().flatten().enumerate() {
            let Some(name) = &p.name else { continue };
            let field = format!("spec.containers[{ci}].ports[{pi}]");
            let port = u16::try_from(p.container_port)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| {
                    format!(
                        "{object}: {field}.containerPort: {} is out of range 1-65535",
                        p.container_port
                    )
                })?;
            let proto = Proto::parse(p.protocol.as_deref())
                .map_err(|e| format!("{object}: {field}.protocol: {e}"))?;
            ports.push(NamedPort {
                name: name.clone(),
                port,
                proto,
            });
        }
    }
    Ok(PodInfo {
        key,
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        node: spec.node_name.clone(),
        host_network: spec.host_network.unwrap_or(false),
        ips,
        ports,
    })
}

pub fn namespace_labels(ns: &Namespace) -> Result<(String, Labels), String> {
    let name = ns
        .metadata
        .name
        .clone()
        .ok_or("Namespace: metadata.name is missing")?;
    let mut labels = ns.metadata.labels.clone().unwrap_or_default();
    // The API server always sets it; files may not.
    labels.insert("kubernetes.io/metadata.name".into(), name.clone());
    Ok((name, labels))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub op: Op,
    pub values: Vec<String>,
}

/// A label selector; empty matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    pub labels: Labels,
    pub exprs: Vec<Requirement>,
}

impl Selector {
    pub fn matches(&self, l: &Labels) -> bool {
        self.labels.iter().all(|(k, v)| l.get(k) == Some(v))
            && self.exprs.iter().all(|r| match r.op {
                Op::In => l.get(&r.key).is_some_and(|v| r.values.contains(v)),
                Op::NotIn => l.get(&r.key).is_none_or(|v| !r.values.contains(v)),
                Op::Exists => l.contains_key(&r.key),
                Op::DoesNotExist => !l.contains_key(&r.key),
            })
    }
}

fn selector(s: &LabelSelector, field: &str) -> Result<Selector, String> {
    let mut exprs = Vec::new();
    for (i, e) in s.match_expressions.iter().flatten().enumerate() {
        let f = format!("{field}.matchExpressions[{i}]");
        let values = e.values.clone().unwrap_or_default();
        let op = match e.operator.as_str() {
            "In" => Op::In,
            "NotIn" => Op::NotIn,
            "Exists" => Op::Exists,
            "DoesNotExist" => Op::DoesNotExist,
            other => return Err(format!("{f}.operator: unknown operator `{other}`")),
        };
        match op {
            Op::In | Op::NotIn if values.is_empty() => {
                return Err(format!("{f}.values: must not be empty for {}", e.operator));
            }
            Op::Exists | Op::DoesNotExist if !values.is_empty() => {
                return Err(format!("{f}.values: must be empty for {}", e.operator));
            }
            _ => {}
        }
        exprs.push(Requirement {
            key: e.key.clone(),
            op,
            values,
        });
    }
    Ok(Selector {
        labels: s.match_labels.clone().unwrap_or_default(),
        exprs,
    })
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// Pods matching `pods` in namespaces matching `namespaces` (None: the
    /// policy's own namespace).
    Pods {
        pods: Selector,
        namespaces: Option<Selector>,
    },
    IpBlock {
        cidr: Cidr,
        except: Vec<Cidr>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSpec {
    pub proto: Proto,
    /// None: every port of the protocol.
    pub port: Option<PortRef>,
    pub end_port: Option<u16>,
}

/// One ingress or egress rule. Empty `peers`: every peer; empty `ports`:
/// every port and protocol.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    pub peers: Vec<Peer>,
    pub ports: Vec<PortSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyInfo {
    pub key: ObjRef,
    pub pod_selector: Selector,
    /// None: the policy does not isolate for ingress.
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
    /// The policy could not be read whole: it selects every pod of its
    /// namespace, isolates both directions and allows nothing (fail closed).
    pub broken: Option<String>,
}

impl PolicyInfo {
    pub fn selects(&self, pod: &PodInfo) -> bool {
        pod.key.namespace == self.key.namespace
            && !pod.host_network
            && (self.broken.is_some() || self.pod_selector.matches(&pod.labels))
    }
}

/// A NetworkPolicy the agent cannot represent: it fails closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "NetworkPolicy {policy}: {why}; it isolates every pod of namespace {} and allows nothing until fixed",
    policy.namespace
)]
pub struct BrokenPolicy {
    pub policy: ObjRef,
    /// What is wrong, naming the field.
    pub why: String,
}

/// Parses a NetworkPolicy. A policy that cannot be represented comes back
/// `broken` (failing closed) together with the error naming its field.
pub fn policy_info(np: &NetworkPolicy) -> Result<(PolicyInfo, Option<BrokenPolicy>), String> {
    let name = np
        .metadata
        .name
        .as_deref()
        .ok_or("NetworkPolicy: metadata.name is missing")?;
    let key = ObjRef::new(np.metadata.namespace.as_deref().unwrap_or("default"), name);
    match parse_policy(np, &key) {
        Ok(p) => Ok((p, None)),
        Err(e) => {
            let broken = BrokenPolicy {
                policy: key.clone(),
                why: e.clone(),
            };
            Ok((
                PolicyInfo {
                    key: key.clone(),
                    pod_selector: Selector::default(),
                    ingress: Some(vec![]),
                    egress: Some(vec![]),
                    broken: Some(e),
                },
                Some(broken),
            ))
        }
    }
}

fn parse_policy(np: &NetworkPolicy, key: &ObjRef) -> Result<PolicyInfo, String> {
    let spec = np.spec.clone().unwrap_or_default();
    let pod_selector = selector(&spec.pod_selector.unwrap_or_default(), "spec.podSelector")?;
    let has_egress = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
    let (mut want_in, mut want_eg) = (true, has_egress);
    // An empty list is defaulted like a missing one, as the API server does.
    if let Some(types) = spec.policy_types.as_ref().filter(|t| !t.is_empty()) {
        want_in = false;
        want_eg = false;
        for (i, t) in types.iter().enumerate() {
            match t.as_str() {
                "Ingress" => want_in = true,
                "Egress" => want_eg = true,
                other => {
                    return Err(format!(
                        "spec.policyTypes[{i}]: unknown type `{other}` (Ingress or Egress)"
                    ));
                }
            }
        }
    }
    let mut ingress = Vec::new();
    for (i, r) in spec.ingress.iter().flatten().enumerate() {
        let f = format!("spec.ingress[{i}]");
        ingress.push(Rule {
            peers: peers(r.from.as_deref(), &format!("{f}.from"))?,
            ports: ports(r.ports.as_deref(), &format!("{f}.ports"))?,
        });
    }
    let mut egress = Vec::new();
    for (i, r) in spec.egress.iter().flatten().enumerate() {
        let f = format!("spec.egress[{i}]");
        egress.push(Rule {
            peers: peers(r.to.as_deref(), &format!("{f}.to"))?,
            ports: ports(r.ports.as_deref(), &format!("{f}.ports"))?,
        });
    }
    Ok(PolicyInfo {
        key: key.clone(),
        pod_selector,
        ingress: want_in.then_some(ingress),
        egress: want_eg.then_some(egress),
        broken: None,
    })
}

fn peers(list: Option<&[NetworkPolicyPeer]>, field: &str) -> Result<Vec<Peer>, String> {
    let mut out = Vec::new();
    for (i, p) in list.unwrap_or_default().iter().enumerate() {
        let f = format!("{field}[{i}]");
        if let Some(b) = &p.ip_block {
            if p.pod_selector.is_some() || p.namespace_selector.is_some() {
                return Err(format!(
                    "{f}: ipBlock cannot be combined with podSelector or namespaceSelector"
                ));
            }
            let cidr: Cidr = b
                .cidr
                .parse()
                .map_err(|e| format!("{f}.ipBlock.cidr: {e}"))?;
            let mut except = Vec::new();
            for (j, e) in b.except.iter().flatten().enumerate() {
                let c: Cidr = e
                    .parse()
                    .map_err(|e| format!("{f}.ipBlock.except[{j}]: {e}"))?;
                if c.addr.is_ipv4() != cidr.addr.is_ipv4()
                    || c.len < cidr.len
                    || !cidr.contains(&c.addr)
                {
                    return Err(format!(
                        "{f}.ipBlock.except[{j}]: `{e}` is not inside the cidr `{}`",
                        b.cidr
                    ));
                }
                except.push(c);
            }
            out.push(Peer::IpBlock { cidr, except });
            continue;
        }
        if p.pod_selector.is_none() && p.namespace_selector.is_none() {
            return Err(format!(
                "{f}: a peer needs podSelector, namespaceSelector or ipBlock"
            ));
        }
        out.push(Peer::Pods {
            pods: match &p.pod_selector {
                Some(s) => selector(s, &format!("{f}.podSelector"))?,
                None => Selector::default(),
            },
            namespaces: match &p.namespace_selector {
                Some(s) => Some(selector(s, &format!("{f}.namespaceSelector"))?),
                None => None,
            },
        });
    }
    Ok(out)
}

fn ports(list: Option<&[NetworkPolicyPort]>, field: &str) -> Result<Vec<PortSpec>, String> {
    let mut out = Vec::new();
    for (i, p) in list.unwrap_or_default().iter().enumerate() {
        let f = format!("{field}[{i}]");
        let proto =
            Proto::parse(p.protocol.as_deref()).map_err(|e| format!("{f}.protocol: {e}"))?;
        let port = match &p.port {
            None => None,
            Some(IntOrString::Int(n)) => Some(PortRef::Number(
                u16::try_from(*n)
                    .ok()
                    .filter(|n| *n != 0)
                    .ok_or_else(|| format!("{f}.port: {n} is out of range 1-65535"))?,
            )),
            Some(IntOrString::String(s)) => match s.parse::<u16>() {
                Ok(n) if n != 0 => Some(PortRef::Number(n)),
                _ if s.is_empty() => return Err(format!("{f}.port: empty name")),
                _ => Some(PortRef::Name(s.clone())),
            },
        };
        let end_port = match p.end_port {
            None => None,
            Some(e) => {
                let Some(PortRef::Number(start)) = port else {
                    return Err(format!("{f}.endPort: needs a numeric port"));
                };
                let e = u16::try_from(e)
                    .ok()
                    .filter(|e| *e >= start)
                    .ok_or_else(|| {
                        format!("{f}.endPort: {e} is below port {start} or over 65535")
                    })?;
                Some(e)
            }
        };
        out.push(PortSpec {
            proto,
            port,
            end_port,
        });
    }
    Ok(out)
}
