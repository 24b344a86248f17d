//! The policy stage, incremental: the state `policy::compute_within`
//! computes, kept between change sets so that one change recomputes only
//! what it touches, and the map writes derived from what changed rather
//! than from a diff of whole maps.
//!
//! Kept: each pod's identity and addresses (its ipcache claims), the pods
//! of each identity, the policies of each namespace, each local endpoint's
//! selecting policies and share of the maps (entries, CIDR entries,
//! endpoint value), and which local endpoints each policy selects.
//!
//! A change set recomputes the identities and ipcache claims of the pods
//! it names (every pod of a namespace whose labels changed), and the local
//! endpoints that may see a difference:
//! - local pods that changed (labels, addresses, ports, node);
//! - endpoints a changed policy selected or selects;
//! - endpoints whose selecting policies have a `Pods` peer matching an
//!   identity that appeared or went (an endpoint's entries name identities;
//!   a pod moving between identities that both exist before and after
//!   changes none of them);
//! - endpoints whose selecting policies have an egress rule with a named
//!   port that reaches a changed pod, before or after the change (those
//!   entries are per address of the pods reached);
//! - endpoints whose interface changed.
//!
//! This node's addresses are ipcache claims like pods' (a pod's claim wins
//! an address both hold, as the full computation writes pods last).
//!
//! The full computation stays the reference: every change set must give
//! exactly its maps and report (policy_incremental_tests.rs checks it over
//! random change sequences). What the incremental state cannot reproduce
//! exactly (maps over capacity, endpoint ids exhausted) is handed back as
//! an error, and the caller computes in full.
//!
//! Split by job: this file keeps the state and runs a step; `claims` is
//! the keyed-claims table the ipcache, endpoints and interfaces use;
//! `selection` which local endpoints each policy selects; `touched` what
//! else a change set touches; `view` the kept state as policy rules read
//! it; `ops` the step's shares into the totals and the map writes.

mod claims;
mod ops;
mod selection;
mod touched;
mod view;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::IpAddr,
};

use lb_common::{ID_HOST, NetAddr, PolCidrData, PolEndpoint, PolicyData};

use crate::{
    compute::{
        desired::net_addr,
        identity::Identities,
        policy::{self, Capacity, Ctx, EndpointReport, EpIds, IdentityReport, PolicyMaps, Report},
        policy_plan::PolicyOp,
    },
    model::{
        policy::{Labels, PodInfo, PolicyInfo},
        snapshot::{ObjRef, PolicyChanges, Snapshot},
    },
};

use claims::Claims;
use selection::unselect;
use view::EngineView;

/// What the stage reads besides the snapshot.
pub(crate) struct Inputs<'a> {
    pub snap: &'a Snapshot,
    /// This node's addresses beyond its Node object's.
    pub host_addrs: &'a [IpAddr],
    /// Local pod address -> its interface.
    pub ifindex_of: &'a HashMap<IpAddr, u32>,
    pub cap: &'a Capacity,
}

/// What one change set did (for logs and the benchmark).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepStats {
    /// Pods whose identity and addresses were recomputed.
    pub pods: usize,
    /// Local endpoints whose entries were recomputed.
    pub endpoints: usize,
}

#[derive(Debug)]
struct PodState {
    identity: u32,
    ips: Vec<IpAddr>,
    /// A local endpoint.
    local: bool,
}

/// One local endpoint's share of the maps.
#[derive(Debug)]
struct Share {
    entries: Vec<(PolicyData, u32)>,
    cidrs: Vec<((PolCidrData, u32), u32)>,
    ep: PolEndpoint,
    addrs: Vec<NetAddr>,
}

/// A policy selecting some local endpoint: which, and a copy of it (the
/// scans for what a change touches read it without a lookup).
#[derive(Debug)]
struct Active {
    eps: BTreeSet<ObjRef>,
    policy: PolicyInfo,
}

#[derive(Debug, Default)]
struct EpState {
    ep_id: u32,
    /// The policies selecting it.
    policies: BTreeSet<ObjRef>,
    /// None until first computed.
    share: Option<Share>,
}

/// A pod recomputed in a change set, before and after (for named ports).
struct Moved<'a> {
    old: Option<(u32, Vec<IpAddr>)>,
    new: Option<(u32, &'a PodInfo)>,
}

