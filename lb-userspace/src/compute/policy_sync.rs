//! Drives the policy stage: recompute from the snapshot when a policy input
//! changed, diff against the mirror of the policy maps, hand the ops to
//! the writer.

use std::net::IpAddr;

use crate::{
    compute::{
        identity::Identities,
        policy::{self, EpIds, PolicyMaps, Report},
        policy_plan::{self, PolicyOp},
    },
    model::snapshot::Snapshot,
};

#[derive(Debug, Default)]
pub struct PolicySync {
    ids: Identities,
    ep_ids: EpIds,
    mirror: PolicyMaps,
    /// What `lb-agent endpoint list`, `identity list` and `policy get` show.
    pub report: Report,
    /// This node's own addresses beyond its Node object's (its interfaces').
    pub host_addrs: Vec<IpAddr>,
    /// Local pod address -> the interface it is routed through.
    pub ifindex_of: std::collections::HashMap<IpAddr, u32>,
}

impl PolicySync {
    /// Starts from what the maps hold (endpoint ids are kept by address).
    pub fn adopt(mirror: PolicyMaps) -> Self {
        Self {
            ep_ids: EpIds::adopt(&mirror),
            mirror,
            ..Default::default()
        }
    }

    /// The ops that bring the maps to the snapshot's policy state.
    pub fn plan(&mut self, snap: &Snapshot, errors: &mut Vec<String>) -> Vec<PolicyOp> {
        let c = policy::compute_within(
            snap,
            &self.host_addrs,
            &self.ifindex_of,
            &mut self.ids,
            &mut self.ep_ids,
            &policy::Capacity::default(),
        );
        errors.extend(c.errors);
        self.report = c.report;
        policy_plan::diff(&self.mirror, &c.maps)
    }

    /// The writer applied `ops`.
    pub fn applied(&mut self, ops: &[PolicyOp]) {
        policy_plan::apply(&mut self.mirror, ops);
    }

    /// The writer failed midway: start again from what the maps hold.
    pub fn reload(&mut self, mirror: PolicyMaps) {
        self.mirror = mirror;
    }
}
