//! deploy/configmap.yaml and deploy/Containerfile: only flags the agent
//! reads, each from the environment too; the image builds the real agent.

mod common;

use std::{net::SocketAddr, path::Path};

use lb_agent::serve::health::DEFAULT_PORT;

use common::*;

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
