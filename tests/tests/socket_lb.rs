//! The socket-level datapath for real: cgroup sock_addr programs, a real
//! agent from a file source, real TCP and UDP servers in namespaces.

use std::collections::BTreeMap;

use lb_tests::testbed::{
    Testbed, backend_ip4, backend_ip6, client_ip4, client_ip6, ready, service, slice,
};
use serde_json::Value;

const TCP: (&str, u16, &str) = ("http", 80, "TCP");
const UDP: (&str, u16, &str) = ("dns", 53, "UDP");

/// Service `web` on `ips` with TCP 80 -> 8080 and UDP 53 -> 5353, served by
/// backends `idx` of each family.
fn web(bed: &mut Testbed, ips: &[&str], idx: &[usize]) -> u64 {
    let ports = [("http", 8080, "TCP"), ("dns", 5353, "UDP")];
    let mut y = service("web", ips, &[TCP, UDP]);
    if ips.iter().any(|i| !i.contains(':')) {
        y += "---\n";
        y += &slice(
            "web-v4",
            "web",
            "IPv4",
            &ports,
            &ready(idx.iter().map(|i| backend_ip4(*i))),
        );
    }
    if ips.iter().any(|i| i.contains(':')) {
        y += "---\n";
        y += &slice(
            "web-v6",
            "web",
            "IPv6",
            &ports,
            &ready(idx.iter().map(|i| backend_ip6(*i))),
        );
    }
    bed.apply("web.yaml", &y)
}

