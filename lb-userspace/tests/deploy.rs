//! deploy/: the manifests parse as their Kubernetes types with no unknown
//! field, grant exactly what the agent watches, point the probes at the
//! health endpoints, feed the agent only flags it has, and the container
//! file builds the real agent binary.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{ConfigMap, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use lb_agent::{
    health::{DEFAULT_PORT, HEALTHZ_PATH, LIVEZ_PATH},
    manifest::{describe, typed},
    source_kube::{VERBS, WATCHED},
};
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

#[derive(Default)]
struct Manifests {
    daemonsets: Vec<DaemonSet>,
    config_maps: Vec<ConfigMap>,
    service_accounts: Vec<ServiceAccount>,
    roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
}

fn parse<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value, what: &str) -> T {
    typed(doc, what).unwrap_or_else(|e| panic!("{e}"))
}

fn manifests() -> Manifests {
    let mut m = Manifests::default();
    for entry in std::fs::read_dir(deploy_dir()).expect("deploy/ exists") {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".yaml") || name == "kustomization.yaml" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|e| panic!("deploy/{name}: not YAML: {e}"));
        for doc in docs.into_iter().filter(|d| !d.is_null()) {
            let what = format!("deploy/{name}: {}", describe(&doc));
            match doc["kind"].as_str().unwrap_or_default() {
                "DaemonSet" => m.daemonsets.push(parse(&doc, &what)),
                "ConfigMap" => m.config_maps.push(parse(&doc, &what)),
                "ServiceAccount" => m.service_accounts.push(parse(&doc, &what)),
                "ClusterRole" => m.roles.push(parse(&doc, &what)),
                "ClusterRoleBinding" => m.bindings.push(parse(&doc, &what)),
                k => panic!("{what}: unexpected kind `{k}`"),
            }
        }
    }
    m
}

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
    assert_eq!(m.roles.len(), 1, "one ClusterRole");
    let mut granted = BTreeSet::new();
    for (i, rule) in m.roles[0].rules.iter().flatten().enumerate() {
        assert!(
            rule.non_resource_urls.is_none() && rule.resource_names.is_none(),
            "ClusterRole lb-agent: rules[{i}] must name resources only"
        );
        for g in rule.api_groups.iter().flatten() {
            for r in rule.resources.iter().flatten() {
                for v in &rule.verbs {
                    granted.insert((g.clone(), r.clone(), v.clone()));
                }
            }
        }
    }
    let wanted: BTreeSet<(String, String, String)> = WATCHED
        .iter()
        .flat_map(|(g, r)| {
            VERBS
                .iter()
                .map(move |v| (g.to_string(), r.to_string(), v.to_string()))
        })
        .collect();
    assert_eq!(granted, wanted, "ClusterRole lb-agent: rules");
    assert!(m.roles[0].aggregation_rule.is_none());

    let sa = &m.service_accounts[0];
    let b = &m.bindings[0];
    assert_eq!(b.role_ref.kind, "ClusterRole");
    assert_eq!(
        b.role_ref.name, "lb-agent",
        "ClusterRoleBinding: roleRef.name"
    );
    let subject = &b.subjects.as_ref().expect("subjects")[0];
    assert_eq!(subject.kind, "ServiceAccount");
    assert_eq!(Some(&subject.name), sa.metadata.name.as_ref());
    assert_eq!(subject.namespace, sa.metadata.namespace);
}

