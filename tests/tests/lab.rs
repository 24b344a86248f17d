//! Lab scenarios (tests/scenarios/) run through the real `lb-lab` binary,
//! one at a time, each with its expected outcome.
//! This file: the lab itself (invalid scenarios, repeatability, teardown,
//! refusals); the scenarios sit in lab_*.rs by concern.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::expect::reachability;
use common::*;
use serde_json::Value;

#[test]
fn malformed_scenarios_exit_2_naming_the_field_and_create_nothing() {
    for (file, needle) in [
        ("unknown-field.yaml", "labls"),
        ("bad-reference.yaml", "x/nobody"),
        ("duplicate-pod.yaml", "pods[1]"),
        ("invalid-object.yaml", "Service x/web"),
        ("misspelt-k8s-field.yaml", "spec.ports[0].targetport"),
    ] {
        let r = lab(&scenario("invalid").join(file));
        assert_eq!(r.code, 2, "{file}: exit {} ({})", r.code, r.stderr);
        assert!(
            r.stderr.contains(needle),
            "{file}: the message must name `{needle}`: {}",
            r.stderr
        );
        assert!(r.lines.is_empty(), "{file}: no probe may run");
    }
}

#[test]
fn same_scenario_twice_gives_the_same_reachability() {
    let a = ok_run("connectivity-dualstack.yaml");
    let b = ok_run("connectivity-dualstack.yaml");
    assert_eq!(reachability(&a), reachability(&b));
    assert_ne!(a.pid, b.pid);
}

#[test]
fn interrupted_run_tears_everything_down() {
    lb_tests::require_kernel();
    let _one = LAB.lock().unwrap_or_else(|e| e.into_inner());
    let child = Command::new(env!("CARGO_BIN_EXE_lb-lab"))
        .arg(scenario("slow.yaml"))
        .env("LB_AGENT_BIN", lb_tests::agent_bin())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("lb-lab");
    let pid = child.id();
    // Wait until the run is probing: its agent has synced generation 1.
    let pin = PathBuf::from(format!("/sys/fs/bpf/lbl{pid}-n1"));
    lb_tests::wait_until(
        std::time::Duration::from_secs(60),
        "the lab getting to its probes",
        || {
            let out = Command::new(lb_tests::agent_bin())
                .args(["status", "-o", "json"])
                .arg(format!("--pin-dir={}", pin.display()))
                .output()
                .unwrap();
            serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|v| v["synced_generation"] == 1)
        },
    );
    let sent = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -INT {pid}");
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_nothing_left(pid);
}

#[test]
fn lab_refuses_when_external_would_inherit_socket_programs() {
    lb_tests::require_kernel();
    let _one = LAB.lock().unwrap_or_else(|e| e.into_inner());
    // A parent cgroup of our own with the socket programs attached, standing
    // in for programs at the hierarchy's root.
    let parent = lb_tests::spawn::Cgroup::new(&lb_tests::unique("parent"));
    let src = DumpDir::new("src");
    let mut agent = lb_tests::agent::AgentProc::new(
        lb_tests::agent::pin_path(&lb_tests::unique("pp")),
        parent.path.clone(),
        src.0.clone(),
        src.0.join("agent.log"),
    );
    std::fs::write(src.0.join("GENERATION"), "1").unwrap();
    agent.start();
    agent.wait_synced(1);
    let out = Command::new(env!("CARGO_BIN_EXE_lb-lab"))
        .arg(scenario("connectivity-ipv4.yaml"))
        .env("LB_AGENT_BIN", lb_tests::agent_bin())
        .env("LB_LAB_CGROUP_PARENT", &parent.path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("external") && err.contains("connect"),
        "the refusal names the programs: {err}"
    );
    assert!(out.stdout.is_empty());
    let left: Vec<_> = std::fs::read_dir(&parent.path)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "the refused run left cgroups: {left:?}");
}
