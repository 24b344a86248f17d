//! The socket-level datapath with a real agent: restarts, pinned maps of
//! another shape, bad input, `service list`, health and metrics.

mod common;

use lb_tests::testbed::{Testbed, backend_ip6, service};
use serde_json::Value;

use common::socket::*;

#[test]
fn agent_killed_and_restarted_drops_no_connection() {
    let mut bed = Testbed::new(2);
    web(&mut bed, &["10.96.0.10"], &[0, 1]);
    let stop = bed.dir.0.join("stop");
    let mut lp = bed.client_proc(&["loop", "10.96.0.10:80", stop.to_str().unwrap()]);
    assert_eq!(lp.read_line().trim(), "started");
    for _ in 0..3 {
        bed.agent.kill9();
        bed.agent.start();
        // A new generation proves the restarted agent has adopted and synced.
        let g = bed.manifests.commit();
        bed.agent.wait_synced(g);
    }
    std::fs::write(&stop, "").unwrap();
    let summary: Value = serde_json::from_str(&lp.read_line()).unwrap();
    assert!(summary["ok"].as_u64().unwrap() > 0, "{summary}");
    assert_eq!(
        summary["failed"], 0,
        "connections failed across agent restarts: {summary}"
    );
    let log = bed.agent.log_text();
    assert_eq!(
        log.matches("adopted pinned link").count(),
        3 * 8,
        "each restart adopts the 8 links, never attaching new ones:\n{log}"
    );
}

#[test]
fn pinned_map_of_another_shape_is_refused_and_reset_removes_everything() {
    let mut bed = Testbed::new(1);
    web(&mut bed, &["10.96.0.10"], &[0]);
    bed.agent.kill9();
    let run = |flag: &str| {
        std::process::Command::new(lb_tests::agent_bin())
            .args([
                "run",
                &format!("--source=file:{}", bed.manifests.dir.display()),
            ])
            .arg(format!("--pin-dir={}", bed.agent.pin_dir.display()))
            .arg(format!("--cgroup={}", bed.cgroup.path.display()))
            .arg(flag)
            .arg("--health-addr=off")
            .output()
            .unwrap()
    };
    // A map whose keys changed cannot be carried (tests/tests/upgrade.rs
    // carries the ones that can).
    let affinity = bed.agent.pin_dir.join(lb_common::MAP_AFFINITY);
    let aside = bed.agent.pin_dir.join("affinity-aside");
    std::fs::rename(&affinity, &aside).unwrap();
    let made = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(&affinity)
        .args([
            "type", "lru_hash", "key", "3", "value", "8", "entries", "16", "name", "x",
        ])
        .status()
        .unwrap();
    assert!(made.success());
    let out = run("--max-ct=1000");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "agent must refuse a pinned map of another key"
    );
    assert!(
        err.contains(lb_common::MAP_AFFINITY)
            && err.contains("keys are 3 bytes")
            && err.contains("reset"),
        "message must name the map, why and the way out: {err}"
    );
    std::fs::remove_file(&affinity).unwrap();
    std::fs::rename(&aside, &affinity).unwrap();
    // The services map is, but never below what it holds (5 entries).
    let out = run("--max-services=2");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a services map too small: {err}");
    assert!(
        err.contains("LB_SERVICES_V1")
            && err.contains("holds 5 entries")
            && err.contains("--max-services"),
        "message must name the map, what it holds and the flag: {err}"
    );
    // the datapath kept serving meanwhile
    served(&bed.probe("10.96.0.10:80", "tcp", 3, "-", false));
    let out = bed.agent.cli(&["reset"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !bed.agent.pin_dir.exists(),
        "reset must remove the pin directory"
    );
    // programs detached: the ClusterIP is no longer translated (and the
    // client has no route for it).
    let r = bed.probe("10.96.0.10:80", "tcp", 1, "-", false);
    assert_eq!(r[0]["error"].as_str(), Some("unreachable"), "{}", r[0]);
    let out = std::process::Command::new("bpftool")
        .args(["cgroup", "show"])
        .arg(&bed.cgroup.path)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).trim().lines().count() <= 1,
        "programs still attached: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn bad_input_is_named_and_programmed_state_kept() {
    let mut bed = Testbed::new(2);
    web(&mut bed, &["10.96.0.10"], &[0, 1]);
    // a misspelt field in the Service: reported, the old Service kept
    let good = std::fs::read_to_string(bed.manifests.dir.join("web.yaml")).unwrap();
    let bad = good.replacen("protocol: TCP", "protocl: TCP", 1);
    assert_ne!(good, bad);
    bed.apply("web.yaml", &bad);
    let log = bed.agent.log_text();
    assert!(
        log.contains("web.yaml")
            && log.contains("Service t/web")
            && log.contains("spec.ports[0].protocl"),
        "the error must name file, object and field:\n{log}"
    );
    served(&bed.probe("10.96.0.10:80", "tcp", 5, "-", false));
    // other objects still apply beside a broken one
    let y = format!(
        "{}---\nkind: [\n",
        service("other", &["10.96.0.20"], &[TCP])
    );
    bed.apply("other.yaml", &y);
    let out = bed.agent.cli(&["service", "list", "-o", "json"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let fronts: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["frontend"].as_str())
        .collect();
    assert!(fronts.contains(&"10.96.0.10:80"), "{fronts:?}");
}

