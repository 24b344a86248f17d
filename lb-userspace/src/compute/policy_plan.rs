//! The ordered writes that take the policy maps from what they hold to
//! what is desired, opening nothing on the way: new allow entries and CIDR
//! sets before the ipcache and endpoints that make them reachable, removals
//! after, and the revision bump last so flows allowed under the old state
//! are judged again.

use lb_common::{NetAddr, PolCidrData, PolEndpoint, PolicyData};

use crate::compute::policy::PolicyMaps;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyOp {
    EntryPut(PolicyData, u32),
    CidrPut(PolCidrData, u32, u32),
    IpcachePut(NetAddr, u32, u32),
    EndpointPut(NetAddr, PolEndpoint),
    /// A pod interface's endpoint (after the endpoint: an interface known
    /// before its pod's address would drop the pod's traffic as spoofed).
    IfacePut(u32, u32),
    IfaceDel(u32),
    IpcacheDel(NetAddr, u32),
    EndpointDel(NetAddr),
    CidrDel(PolCidrData, u32),
    EntryDel(PolicyData, u32),
    /// Bump the revision and set the flags.
    Revision {
        flags: u32,
    },
}

pub fn diff(old: &PolicyMaps, new: &PolicyMaps) -> Vec<PolicyOp> {
    let mut ops = Vec::new();
    for e in new.entries.difference(&old.entries) {
        ops.push(PolicyOp::EntryPut(e.0, e.1));
    }
    for (k, v) in &new.cidrs {
        if old.cidrs.get(k) != Some(v) {
            ops.push(PolicyOp::CidrPut(k.0, k.1, *v));
        }
    }
    for (k, v) in &new.ipcache {
        if old.ipcache.get(k) != Some(v) {
            ops.push(PolicyOp::IpcachePut(k.0, k.1, *v));
        }
    }
    for (k, v) in &new.endpoints {
        if old.endpoints.get(k) != Some(v) {
            ops.push(PolicyOp::EndpointPut(*k, *v));
        }
    }
    for (k, v) in &new.ifaces {
        if old.ifaces.get(k) != Some(v) {
            ops.push(PolicyOp::IfacePut(*k, *v));
        }
    }
    for k in old.ifaces.keys().filter(|k| !new.ifaces.contains_key(k)) {
        ops.push(PolicyOp::IfaceDel(*k));
    }
    for k in old.ipcache.keys().filter(|k| !new.ipcache.contains_key(k)) {
        ops.push(PolicyOp::IpcacheDel(k.0, k.1));
    }
    for k in old
        .endpoints
        .keys()
        .filter(|k| !new.endpoints.contains_key(k))
    {
        ops.push(PolicyOp::EndpointDel(*k));
    }
    for k in old.cidrs.keys().filter(|k| !new.cidrs.contains_key(k)) {
        ops.push(PolicyOp::CidrDel(k.0, k.1));
    }
    for e in old.entries.difference(&new.entries) {
        ops.push(PolicyOp::EntryDel(e.0, e.1));
    }
    if !ops.is_empty() || old.flags != new.flags {
        ops.push(PolicyOp::Revision { flags: new.flags });
    }
    ops
}

/// `maps` after `ops` (the mirror follows the writer).
pub fn apply(maps: &mut PolicyMaps, ops: &[PolicyOp]) {
    for op in ops {
        match op {
            PolicyOp::EntryPut(d, l) => {
                maps.entries.insert((*d, *l));
            }
            PolicyOp::EntryDel(d, l) => {
                maps.entries.remove(&(*d, *l));
            }
            PolicyOp::CidrPut(d, l, v) => {
                maps.cidrs.insert((*d, *l), *v);
            }
            PolicyOp::CidrDel(d, l) => {
                maps.cidrs.remove(&(*d, *l));
            }
            PolicyOp::IpcachePut(a, l, v) => {
                maps.ipcache.insert((*a, *l), *v);
            }
            PolicyOp::IpcacheDel(a, l) => {
                maps.ipcache.remove(&(*a, *l));
            }
            PolicyOp::EndpointPut(a, e) => {
                maps.endpoints.insert(*a, *e);
            }
            PolicyOp::EndpointDel(a) => {
                maps.endpoints.remove(a);
            }
            PolicyOp::IfacePut(i, e) => {
                maps.ifaces.insert(*i, *e);
            }
            PolicyOp::IfaceDel(i) => {
                maps.ifaces.remove(i);
            }
            PolicyOp::Revision { flags } => maps.flags = *flags,
        }
    }
}
