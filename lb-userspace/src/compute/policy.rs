//! The desired NetworkPolicy state of this node, pure: the ipcache (every
//! pod of the cluster and this node's addresses -> identity), the local
//! endpoints with their isolation, their allow entries (peer identity,
//! direction, protocol, port block) and their ipBlock CIDR sets.

use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::IpAddr,
    rc::Rc,
};

use lb_common::{
    BeU16, DIR_EGRESS, DIR_INGRESS, EP_F_EGRESS_ISOLATED, EP_F_INGRESS_ISOLATED, ID_ANY,
    ID_FIRST_CIDR, ID_HOST, NetAddr, POL_EP_ID_MAX, POL_F_ANY_EGRESS, POL_F_ANY_INGRESS,
    POLICY_PREFIX_ANY_PROTO, POLICY_PREFIX_FULL, POLICY_PREFIX_PROTO, PROTO_SCTP, PROTO_TCP,
    PROTO_UDP, PolCidrData, PolEndpoint, PolicyData,
};
use serde::{Deserialize, Serialize};

use crate::{
    compute::{
        desired::{ip_of, net_addr},
        identity::Identities,
    },
    model::{
        cidr::Cidr,
        policy::{Labels, Peer, PodInfo, PolicyInfo, PortRef, PortSpec, Rule},
        snapshot::{ObjRef, Proto, Snapshot},
    },
};

/// What the policy maps hold (or should hold).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyMaps {
    /// (address, prefix length over 128 bits) -> identity.
    pub ipcache: BTreeMap<(NetAddr, u32), u32>,
    pub endpoints: BTreeMap<NetAddr, PolEndpoint>,
    /// (entry, prefix length).
    pub entries: BTreeSet<(PolicyData, u32)>,
    /// (endpoint, direction, address; prefix length) -> CIDR-set identity (0: none).
    pub cidrs: BTreeMap<(PolCidrData, u32), u32>,
    /// Pod interface (host side ifindex) -> endpoint id.
    pub ifaces: BTreeMap<u32, u32>,
    /// `POL_F_*`.
    pub flags: u32,
}

