//! Where the cluster comes from: Kubernetes watchers or a directory of
//! YAML files, both producing the same change sets.

pub mod file;
pub mod kube;
pub mod manifest;
