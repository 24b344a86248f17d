//! Drives the policy stage: when a policy input changed, brings the policy
//! maps to the snapshot's state and hands the ops to the writer.
//!
//! A change set is applied incrementally (policy_incremental/: only what
//! it touches is recomputed, the ops come from the old and new shares of
//! what was recomputed). The first change set, a full resync, a change set
//! after a failed write and whatever the incremental state cannot
//! reproduce exactly (maps near capacity) are computed in full and diffed
//! against the mirror of the maps.

use std::{collections::HashMap, net::IpAddr};

use crate::{
    compute::{
        identity::Identities,
        policy::{self, Capacity, EpIds, PolicyMaps, PolicyProblem, Report},
        policy_plan::{self, PolicyOp},
    },
    model::snapshot::{PolicyChanges, Snapshot},
};

#[path = "policy_incremental/mod.rs"]
mod incremental;
#[cfg(test)]
#[path = "policy_incremental_tests.rs"]
mod incremental_tests;

pub use incremental::StepStats;

/// How the last change set was computed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PlanKind {
    #[default]
    None,
    /// Only what the change set touched.
    Incremental(StepStats),
    /// Everything, diffed against the mirror (first change set, resync,
    /// after a failed write).
    Full,
    /// The full computation of `policy::compute_within`, because the
    /// incremental state could not reproduce it (the reason).
    Fallback(String),
}

#[derive(Debug, Default)]
pub struct PolicySync {
    ids: Identities,
    ep_ids: EpIds,
    mirror: PolicyMaps,
    engine: incremental::Engine,
    /// The kept state and the mirror agree with the last change set: the
    /// next one may be applied incrementally.
    in_step: bool,
    /// What `lb-agent endpoint list`, `identity list` and `policy get` show.
    pub report: Report,
    /// This node's own addresses beyond its Node object's (its interfaces').
    pub host_addrs: Vec<IpAddr>,
    /// Local pod address -> the interface it is routed through.
    pub ifindex_of: HashMap<IpAddr, u32>,
    /// The maps' capacities.
    pub capacity: Capacity,
    /// How the last change set was computed.
    pub last: PlanKind,
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

    /// The ops that bring the maps to the snapshot's policy state,
    /// computed in full.
    pub fn plan(&mut self, snap: &Snapshot, errors: &mut Vec<PolicyProblem>) -> Vec<PolicyOp> {
        self.plan_changes(snap, &PolicyChanges::default(), true, errors)
    }

    /// The ops that bring the maps to the snapshot's policy state, given
    /// what changed in it since the last call (`Snapshot::policy_changes`,
    /// taken). `full`: compute everything (a complete listing).
    pub fn plan_changes(
        &mut self,
        snap: &Snapshot,
        changes: &PolicyChanges,
        full: bool,
        errors: &mut Vec<PolicyProblem>,
    ) -> Vec<PolicyOp> {
        let inputs = incremental::Inputs {
            snap,
            host_addrs: &self.host_addrs,
            ifindex_of: &self.ifindex_of,
            cap: &self.capacity,
        };
        let incremental = self.in_step && !full;
        self.in_step = false;
        let planned = if incremental {
            self.engine
                .update(
                    &inputs,
                    changes,
                    &mut self.ids,
                    &mut self.ep_ids,
                    &mut self.report,
                )
                .inspect(|_| {
                    self.last = PlanKind::Incremental(self.engine.stats.clone());
                })
        } else {
            self.engine
                .rebuild(&inputs, &mut self.ids, &mut self.ep_ids, &mut self.report)
                .map(|maps| {
                    self.last = PlanKind::Full;
                    policy_plan::diff(&self.mirror, &maps)
                })
        };
        let ops = match planned {
            Ok(ops) => {
                self.in_step = true;
                ops
            }
            Err(why) => {
                tracing::debug!("policy: computing in full: {why}");
                self.last = PlanKind::Fallback(why);
                let c = policy::compute_within(
                    snap,
                    &self.host_addrs,
                    &self.ifindex_of,
                    &mut self.ids,
                    &mut self.ep_ids,
                    &self.capacity,
                );
                errors.extend(c.errors);
                self.report = c.report;
                policy_plan::diff(&self.mirror, &c.maps)
            }
        };
        #[cfg(test)]
        self.check_against_reference(snap, &ops);
        ops
    }

    /// Tests only: the ops bring the mirror exactly where the reference
    /// computation says, with its report.
    #[cfg(test)]
    fn check_against_reference(&self, snap: &Snapshot, ops: &[PolicyOp]) {
        let (mut ids, mut ep_ids) = (self.ids.clone(), self.ep_ids.clone());
        let c = policy::compute_within(
            snap,
            &self.host_addrs,
            &self.ifindex_of,
            &mut ids,
            &mut ep_ids,
            &self.capacity,
        );
        if !matches!(self.last, PlanKind::Fallback(_)) {
            assert_eq!(c.errors, Vec::<PolicyProblem>::new(), "{:?}", self.last);
        }
        let mut m = self.mirror.clone();
        policy_plan::apply(&mut m, ops);
        assert_eq!(
            m, c.maps,
            "{:?}: the maps differ from the reference",
            self.last
        );
        assert_eq!(
            self.report, c.report,
            "{:?}: the report differs from the reference",
            self.last
        );
    }

    /// The maps' capacities from now on; true when they changed (the next
    /// change set is then computed in full: the incremental state was
    /// kept against the old ones).
    pub fn set_capacity(&mut self, cap: Capacity) -> bool {
        if cap == self.capacity {
            return false;
        }
        self.capacity = cap;
        self.in_step = false;
        true
    }

    /// The writer applied `ops`.
    pub fn applied(&mut self, ops: &[PolicyOp]) {
        policy_plan::apply(&mut self.mirror, ops);
    }

    /// The writer failed midway: start again from what the maps hold (the
    /// next change set is computed in full).
    pub fn reload(&mut self, mirror: PolicyMaps) {
        self.mirror = mirror;
        self.in_step = false;
    }

    /// What the maps hold, as far as this side knows.
    pub fn mirror(&self) -> &PolicyMaps {
        &self.mirror
    }
}