#[test]
fn the_daemonset_runs_the_agent_as_the_issue_and_the_agent_need() {
    let m = manifests();
    assert_eq!(m.daemonsets.len(), 1);
    let ds = &m.daemonsets[0];
    let pod = ds
        .spec
        .template
        .spec
        .as_ref()
        .expect("DaemonSet: spec.template.spec");
    assert_eq!(pod.host_network, Some(true), "DaemonSet: hostNetwork");
    assert_eq!(
        pod.service_account_name, m.service_accounts[0].metadata.name,
        "DaemonSet: serviceAccountName"
    );
    assert!(
        pod.tolerations
            .iter()
            .flatten()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()),
        "DaemonSet: tolerates every taint"
    );
    let c = &pod.containers[0];
    let sc = c.security_context.as_ref().expect("securityContext");
    assert_ne!(sc.privileged, Some(true), "capabilities, not privileged");
    let caps: BTreeSet<&str> = sc
        .capabilities
        .as_ref()
        .and_then(|c| c.add.as_ref())
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect();
    for cap in ["BPF", "NET_ADMIN", "SYS_ADMIN", "PERFMON"] {
        assert!(
            caps.contains(cap),
            "DaemonSet: capabilities.add lacks {cap}"
        );
    }

    // Probes: the health endpoints' real paths and port.
    for (probe, path) in [
        (&c.liveness_probe, LIVEZ_PATH),
        (&c.readiness_probe, HEALTHZ_PATH),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("httpGet probe");
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(DEFAULT_PORT as i32)
        );
    }

    // NODE_NAME from the downward API.
    let node = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_NAME")
        .expect("DaemonSet: env NODE_NAME");
    let field = node
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .expect("NODE_NAME from a fieldRef");
    assert_eq!(field.field_path, "spec.nodeName");

    // The flags: the ConfigMap, every key of which the agent reads.
    let cm = &m.config_maps[0];
    assert!(
        c.env_from
            .iter()
            .flatten()
            .any(|e| e.config_map_ref.as_ref().map(|r| &r.name) == cm.metadata.name.as_ref()),
        "DaemonSet: envFrom the ConfigMap"
    );
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_lb-agent"))
        .args(["run", "--help"])
        .output()
        .expect("lb-agent run --help");
    let help = String::from_utf8_lossy(&help.stdout);
    let data = cm.data.as_ref().expect("ConfigMap: data");
    for (k, v) in data {
        assert!(
            help.contains(&format!("[env: {k}=")),
            "ConfigMap lb-agent-config: data.{k} is no flag of `lb-agent run`"
        );
        assert!(!v.is_empty(), "ConfigMap: data.{k} is empty");
    }
    assert_eq!(data.get("LB_SOURCE").map(String::as_str), Some("kube"));

    // Volumes: bpffs and the host's cgroup v2 hierarchy where LB_CGROUP says.
    let mounts: Vec<(&str, &str)> = c
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.as_str(), m.mount_path.as_str()))
        .collect();
    let host_path = |vol: &str| {
        pod.volumes
            .iter()
            .flatten()
            .find(|v| v.name == vol)
            .and_then(|v| v.host_path.as_ref())
            .map(|h| h.path.clone())
    };
    let cgroup = data.get("LB_CGROUP").expect("ConfigMap: LB_CGROUP");
    let (cg_vol, _) = mounts
        .iter()
        .find(|(_, p)| p == cgroup)
        .unwrap_or_else(|| panic!("DaemonSet: nothing mounted at LB_CGROUP {cgroup}"));
    assert_eq!(host_path(cg_vol).as_deref(), Some("/sys/fs/cgroup"));
    let (bpf_vol, _) = mounts
        .iter()
        .find(|(_, p)| *p == "/sys/fs/bpf")
        .expect("DaemonSet: /sys/fs/bpf mounted");
    assert_eq!(host_path(bpf_vol).as_deref(), Some("/sys/fs/bpf"));
    // The agent parses the whole ConfigMap as its environment.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lb-agent"))
        .args(["run", "--help"])
        .envs(data)
        .output()
        .unwrap();
    assert!(out.status.success());
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
    }
    let text = std::fs::read_to_string(deploy_dir().join("kustomization.yaml")).unwrap();
    let k: Kustomization = serde_saphyr::from_str(&text).expect("deploy/kustomization.yaml");
    assert_eq!(k.kind, "Kustomization");
    let listed: BTreeSet<String> = k.resources.into_iter().collect();
    let present: BTreeSet<String> = std::fs::read_dir(deploy_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present, "kustomization resources vs deploy/*.yaml");
}

#[test]
fn the_container_file_builds_the_agent_binary() {
    // No container engine daemon runs here, so the image is not built: the
    // build command is checked against the real package and binary.
    let text = std::fs::read_to_string(deploy_dir().join("Containerfile")).expect("Containerfile");
    let cargo_toml =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    let package = env!("CARGO_PKG_NAME");
    assert!(
        cargo_toml.contains("name = \"lb-agent\""),
        "the binary is lb-agent"
    );
    assert!(
        text.contains(&format!(
            "cargo build --release -p {package} --bin lb-agent"
        )),
        "Containerfile: the build stage must build lb-agent from {package}"
    );
    assert!(
        text.contains("llvm-22") && text.contains("bpf-linker") && text.contains("rust-src"),
        "Containerfile: the eBPF build's toolchain (LLVM 22, bpf-linker, rust-src)"
    );
    assert!(
        text.contains("COPY --from=build /src/target/release/lb-agent /usr/local/bin/lb-agent")
    );
    let entry = text
        .lines()
        .rfind(|l| l.starts_with("ENTRYPOINT"))
        .expect("ENTRYPOINT");
    assert_eq!(entry, r#"ENTRYPOINT ["lb-agent"]"#);
}