/// What an operator reads: `lb-agent endpoint list`, `identity list`,
/// `policy get`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub endpoints: Vec<EndpointReport>,
    pub identities: Vec<IdentityReport>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EndpointReport {
    pub pod: String,
    pub ep_id: u32,
    pub identity: u32,
    pub addresses: Vec<IpAddr>,
    /// The pod's interface (0: not known yet; its source is not validated).
    #[serde(default)]
    pub ifindex: u32,
    pub ingress_isolated: bool,
    pub egress_isolated: bool,
    pub entries: usize,
    pub cidr_entries: usize,
    /// Why the pod is isolated with nothing allowed (its entries do not fit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The resolved allow entries and the rules they came from.
    pub allows: Vec<AllowReport>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AllowReport {
    pub direction: String,
    /// `any`, an identity (`identity 1234`, `host`) or `cidr-set N`.
    pub peer: String,
    /// `any`, `TCP`, `UDP/53`, `TCP/8000-8007`...
    pub ports: String,
    pub from: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct IdentityReport {
    pub identity: u32,
    pub namespace: String,
    pub labels: Labels,
    pub pods: usize,
}

/// Endpoint ids of local pods: kept for a pod as long as it lives (and
/// across restarts, read back from the endpoint map by address).
#[derive(Clone, Debug, Default)]
pub struct EpIds {
    by_pod: HashMap<ObjRef, u32>,
    /// From the maps at start: address -> id, claimed by the first pod
    /// that holds the address.
    adopted: HashMap<NetAddr, u32>,
}

impl EpIds {
    pub fn adopt(maps: &PolicyMaps) -> Self {
        Self {
            by_pod: HashMap::new(),
            adopted: maps.endpoints.iter().map(|(a, e)| (*a, e.ep_id)).collect(),
        }
    }

    /// The endpoint id of a local pod (after `assign`).
    pub(crate) fn get(&self, pod: &ObjRef) -> Option<u32> {
        self.by_pod.get(pod).copied()
    }

    pub(crate) fn assign(&mut self, live: &[(&ObjRef, Vec<NetAddr>)]) -> Result<(), String> {
        let keep: HashSet<&ObjRef> = live.iter().map(|(k, _)| *k).collect();
        self.by_pod.retain(|k, _| keep.contains(k));
        let mut used: HashSet<u32> = self.by_pod.values().copied().collect();
        for (pod, addrs) in live {
            if self.by_pod.contains_key(*pod) {
                continue;
            }
            if let Some(id) = addrs
                .iter()
                .filter_map(|a| self.adopted.get(a))
                .find(|id| !used.contains(id))
            {
                used.insert(*id);
                self.by_pod.insert((*pod).clone(), *id);
            }
        }
        let mut next = 1;
        for (pod, _) in live {
            if self.by_pod.contains_key(*pod) {
                continue;
            }
            while used.contains(&next) {
                next += 1;
            }
            if next >= POL_EP_ID_MAX {
                return Err(format!(
                    "more than {} local pods: pod {pod} gets no endpoint id",
                    POL_EP_ID_MAX - 1
                ));
            }
            used.insert(next);
            self.by_pod.insert((*pod).clone(), next);
        }
        self.adopted.clear();
        Ok(())
    }
}

/// One allow entry's (proto, port, prefix length) part.
type Block = (u8, u16, u32);

fn proto_num(p: Proto) -> u8 {
    match p {
        Proto::Tcp => PROTO_TCP,
        Proto::Udp => PROTO_UDP,
        Proto::Sctp => PROTO_SCTP,
    }
}

/// Aligned power-of-two blocks covering `start..=end`.
pub fn port_blocks(start: u16, end: u16) -> Vec<(u16, u32)> {
    let mut out = Vec::new();
    let (mut lo, end) = (start as u32, end as u32);
    while lo <= end {
        let mut size = if lo == 0 {
            1 << 16
        } else {
            lo & lo.wrapping_neg()
        };
        while lo + size - 1 > end {
            size >>= 1;
        }
        out.push((lo as u16, 16 - size.trailing_zeros()));
        lo += size;
    }
    out
}

/// The blocks of one port spec, a named port resolved with `resolve`.
fn spec_blocks(spec: &PortSpec, resolve: impl Fn(&str, Proto) -> Option<u16>) -> Vec<Block> {
    let proto = proto_num(spec.proto);
    let fixed = POLICY_PREFIX_PROTO;
    match (&spec.port, spec.end_port) {
        (None, _) => vec![(proto, 0, fixed)],
        (Some(PortRef::Number(p)), None) => vec![(proto, *p, POLICY_PREFIX_FULL)],
        (Some(PortRef::Number(p)), Some(e)) => port_blocks(*p, e)
            .into_iter()
            .map(|(port, bits)| (proto, port, fixed + bits))
            .collect(),
        (Some(PortRef::Name(n)), _) => resolve(n, spec.proto)
            .map(|p| vec![(proto, p, POLICY_PREFIX_FULL)])
            .unwrap_or_default(),
    }
}

/// A prefix in the 128-bit space every map uses (IPv4 mapped).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Prefix {
    bits: u128,
    len: u32,
}

impl Prefix {
    fn of(c: &Cidr) -> Self {
        let (bits, len) = match c.addr {
            IpAddr::V4(v4) => (u128::from(v4.to_ipv6_mapped()), 96 + c.len as u32),
            IpAddr::V6(v6) => (u128::from(v6), c.len as u32),
        };
        Self {
            bits: bits & mask(len),
            len,
        }
    }
    fn contains(&self, o: &Prefix) -> bool {
        self.len <= o.len && o.bits & mask(self.len) == self.bits
    }
    fn addr(&self) -> NetAddr {
        NetAddr::from_octets(self.bits.to_be_bytes())
    }
}

/// One address as a prefix of its own.
fn host_prefix(ip: IpAddr) -> Prefix {
    Prefix::of(&Cidr {
        addr: ip,
        len: if ip.is_ipv4() { 32 } else { 128 },
    })
}

/// `cidr` holds `ip` as the stage compares them (128 bits, IPv4 mapped),
/// its `except` list aside.
pub(crate) fn block_holds(cidr: &Cidr, ip: IpAddr) -> bool {
    Prefix::of(cidr).contains(&host_prefix(ip))
}

fn mask(len: u32) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    }
}

