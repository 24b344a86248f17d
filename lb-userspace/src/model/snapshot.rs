//! The cluster as the agent needs it: plain structs converted from
//! k8s-openapi objects, indexed so that a change finds the Services it
//! touches without a scan.

use std::{
    collections::{BTreeSet, HashMap},
    fmt,
    net::IpAddr,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use crate::{
    model::policy::{Labels, PodInfo, PolicyInfo, namespace_labels, pod_info, policy_info},
    source::manifest::Object,
};

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjRef {
    pub namespace: String,
    pub name: String,
}

impl ObjRef {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
            name: name.to_string(),
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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePortInfo {
    pub name: String,
    pub port: u16,
    pub proto: Proto,
    pub node_port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    pub key: ObjRef,
    /// Why the service gets no datapath entries (headless, ExternalName, ...).
    pub skip: Option<&'static str>,
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePortInfo>,
    /// `spec.externalIPs`.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip`.
    pub lb_ips: Vec<IpAddr>,
    /// `externalTrafficPolicy: Local`: clients from outside get this node's
    /// endpoints only, with their address kept.
    pub external_local: bool,
    /// `internalTrafficPolicy: Local`: pods and host-network clients on a
    /// node reach its ClusterIPs' endpoints on that node only.
    pub internal_local: bool,
    /// `spec.healthCheckNodePort` (LoadBalancer with `externalTrafficPolicy: Local`).
    pub health_check_node_port: Option<u16>,
    /// sessionAffinity: ClientIP's timeout in seconds (0: no affinity).
    pub affinity_timeout: u32,
    /// `spec.loadBalancerSourceRanges` (leading and trailing spaces allowed).
    pub source_ranges: Vec<crate::model::cidr::Cidr>,
    /// `metadata.creationTimestamp` in Unix seconds: of two Services
    /// claiming one frontend (not a ClusterIP), the older one wins.
    pub created: Option<i64>,
}

/// This node, as its Node object describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub addrs: Vec<IpAddr>,
    /// metadata.deletionTimestamp is set: `/healthz` answers 503.
    pub deleting: bool,
    /// The `topology.kubernetes.io/zone` label (EndpointSlice zone hints).
    pub zone: Option<String>,
}

pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

pub fn node_info(node: &k8s_openapi::api::core::v1::Node) -> Result<NodeInfo, String> {
    let name = node
        .metadata
        .name
        .clone()
        .ok_or("Node: metadata.name is missing")?;
    let mut addrs = Vec::new();
    for (i, a) in node
        .status
        .iter()
        .flat_map(|s| s.addresses.iter().flatten())
        .enumerate()
    {
        if a.type_ == "InternalIP" || a.type_ == "ExternalIP" {
            let ip: IpAddr = a.address.parse().map_err(|_| {
                format!(
                    "Node {name}: status.addresses[{i}].address: `{}` is not an IP address",
                    a.address
                )
            })?;
            if !addrs.contains(&ip) {
                addrs.push(ip);
            }
        }
    }
    Ok(NodeInfo {
        name,
        addrs,
        deleting: node.metadata.deletion_timestamp.is_some(),
        zone: node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(ZONE_LABEL))
            .filter(|z| !z.is_empty())
            .cloned(),
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePortInfo {
    pub name: String,
    pub port: u16,
    pub proto: Proto,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    pub addrs: Vec<IpAddr>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node: Option<String>,
    /// `hints` (topology), when it names any zone or node.
    pub hints: Option<Box<Hints>>,
}

/// An endpoint's topology hints: the zones (`forZones`) and nodes
/// (`forNodes`) it should serve.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hints {
    pub zones: Vec<String>,
    pub nodes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceInfo {
    pub key: ObjRef,
    pub service: Option<ObjRef>,
    /// None for FQDN slices, which kube-proxy ignores too.
    pub family: Option<Family>,
    pub ports: Vec<SlicePortInfo>,
    pub endpoints: Vec<EndpointInfo>,
}

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
pub const PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";

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

pub fn service_info(svc: &Service) -> Result<ServiceInfo, String> {
    let key = meta_ref(&svc.metadata, "Service")?;
    let object = format!("Service {key}");
    let labels = svc.metadata.labels.as_ref();
    let has_label = |l: &str| labels.is_some_and(|m| m.contains_key(l));
    let spec = svc.spec.clone().unwrap_or_default();
    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        ports.push(ServicePortInfo {
            name: p.name.clone().unwrap_or_default(),
            port: port16(p.port, &object, &format!("spec.ports[{i}].port"))?,
            proto: Proto::parse(p.protocol.as_deref())
                .map_err(|e| format!("{object}: spec.ports[{i}].protocol: {e}"))?,
            node_port: match p.node_port {
                Some(n) if matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer")) => {
                    Some(port16(n, &object, &format!("spec.ports[{i}].nodePort"))?)
                }
                _ => None,
            },
        });
    }
    let raw_ips: Vec<String> = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.clone(),
        _ => spec.cluster_ip.iter().cloned().collect(),
    };
    let headless = raw_ips.iter().any(|ip| ip == "None");
    let skip = if spec.type_.as_deref() == Some("ExternalName") {
        Some("type ExternalName")
    } else if headless {
        Some("headless (clusterIP None)")
    } else if has_label(HEADLESS_LABEL) {
        Some("labelled service.kubernetes.io/headless")
    } else if has_label(PROXY_NAME_LABEL) {
        Some("labelled service.kubernetes.io/service-proxy-name")
    } else {
        None
    };
    let mut cluster_ips = Vec::new();
    if skip.is_none() {
        for (i, ip) in raw_ips.iter().enumerate().filter(|(_, ip)| !ip.is_empty()) {
            cluster_ips.push(ip.parse::<IpAddr>().map_err(|_| {
                format!("{object}: spec.clusterIPs[{i}]: `{ip}` is not an IP address")
            })?);
        }
    }
    let parse_ips = |list: Vec<String>, field: &str| -> Result<Vec<IpAddr>, String> {
        list.iter()
            .enumerate()
            .map(|(i, ip)| {
                // kube-proxy tolerates surrounding spaces in these lists.
                ip.trim()
                    .parse::<IpAddr>()
                    .map_err(|_| format!("{object}: {field}[{i}]: `{ip}` is not an IP address"))
            })
            .collect()
    };
    let (external_ips, lb_ips) = if skip.is_none() {
        let ext = parse_ips(
            spec.external_ips.clone().unwrap_or_default(),
            "spec.externalIPs",
        )?;
        let lb: Vec<String> = svc
            .status
            .iter()
            .flat_map(|s| s.load_balancer.iter())
            .flat_map(|lb| lb.ingress.iter().flatten())
            .filter_map(|i| i.ip.clone())
            .collect();
        let lb = if spec.type_.as_deref() == Some("LoadBalancer") {
            parse_ips(lb, "status.loadBalancer.ingress[].ip")?
        } else {
            vec![]
        };
        (ext, lb)
    } else {
        (vec![], vec![])
    };
    let external_local = spec.external_traffic_policy.as_deref() == Some("Local")
        && matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"));
    let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let health_check_node_port = match spec.health_check_node_port {
        Some(p) if external_local => Some(port16(p, &object, "spec.healthCheckNodePort")?),
        _ => None,
    };
    let mut source_ranges = Vec::new();
    for (i, r) in spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .enumerate()
    {
        source_ranges.push(
            r.parse::<crate::model::cidr::Cidr>()
                .map_err(|e| format!("{object}: spec.loadBalancerSourceRanges[{i}]: {e}"))?,
        );
    }
    let affinity_timeout = match spec.session_affinity.as_deref() {
        Some("ClientIP") => {
            let t = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .unwrap_or(10800);
            if !(1..=86400).contains(&t) {
                return Err(format!(
                    "{object}: spec.sessionAffinityConfig.clientIP.timeoutSeconds: {t} is not in 1..=86400"
                ));
            }
            t as u32
        }
        None | Some("None") => 0,
        Some(other) => {
            return Err(format!(
                "{object}: spec.sessionAffinity: unknown value `{other}`"
            ));
        }
    };
    Ok(ServiceInfo {
        key,
        skip,
        cluster_ips,
        ports,
        external_ips,
        lb_ips,
        external_local,
        internal_local,
        health_check_node_port,
        affinity_timeout,
        source_ranges,
        created: svc
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second()),
    })
}

