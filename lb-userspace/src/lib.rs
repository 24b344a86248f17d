//! The agent. Its folders follow the data flow:
//!
//! ```text
//! source/    kube watchers or YAML files -> change sets
//! model/     the cluster snapshot: plain structs from k8s-openapi objects
//! compute/   desired state per Service and per policy endpoint (pure), the plan
//!            that diffs it against a mirror of the maps, the reconciler
//! datapath/  the only module that imports aya: load, pins, links, map writer
//! serve/     /healthz, /metrics and the healthCheckNodePorts
//! cli/       the inspection subcommands
//! agent/     `lb-agent run`: wires the stages together
//! ```

pub mod agent;
pub mod backoff;
pub mod cli;
pub mod compute;
pub mod datapath;
pub mod model;
pub mod serve;
pub mod source;