/// The IPv4-mapped block: an IPv6 ipBlock never covers IPv4 peers.
const V4_MAPPED: Prefix = Prefix {
    bits: 0xffff_u128 << 32,
    len: 96,
};

struct CidrRule {
    cidr: Prefix,
    except: Vec<Prefix>,
    blocks: Vec<Block>,
    from: String,
}

/// Everything computed for one local endpoint.
struct EndpointPlan {
    flags: u32,
    /// entry -> rules it came from.
    entries: BTreeMap<(u32, u8, Block), BTreeSet<String>>,
    cidr_rules: [Vec<CidrRule>; 2],
}

pub struct Computed {
    pub maps: PolicyMaps,
    pub report: Report,
    pub errors: Vec<String>,
}

pub(crate) fn ns_labels(snap: &Snapshot, ns: &str) -> Labels {
    snap.namespaces.get(ns).cloned().unwrap_or_else(|| {
        Labels::from([("kubernetes.io/metadata.name".to_string(), ns.to_string())])
    })
}

/// The whole desired policy state. `host_addrs`: this node's own addresses
/// (its Node object's and its interfaces'), which get the host identity.
pub fn compute(
    snap: &Snapshot,
    host_addrs: &[IpAddr],
    ids: &mut Identities,
    ep_ids: &mut EpIds,
) -> Computed {
    compute_within(
        snap,
        host_addrs,
        &HashMap::new(),
        ids,
        ep_ids,
        &Capacity::default(),
    )
}

/// How many entries the maps hold (their `max_entries`).
#[derive(Clone, Copy, Debug)]
pub struct Capacity {
    pub ipcache: usize,
    pub entries: usize,
    pub cidrs: usize,
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            ipcache: lb_common::DEFAULT_IPCACHE_MAX as usize,
            entries: lb_common::DEFAULT_POLICY_MAX as usize,
            cidrs: lb_common::DEFAULT_POL_CIDR_MAX as usize,
        }
    }
}

