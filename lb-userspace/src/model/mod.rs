//! The cluster as the agent needs it, indexed for cheap change lookups.

pub mod cidr;
pub mod policy;
pub mod snapshot;
