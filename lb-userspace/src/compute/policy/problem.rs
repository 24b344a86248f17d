//! What the NetworkPolicy stage could not do, by kind: each fails closed
//! (a broken policy isolates its namespace, an endpoint that does not fit
//! allows nothing) and is logged as a sentence and counted by kind.

use crate::model::{policy::BrokenPolicy, snapshot::ObjRef};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyProblem {
    #[error(transparent)]
    Broken(#[from] BrokenPolicy),
    #[error(
        "{left_out} pod addresses do not fit the ipcache (capacity {capacity}): policies see them as world"
    )]
    IpcacheFull { left_out: usize, capacity: usize },
    #[error("more than {max} local pods: pod {pod} gets no endpoint id")]
    NoEndpointId { pod: ObjRef, max: u32 },
    #[error(
        "pod {pod}: its {entries} policy entries and {cidrs} CIDR entries do not fit (capacity {entries_capacity} and {cidrs_capacity}, {entries_used} and {cidrs_used} in use by other pods); it is isolated both ways and allows nothing until they fit"
    )]
    EntriesDoNotFit {
        pod: ObjRef,
        entries: usize,
        cidrs: usize,
        entries_capacity: usize,
        cidrs_capacity: usize,
        entries_used: usize,
        cidrs_used: usize,
    },
}

impl PolicyProblem {
    /// The `kind` label of `lb_sync_problems_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Broken(_) => "policy_broken",
            Self::IpcacheFull { .. } => "policy_ipcache_full",
            Self::NoEndpointId { .. } => "policy_no_endpoint_id",
            Self::EntriesDoNotFit { .. } => "policy_entries_do_not_fit",
        }
    }
}