/// `compute` with the maps' capacities: a pod whose entries do not fit is
/// isolated both ways with none (reported); pods past the ipcache's
/// capacity are `world` to their peers' policies (reported).
/// `ifindex_of`: the interface each local pod address is routed through
/// (its pod's interface), for source validation; pods missing from it are
/// not validated yet.
pub fn compute_within(
    snap: &Snapshot,
    host_addrs: &[IpAddr],
    ifindex_of: &HashMap<IpAddr, u32>,
    ids: &mut Identities,
    ep_ids: &mut EpIds,
    cap: &Capacity,
) -> Computed {
    let mut errors = Vec::new();
    let mut pods: Vec<&PodInfo> = snap.pods.values().filter(|p| p.is_endpoint()).collect();
    pods.sort_by(|a, b| a.key.cmp(&b.key));
    let mut ns_cache: HashMap<&str, Labels> = HashMap::new();
    let mut pod_ids: HashMap<&ObjRef, u32> = HashMap::new();
    let mut live = HashSet::new();
    for p in &pods {
        let nsl = ns_cache
            .entry(&p.key.namespace)
            .or_insert_with(|| ns_labels(snap, &p.key.namespace));
        let id = ids.id_for(&p.key.namespace, nsl, &p.labels);
        live.insert(id);
        pod_ids.insert(&p.key, id);
    }
    ids.retain(&live);

    let mut maps = PolicyMaps::default();
    for ip in host_addrs.iter().chain(&snap.node.addrs) {
        maps.ipcache.insert((net_addr(*ip), 128), ID_HOST);
    }
    let mut left_out = 0;
    for p in &pods {
        for ip in &p.ips {
            if maps.ipcache.len() < cap.ipcache {
                maps.ipcache.insert((net_addr(*ip), 128), pod_ids[&p.key]);
            } else {
                left_out += 1;
            }
        }
    }
    if left_out > 0 {
        errors.push(format!(
            "{left_out} pod addresses do not fit the ipcache (capacity {}): policies see them as world",
            cap.ipcache
        ));
    }
    for pol in snap.policies.values() {
        if pol.ingress.is_some() {
            maps.flags |= POL_F_ANY_INGRESS;
        }
        if pol.egress.is_some() {
            maps.flags |= POL_F_ANY_EGRESS;
        }
    }

    let node = snap.node_name.as_deref();
    let local: Vec<&PodInfo> = pods
        .iter()
        .copied()
        .filter(|p| p.node.as_deref() == node && node.is_some())
        .collect();
    let live_eps: Vec<(&ObjRef, Vec<NetAddr>)> = local
        .iter()
        .map(|p| (&p.key, p.ips.iter().map(|i| net_addr(*i)).collect()))
        .collect();
    if let Err(e) = ep_ids.assign(&live_eps) {
        errors.push(e);
    }

    let view = FullView::new(&pods, &pod_ids, &ns_cache);
    let ctx = Ctx::new(&view);
    let mut report = Report::default();
    let mut policies: Vec<&PolicyInfo> = snap.policies.values().collect();
    policies.sort_by(|a, b| a.key.cmp(&b.key));
    for p in &local {
        let Some(ep_id) = ep_ids.get(&p.key) else {
            continue;
        };
        let identity = pod_ids[&p.key];
        let EndpointOut {
            mut flags,
            mut entries,
            mut cidrs,
            mut allows,
        } = endpoint_out(&ctx, p, &policies, ep_id);
        let mut error = None;
        if maps.entries.len() + entries.len() > cap.entries
            || maps.cidrs.len() + cidrs.len() > cap.cidrs
        {
            // What cannot be represented denies: the pod is isolated both
            // ways with no allow entry until its entries fit.
            let e = format!(
                "pod {}: its {} policy entries and {} CIDR entries do not fit (capacity {} and {}, {} and {} in use by other pods); it is isolated both ways and allows nothing until they fit",
                p.key,
                entries.len(),
                cidrs.len(),
                cap.entries,
                cap.cidrs,
                maps.entries.len(),
                maps.cidrs.len()
            );
            errors.push(e.clone());
            error = Some(e);
            flags = EP_F_INGRESS_ISOLATED | EP_F_EGRESS_ISOLATED;
            entries.clear();
            cidrs.clear();
            allows.clear();
        }
        let ifindex = ifindex_for(p, ifindex_of);
        if ifindex != 0 {
            maps.ifaces.insert(ifindex, ep_id);
        }
        let ep = PolEndpoint {
            ep_id,
            identity,
            flags,
            ifindex,
        };
        for ip in &p.ips {
            maps.endpoints.insert(net_addr(*ip), ep);
        }
        let (n_entries, cidr_entries) = (entries.len(), cidrs.len());
        maps.entries.extend(entries);
        maps.cidrs.extend(cidrs);
        report.endpoints.push(endpoint_report(
            p,
            &ep,
            n_entries,
            cidr_entries,
            error,
            allows,
        ));
    }
    let mut per_id: HashMap<u32, usize> = HashMap::new();
    for id in pod_ids.values() {
        *per_id.entry(*id).or_default() += 1;
    }
    report.identities = ids
        .iter()
        .map(|(id, k)| IdentityReport {
            identity: *id,
            namespace: k.namespace.clone(),
            labels: k.pod_labels.clone(),
            pods: per_id.get(id).copied().unwrap_or(0),
        })
        .collect();
    Computed {
        maps,
        report,
        errors,
    }
}

/// The interface a local pod's traffic comes from (0: not known yet).
pub(crate) fn ifindex_for(p: &PodInfo, ifindex_of: &HashMap<IpAddr, u32>) -> u32 {
    p.ips
        .iter()
        .find_map(|ip| ifindex_of.get(ip))
        .copied()
        .unwrap_or(0)
}

