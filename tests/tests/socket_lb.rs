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

/// A DNS client's connected UDP socket: its backend leaving the Service
/// ends it with an error (another backend leaving does not), and the
/// socket it opens next reaches a live backend.
#[test]
fn connected_udp_socket_of_a_removed_backend_is_destroyed_and_reconnects() {
    let mut bed = Testbed::new(3);
    web(&mut bed, &["10.96.0.10"], &[0, 1, 2]);
    let mut held = bed.client_proc(&["hold-udp", "10.96.0.10:53"]);
    let mut ask = |line: &str| -> Value {
        held.send_line(line);
        serde_json::from_str(&held.read_line()).unwrap()
    };
    let first = ask("go");
    assert_eq!(first["ok"], true, "{first}");
    let keeper = first["served_by"].as_str().unwrap().to_string();
    let keep_idx: usize = keeper.trim_start_matches('b').parse().unwrap();
    let last = (keep_idx + 2) % 3;
    web(&mut bed, &["10.96.0.10"], &[keep_idx, last]);
    let again = ask("again");
    assert_eq!(
        again["ok"], true,
        "another backend leaving broke the socket: {again}"
    );
    assert_eq!(
        again["served_by"].as_str(),
        Some(keeper.as_str()),
        "{again}"
    );
    web(&mut bed, &["10.96.0.10"], &[last]);
    let after = ask("again");
    assert_eq!(
        after["ok"], false,
        "the socket still reached removed b{keep_idx}: {after}"
    );
    assert_ne!(
        after["error"], "timeout",
        "the socket must fail at once, not go silent: {after}"
    );
    let fresh = ask("reconnect");
    assert_eq!(fresh["ok"], true, "{fresh}");
    assert_eq!(
        fresh["served_by"].as_str(),
        Some(format!("b{last}").as_str()),
        "{fresh}"
    );
}