/// The new reports of the endpoints a step recomputed, and the identities
/// whose pod counts may have changed.
struct Step {
    reports: BTreeMap<ObjRef, EndpointReport>,
    identities: BTreeSet<u32>,
    ops: Vec<PolicyOp>,
}

#[derive(Debug, Default)]
pub(crate) struct Engine {
    pods: HashMap<ObjRef, PodState>,
    /// Identity -> its pods (only identities some pod holds).
    members: HashMap<u32, BTreeSet<ObjRef>>,
    /// Namespace -> the identities of its pods (which all carry the
    /// namespace's current labels).
    ns_ids: HashMap<String, BTreeSet<u32>>,
    /// Address -> identity; claimants: None (this node) before any pod.
    ipcache: Claims<NetAddr, Option<ObjRef>, u32>,
    /// This node's addresses in the ipcache.
    host: BTreeSet<NetAddr>,
    /// Local endpoints, by pod.
    eps: BTreeMap<ObjRef, EpState>,
    /// Policy -> the local endpoints it selects (policies selecting none
    /// are left out).
    pol_eps: HashMap<ObjRef, Active>,
    ns_policies: HashMap<String, BTreeSet<ObjRef>>,
    endpoints: Claims<NetAddr, ObjRef, PolEndpoint>,
    ifaces: Claims<u32, ObjRef, u32>,
    /// Entries and CIDR entries of all endpoints (an entry an endpoint
    /// lists twice counts twice, as the full computation's capacity check
    /// counts it).
    n_entries: usize,
    n_cidrs: usize,
    flags: u32,
    /// The pods of `Report::endpoints`, in its order.
    report_keys: Vec<ObjRef>,
    pub(crate) stats: StepStats,
}

impl Engine {
    /// Everything from the snapshot: the maps as the full computation
    /// gives them, and `report` rewritten. Err: what the kept state cannot
    /// reproduce (compute in full instead; the next call must rebuild).
    pub(crate) fn rebuild(
        &mut self,
        inp: &Inputs,
        ids: &mut Identities,
        ep_ids: &mut EpIds,
        report: &mut Report,
    ) -> Result<PolicyMaps, String> {
        *self = Engine::default();
        let step = self.step(inp, None, ids, ep_ids)?;
        let mut maps = PolicyMaps {
            flags: self.flags,
            ..Default::default()
        };
        maps.ipcache = self
            .ipcache
            .holders()
            .map(|(a, id)| ((a, 128), id))
            .collect();
        maps.endpoints = self.endpoints.holders().collect();
        maps.ifaces = self.ifaces.holders().collect();
        for st in self.eps.values() {
            let sh = st.share.as_ref().ok_or("an endpoint was not computed")?;
            maps.entries.extend(sh.entries.iter().copied());
            maps.cidrs.extend(sh.cidrs.iter().copied());
        }
        let mut reports = step.reports;
        report.endpoints.clear();
        self.report_keys.clear();
        for k in self.eps.keys() {
            report
                .endpoints
                .push(reports.remove(k).ok_or("an endpoint has no report")?);
            self.report_keys.push(k.clone());
        }
        report.identities = ids
            .iter()
            .map(|(id, k)| IdentityReport {
                identity: *id,
                namespace: k.namespace.clone(),
                labels: k.pod_labels.clone(),
                pods: self.members.get(id).map_or(0, |m| m.len()),
            })
            .collect();
        Ok(maps)
    }

