//! The agent: source -> snapshot -> desired state -> plan -> map writer.

pub mod desired;
pub mod manifest;
pub mod plan;
pub mod snapshot;