/// One local endpoint's share of the maps, before the capacity check.
pub(crate) struct EndpointOut {
    pub flags: u32,
    /// May hold an entry twice (CIDR prefixes sharing a set).
    pub entries: Vec<(PolicyData, u32)>,
    pub cidrs: Vec<((PolCidrData, u32), u32)>,
    /// (direction, peer, ports) -> the rules it came from.
    pub allows: BTreeMap<(u8, String, String), BTreeSet<String>>,
}

/// The entries of the local endpoint `p` (id `ep_id`) under `policies`
/// (those that do not select it are skipped).
pub(crate) fn endpoint_out<'a>(
    ctx: &Ctx<'a>,
    p: &PodInfo,
    policies: &[&'a PolicyInfo],
    ep_id: u32,
) -> EndpointOut {
    let plan = ctx.endpoint(p, policies);
    let mut allows: BTreeMap<(u8, String, String), BTreeSet<String>> = BTreeMap::new();
    let mut entries: Vec<(PolicyData, u32)> = Vec::new();
    let mut cidrs: Vec<((PolCidrData, u32), u32)> = Vec::new();
    for ((peer, dir, (proto, port, len)), from) in &plan.entries {
        entries.push((
            PolicyData {
                ep_id,
                identity: *peer,
                dir: *dir,
                proto: *proto,
                port: BeU16::from_host(*port),
            },
            *len,
        ));
        allows
            .entry((*dir, peer_name(*peer), ports_name(*proto, *port, *len)))
            .or_default()
            .extend(from.iter().cloned());
    }
    for (d, rules) in plan.cidr_rules.iter().enumerate() {
        let dir = if d == 0 { DIR_INGRESS } else { DIR_EGRESS };
        for (prefix, set, blocks, from) in cidr_sets(rules) {
            let data = PolCidrData {
                ep_id,
                dir,
                _pad: [0; 3],
                addr: prefix.addr(),
            };
            cidrs.push(((data, 64 + prefix.len), set));
            for (proto, port, len) in blocks {
                entries.push((
                    PolicyData {
                        ep_id,
                        identity: set,
                        dir,
                        proto,
                        port: BeU16::from_host(port),
                    },
                    len,
                ));
                allows
                    .entry((
                        dir,
                        format!("cidr {}", prefix_name(&prefix)),
                        ports_name(proto, port, len),
                    ))
                    .or_default()
                    .extend(from.iter().cloned());
            }
        }
    }
    EndpointOut {
        flags: plan.flags,
        entries,
        cidrs,
        allows,
    }
}

/// What `endpoint list` and `policy get` show of one local endpoint.
pub(crate) fn endpoint_report(
    p: &PodInfo,
    ep: &PolEndpoint,
    entries: usize,
    cidr_entries: usize,
    error: Option<String>,
    allows: BTreeMap<(u8, String, String), BTreeSet<String>>,
) -> EndpointReport {
    EndpointReport {
        pod: p.key.to_string(),
        ep_id: ep.ep_id,
        identity: ep.identity,
        addresses: p.ips.clone(),
        ifindex: ep.ifindex,
        ingress_isolated: ep.flags & EP_F_INGRESS_ISOLATED != 0,
        egress_isolated: ep.flags & EP_F_EGRESS_ISOLATED != 0,
        entries,
        cidr_entries,
        error,
        allows: allows
            .into_iter()
            .map(|((dir, peer, ports), from)| AllowReport {
                direction: if dir == DIR_INGRESS {
                    "ingress"
                } else {
                    "egress"
                }
                .into(),
                peer,
                ports,
                from: from.into_iter().collect(),
            })
            .collect(),
    }
}

fn peer_name(id: u32) -> String {
    match id {
        ID_ANY => "any".into(),
        ID_HOST => "host".into(),
        id => format!("identity {id}"),
    }
}

fn prefix_name(p: &Prefix) -> String {
    let ip = ip_of(&p.addr());
    let len = if ip.is_ipv4() { p.len - 96 } else { p.len };
    format!("{ip}/{len}")
}

