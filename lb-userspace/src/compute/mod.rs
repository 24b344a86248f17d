//! Pure stages: desired state from the snapshot, the plan that diffs it
//! against a mirror of the maps, and the reconciler that drives both.

pub mod conntrack_gc;
pub mod ct_sweep;
pub mod desired;
pub mod identity;
pub mod maglev;
pub mod plan;
pub mod policy;
pub mod policy_plan;
pub mod policy_sync;
#[cfg(test)]
mod policy_tests;
pub mod reconcile;
