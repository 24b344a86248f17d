//! Where the cluster comes from: Kubernetes watchers or a directory of
//! YAML files, both producing the same change sets.

/// Change sets waiting for the sync loop: one. A source gathers what comes
/// meanwhile into the next, so the loop never works through stale sets.
pub const QUEUED: usize = 1;

mod batch;
pub mod dir_watch;
pub mod file;
pub mod kube;
pub mod manifest;

pub use batch::{Batch, RejectKind, Rejected};