pub fn slice_info(slice: &EndpointSlice) -> Result<SliceInfo, String> {
    let key = meta_ref(&slice.metadata, "EndpointSlice")?;
    let object = format!("EndpointSlice {key}");
    let service = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .map(|s| ObjRef::new(&key.namespace, s));
    let family = match slice.address_type.as_str() {
        "IPv4" => Some(Family::V4),
        "IPv6" => Some(Family::V6),
        "FQDN" => None,
        other => {
            return Err(format!(
                "{object}: addressType: unknown address type `{other}`"
            ));
        }
    };
    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        // A port without a number means "all ports", which no proxy serves.
        let Some(n) = p.port else { continue };
        ports.push(SlicePortInfo {
            name: p.name.clone().unwrap_or_default(),
            port: port16(n, &object, &format!("ports[{i}].port"))?,
            proto: Proto::parse(p.protocol.as_deref())
                .map_err(|e| format!("{object}: ports[{i}].protocol: {e}"))?,
        });
    }
    let mut endpoints = Vec::new();
    for (i, e) in slice.endpoints.iter().flatten().enumerate() {
        let mut addrs = Vec::new();
        if family.is_some() {
            for (j, a) in e.addresses.iter().enumerate() {
                let ip: IpAddr = a.parse().map_err(|_| {
                    format!("{object}: endpoints[{i}].addresses[{j}]: `{a}` is not an IP address")
                })?;
                if (family == Some(Family::V4)) != ip.is_ipv4() {
                    return Err(format!(
                        "{object}: endpoints[{i}].addresses[{j}]: `{a}` does not match addressType {}",
                        slice.address_type
                    ));
                }
                addrs.push(ip);
            }
        }
        let c = e.conditions.clone().unwrap_or_default();
        let hints = e.hints.as_ref().map(|h| Hints {
            zones: h
                .for_zones
                .iter()
                .flatten()
                .map(|z| z.name.clone())
                .collect(),
            nodes: h
                .for_nodes
                .iter()
                .flatten()
                .map(|n| n.name.clone())
                .collect(),
        });
        // As kube-proxy reads them: unset ready and serving mean true.
        endpoints.push(EndpointInfo {
            addrs,
            ready: c.ready.unwrap_or(true),
            serving: c.serving.unwrap_or(true),
            terminating: c.terminating.unwrap_or(false),
            node: e.node_name.clone(),
            hints: hints
                .filter(|h| !h.zones.is_empty() || !h.nodes.is_empty())
                .map(Box::new),
        });
    }
    Ok(SliceInfo {
        key,
        service,
        family,
        ports,
        endpoints,
    })
}