fn served(results: &[Value]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in results {
        assert_eq!(r["ok"], true, "probe failed: {r}");
        *m.entry(r["served_by"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    m
}

fn tcp_balances(ip: &str, target: &str, client: &str) {
    let mut bed = Testbed::new(3);
    web(&mut bed, &[ip], &[0, 1, 2]);
    let results = bed.probe(target, "tcp", 300, "-", false);
    for r in &results {
        assert_eq!(
            r["peer"].as_str(),
            Some(target),
            "getpeername must show the ClusterIP: {r}"
        );
        assert_eq!(
            r["client_seen"].as_str(),
            Some(client),
            "the server's accept() must see the real client: {r}"
        );
    }
    let by = served(&results);
    assert_eq!(by.len(), 3, "every backend must serve: {by:?}");
    for (b, n) in &by {
        assert!(
            (60..=141).contains(n),
            "backend {b} got {n} of 300 connections (want 20%..47%): {by:?}"
        );
    }
}

#[test]
fn tcp_cluster_ip_v4_spreads_over_backends_and_hides_them() {
    tcp_balances("10.96.0.10", "10.96.0.10:80", &client_ip4());
}

#[test]
fn tcp_cluster_ip_v6_spreads_over_backends_and_hides_them() {
    tcp_balances("fd00:96::a", "[fd00:96::a]:80", &client_ip6());
}

fn udp_replies_from_cluster_ip(ip: &str, target: &str, v6sock: bool) {
    let mut bed = Testbed::new(2);
    web(&mut bed, &[ip.trim_start_matches("::ffff:")], &[0, 1]);
    for mode in ["unconnected", "connected"] {
        let results = bed.probe(target, "udp", 20, mode, v6sock);
        served(&results);
        for r in &results {
            assert_eq!(
                r["peer"].as_str(),
                Some(target),
                "{mode} UDP reply must come from the ClusterIP: {r}"
            );
        }
    }
}

#[test]
fn udp_dns_style_exchange_v4_sees_cluster_ip() {
    udp_replies_from_cluster_ip("10.96.0.10", "10.96.0.10:53", false);
}

#[test]
fn udp_dns_style_exchange_v6_sees_cluster_ip() {
    udp_replies_from_cluster_ip("fd00:96::a", "[fd00:96::a]:53", false);
}

#[test]
fn udp_v4_mapped_on_ipv6_socket_sees_cluster_ip() {
    udp_replies_from_cluster_ip("::ffff:10.96.0.10", "[::ffff:10.96.0.10]:53", true);
}

#[test]
fn tcp_v4_mapped_on_ipv6_socket_is_translated() {
    let mut bed = Testbed::new(2);
    web(&mut bed, &["10.96.0.10"], &[0, 1]);
    let results = bed.probe("[::ffff:10.96.0.10]:80", "tcp", 20, "-", true);
    served(&results);
    for r in &results {
        assert_eq!(r["peer"].as_str(), Some("[::ffff:10.96.0.10]:80"), "{r}");
    }
}

#[test]
fn one_udp_socket_keeps_its_backend_and_sockets_spread() {
    let mut bed = Testbed::new(3);
    web(&mut bed, &["10.96.0.10"], &[0, 1, 2]);
    for _ in 0..5 {
        let by = served(&bed.probe("10.96.0.10:53", "udp", 10, "same-socket", false));
        assert_eq!(
            by.len(),
            1,
            "the datagrams of one unconnected socket went to several backends: {by:?}"
        );
    }
    let by = served(&bed.probe("10.96.0.10:53", "udp", 60, "unconnected", false));
    assert_eq!(
        by.len(),
        3,
        "60 UDP sockets should reach all 3 backends: {by:?}"
    );
}

fn assert_refused(results: &[Value], what: &str) {
    for r in results {
        assert_eq!(r["ok"], false, "{what}: {r}");
        assert_eq!(
            r["error"].as_str(),
            Some("refused"),
            "{what} must be refused, not time out: {r}"
        );
        let ms = r["ms"].as_f64().unwrap();
        assert!(ms < 50.0, "{what} took {ms} ms: refusal must be immediate");
    }
}

#[test]
fn service_without_backends_and_unknown_port_are_refused_at_once() {
    let mut bed = Testbed::new(1);
    web(&mut bed, &["10.96.0.10", "fd00:96::a"], &[]);
    for (addr, v6sock) in [
        ("10.96.0.10", false),
        ("[fd00:96::a]", false),
        ("[::ffff:10.96.0.10]", true),
    ] {
        assert_refused(
            &bed.probe(&format!("{addr}:80"), "tcp", 3, "-", v6sock),
            &format!("TCP connect to {addr}:80 with no backend"),
        );
        assert_refused(
            &bed.probe(&format!("{addr}:53"), "udp", 3, "connected", v6sock),
            &format!("UDP connect to {addr}:53 with no backend"),
        );
        assert_refused(
            &bed.probe(&format!("{addr}:53"), "udp", 3, "unconnected", v6sock),
            &format!("UDP sendto {addr}:53 with no backend"),
        );
    }
    // Backends now, but a port the Service does not have is still refused.
    web(&mut bed, &["10.96.0.10", "fd00:96::a"], &[0]);
    served(&bed.probe("10.96.0.10:80", "tcp", 2, "-", false));
    assert_refused(
        &bed.probe("10.96.0.10:81", "tcp", 2, "-", false),
        "a port the Service does not have",
    );
    assert_refused(
        &bed.probe("[fd00:96::a]:81", "tcp", 2, "-", false),
        "a port the Service does not have",
    );
    assert_refused(
        &bed.probe("10.96.0.10:54", "udp", 2, "unconnected", false),
        "a UDP port the Service does not have",
    );
}

#[test]
fn removed_backend_gets_no_new_connection_and_established_ones_live() {
    let mut bed = Testbed::new(3);
    web(&mut bed, &["10.96.0.10"], &[0, 1, 2]);
    let mut held = bed.client_proc(&["hold", "10.96.0.10:80"]);
    held.send_line("go");
    let first: Value = serde_json::from_str(&held.read_line()).unwrap();
    assert_eq!(first["ok"], true, "{first}");
    let keeper = first["served_by"].as_str().unwrap().to_string();
    let keep_idx: usize = keeper.trim_start_matches('b').parse().unwrap();
    let removed = (keep_idx + 1) % 3;
    let remaining: Vec<usize> = (0..3).filter(|i| *i != removed).collect();
    web(&mut bed, &["10.96.0.10"], &remaining); // waits for the agent's synced generation
    let by = served(&bed.probe("10.96.0.10:80", "tcp", 60, "-", false));
    assert!(
        !by.contains_key(&format!("b{removed}")),
        "removed backend b{removed} still got connections: {by:?}"
    );
    held.send_line("again");
    let again: Value = serde_json::from_str(&held.read_line()).unwrap();
    assert_eq!(again["ok"], true, "established connection broke: {again}");
    assert_eq!(again["served_by"].as_str(), Some(keeper.as_str()));
}

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
    bed.agent.extra = vec!["--max-backends=1000".into()];
    let out = std::process::Command::new(lb_tests::agent_bin())
        .args([
            "run",
            &format!("--source=file:{}", bed.manifests.dir.display()),
        ])
        .arg(format!("--pin-dir={}", bed.agent.pin_dir.display()))
        .arg(format!("--cgroup={}", bed.cgroup.path.display()))
        .arg("--max-backends=1000")
        .arg("--health-addr=off")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "agent must refuse a pinned map of another size"
    );
    assert!(
        err.contains("LB_BACKENDS_V1") && err.contains("reset"),
        "message must name the map and the way out: {err}"
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
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while late
        .status()
        .and_then(|s| s["health_port"].as_u64())
        .unwrap_or(0)
        == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the late agent never served health: {}",
            late.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
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
