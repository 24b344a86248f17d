//! deploy/: the manifests parse as their Kubernetes types with no unknown
//! field, grant exactly what the agent watches, point the probes at the
//! health endpoints, feed the agent only flags it has, pass the API
//! server's mount-propagation rule, and the container file builds the real
//! agent binary.
//!
//! Nothing here talks to a cluster: the manifests have not been applied by
//! this test, only checked against the agent's own code and CLI.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{ConfigMap, Container, PodSpec, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use lb_agent::{
    serve::health::{DEFAULT_PORT, HEALTHZ_PATH, LIVEZ_PATH},
    source::kube::{VERBS, WATCHED},
    source::manifest::{describe, typed},
};
use serde_json::Value;

const DS: &str = "deploy/daemonset.yaml: DaemonSet kube-system/lb-agent";
const CM: &str = "deploy/configmap.yaml: ConfigMap kube-system/lb-agent-config";
const RBAC: &str = "deploy/rbac.yaml";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("lb-userspace lies in the workspace")
        .to_path_buf()
}

fn deploy_dir() -> PathBuf {
    repo_root().join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// deploy/*.yaml except kustomization.yaml, by file name.
fn manifest_files() -> BTreeSet<String> {
    std::fs::read_dir(deploy_dir())
        .expect("deploy/ exists")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect()
}

#[derive(Default)]
struct Manifests {
    daemonsets: Vec<DaemonSet>,
    config_maps: Vec<ConfigMap>,
    service_accounts: Vec<ServiceAccount>,
    roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
}

/// The typed object, refusing unknown fields (lb_agent::manifest's round
/// trip, as for the agent's own file source).
fn parse<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value, what: &str) -> T {
    typed(doc, what).unwrap_or_else(|e| panic!("{e}"))
}

fn manifests() -> Manifests {
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

fn pod_spec(ds: &DaemonSet) -> &PodSpec {
    ds.spec
        .template
        .spec
        .as_ref()
        .unwrap_or_else(|| panic!("{DS}: no spec.template.spec"))
}

fn agent(pod: &PodSpec) -> &Container {
    pod.containers
        .iter()
        .find(|c| c.name == "agent")
        .unwrap_or_else(|| panic!("{DS}: no container `agent`"))
}

/// `lb-agent run --help` of the binary this package builds, with an empty
/// environment so every env name shows as `[env: NAME=]`.
fn run_help() -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lb-agent"))
        .args(["run", "--help"])
        .env_clear()
        .output()
        .expect("running lb-agent run --help");
    assert!(out.status.success(), "lb-agent run --help failed: {out:?}");
    String::from_utf8(out.stdout).expect("UTF-8 help")
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
fn the_daemonset_runs_the_agent_where_and_how_it_needs() {
    let m = manifests();
    let pod = pod_spec(&m.daemonsets[0]);
    let c = agent(pod);

    assert_eq!(pod.host_network, Some(true), "{DS}: hostNetwork");
    assert_eq!(
        pod.host_pid,
        Some(true),
        "{DS}: hostPID (the UDP socket pass finds pods' network namespaces by their processes)"
    );
    assert_eq!(
        pod.dns_policy.as_deref(),
        Some("ClusterFirstWithHostNet"),
        "{DS}: dnsPolicy"
    );
    assert_eq!(
        pod.service_account_name, m.service_accounts[0].metadata.name,
        "{DS}: serviceAccountName must be the ServiceAccount of {RBAC}"
    );
    assert!(
        pod.tolerations
            .iter()
            .flatten()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()),
        "{DS}: tolerations must tolerate every taint (operator: Exists, no key)"
    );
    assert_eq!(
        c.command.as_deref(),
        Some(&["lb-agent".to_string(), "run".to_string()][..]),
        "{DS}: container agent: command"
    );

    // Capabilities, not privileged; exactly the justified list.
    let sc = c
        .security_context
        .as_ref()
        .unwrap_or_else(|| panic!("{DS}: container agent: no securityContext"));
    assert_ne!(
        sc.privileged,
        Some(true),
        "{DS}: container agent: securityContext.privileged: use capabilities"
    );
    let caps = sc.capabilities.as_ref();
    let list = |l: Option<&Vec<String>>| -> BTreeSet<String> {
        l.into_iter().flatten().cloned().collect()
    };
    assert_eq!(
        list(caps.and_then(|c| c.drop.as_ref())),
        BTreeSet::from(["ALL".to_string()]),
        "{DS}: container agent: capabilities.drop"
    );
    assert_eq!(
        list(caps.and_then(|c| c.add.as_ref())),
        BTreeSet::from(
            ["BPF", "NET_ADMIN", "SYS_ADMIN", "PERFMON", "SYS_PTRACE"].map(String::from)
        ),
        "{DS}: container agent: capabilities.add (each one is justified in the file; change both)"
    );

    // Probes: the health endpoints' real paths and port.
    for (name, probe, path) in [
        ("livenessProbe", &c.liveness_probe, LIVEZ_PATH),
        ("readinessProbe", &c.readiness_probe, HEALTHZ_PATH),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("{DS}: container agent: {name}.httpGet missing"));
        assert_eq!(
            get.path.as_deref(),
            Some(path),
            "{DS}: container agent: {name}.httpGet.path"
        );
        assert_eq!(
            get.port,
            IntOrString::Int(DEFAULT_PORT.into()),
            "{DS}: container agent: {name}.httpGet.port must be lb_agent::serve::health::DEFAULT_PORT"
        );
    }

    // NODE_NAME from the downward API.
    let node = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_NAME")
        .unwrap_or_else(|| panic!("{DS}: container agent: env NODE_NAME missing"));
    assert_eq!(
        node.value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("spec.nodeName"),
        "{DS}: container agent: env NODE_NAME must come from fieldRef spec.nodeName"
    );

    let requests = c.resources.as_ref().and_then(|r| r.requests.as_ref());
    assert!(
        requests.is_some_and(|r| r.contains_key("cpu") && r.contains_key("memory")),
        "{DS}: container agent: resources.requests cpu and memory"
    );
    assert!(
        !c.resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .is_some_and(|l| l.contains_key("cpu")),
        "{DS}: container agent: no CPU limit (throttling would stall the sync loop)"
    );
}

