//! deploy/daemonset.yaml: where and how the agent runs, its mounts (the
//! host's bpffs and cgroup v2), the one privileged container.

mod common;

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use lb_agent::serve::health::{DEFAULT_PORT, HEALTHZ_PATH, LIVEZ_PATH};

use common::*;

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