    /// Applies one change set: the ops from the state the maps hold (the
    /// previous call's) to the new one; `report` updated. Err: as `rebuild`.
    pub(crate) fn update(
        &mut self,
        inp: &Inputs,
        changes: &PolicyChanges,
        ids: &mut Identities,
        ep_ids: &mut EpIds,
        report: &mut Report,
    ) -> Result<Vec<PolicyOp>, String> {
        let step = self.step(inp, Some(changes), ids, ep_ids)?;
        // Endpoints not recomputed keep their report entry.
        let old = std::mem::replace(&mut report.endpoints, Vec::with_capacity(self.eps.len()));
        let old_keys = std::mem::replace(&mut self.report_keys, Vec::with_capacity(self.eps.len()));
        let mut kept = old_keys.into_iter().zip(old);
        let mut fresh = step.reports;
        for key in self.eps.keys() {
            let (k, r) = match fresh.remove_entry(key) {
                Some(kr) => kr,
                None => loop {
                    match kept.next() {
                        Some((k, r)) if &k == key => break (k, r),
                        Some(_) => continue,
                        None => return Err(format!("endpoint {key} has no report")),
                    }
                },
            };
            report.endpoints.push(r);
            self.report_keys.push(k);
        }
        for id in step.identities {
            let at = report.identities.binary_search_by_key(&id, |r| r.identity);
            match (self.members.get(&id), at, ids.key(id)) {
                (Some(m), Ok(i), _) => report.identities[i].pods = m.len(),
                (Some(m), Err(i), Some(k)) => report.identities.insert(
                    i,
                    IdentityReport {
                        identity: id,
                        namespace: k.namespace.clone(),
                        labels: k.pod_labels.clone(),
                        pods: m.len(),
                    },
                ),
                (None, Ok(i), _) => {
                    report.identities.remove(i);
                }
                _ => {}
            }
        }
        Ok(step.ops)
    }