#[test]
fn mounts_give_the_agent_the_hosts_bpffs_and_cgroup_v2() {
    let m = manifests();
    let pod = pod_spec(&m.daemonsets[0]);
    let c = agent(pod);
    let data = m.config_maps[0].data.clone().unwrap_or_default();

    let host_path = |vol: &str| {
        pod.volumes
            .iter()
            .flatten()
            .find(|v| v.name == vol)
            .unwrap_or_else(|| panic!("{DS}: volume `{vol}` is mounted but not declared"))
            .host_path
            .as_ref()
            .map(|h| h.path.clone())
    };
    let mount_at = |path: &str| {
        c.volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == path)
            .unwrap_or_else(|| panic!("{DS}: container agent: nothing mounted at {path}"))
    };

    let cgroup = data
        .get("LB_CGROUP")
        .unwrap_or_else(|| panic!("{CM}: data.LB_CGROUP missing"));
    let cg = mount_at(cgroup);
    assert_eq!(
        host_path(&cg.name).as_deref(),
        Some("/sys/fs/cgroup"),
        "{DS}: volume `{}` (mounted at LB_CGROUP {cgroup}) must be the host's /sys/fs/cgroup",
        cg.name
    );

    let bpf = mount_at("/sys/fs/bpf");
    assert_eq!(
        host_path(&bpf.name).as_deref(),
        Some("/sys/fs/bpf"),
        "{DS}: volume `{}` (mounted at /sys/fs/bpf) must be the host's /sys/fs/bpf",
        bpf.name
    );
    assert_eq!(
        bpf.mount_propagation.as_deref(),
        Some("HostToContainer"),
        "{DS}: container agent: the /sys/fs/bpf mount's mountPropagation"
    );

    // Pins outlive the agent only on the host's bpffs: an init container
    // mounts one where the host has none, and Bidirectional carries it out.
    let init = pod
        .init_containers
        .iter()
        .flatten()
        .find(|i| {
            i.volume_mounts.iter().flatten().any(|m| {
                m.name == bpf.name && m.mount_propagation.as_deref() == Some("Bidirectional")
            })
        })
        .unwrap_or_else(|| {
            panic!(
                "{DS}: no init container mounts volume `{}` Bidirectional to mount bpffs on the host",
                bpf.name
            )
        });
    assert!(
        init.command
            .iter()
            .flatten()
            .any(|a| a.contains("mount -t bpf bpf /sys/fs/bpf")),
        "{DS}: init container {}: command must mount bpffs at /sys/fs/bpf",
        init.name
    );
    assert_eq!(
        init.image, c.image,
        "{DS}: init container {}: image must be the agent's (one name to change)",
        init.name
    );
}

