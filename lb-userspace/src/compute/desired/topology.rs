//! EndpointSlice topology hints (`hints.forNodes`, `hints.forZones`): which
//! mode kube-proxy would pick, and which endpoints it admits.

use std::collections::BTreeMap;

use lb_common::Backend;

use super::Here;
use crate::model::snapshot::Hints;

/// kube-proxy's topology modes (topologyModeFromHints).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Topology {
    /// No topology: every ready endpoint.
    All,
    /// Endpoints hinted for this node.
    SameNode,
    /// Endpoints hinted for this node's zone.
    SameZone,
}

impl Topology {
    pub(super) fn admits(self, hints: Option<&Hints>, here: Here<'_>) -> bool {
        let has =
            |list: &[String], want: Option<&str>| want.is_some_and(|w| list.iter().any(|x| x == w));
        match self {
            Topology::All => true,
            Topology::SameNode => hints.is_some_and(|h| has(&h.nodes, here.node)),
            Topology::SameZone => hints.is_some_and(|h| has(&h.zones, here.zone)),
        }
    }
}

/// As kube-proxy decides it from the ready endpoints' hints: node hints
/// when every ready endpoint has one and one names this node; else zone
/// hints when every ready endpoint has one and one names this node's zone;
/// else none (a single endpoint without hints turns them off).
pub(super) fn topology_mode(ready: &BTreeMap<Backend, Option<&Hints>>, here: Here<'_>) -> Topology {
    if ready.is_empty() {
        return Topology::All;
    }
    let all =
        |f: fn(&Hints) -> &Vec<String>| ready.values().all(|h| h.is_some_and(|h| !f(h).is_empty()));
    let any = |mode: Topology| ready.values().any(|h| mode.admits(h.as_deref(), here));
    if all(|h| &h.nodes) && any(Topology::SameNode) {
        return Topology::SameNode;
    }
    if all(|h| &h.zones) && any(Topology::SameZone) {
        return Topology::SameZone;
    }
    Topology::All
}