/// Services and EndpointSlices, with slices indexed by their Service.
#[derive(Default, Debug)]
pub struct Snapshot {
    /// This node's name (its Node object gives the NodePort addresses).
    pub node_name: Option<String>,
    pub node: NodeInfo,
    services: HashMap<ObjRef, ServiceInfo>,
    slices: HashMap<ObjRef, SliceInfo>,
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
    pub warnings: Vec<String>,
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
        self.services.get(key)
    }

    pub fn services(&self) -> impl Iterator<Item = &ServiceInfo> {
        self.services.values()
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
            .filter_map(|k| self.slices.get(k))
            .collect()
    }

    /// Applies one change and returns the Services whose desired state it may
    /// have changed (nothing when the object is equal to what was there).
    pub fn apply(&mut self, change: &Change) -> Result<Vec<ObjRef>, String> {
        match change {
            Change::Upsert(Object::Service(s)) => {
                let info = service_info(s)?;
                let key = info.key.clone();
                if self.services.get(&key) == Some(&info) {
                    return Ok(vec![]);
                }
                let old = self.services.insert(key.clone(), info);
                let mut touched = self.reindex(&key, old.as_ref());
                touched.push(key);
                Ok(touched)
            }
            Change::Upsert(Object::EndpointSlice(s)) => {
                let info = slice_info(s)?;
                let key = info.key.clone();
                if self.slices.get(&key) == Some(&info) {
                    return Ok(vec![]);
                }
                let mut touched = self.remove_slice(&key);
                if let Some(svc) = &info.service {
                    self.by_service
                        .entry(svc.clone())
                        .or_default()
                        .insert(key.clone());
                    touched.push(svc.clone());
                }
                self.slices.insert(key, info);
                touched.dedup();
                Ok(touched)
            }
            Change::Upsert(Object::Node(n)) => {
                let info = node_info(n)?;
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
                let info = pod_info(p)?;
                if self.pods.get(&info.key) != Some(&info) {
                    self.policy_changes.pods.insert(info.key.clone());
                    self.pods.insert(info.key.clone(), info);
                    self.policy_dirty = true;
                }
                Ok(vec![])
            }
            Change::Upsert(Object::Namespace(n)) => {
                let (name, labels) = namespace_labels(n)?;
                if self.namespaces.get(&name) != Some(&labels) {
                    self.policy_changes.namespaces.insert(name.clone());
                    self.namespaces.insert(name, labels);
                    self.policy_dirty = true;
                }
                Ok(vec![])
            }
            Change::Upsert(Object::NetworkPolicy(np)) => {
                let (info, warning) = policy_info(np)?;
                self.warnings.extend(warning);
                if self.policies.get(&info.key) != Some(&info) {
                    self.policy_changes.policies.insert(info.key.clone());
                    self.policies.insert(info.key.clone(), info);
                    self.policy_dirty = true;
                }
                Ok(vec![])
            }
            Change::Delete { kind, key } => Ok(match kind.as_str() {
                "Service" => match self.services.remove(key) {
                    Some(old) => {
                        let mut touched = self.reindex(key, Some(&old));
                        touched.push(old.key);
                        touched
                    }
                    None => vec![],
                },
                "EndpointSlice" => self.remove_slice(key),
                "Pod" => {
                    if self.pods.remove(key).is_some() {
                        self.policy_dirty = true;
                        self.policy_changes.pods.insert(key.clone());
                    }
                    vec![]
                }
                "Namespace" => {
                    if self.namespaces.remove(&key.name).is_some() {
                        self.policy_dirty = true;
                        self.policy_changes.namespaces.insert(key.name.clone());
                    }
                    vec![]
                }
                "NetworkPolicy" => {
                    if self.policies.remove(key).is_some() {
                        self.policy_dirty = true;
                        self.policy_changes.policies.insert(key.clone());
                    }
                    vec![]
                }
                "Node" if self.node_name.as_deref() == Some(key.name.as_str()) => {
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
mod tests {
    use super::*;
    use crate::source::manifest::parse_documents;

    fn changes(y: &str) -> Vec<Change> {
        parse_documents(y)
            .unwrap()
            .into_iter()
            .map(|o| Change::Upsert(o.unwrap()))
            .collect()
    }

    #[test]
    fn hints_and_the_nodes_zone_are_read_and_a_zone_change_touches_every_service() {
        let y = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: x}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}\n---\n\
                 apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: a-1, namespace: x, labels: {kubernetes.io/service-name: a}}\naddressType: IPv4\n\
                 endpoints: [{addresses: [10.244.1.10], nodeName: n1, zone: za, hints: {forZones: [{name: za}], forNodes: [{name: n1}]}}, {addresses: [10.244.2.10], hints: {}}]\nports: [{port: 8080}]\n";
        let mut s = Snapshot::for_node(Some("n1".into()));
        for c in changes(y) {
            s.apply(&c).unwrap();
        }
        let sl = s.slices_of(&ObjRef::new("x", "a"));
        let h = sl[0].endpoints[0].hints.as_deref().unwrap();
        assert_eq!(
            (h.zones.as_slice(), h.nodes.as_slice()),
            (&["za".to_string()][..], &["n1".to_string()][..])
        );
        assert_eq!(sl[0].endpoints[1].hints, None, "empty hints are none");
        let node = |zone: &str, addr: &str| {
            format!(
                "apiVersion: v1\nkind: Node\nmetadata: {{name: n1, labels: {{topology.kubernetes.io/zone: '{zone}'}}}}\nstatus: {{addresses: [{{type: InternalIP, address: {addr}}}]}}\n"
            )
        };
        let touched = s.apply(&changes(&node("za", "10.100.0.1"))[0]).unwrap();
        assert_eq!(s.node.zone.as_deref(), Some("za"));
        assert_eq!(
            touched,
            vec![ObjRef::new("x", "a")],
            "a zone change recomputes every Service"
        );
        // Another address, same zone: only NodePort Services (none here).
        let touched = s.apply(&changes(&node("za", "10.100.0.2"))[0]).unwrap();
        assert!(touched.is_empty(), "{touched:?}");
        let touched = s.apply(&changes(&node("", "10.100.0.2"))[0]).unwrap();
        assert_eq!(s.node.zone, None, "an empty label is no zone");
        assert_eq!(touched.len(), 1);
    }
}