/// The API server refuses Bidirectional propagation outside privileged
/// containers ("Bidirectional mount propagation is available only to
/// privileged containers"), and only the bpffs mounter may be privileged.
#[test]
fn only_the_bpffs_mounter_is_privileged() {
    let m = manifests();
    let pod = pod_spec(&m.daemonsets[0]);
    let inits = pod.init_containers.iter().flatten().map(|c| (c, true));
    for (c, is_init) in pod.containers.iter().map(|c| (c, false)).chain(inits) {
        let privileged = c
            .security_context
            .as_ref()
            .and_then(|s| s.privileged)
            .unwrap_or(false);
        for vm in c.volume_mounts.iter().flatten() {
            assert!(
                privileged || vm.mount_propagation.as_deref() != Some("Bidirectional"),
                "{DS}: container {}: volumeMounts {}: Bidirectional needs a privileged container (the API server refuses it)",
                c.name,
                vm.name
            );
        }
        if privileged {
            let mounts_bpffs = c
                .command
                .iter()
                .flatten()
                .any(|a| a.contains("mount -t bpf"));
            assert!(
                is_init && mounts_bpffs,
                "{DS}: container {}: securityContext.privileged: only the one-shot bpffs init container may be",
                c.name
            );
        }
    }
}

#[test]
fn the_config_map_holds_only_flags_the_agent_reads() {
    let m = manifests();
    let pod = pod_spec(&m.daemonsets[0]);
    let c = agent(pod);
    let cm = &m.config_maps[0];
    assert!(
        c.env_from
            .iter()
            .flatten()
            .any(|e| { e.config_map_ref.as_ref().map(|r| &r.name) == cm.metadata.name.as_ref() }),
        "{DS}: container agent: envFrom must name {CM}"
    );

    let help = run_help();
    let data = cm.data.as_ref().unwrap_or_else(|| panic!("{CM}: no data"));
    for (k, v) in data {
        let line = help
            .lines()
            .find(|l| l.contains(&format!("[env: {k}=]")))
            .unwrap_or_else(|| panic!("{CM}: data.{k} is no env var of `lb-agent run`"));
        assert!(!v.is_empty(), "{CM}: data.{k} is empty (leave the key out)");
        if let Some(values) = line
            .split("[possible values: ")
            .nth(1)
            .and_then(|s| s.split(']').next())
        {
            assert!(
                values.split(", ").any(|p| p == v),
                "{CM}: data.{k}: `{v}` is not one of {values}"
            );
        }
    }
    for e in c.env.iter().flatten() {
        assert!(
            help.contains(&format!("[env: {}=]", e.name)),
            "{DS}: container agent: env {} is no env var of `lb-agent run`",
            e.name
        );
    }

    assert_eq!(
        data.get("LB_SOURCE").map(String::as_str),
        Some("kube"),
        "{CM}: data.LB_SOURCE"
    );
    let health: SocketAddr = data
        .get("LB_HEALTH_ADDR")
        .unwrap_or_else(|| panic!("{CM}: data.LB_HEALTH_ADDR missing"))
        .parse()
        .unwrap_or_else(|e| panic!("{CM}: data.LB_HEALTH_ADDR: {e}"));
    assert_eq!(
        health.port(),
        DEFAULT_PORT,
        "{CM}: data.LB_HEALTH_ADDR: the probes of {DS} use port {DEFAULT_PORT}"
    );
    assert!(
        health.ip().is_unspecified(),
        "{CM}: data.LB_HEALTH_ADDR: the kubelet probes the node's address"
    );
    if let Some(size) = data.get("LB_MAGLEV_TABLE_SIZE") {
        let n: usize = size
            .parse()
            .unwrap_or_else(|e| panic!("{CM}: data.LB_MAGLEV_TABLE_SIZE: {e}"));
        assert!(
            n == 0 || lb_agent::compute::maglev::is_prime(n),
            "{CM}: data.LB_MAGLEV_TABLE_SIZE: {n} is not prime"
        );
    }
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

#[test]
fn the_container_file_builds_the_agent_binary() {
    // No container engine daemon runs on the development machines, so the
    // image is not built here: the build command is checked against the real
    // package and binary, and the linker install against `cargo xtask setup`.
    const F: &str = "deploy/Containerfile";
    let text = read(&deploy_dir().join("Containerfile"));
    let lines: Vec<&str> = text.lines().collect();

    // The package and its [[bin]] as Cargo.toml declares them.
    let package = env!("CARGO_PKG_NAME");
    let cargo_toml = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"));
    let bin = cargo_toml
        .split("[[bin]]")
        .nth(1)
        .and_then(|s| s.lines().find_map(|l| l.trim().strip_prefix("name = ")))
        .map(|n| n.trim_matches('"').to_string())
        .expect("lb-userspace/Cargo.toml: [[bin]] name");
    let built = Path::new(env!("CARGO_BIN_EXE_lb-agent"));
    assert_eq!(
        built.file_name().and_then(|n| n.to_str()),
        Some(bin.as_str()),
        "lb-userspace/Cargo.toml: [[bin]] name vs the binary cargo built"
    );

    let froms: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with("FROM "))
        .collect();
    assert!(
        froms.len() >= 2,
        "{F}: a build stage and a final stage (FROM lines: {froms:?})"
    );
    let (build, last) = (
        &lines[froms[0]..froms[froms.len() - 1]],
        &lines[froms[froms.len() - 1]..],
    );
    assert!(
        lines[froms[0]].ends_with(" AS build"),
        "{F}: the first stage is `AS build`"
    );
    let build_cmd = format!("RUN cargo build --release -p {package} --bin {bin}");
    assert!(
        build.contains(&build_cmd.as_str()),
        "{F}: the build stage must `{build_cmd}`"
    );

    // The eBPF build's toolchain, installed as xtask/src/setup.rs does.
    let linker =
        "cargo install bpf-linker --version ^0.13 --no-default-features --features llvm-22";
    assert!(
        read(&repo_root().join("xtask/src/setup.rs")).contains(linker),
        "xtask/src/setup.rs no longer runs `{linker}`: update {F} and this test with it"
    );
    let build_text = build.join("\n");
    assert!(
        build_text.contains(&format!("PATH=/usr/lib/llvm-22/bin:$PATH {linker}")),
        "{F}: the build stage must run `{linker}` with LLVM 22's bin on PATH"
    );
    for pkg in ["llvm-22-dev", "libpolly-22-dev"] {
        assert!(
            build_text.contains(pkg),
            "{F}: the build stage must install {pkg}"
        );
    }
    assert!(
        build_text.contains("--component rust-src") && build_text.contains("nightly"),
        "{F}: the build stage must install nightly with rust-src"
    );

    let copy = format!("COPY --from=build /src/target/release/{bin} /usr/local/bin/{bin}");
    assert!(
        last.contains(&copy.as_str()),
        "{F}: the final stage must `{copy}`"
    );
    let entry = last
        .iter()
        .rfind(|l| l.starts_with("ENTRYPOINT"))
        .unwrap_or_else(|| panic!("{F}: the final stage has no ENTRYPOINT"));
    assert_eq!(
        *entry,
        format!(r#"ENTRYPOINT ["{bin}"]"#),
        "{F}: the final stage's ENTRYPOINT"
    );

    let ignore = read(&deploy_dir().join("Containerfile.dockerignore"));
    assert!(
        ignore.lines().any(|l| l.trim() == "target"),
        "deploy/Containerfile.dockerignore: must leave target/ out of the build context"
    );
}

#[test]
fn every_run_flag_can_come_from_the_environment() {
    let help = run_help();
    // clap prints each option's help, then its `[env: NAME=]`, before the
    // next option starts.
    let mut missing = Vec::new();
    let mut current: Option<String> = None;
    for line in help.lines() {
        let t = line.trim_start();
        if t.starts_with("--") || (t.starts_with('-') && t.contains(", --")) {
            if let Some(flag) = current.take() {
                missing.push(flag);
            }
            let flag = t
                .split([' ', ',', '='])
                .find(|w| w.starts_with("--"))
                .unwrap();
            if !["--help", "--version"].contains(&flag) {
                current = Some(flag.to_string());
            }
        }
        if line.contains("[env: ") {
            current = None;
        }
    }
    missing.extend(current);
    assert!(
        missing.is_empty(),
        "flags without an environment variable: {missing:?}"
    );
}
