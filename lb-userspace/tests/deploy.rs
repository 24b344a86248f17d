//! deploy/: the manifests parse as their Kubernetes types with no unknown
//! field, grant exactly what the agent watches, point the probes at the
//! health endpoints, feed the agent only flags it has, pass the API
//! server's mount-propagation rule, and the container file builds the real
//! agent binary.
//!
//! Nothing here talks to a cluster: the manifests have not been applied by
//! this test, only checked against the agent's own code and CLI.
//!
//! This file: unknown fields, RBAC, the kustomization; the DaemonSet in
//! deploy_daemonset.rs; the ConfigMap, the container file and the flags'
//! environment variables in deploy_config.rs; shared helpers in common/.

mod common;

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::ConfigMap;
use lb_agent::{
    source::kube::{VERBS, WATCHED},
    source::manifest::typed,
};
use serde_json::Value;

use common::*;

#[test]
fn an_unknown_field_is_refused() {
    let doc: Value = serde_saphyr::from_str(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndatta: {a: b}\n",
    )
    .unwrap();
    let e = typed::<ConfigMap>(&doc, "ConfigMap x").unwrap_err();
    assert!(e.to_string().contains("datta"), "{e}");
}

#[test]
fn the_cluster_role_grants_exactly_what_the_agent_watches() {
    let m = manifests();
    let role = &m.roles[0];
    let name = role.metadata.name.as_deref().unwrap_or_default();
    let what = format!("{RBAC}: ClusterRole {name}");
    assert!(
        role.aggregation_rule.is_none(),
        "{what}: aggregationRule would grant more than its rules"
    );
    let mut granted = BTreeSet::new();
    for (i, rule) in role.rules.iter().flatten().enumerate() {
        assert!(
            rule.non_resource_urls.is_none(),
            "{what}: rules[{i}].nonResourceURLs: the agent needs none"
        );
        assert!(
            rule.resource_names.is_none(),
            "{what}: rules[{i}].resourceNames: the agent watches whole kinds"
        );
        let groups = rule.api_groups.as_deref().unwrap_or_default();
        let resources = rule.resources.as_deref().unwrap_or_default();
        assert!(
            !groups.is_empty() && !resources.is_empty() && !rule.verbs.is_empty(),
            "{what}: rules[{i}] needs apiGroups, resources and verbs"
        );
        for g in groups {
            for r in resources {
                for v in &rule.verbs {
                    granted.insert((g.clone(), r.clone(), v.clone()));
                }
            }
        }
    }
    // "*" in any position, another verb or resource: all show up here.
    let wanted: BTreeSet<(String, String, String)> = WATCHED
        .iter()
        .flat_map(|(g, r)| {
            VERBS
                .iter()
                .map(move |v| (g.to_string(), r.to_string(), v.to_string()))
        })
        .collect();
    assert_eq!(
        granted, wanted,
        "{what}: rules must grant exactly lb_agent::source::kube::{{WATCHED x VERBS}} as (group, resource, verb)"
    );

    let sa = &m.service_accounts[0];
    let b = &m.bindings[0];
    let bwhat = format!(
        "{RBAC}: ClusterRoleBinding {}",
        b.metadata.name.as_deref().unwrap_or_default()
    );
    assert_eq!(
        (
            b.role_ref.api_group.as_deref().unwrap_or_default(),
            b.role_ref.kind.as_str(),
            b.role_ref.name.as_str()
        ),
        ("rbac.authorization.k8s.io", "ClusterRole", name),
        "{bwhat}: roleRef must name {what}"
    );
    let subjects = b.subjects.as_deref().unwrap_or_default();
    assert_eq!(subjects.len(), 1, "{bwhat}: subjects: exactly the agent's");
    let s = &subjects[0];
    assert_eq!(
        (s.kind.as_str(), Some(&s.name), s.namespace.as_ref()),
        (
            "ServiceAccount",
            sa.metadata.name.as_ref(),
            sa.metadata.namespace.as_ref()
        ),
        "{bwhat}: subjects[0] must be the ServiceAccount of {RBAC}"
    );
}

#[test]
fn the_kustomization_lists_every_manifest() {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    #[allow(dead_code)]
    struct Kustomization {
        api_version: String,
        kind: String,
        namespace: Option<String>,
        resources: Vec<String>,
        labels: Option<Value>,
        common_labels: Option<Value>,
        // `kustomize edit set image` adds this.
        images: Option<Value>,
    }
    const K: &str = "deploy/kustomization.yaml";
    let text = read(&deploy_dir().join("kustomization.yaml"));
    let k: Kustomization = serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{K}: {e}"));
    assert_eq!(
        (k.api_version.as_str(), k.kind.as_str()),
        ("kustomize.config.k8s.io/v1beta1", "Kustomization"),
        "{K}: apiVersion/kind"
    );
    for r in &k.resources {
        assert!(
            deploy_dir().join(r).is_file(),
            "{K}: resources lists {r}, which is not a file in deploy/"
        );
    }
    let listed: BTreeSet<String> = k.resources.into_iter().collect();
    for f in manifest_files() {
        assert!(listed.contains(&f), "{K}: resources lacks {f}");
    }
}
