//! The Kubernetes source: one watcher per kind the agent reads, turned into
//! the same change sets as the file source.

/// What the agent watches, as (API group, resource): the ClusterRole in
/// deploy/ grants get/list/watch on exactly these.
pub const WATCHED: &[(&str, &str)] = &[
    ("", "services"),
    ("discovery.k8s.io", "endpointslices"),
    ("", "nodes"),
    ("", "pods"),
    ("", "namespaces"),
    ("networking.k8s.io", "networkpolicies"),
];

/// The verbs a watcher needs.
pub const VERBS: &[&str] = &["get", "list", "watch"];
