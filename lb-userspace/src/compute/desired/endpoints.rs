//! A Service port's endpoints as kube-proxy categorizes them: the
//! Cluster-policy set, this node's set, every listed one; and the count
//! a healthCheckNodePort reports.

use std::collections::{BTreeMap, BTreeSet};

use lb_common::{BACKEND_LOCAL, Backend, BeU16};

use super::{Here, net_addr, topology::topology_mode};
use crate::model::snapshot::{Family, Hints, Proto, SliceInfo};

/// This node's ready endpoints of a Service (distinct addresses), what its
/// healthCheckNodePort reports. As kube-proxy: terminating endpoints are
/// not counted even when they are all this node has left (and still
/// serve), so that load balancers move new connections to other nodes
/// while the old ones drain.
pub fn local_ready_endpoints(slices: &[&SliceInfo], node_name: Option<&str>) -> usize {
    let Some(node) = node_name else { return 0 };
    let mut addrs = BTreeSet::new();
    for s in slices {
        for e in s
            .endpoints
            .iter()
            .filter(|e| e.ready && e.node.as_deref() == Some(node))
        {
            addrs.extend(e.addr);
        }
    }
    addrs.len()
}

/// The backends of one Service port and family, as kube-proxy categorizes
/// them.
pub(super) struct Endpoints {
    /// Ready endpoints; when none is ready anywhere, the serving and
    /// terminating ones (so connections drain instead of failing).
    pub(super) cluster: Vec<Backend>,
    /// This node's ready endpoints; when none of them is ready, this
    /// node's serving and terminating ones — whether or not other nodes
    /// have ready ones (traffic policy Local).
    pub(super) local: Vec<Backend>,
    /// Every endpoint the slices list, whatever its conditions (sorted).
    pub(super) listed: Vec<Backend>,
}

pub(super) fn endpoints_for(
    slices: &[&SliceInfo],
    family: Family,
    port_name: &str,
    proto: Proto,
    proto_n: u8,
    here: Here<'_>,
) -> Endpoints {
    let node_name = here.node;
    // Ready endpoints with their hints (the first slice listing one wins).
    let mut ready: BTreeMap<Backend, Option<&Hints>> = BTreeMap::new();
    let mut terminating = BTreeSet::new();
    let mut listed = BTreeSet::new();
    for s in slices.iter().filter(|s| s.family == Some(family)) {
        // EndpointSlice ports are resolved per slice (a named targetPort can
        // differ between pods), so the port comes from the slice.
        let Some(port) = s
            .ports
            .iter()
            .find(|p| p.name == port_name && p.proto == proto)
        else {
            continue;
        };
        for e in &s.endpoints {
            if let Some(a) = e.addr {
                let b = Backend {
                    addr: net_addr(a),
                    port: BeU16::from_host(port.port),
                    proto: proto_n,
                    flags: if node_name.is_some() && e.node.as_deref() == node_name {
                        BACKEND_LOCAL
                    } else {
                        0
                    },
                };
                listed.insert(b);
                if e.ready {
                    ready.entry(b).or_insert(e.hints.as_deref());
                } else if e.serving && e.terminating {
                    terminating.insert(b);
                }
            }
        }
    }
    let local_of = |set: &mut dyn Iterator<Item = &Backend>| -> Vec<Backend> {
        set.filter(|b| b.flags & BACKEND_LOCAL != 0)
            .copied()
            .collect()
    };
    let mut local = local_of(&mut ready.keys());
    if local.is_empty() {
        local = local_of(&mut terminating.iter());
    }
    // Topology hints narrow the Cluster-policy set (never the Local ones).
    let mode = topology_mode(&ready, here);
    let cluster: Vec<Backend> = if ready.is_empty() {
        terminating.into_iter().collect()
    } else {
        ready
            .iter()
            .filter(|(_, h)| mode.admits(h.as_deref(), here))
            .map(|(b, _)| *b)
            .collect()
    };
    Endpoints {
        cluster,
        local,
        listed: listed.into_iter().collect(),
    }
}