    /// The work of both: `changes` None means everything (the state is
    /// empty).
    fn step(
        &mut self,
        inp: &Inputs,
        changes: Option<&PolicyChanges>,
        ids: &mut Identities,
        ep_ids: &mut EpIds,
    ) -> Result<Step, String> {
        let snap = inp.snap;
        let rebuild = changes.is_none();
        let node = snap.node_name.as_deref();

        // Pods whose identity or addresses may have changed, in key order
        // (new identities are numbered in the full computation's order).
        let mut changed: BTreeSet<&ObjRef> = BTreeSet::new();
        match changes {
            None => changed.extend(snap.pods.keys()),
            Some(c) => {
                changed.extend(c.pods.iter());
                if !c.namespaces.is_empty() {
                    changed.extend(
                        snap.pods
                            .keys()
                            .filter(|k| c.namespaces.contains(&*k.namespace)),
                    );
                }
            }
        }
        let mut ns_cache: HashMap<&str, Labels> = HashMap::new();
        // Identity -> whether some pod held it before this step.
        let mut held_before: BTreeMap<u32, bool> = BTreeMap::new();
        let mut moved: Vec<Moved> = Vec::new();
        // Local pods recomputed (still local).
        let mut local_changed: Vec<&ObjRef> = Vec::new();
        // Endpoints gone, with what they held.
        let mut gone: Vec<(ObjRef, Share)> = Vec::new();
        let mut n_pods = 0;
        for &key in &changed {
            let old = self.pods.remove(key);
            let new = snap.pods.get(key).filter(|p| p.is_endpoint());
            if old.is_none() && new.is_none() {
                continue;
            }
            n_pods += 1;
            if let Some(o) = &old {
                held_before.entry(o.identity).or_insert(true);
                if let Some(m) = self.members.get_mut(&o.identity) {
                    m.remove(key);
                }
                for ip in &o.ips {
                    self.ipcache
                        .remove(net_addr(*ip), |c| c.as_ref() == Some(key));
                }
            }
            let mut now_local = false;
            let mut new_id = None;
            if let Some(p) = new {
                let nsl = ns_cache
                    .entry(&*p.key.namespace)
                    .or_insert_with(|| policy::ns_labels(snap, &p.key.namespace));
                let id = ids.id_for(&p.key.namespace, nsl, &p.labels);
                new_id = Some(id);
                let m = self.members.entry(id).or_default();
                held_before.entry(id).or_insert(!m.is_empty());
                m.insert(key.clone());
                for ip in &p.ips {
                    self.ipcache.add(net_addr(*ip), Some(key.clone()), id);
                }
                now_local = node.is_some() && p.node.as_deref() == node;
                self.pods.insert(
                    key.clone(),
                    PodState {
                        identity: id,
                        ips: p.ips.clone(),
                        local: now_local,
                    },
                );
            }
            let was_local = old.as_ref().is_some_and(|o| o.local);
            if was_local
                && !now_local
                && let Some(ep) = self.eps.remove(key)
            {
                for pk in &ep.policies {
                    unselect(&mut self.pol_eps, pk, key);
                }
                if let Some(sh) = ep.share {
                    gone.push((key.clone(), sh));
                }
            }
            if now_local {
                self.eps.entry(key.clone()).or_default();
                local_changed.push(key);
            }
            if !rebuild {
                moved.push(Moved {
                    old: old.map(|o| (o.identity, o.ips)),
                    new: new_id.zip(new),
                });
            }
        }

        // Endpoint ids, when local pods came or went.
        if rebuild || !local_changed.is_empty() || !gone.is_empty() {
            let live: Vec<(&ObjRef, Vec<NetAddr>)> = self
                .eps
                .keys()
                .map(|k| (k, snap.pods[k].ips.iter().map(|i| net_addr(*i)).collect()))
                .collect();
            ep_ids.assign(&live).map_err(|e| e.to_string())?;
            for (k, st) in self.eps.iter_mut() {
                st.ep_id = ep_ids
                    .get(k)
                    .ok_or_else(|| format!("pod {k} has no endpoint id"))?;
            }
        }

        // Policies: who they select.
        let mut dirty: BTreeSet<ObjRef> = BTreeSet::new();
        let old_flags = self.reselect(snap, changes, rebuild, local_changed, &mut dirty);

        if !rebuild {
            self.touched(inp, ids, &held_before, &moved, &mut dirty);
        }

        // Identities no pod holds any more go; new ones join their
        // namespace's.
        for (id, before) in &held_before {
            let held = self.members.get(id).is_some_and(|m| !m.is_empty());
            if held == *before {
                continue;
            }
            let Some(ns) = ids.key(*id).map(|k| k.namespace.clone()) else {
                continue;
            };
            if held {
                self.ns_ids.entry(ns).or_default().insert(*id);
            } else {
                self.members.remove(id);
                ids.release(*id);
                if let Some(set) = self.ns_ids.get_mut(&ns) {
                    set.remove(id);
                    if set.is_empty() {
                        self.ns_ids.remove(&ns);
                    }
                }
            }
        }
        if rebuild {
            let live: HashSet<u32> = self.members.keys().copied().collect();
            ids.retain(&live);
        }

        // This node's addresses.
        let host: BTreeSet<NetAddr> = inp
            .host_addrs
            .iter()
            .chain(&snap.node.addrs)
            .map(|ip| net_addr(*ip))
            .collect();
        for a in self.host.difference(&host) {
            self.ipcache.remove(*a, |c| c.is_none());
        }
        for a in host.difference(&self.host) {
            self.ipcache.add(*a, None, ID_HOST);
        }
        self.host = host;

        // The endpoints to recompute.
        let view = EngineView {
            snap,
            ids,
            members: &self.members,
            ns_ids: &self.ns_ids,
        };
        let ctx = Ctx::new(&view);
        let mut reports = BTreeMap::new();
        let mut redone: Vec<(ObjRef, Option<Share>)> = Vec::new();
        for (key, st) in self.eps.iter_mut() {
            if !dirty.contains(key) {
                continue;
            }
            let pod = &snap.pods[key];
            let policies: Vec<&PolicyInfo> =
                st.policies.iter().map(|k| &snap.policies[k]).collect();
            let out = policy::endpoint_out(&ctx, pod, &policies, st.ep_id);
            let ep = PolEndpoint {
                ep_id: st.ep_id,
                identity: self.pods[key].identity,
                flags: out.flags,
                ifindex: policy::ifindex_for(pod, inp.ifindex_of),
            };
            reports.insert(
                key.clone(),
                policy::endpoint_report(
                    pod,
                    &ep,
                    out.entries.len(),
                    out.cidrs.len(),
                    None,
                    out.allows,
                ),
            );
            let share = Share {
                entries: out.entries,
                cidrs: out.cidrs,
                ep,
                addrs: pod.ips.iter().map(|i| net_addr(*i)).collect(),
            };
            redone.push((key.clone(), st.share.replace(share)));
        }
        drop(ctx);
        self.stats = StepStats {
            pods: n_pods,
            endpoints: redone.len(),
        };

        let ops = self.share_ops(inp, gone, redone, rebuild, old_flags)?;
        Ok(Step {
            reports,
            identities: held_before.into_keys().collect(),
            ops,
        })
    }
}