#[test]
fn service_list_shows_what_the_kernel_holds() {
    let mut bed = Testbed::new(2);
    web(&mut bed, &["10.96.0.10", "fd00:96::a"], &[0, 1]);
    let out = bed.agent.cli(&["service", "list", "-o", "json"]);
    assert!(out.status.success());
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["frontend"] == "[fd00:96::a]:53")
        .expect("v6 UDP frontend");
    assert_eq!(row["protocol"], "UDP");
    let mut bes: Vec<&str> = row["backends"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    bes.sort();
    assert_eq!(
        bes,
        [
            format!("[{}]:5353", backend_ip6(0)),
            format!("[{}]:5353", backend_ip6(1))
        ]
    );
    assert_eq!(
        list.as_array().unwrap().len(),
        4,
        "two families x two ports: {list}"
    );
    // Piped into `head`, which has its lines and is gone: the commands end
    // quietly on the closed pipe, as command-line tools do, not panicking
    // in println!.
    for args in [&["status"][..], &["service", "list", "-o", "json"]] {
        let out = bed.agent.cli_into_closed_pipe(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?} | head: {err}");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&out.status),
            Some(libc::SIGPIPE),
            "{args:?} | head ends on SIGPIPE: {:?} {err}",
            out.status
        );
    }
}

#[test]
fn health_endpoint_turns_healthy_after_the_first_sync_and_serves_metrics() {
    let mut bed = Testbed::new(1);
    web(&mut bed, &["10.96.0.10"], &[0]);
    let (code, body) = bed.agent.http_get("/healthz");
    assert_eq!(code, 200, "{body}");
    assert_eq!(bed.agent.http_get("/livez").0, 200);
    let (code, metrics) = bed.agent.http_get("/metrics");
    assert_eq!(code, 200);
    for name in [
        "lb_sync_duration_seconds_bucket",
        "lb_last_sync_timestamp_seconds",
        "lb_objects{kind=\"Service\"} 1",
        "lb_map_entries{map=\"LB_SERVICES_V1\"}",
        "lb_map_capacity{map=\"LB_CT_V1\"}",
        "lb_conntrack_entries",
        "lb_watch_restarts_total",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}:\n{metrics}");
    }
    // Prometheus text: every sample line is `name{labels} value`
    for l in metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let value = l.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "not a sample line: {l}");
    }

    // A second agent whose source is not there yet: not healthy until it syncs.
    let dir = bed.dir.0.join("late");
    let pin = lb_tests::agent::pin_path(&lb_tests::unique("late"));
    let mut late = lb_tests::agent::AgentProc::new(
        pin,
        bed.cgroup.path.clone(),
        dir.clone(),
        bed.dir.0.join("late.log"),
    );
    late.start();
    late.wait_until(
        std::time::Duration::from_secs(30),
        "the late agent serving health",
        |a| {
            a.status()
                .and_then(|s| s["health_port"].as_u64())
                .unwrap_or(0)
                != 0
        },
    );
    assert_eq!(
        late.http_get("/healthz").0,
        503,
        "not healthy before the first sync"
    );
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("GENERATION"), "1").unwrap();
    late.wait_synced(1);
    assert_eq!(late.http_get("/healthz").0, 200);
}