fn ports_name(proto: u8, port: u16, len: u32) -> String {
    let name = match proto {
        PROTO_TCP => "TCP",
        PROTO_UDP => "UDP",
        PROTO_SCTP => "SCTP",
        _ => return "any".into(),
    };
    if len == POLICY_PREFIX_ANY_PROTO {
        return "any".into();
    }
    if len == POLICY_PREFIX_PROTO {
        return name.into();
    }
    let span = 1u32 << (POLICY_PREFIX_FULL - len);
    if span == 1 {
        format!("{name}/{port}")
    } else {
        format!("{name}/{port}-{}", port as u32 + span - 1)
    }
}

/// The LPM entries of one endpoint's ipBlock rules in one direction: for
/// each prefix that a rule or an `except` names, the rules that cover
/// every address whose longest match it is (its own block, not carved
/// out). Equal rule sets share one CIDR-set identity; a prefix no rule
/// covers maps to 0 so it shadows the shorter blocks around it.
fn cidr_sets(rules: &[CidrRule]) -> Vec<(Prefix, u32, Vec<Block>, BTreeSet<String>)> {
    let mut prefixes: BTreeSet<Prefix> = BTreeSet::new();
    for r in rules {
        prefixes.insert(r.cidr);
        prefixes.extend(r.except.iter().copied());
    }
    let mut sets: BTreeMap<Vec<Block>, u32> = BTreeMap::new();
    let mut out = Vec::new();
    for p in prefixes {
        let covering: Vec<&CidrRule> = rules
            .iter()
            .filter(|r| r.cidr.contains(&p) && !r.except.iter().any(|e| e.contains(&p)))
            .collect();
        let blocks: BTreeSet<Block> = covering
            .iter()
            .flat_map(|r| r.blocks.iter().copied())
            .collect();
        let blocks: Vec<Block> = blocks.into_iter().collect();
        let from: BTreeSet<String> = covering.iter().map(|r| r.from.clone()).collect();
        if blocks.is_empty() {
            out.push((p, 0, vec![], from));
            continue;
        }
        let n = sets.len() as u32;
        let id = *sets.entry(blocks.clone()).or_insert(ID_FIRST_CIDR + n);
        out.push((p, id, blocks, from));
    }
    out
}

/// What an endpoint's rules read of the rest of the cluster: its pods
/// (those that take part in policy) and their identities. The full
/// computation builds one from the snapshot; the incremental one keeps one.
pub(crate) trait PeerView {
    /// Every pod that takes part in policy, in any order.
    fn each_pod(&self, f: &mut dyn FnMut(&PodInfo));
    /// Every namespace where some pod holds an identity, with its labels.
    fn each_namespace(&self, f: &mut dyn FnMut(&str, &Labels));
    /// The identities of namespace `ns`: (number, pod labels).
    fn each_identity_in(&self, ns: &str, f: &mut dyn FnMut(u32, &Labels));
    /// The pods holding identity `id`, in any order.
    fn each_pod_of(&self, id: u32, f: &mut dyn FnMut(&PodInfo));
}

/// `peer` (a `Pods` peer of a policy in `policy_ns`) selects the pods of
/// the identity (`namespace`, `ns_labels`, `labels`).
pub(crate) fn peer_selects(
    peer: &Peer,
    policy_ns: &str,
    namespace: &str,
    ns_labels: &Labels,
    labels: &Labels,
) -> bool {
    let Peer::Pods { pods, namespaces } = peer else {
        return false;
    };
    (match namespaces {
        None => namespace == policy_ns,
        Some(sel) => sel.matches(ns_labels),
    }) && pods.matches(labels)
}

/// The pods of one identity: selectors are matched once per identity.
struct IdentityPods<'a> {
    id: u32,
    namespace: &'a str,
    labels: &'a Labels,
    pods: Vec<&'a PodInfo>,
}

/// The cluster as one full computation sees it.
struct FullView<'a> {
    pods: &'a [&'a PodInfo],
    ns_cache: &'a HashMap<&'a str, Labels>,
    /// By number.
    identities: Vec<IdentityPods<'a>>,
    /// Namespace -> indexes into `identities`.
    by_ns: HashMap<&'a str, Vec<usize>>,
}

