//! What the deploy/ checks share: the manifests, parsed as their types,
//! and the agent's `run --help`.
#![allow(dead_code, reason = "each test binary uses a part of these helpers")]

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{ConfigMap, Container, PodSpec, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use lb_agent::source::manifest::{describe, typed};
use serde_json::Value;

pub const DS: &str = "deploy/daemonset.yaml: DaemonSet kube-system/lb-agent";
pub const CM: &str = "deploy/configmap.yaml: ConfigMap kube-system/lb-agent-config";
pub const RBAC: &str = "deploy/rbac.yaml";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("lb-userspace lies in the workspace")
        .to_path_buf()
}

pub fn deploy_dir() -> PathBuf {
    repo_root().join("deploy")
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// deploy/*.yaml except kustomization.yaml, by file name.
pub fn manifest_files() -> BTreeSet<String> {
    std::fs::read_dir(deploy_dir())
        .expect("deploy/ exists")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect()
}

#[derive(Default)]
pub struct Manifests {
    pub daemonsets: Vec<DaemonSet>,
    pub config_maps: Vec<ConfigMap>,
    pub service_accounts: Vec<ServiceAccount>,
    pub roles: Vec<ClusterRole>,
    pub bindings: Vec<ClusterRoleBinding>,
}

/// The typed object, refusing unknown fields (lb_agent::manifest's round
/// trip, as for the agent's own file source).
pub fn parse<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value, what: &str) -> T {
    typed(doc, what).unwrap_or_else(|e| panic!("{e}"))
}

pub fn manifests() -> Manifests {
    let mut m = Manifests::default();
    for name in manifest_files() {
        let text = read(&deploy_dir().join(&name));
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|e| panic!("deploy/{name}: not YAML: {e}"));
        for doc in docs.into_iter().filter(|d| !d.is_null()) {
            let what = format!("deploy/{name}: {}", describe(&doc));
            let api_version = doc["apiVersion"].as_str().unwrap_or_default();
            match (api_version, doc["kind"].as_str().unwrap_or_default()) {
                ("apps/v1", "DaemonSet") => m.daemonsets.push(parse(&doc, &what)),
                ("v1", "ConfigMap") => m.config_maps.push(parse(&doc, &what)),
                ("v1", "ServiceAccount") => m.service_accounts.push(parse(&doc, &what)),
                ("rbac.authorization.k8s.io/v1", "ClusterRole") => m.roles.push(parse(&doc, &what)),
                ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                    m.bindings.push(parse(&doc, &what))
                }
                (v, k) => panic!("{what}: unexpected kind `{k}` (apiVersion `{v}`)"),
            }
        }
    }
    assert_eq!(m.daemonsets.len(), 1, "deploy/: one DaemonSet");
    assert_eq!(m.config_maps.len(), 1, "deploy/: one ConfigMap");
    assert_eq!(m.service_accounts.len(), 1, "{RBAC}: one ServiceAccount");
    assert_eq!(m.roles.len(), 1, "{RBAC}: one ClusterRole");
    assert_eq!(m.bindings.len(), 1, "{RBAC}: one ClusterRoleBinding");
    m
}

pub fn pod_spec(ds: &DaemonSet) -> &PodSpec {
    ds.spec
        .template
        .spec
        .as_ref()
        .unwrap_or_else(|| panic!("{DS}: no spec.template.spec"))
}

pub fn agent(pod: &PodSpec) -> &Container {
    pod.containers
        .iter()
        .find(|c| c.name == "agent")
        .unwrap_or_else(|| panic!("{DS}: no container `agent`"))
}

/// `lb-agent run --help` of the binary this package builds, with an empty
/// environment so every env name shows as `[env: NAME=]`.
pub fn run_help() -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lb-agent"))
        .args(["run", "--help"])
        .env_clear()
        .output()
        .expect("running lb-agent run --help");
    assert!(out.status.success(), "lb-agent run --help failed: {out:?}");
    String::from_utf8(out.stdout).expect("UTF-8 help")
}
