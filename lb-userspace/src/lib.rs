//! The agent: source -> snapshot -> desired state -> plan -> map writer.

pub mod agent;
pub mod cidr;
pub mod conntrack_gc;
pub mod desired;
pub mod health;
pub mod health_check;
pub mod host;
pub mod inspect;
pub mod kernel;
pub mod maglev;
pub mod manifest;
pub mod plan;
pub mod reconcile;
pub mod snapshot;
pub mod source_file;
pub mod source_kube;
