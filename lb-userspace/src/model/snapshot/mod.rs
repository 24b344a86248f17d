//! The cluster as the agent needs it: plain structs converted from
//! k8s-openapi objects, indexed so that a change finds the Services it
//! touches without a scan.
//!
//! Split by object: `service`, `slice` and `node` convert a Service, an
//! EndpointSlice and the Node; this file holds the snapshot that indexes
//! them and applies changes.

mod intern;
mod node;
mod service;
mod slice;

pub use node::{NodeInfo, ZONE_LABEL, node_info};
pub use service::{HEADLESS_LABEL, PROXY_NAME_LABEL, ServiceInfo, ServicePortInfo, service_info};
pub use slice::{
    EndpointInfo, Family, Hints, SERVICE_NAME_LABEL, SliceInfo, SlicePortInfo, slice_info,
};

use std::{
    collections::{BTreeSet, HashMap},
    fmt,
    net::IpAddr,
};

use crate::{
    model::policy::{Labels, PodInfo, PolicyInfo, namespace_labels, pod_info, policy_info},
    source::manifest::Object,
};

/// An object's namespace and name. Copies share the strings: an object is
/// keyed in several indexes (the snapshot's, the reconciler's, the
/// source's), each holding a reference, not the text.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjRef {
    pub namespace: std::sync::Arc<str>,
    pub name: std::sync::Arc<str>,
}

impl ObjRef {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    pub fn parse(s: Option<&str>) -> Result<Self, String> {
        match s.unwrap_or("TCP") {
            "TCP" => Ok(Self::Tcp),
            "UDP" => Ok(Self::Udp),
            "SCTP" => Ok(Self::Sctp),
            other => Err(format!("unknown protocol `{other}`")),
        }
    }
}

fn port16(v: i32, object: &str, field: &str) -> Result<u16, String> {
    u16::try_from(v)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{object}: {field}: port {v} is out of range 1-65535"))
}

fn meta_ref(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    kind: &str,
) -> Result<ObjRef, String> {
    let name = meta
        .name
        .as_deref()
        .ok_or_else(|| format!("{kind}: metadata.name is missing"))?;
    Ok(ObjRef::new(
        meta.namespace.as_deref().unwrap_or("default"),
        name,
    ))
}

/// Services and EndpointSlices, with slices indexed by their Service.
#[derive(Default, Debug)]
pub struct Snapshot {
    /// This node's name (its Node object gives the NodePort addresses).
    pub node_name: Option<String>,
    pub node: NodeInfo,
    /// Boxed: a table's free slots (up to half of them after it grows)
    /// cost a pointer each, not a whole object.
    services: HashMap<ObjRef, Box<ServiceInfo>>,
    slices: HashMap<ObjRef, Box<SliceInfo>>,
    by_service: HashMap<ObjRef, BTreeSet<ObjRef>>,
    /// How many Services hold each ClusterIP: an externalIP equal to one
    /// is refused.
    cluster_ips: HashMap<IpAddr, u32>,
    /// The Services that list each externalIP, recomputed when that
    /// address becomes or stops being a ClusterIP.
    external_ip_users: HashMap<IpAddr, BTreeSet<ObjRef>>,
    /// What NetworkPolicy reads: every pod of the cluster, namespace labels,
    /// the policies.
    pub pods: HashMap<ObjRef, PodInfo>,
    pub namespaces: HashMap<String, Labels>,
    pub policies: HashMap<ObjRef, PolicyInfo>,
    /// A change reached the policy inputs since the flag was last taken.
    pub policy_dirty: bool,
    /// Which policy inputs changed since they were last taken (the
    /// incremental policy stage recomputes only what they touch).
    pub policy_changes: PolicyChanges,
    /// Problems found while applying that did not stop the change (a
    /// NetworkPolicy kept as broken, failing closed).
    pub warnings: Vec<crate::model::policy::BrokenPolicy>,
    /// Endpoints' node names, each held once.
    node_names: intern::Interner,
}

/// The policy inputs a change set touched, by key: whoever takes them
/// (`std::mem::take`) reads the objects' current state from the snapshot.
/// They only grow until taken, bounded by the number of objects.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyChanges {
    /// Pods added, changed or deleted.
    pub pods: BTreeSet<ObjRef>,
    /// Namespaces whose labels changed (or that appeared or went).
    pub namespaces: BTreeSet<String>,
    /// NetworkPolicies added, changed or deleted.
    pub policies: BTreeSet<ObjRef>,
    /// This node's Node object changed (its addresses among others).
    pub node: bool,
}