impl<'a> FullView<'a> {
    fn new(
        pods: &'a [&'a PodInfo],
        pod_ids: &HashMap<&'a ObjRef, u32>,
        ns_cache: &'a HashMap<&'a str, Labels>,
    ) -> Self {
        let mut by_id: BTreeMap<u32, IdentityPods<'a>> = BTreeMap::new();
        for p in pods {
            let id = pod_ids[&p.key];
            by_id
                .entry(id)
                .or_insert_with(|| IdentityPods {
                    id,
                    namespace: &p.key.namespace,
                    labels: &p.labels,
                    pods: vec![],
                })
                .pods
                .push(p);
        }
        let identities: Vec<IdentityPods<'a>> = by_id.into_values().collect();
        let mut by_ns: HashMap<&'a str, Vec<usize>> = HashMap::new();
        for (n, i) in identities.iter().enumerate() {
            by_ns.entry(i.namespace).or_default().push(n);
        }
        Self {
            pods,
            ns_cache,
            identities,
            by_ns,
        }
    }
}

impl PeerView for FullView<'_> {
    fn each_pod(&self, f: &mut dyn FnMut(&PodInfo)) {
        for p in self.pods {
            f(p);
        }
    }

    fn each_namespace(&self, f: &mut dyn FnMut(&str, &Labels)) {
        for ns in self.by_ns.keys() {
            // Every pod's namespace is in the cache.
            f(ns, &self.ns_cache[ns]);
        }
    }

    fn each_identity_in(&self, ns: &str, f: &mut dyn FnMut(u32, &Labels)) {
        for &n in self.by_ns.get(ns).into_iter().flatten() {
            let i = &self.identities[n];
            f(i.id, i.labels);
        }
    }

    fn each_pod_of(&self, id: u32, f: &mut dyn FnMut(&PodInfo)) {
        if let Ok(n) = self.identities.binary_search_by_key(&id, |i| i.id) {
            for p in &self.identities[n].pods {
                f(p);
            }
        }
    }
}

/// (peer, policy namespace) -> the identities it selects.
type Matched<'a> = HashMap<(*const Peer, &'a str), Rc<Vec<u32>>>;