/// A quiet connected UDP socket (a DNS forwarder waiting on a slow
/// upstream) keeps seeing the ClusterIP as its replies' source while the
/// same client opens hundreds of TCP connections through the Service: its
/// reverse translation lives in the socket's own storage, which no other
/// socket's churn can evict (the old shared map is made tiny here).
#[test]
fn a_quiet_udp_socket_keeps_its_frontend_under_connect_churn() {
    let mut bed = Testbed::with_agent_args(3, &["--max-sock-rev=16"]);
    web(&mut bed, &["10.96.0.10"], &[0, 1, 2]);
    let mut held = bed.client_proc(&["hold-udp", "10.96.0.10:53"]);
    let mut ask = |line: &str| -> Value {
        held.send_line(line);
        serde_json::from_str(&held.read_line()).unwrap()
    };
    let first = ask("go");
    assert_eq!(first["from"], "10.96.0.10:53", "{first}");
    let by = served(&bed.probe("10.96.0.10:80", "tcp", 300, "-", false));
    assert_eq!(by.values().sum::<usize>(), 300);
    let again = ask("again");
    assert_eq!(again["ok"], true, "{again}");
    assert_eq!(
        again["from"], "10.96.0.10:53",
        "the reply must still come from the ClusterIP: {again}"
    );
    assert_eq!(again["served_by"], first["served_by"], "{again}");
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

/// The ClusterIP of Service `s{i}` in [`many`].
fn many_ip(i: usize) -> String {
    format!("10.96.{}.{}", 1 + i / 200, 1 + i % 200)
}

/// ClusterIP Services `s{i}` for `i` in `range` (TCP 80 -> 8080), each with
/// one ready endpoint (backend `i % backends`): two documents per Service.
fn many(range: std::ops::Range<usize>, backends: usize) -> String {
    let mut y = String::new();
    for i in range {
        let name = format!("s{i}");
        y += &service(&name, &[&many_ip(i)], &[TCP]);
        y += "---\n";
        y += &slice(
            &format!("{name}-1"),
            &name,
            "IPv4",
            &[("http", 8080, "TCP")],
            &ready([backend_ip4(i % backends)]),
        );
        y += "---\n";
    }
    y
}

fn not_programmed(st: &Value) -> Vec<String> {
    st["not_programmed"]
        .as_array()
        .unwrap_or_else(|| panic!("status has no not_programmed list: {st}"))
        .iter()
        .map(|r| r["service"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// Waits (on the agent's synced generation, never a sleep) through
/// `rounds` change sets.
fn sync_rounds(bed: &mut Testbed, rounds: usize) {
    for _ in 0..rounds {
        let g = bed.manifests.commit();
        bed.agent.wait_synced(g);
    }
}

#[test]
fn a_full_services_map_programs_what_fits_names_the_rest_once_and_a_bigger_restart_adds_it() {
    // Each Service takes 3 entries (its ClusterIP marker, the port's
    // frontend, one backend slot): 12 hold four of the six.
    let mut bed = Testbed::with_agent_args(2, &["--max-services=12"]);
    let g = bed.apply("svc.yaml", &many(0..6, 2));
    let st = bed.agent.status().unwrap();
    assert_eq!(st["synced_generation"], g, "{st}");
    assert_eq!(st["clean"], false, "{st}");
    assert_eq!(st["services_not_programmed"], 2, "{st}");
    assert_eq!(not_programmed(&st), ["t/s4", "t/s5"], "{st}");
    for r in st["not_programmed"].as_array().unwrap() {
        assert_eq!(r["map"], "LB_SERVICES_V1", "{r}");
        assert_eq!(r["needed"], 3, "{r}");
        assert_eq!(r["capacity"], 12, "{r}");
    }
    // What fits works; what does not is not half there.
    for i in 0..4 {
        served(&bed.probe(&format!("{}:80", many_ip(i)), "tcp", 2, "-", false));
    }
    let r = bed.probe(&format!("{}:80", many_ip(5)), "tcp", 1, "-", false);
    assert_eq!(r[0]["ok"], false, "{}", r[0]);
    let list: Value =
        serde_json::from_slice(&bed.agent.cli(&["service", "list", "-o", "json"]).stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 4, "{list}");
    // Named once, in words.
    let said = |bed: &Testbed, svc: &str| {
        bed.agent
            .log_text()
            .matches(&format!("Service {svc} not programmed"))
            .count()
    };
    let log = bed.agent.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("Service t/s4 not programmed"))
        .unwrap_or_else(|| panic!("t/s4 not named in the log:\n{log}"));
    for words in ["LB_SERVICES_V1", "needs 3 entries", "12", "--max-services"] {
        assert!(line.contains(words), "`{words}` missing: {line}");
    }
    assert!(!line.contains("PutService"), "a debug dump: {line}");
    // /metrics, /healthz and `status` say so.
    let (_, metrics) = bed.agent.http_get("/metrics");
    assert!(
        metrics.contains("lb_services_not_programmed 2"),
        "{metrics}"
    );
    let (code, body) = bed.agent.http_get("/healthz");
    assert_eq!(code, 200, "still serving what fits: {body}");
    assert!(body.contains("2 Services not programmed"), "{body}");
    let out = bed.agent.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("not programmed") && text.contains("t/s4") && text.contains("t/s5"),
        "{text}"
    );
    // Nothing loops: change sets come and go for a few seconds (30 and
    // more turns of the agent's loop), each waited for, and the message
    // stays one.
    let since = std::time::Instant::now();
    while since.elapsed() < std::time::Duration::from_secs(3) {
        sync_rounds(&mut bed, 1);
    }
    assert_eq!(said(&bed, "t/s4"), 1, "{}", bed.agent.log_text());
    assert_eq!(said(&bed, "t/s5"), 1, "{}", bed.agent.log_text());
    assert!(
        !bed.agent.log_text().contains("full resync"),
        "{}",
        bed.agent.log_text()
    );
    // Room freed by a later change set: the next Service gets in.
    bed.apply("svc.yaml", &many(1..6, 2));
    served(&bed.probe(&format!("{}:80", many_ip(4)), "tcp", 2, "-", false));
    let st = bed.agent.status().unwrap();
    assert_eq!(not_programmed(&st), ["t/s5"], "{st}");
    // A restart with a bigger map programs the rest; what worked never fails.
    let stops: Vec<_> = [1, 4]
        .iter()
        .map(|i| bed.dir.0.join(format!("stop{i}")))
        .collect();
    let mut loops: Vec<_> = [1, 4]
        .iter()
        .zip(&stops)
        .map(|(i, stop)| {
            let target = format!("{}:80", many_ip(*i));
            let mut lp = bed.client_proc(&["loop", &target, stop.to_str().unwrap()]);
            assert_eq!(lp.read_line().trim(), "started");
            lp
        })
        .collect();
    bed.agent.kill9();
    bed.agent.extra = vec!["--max-services=64".into()];
    bed.agent.start();
    sync_rounds(&mut bed, 1);
    served(&bed.probe(&format!("{}:80", many_ip(5)), "tcp", 2, "-", false));
    let st = bed.agent.status().unwrap();
    assert_eq!(st["clean"], true, "{st}");
    assert_eq!(st["services_not_programmed"], 0, "{st}");
    assert_eq!(st["maps"]["LB_SERVICES_V1"]["max_entries"], 64, "{st}");
    for stop in &stops {
        std::fs::write(stop, "").unwrap();
    }
    for lp in &mut loops {
        let summary: Value = serde_json::from_str(&lp.read_line()).unwrap();
        assert!(summary["ok"].as_u64().unwrap() > 0, "{summary}");
        assert_eq!(summary["failed"], 0, "connections failed: {summary}");
    }
    let log = bed.agent.log_text();
    assert!(
        log.contains("LB_SERVICES_V1") && log.contains("from 12 to 64 entries"),
        "the resize is logged:\n{log}"
    );
}

#[test]
fn a_manifest_of_5000_documents_applies() {
    let mut bed = Testbed::new(2);
    let g = bed.apply("big.yaml", &many(0..2500, 2));
    let st = bed.agent.status().unwrap();
    assert_eq!(st["synced_generation"], g, "{st}");
    assert_eq!(st["clean"], true, "{st}");
    assert_eq!(st["rejected_count"], 0, "{st}");
    let (_, metrics) = bed.agent.http_get("/metrics");
    assert!(
        metrics.contains("lb_objects{kind=\"Service\"} 2500")
            && metrics.contains("lb_objects{kind=\"EndpointSlice\"} 2500"),
        "{metrics}"
    );
    let list: Value =
        serde_json::from_slice(&bed.agent.cli(&["service", "list", "-o", "json"]).stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2500);
    served(&bed.probe(&format!("{}:80", many_ip(2499)), "tcp", 2, "-", false));
}

#[test]
fn rejected_documents_are_listed_in_status_and_the_generation_is_not_clean() {
    let mut bed = Testbed::new(1);
    let good = format!(
        "{}---\n{}",
        service("good", &["10.96.0.10"], &[TCP]),
        slice(
            "good-1",
            "good",
            "IPv4",
            &[("http", 8080, "TCP")],
            &ready([backend_ip4(0)])
        )
    );
    let broken = "---\napiVersion: v1\nkind: Service\nmetadata: {name: torn, namespace: t\n";
    let invalid = format!("---\n{}", service("bad", &["10.96.0.300"], &[TCP]));
    let g = bed.apply("mixed.yaml", &format!("{good}{broken}{invalid}"));
    let st = bed.agent.status().unwrap();
    assert_eq!(
        st["synced_generation"], g,
        "applied, with what was left out: {st}"
    );
    assert_eq!(st["clean"], false, "{st}");
    assert_eq!(st["rejected_count"], 2, "{st}");
    let rejected = st["rejected"].as_array().unwrap();
    for r in rejected {
        assert!(
            r["file"]
                .as_str()
                .is_some_and(|f| f.ends_with("mixed.yaml")),
            "{r}"
        );
        assert!(!r["reason"].as_str().unwrap_or_default().is_empty(), "{r}");
    }
    assert!(
        rejected.iter().any(|r| r["object"] == "Service t/bad"
            && r["reason"].as_str().unwrap().contains("clusterIP")),
        "{st}"
    );
    assert!(
        rejected.iter().any(|r| r["object"]
            .as_str()
            .is_some_and(|o| o.contains("document 3 (line 20)"))),
        "the broken document is named by its place: {st}"
    );
    served(&bed.probe("10.96.0.10:80", "tcp", 2, "-", false));
    let out = bed.agent.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("rejected") && text.contains("Service t/bad"),
        "{text}"
    );
    // Another change set that leaves the file alone: still not clean.
    bed.apply("other.yaml", &service("other", &["10.96.0.20"], &[TCP]));
    let st = bed.agent.status().unwrap();
    assert_eq!(
        (st["clean"].clone(), st["rejected_count"].clone()),
        (Value::Bool(false), 2.into()),
        "{st}"
    );
    // Fixed: clean again.
    bed.apply("mixed.yaml", &good);
    let st = bed.agent.status().unwrap();
    assert_eq!(st["clean"], true, "{st}");
    assert_eq!(st["rejected_count"], 0, "{st}");
    assert_eq!(st["rejected"], Value::Array(vec![]), "{st}");
}