impl PolicyChanges {
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty() && self.namespaces.is_empty() && self.policies.is_empty() && !self.node
    }
}

/// What an object change means for the snapshot, named by kind and key.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    Upsert(Object),
    Delete { kind: String, key: ObjRef },
}

impl Snapshot {
    /// An empty snapshot for the node `node_name` (whose Node object gives
    /// the NodePort addresses).
    pub fn for_node(node_name: Option<String>) -> Self {
        Self {
            node_name,
            ..Default::default()
        }
    }

    pub fn service(&self, key: &ObjRef) -> Option<&ServiceInfo> {
        self.services.get(key).map(|s| &**s)
    }

    pub fn services(&self) -> impl Iterator<Item = &ServiceInfo> {
        self.services.values().map(|s| &**s)
    }

    /// `ip` is some Service's ClusterIP.
    pub fn is_cluster_ip(&self, ip: &IpAddr) -> bool {
        self.cluster_ips.contains_key(ip)
    }

    /// A Service whose ClusterIP `ip` is (a scan: for messages only).
    pub fn cluster_ip_owner(&self, ip: &IpAddr) -> Option<&ObjRef> {
        if !self.is_cluster_ip(ip) {
            return None;
        }
        self.services
            .values()
            .filter(|s| s.cluster_ips.contains(ip))
            .map(|s| &s.key)
            .min()
    }

    /// Keeps the ClusterIP and externalIP indexes equal to the Service
    /// `key` now in `services` (None: deleted), `old` being what it was;
    /// returns the other Services whose externalIPs are affected.
    fn reindex(&mut self, key: &ObjRef, old: Option<&ServiceInfo>) -> Vec<ObjRef> {
        let (cips, eips) = self
            .services
            .get(key)
            .map(|s| (s.cluster_ips.clone(), s.external_ips.clone()))
            .unwrap_or_default();
        let mut changed = Vec::new();
        if let Some(o) = old {
            for ip in &o.cluster_ips {
                if let Some(n) = self.cluster_ips.get_mut(ip) {
                    *n -= 1;
                    if *n == 0 {
                        self.cluster_ips.remove(ip);
                        changed.push(*ip);
                    }
                }
            }
            for ip in &o.external_ips {
                if let Some(users) = self.external_ip_users.get_mut(ip) {
                    users.remove(key);
                    if users.is_empty() {
                        self.external_ip_users.remove(ip);
                    }
                }
            }
        }
        for ip in &cips {
            let n = self.cluster_ips.entry(*ip).or_default();
            *n += 1;
            if *n == 1 {
                changed.push(*ip);
            }
        }
        for ip in &eips {
            self.external_ip_users
                .entry(*ip)
                .or_default()
                .insert(key.clone());
        }
        let mut touched: Vec<ObjRef> = changed
            .iter()
            .filter_map(|ip| self.external_ip_users.get(ip))
            .flatten()
            .filter(|k| *k != key)
            .cloned()
            .collect();
        touched.sort();
        touched.dedup();
        touched
    }

    pub fn slices_of(&self, svc: &ObjRef) -> Vec<&SliceInfo> {
        self.by_service
            .get(svc)
            .into_iter()
            .flatten()
            .filter_map(|k| self.slices.get(k).map(|s| &**s))
            .collect()
    }