pub(crate) struct Ctx<'a> {
    view: &'a dyn PeerView,
    /// Each peer is matched once per computation, however many endpoints
    /// its policy selects.
    matched: RefCell<Matched<'a>>,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(view: &'a dyn PeerView) -> Self {
        Self {
            view,
            matched: RefCell::new(HashMap::new()),
        }
    }

    /// The identities a `Pods` peer of a policy in `policy_ns` selects.
    fn peer_identities(&self, peer: &Peer, policy_ns: &'a str) -> Rc<Vec<u32>> {
        let key = (peer as *const Peer, policy_ns);
        if let Some(m) = self.matched.borrow().get(&key) {
            return m.clone();
        }
        let mut found = Vec::new();
        if let Peer::Pods { pods, namespaces } = peer {
            let mut take = |id: u32, labels: &Labels| {
                if pods.matches(labels) {
                    found.push(id);
                }
            };
            // Namespaces first: a peer looks at the identities of the
            // namespaces it selects only.
            match namespaces {
                None => self.view.each_identity_in(policy_ns, &mut take),
                Some(sel) => self.view.each_namespace(&mut |ns, ns_labels| {
                    if sel.matches(ns_labels) {
                        self.view.each_identity_in(ns, &mut take);
                    }
                }),
            }
        }
        let found = Rc::new(found);
        self.matched.borrow_mut().insert(key, found.clone());
        found
    }

    fn endpoint(&self, pod: &PodInfo, policies: &[&'a PolicyInfo]) -> EndpointPlan {
        let mut plan = EndpointPlan {
            flags: 0,
            entries: BTreeMap::new(),
            cidr_rules: [vec![], vec![]],
        };
        for pol in policies.iter().filter(|p| p.selects(pod)) {
            for (dir, rules) in [(DIR_INGRESS, &pol.ingress), (DIR_EGRESS, &pol.egress)] {
                let Some(rules) = rules else { continue };
                plan.flags |= if dir == DIR_INGRESS {
                    EP_F_INGRESS_ISOLATED
                } else {
                    EP_F_EGRESS_ISOLATED
                };
                for (i, rule) in rules.iter().enumerate() {
                    let from = format!(
                        "{}/{} {}[{i}]",
                        pol.key.namespace,
                        pol.key.name,
                        if dir == DIR_INGRESS {
                            "ingress"
                        } else {
                            "egress"
                        }
                    );
                    self.rule(pod, dir, rule, &pol.key.namespace, &from, &mut plan);
                }
            }
        }
        plan
    }

    fn rule(
        &self,
        pod: &PodInfo,
        dir: u8,
        rule: &Rule,
        policy_ns: &'a str,
        from: &str,
        plan: &mut EndpointPlan,
    ) {
        let add = |peer: u32, blocks: Vec<Block>, plan: &mut EndpointPlan| {
            for b in blocks {
                plan.entries
                    .entry((peer, dir, b))
                    .or_default()
                    .insert(from.to_string());
            }
        };
        let is_named = |s: &&PortSpec| matches!(s.port, Some(PortRef::Name(_)));
        // An egress named port is the port of whichever pod is reached, so
        // it cannot be an identity's: pods sharing labels may number it
        // differently. Those specs become per-address entries of the pods
        // the rule reaches; the rest of the rule is resolved as usual.
        let (named, ports): (Vec<&PortSpec>, Vec<&PortSpec>) = if dir == DIR_EGRESS {
            rule.ports.iter().partition(is_named)
        } else {
            (vec![], rule.ports.iter().collect())
        };
        let blocks = if rule.ports.is_empty() {
            vec![(0, 0, POLICY_PREFIX_ANY_PROTO)]
        } else {
            // Ingress named ports are the endpoint's own.
            ports
                .iter()
                .flat_map(|s| spec_blocks(s, |n, pr| pod.named_port(n, pr)))
                .collect()
        };
        let d = if dir == DIR_INGRESS { 0 } else { 1 };
        let named_to = |p: &PodInfo, inside: &dyn Fn(&Prefix) -> bool, plan: &mut EndpointPlan| {
            if named.is_empty() {
                return;
            }
            let b: Vec<Block> = named
                .iter()
                .flat_map(|s| spec_blocks(s, |n, pr| p.named_port(n, pr)))
                .collect();
            if b.is_empty() {
                return;
            }
            for ip in &p.ips {
                let a = host_prefix(*ip);
                if inside(&a) {
                    plan.cidr_rules[d].push(CidrRule {
                        cidr: a,
                        except: vec![],
                        blocks: b.clone(),
                        from: from.to_string(),
                    });
                }
            }
        };
        if rule.peers.is_empty() {
            if !named.is_empty() {
                self.view.each_pod(&mut |p| named_to(p, &|_| true, plan));
            }
            if !blocks.is_empty() {
                add(ID_ANY, blocks, plan);
            }
            return;
        }
        for peer in &rule.peers {
            match peer {
                Peer::Pods { .. } => {
                    for &id in self.peer_identities(peer, policy_ns).iter() {
                        if !named.is_empty() {
                            self.view
                                .each_pod_of(id, &mut |p| named_to(p, &|_| true, plan));
                        }
                        if !blocks.is_empty() {
                            add(id, blocks.clone(), plan);
                        }
                    }
                }
                Peer::IpBlock { cidr, except } => {
                    let cidr_p = Prefix::of(cidr);
                    let mut except: Vec<Prefix> = except.iter().map(Prefix::of).collect();
                    if !cidr.addr.is_ipv4() && cidr_p.contains(&V4_MAPPED) {
                        except.push(V4_MAPPED);
                    }
                    // Named ports exist only on pods: those in the block.
                    let inside =
                        |a: &Prefix| cidr_p.contains(a) && !except.iter().any(|e| e.contains(a));
                    if !named.is_empty() {
                        self.view.each_pod(&mut |p| named_to(p, &inside, plan));
                    }
                    if blocks.is_empty() {
                        continue;
                    }
                    plan.cidr_rules[d].push(CidrRule {
                        cidr: cidr_p,
                        except,
                        blocks: blocks.clone(),
                        from: from.to_string(),
                    });
                }
            }
        }
    }
}
