//! The desired NetworkPolicy state of this node, pure: the ipcache (every
//! pod of the cluster and this node's addresses -> identity), the local
//! endpoints with their isolation, their allow entries (peer identity,
//! direction, protocol, port block) and their ipBlock CIDR sets.
//!
//! Split by job: this file computes the whole state (`compute_within`);
//! `ep_ids` keeps local endpoints' ids; `rules` turns a pod's policies into
//! its allow entries; `peers` is what those rules read of the cluster;
//! `prefixes` turns ports and CIDRs into LPM prefixes; `endpoint` gives
//! one endpoint's share of the maps; `report` says it in words.

mod endpoint;
mod ep_ids;
mod peers;
mod prefixes;
mod problem;
mod report;
mod rules;

pub(crate) use endpoint::{EndpointOut, endpoint_out, ifindex_for};
pub use ep_ids::EpIds;
pub(crate) use peers::{PeerView, peer_selects};
pub(crate) use prefixes::block_holds;
pub use prefixes::port_blocks;
pub use problem::PolicyProblem;
pub(crate) use report::endpoint_report;
pub use report::{AllowReport, EndpointReport, IdentityReport, Report};
pub(crate) use rules::Ctx;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::IpAddr,
};

use lb_common::{
    EP_F_EGRESS_ISOLATED, EP_F_INGRESS_ISOLATED, ID_HOST, NetAddr, POL_F_ANY_EGRESS,
    POL_F_ANY_INGRESS, PolCidrData, PolEndpoint, PolicyData,
};

use crate::{
    compute::{desired::net_addr, identity::Identities},
    model::{
        policy::{Labels, PodInfo, PolicyInfo},
        snapshot::{ObjRef, Snapshot},
    },
};

use peers::FullView;

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

pub struct Computed {
    pub maps: PolicyMaps,
    pub report: Report,
    pub errors: Vec<PolicyProblem>,
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub ipcache: usize,
    pub entries: usize,
    pub cidrs: usize,
}

impl Capacity {
    /// What the maps would need to hold what `problems` left out for want
    /// of room: what each pod that did not fit needs, beyond the most in
    /// use when one was tried (a floor: pods that fitted after the last
    /// one add to it, so a caller may need another round); None when
    /// nothing was left out for room.
    pub fn wanted(&self, problems: &[PolicyProblem]) -> Option<Capacity> {
        let mut w = *self;
        let (mut short, mut entries, mut cidrs, mut entries_used, mut cidrs_used) =
            (false, 0, 0, 0, 0);
        for p in problems {
            match p {
                PolicyProblem::IpcacheFull { left_out, capacity } => {
                    short = true;
                    w.ipcache = w.ipcache.max(capacity + left_out);
                }
                PolicyProblem::EntriesDoNotFit {
                    entries: e,
                    cidrs: c,
                    entries_used: eu,
                    cidrs_used: cu,
                    ..
                } => {
                    short = true;
                    entries += e;
                    cidrs += c;
                    entries_used = entries_used.max(*eu);
                    cidrs_used = cidrs_used.max(*cu);
                }
                _ => {}
            }
        }
        w.entries = w.entries.max(entries_used + entries);
        w.cidrs = w.cidrs.max(cidrs_used + cidrs);
        short.then_some(w)
    }
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
        errors.push(PolicyProblem::IpcacheFull {
            left_out,
            capacity: cap.ipcache,
        });
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
            let e = PolicyProblem::EntriesDoNotFit {
                pod: p.key.clone(),
                entries: entries.len(),
                cidrs: cidrs.len(),
                entries_capacity: cap.entries,
                cidrs_capacity: cap.cidrs,
                entries_used: maps.entries.len(),
                cidrs_used: maps.cidrs.len(),
            };
            error = Some(e.to_string());
            errors.push(e);
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