    /// Applies one change and returns the Services whose desired state it may
    /// have changed (nothing when the object is equal to what was there).
    /// Takes the change: its object is freed here, as the next is read.
    pub fn apply(&mut self, change: Change) -> Result<Vec<ObjRef>, String> {
        match change {
            Change::Upsert(Object::Service(s)) => Ok(self.put_service(service_info(&s)?)),
            Change::Upsert(Object::ServiceInfo(info)) => Ok(self.put_service(*info)),
            Change::Upsert(Object::EndpointSlice(s)) => Ok(self.put_slice(slice_info(&s)?)),
            Change::Upsert(Object::SliceInfo(info)) => Ok(self.put_slice(*info)),
            Change::Upsert(Object::Node(n)) => {
                let info = node_info(&n)?;

                if self.node_name.as_deref() != Some(info.name.as_str()) || self.node == info {
                    return Ok(vec![]);
                }
                let rezoned = self.node.zone != info.zone;
                self.node = info;
                self.policy_dirty = true;
                self.policy_changes.node = true;
                if rezoned {
                    // Zone hints choose endpoints for this node's zone.
                    return Ok(self.services.keys().cloned().collect());
                }
                Ok(self.node_port_services())
            }
            Change::Upsert(Object::Pod(p)) => {
                let info = pod_info(&p)?;
                if self.pods.get(&info.key) != Some(&info) {
                    self.policy_changes.pods.insert(info.key.clone());
                    self.pods.insert(info.key.clone(), info);
                    self.policy_dirty = true;
                }
                Ok(vec![])
            }
            Change::Upsert(Object::Namespace(n)) => {
                let (name, labels) = namespace_labels(&n)?;
                if self.namespaces.get(&name) != Some(&labels) {
                    self.policy_changes.namespaces.insert(name.clone());
                    self.namespaces.insert(name, labels);
                    self.policy_dirty = true;
                }
                Ok(vec![])
            }
            Change::Upsert(Object::NetworkPolicy(np)) => {
                let (info, warning) = policy_info(&np)?;
                self.warnings.extend(warning);
                if self.policies.get(&info.key) != Some(&info) {
                    self.policy_changes.policies.insert(info.key.clone());
                    self.policies.insert(info.key.clone(), info);
                    self.policy_dirty = true;
                }
                Ok(vec![])
            }
            Change::Delete { kind, key } => Ok(match kind.as_str() {
                "Service" => match self.services.remove(&key) {
                    Some(old) => {
                        let mut touched = self.reindex(&key, Some(&old));
                        touched.push(old.key);
                        touched
                    }
                    None => vec![],
                },
                "EndpointSlice" => self.remove_slice(&key),
                "Pod" => {
                    if self.pods.remove(&key).is_some() {
                        self.policy_dirty = true;
                        self.policy_changes.pods.insert(key);
                    }
                    vec![]
                }
                "Namespace" => {
                    if self.namespaces.remove(&*key.name).is_some() {
                        self.policy_dirty = true;
                        self.policy_changes.namespaces.insert(key.name.to_string());
                    }
                    vec![]
                }
                "NetworkPolicy" => {
                    if self.policies.remove(&key).is_some() {
                        self.policy_dirty = true;
                        self.policy_changes.policies.insert(key);
                    }
                    vec![]
                }
                "Node" if self.node_name.as_deref() == Some(&*key.name) => {
                    // Recorded (the policy stage reads the addresses when it
                    // next runs); whether this alone should run it is the
                    // snapshot's `policy_dirty`, unchanged here.
                    self.policy_changes.node = true;
                    self.node.addrs.clear();
                    self.node.deleting = true;
                    if self.node.zone.take().is_some() {
                        self.services.keys().cloned().collect()
                    } else {
                        self.node_port_services()
                    }
                }
                _ => vec![],
            }),
        }
    }

    fn put_service(&mut self, info: ServiceInfo) -> Vec<ObjRef> {
        let key = info.key.clone();
        if self.services.get(&key).is_some_and(|s| **s == info) {
            return vec![];
        }
        let old = self.services.insert(key.clone(), Box::new(info));
        let mut touched = self.reindex(&key, old.as_deref());
        touched.push(key);
        touched
    }

    fn put_slice(&mut self, mut info: SliceInfo) -> Vec<ObjRef> {
        for n in info.endpoints.iter_mut().filter_map(|e| e.node.as_mut()) {
            self.node_names.intern(n);
        }
        let key = info.key.clone();
        if self.slices.get(&key).is_some_and(|s| **s == info) {
            return vec![];
        }
        let mut touched = self.remove_slice(&key);
        if let Some(svc) = &info.service {
            self.by_service
                .entry(svc.clone())
                .or_default()
                .insert(key.clone());
            touched.push(svc.clone());
        }
        self.slices.insert(key, Box::new(info));
        touched.dedup();
        touched
    }

    /// Services whose frontends depend on this node's addresses (NodePorts,
    /// and externalIPs, refused when equal to one of them).
    fn node_port_services(&self) -> Vec<ObjRef> {
        self.services
            .values()
            .filter(|s| s.ports.iter().any(|p| p.node_port.is_some()) || !s.external_ips.is_empty())
            .map(|s| s.key.clone())
            .collect()
    }

    fn remove_slice(&mut self, key: &ObjRef) -> Vec<ObjRef> {
        let Some(old) = self.slices.remove(key) else {
            return vec![];
        };
        let Some(svc) = old.service else {
            return vec![];
        };
        if let Some(set) = self.by_service.get_mut(&svc) {
            set.remove(key);
            if set.is_empty() {
                self.by_service.remove(&svc);
            }
        }
        vec![svc]
    }
}

#[cfg(test)]
mod conversion_tests;

#[cfg(test)]
mod tests;
