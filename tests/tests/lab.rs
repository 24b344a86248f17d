//! Lab scenarios (tests/scenarios/) run through the real `lb-lab` binary,
//! one at a time, each with its expected outcome.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use common::*;
use serde_json::Value;

fn connectivity(name: &str, families: &[&str]) {
    let r = ok_run(name);
    let pods = ["x/a", "x/b", "y/c", "y/d"];
    let pairs = r
        .lines
        .iter()
        .filter(|l| pods.contains(&l["from"].as_str().unwrap_or("")))
        .count();
    assert_eq!(
        pairs,
        4 * 3 * 2 * families.len(),
        "every ordered pair, TCP and UDP, per family"
    );
    for l in r
        .lines
        .iter()
        .filter(|l| pods.contains(&l["from"].as_str().unwrap_or("")))
    {
        assert_eq!(l["ok"], true, "{l}");
        assert_eq!(l["served_by"], l["to"], "{l}");
        assert!(families.contains(&l["family"].as_str().unwrap()), "{l}");
        // the source address is the client pod's own
        let want_prefix = if l["family"] == "IPv4" {
            "10.244."
        } else {
            "fd00:244:"
        };
        assert!(
            l["client_seen"].as_str().unwrap().starts_with(want_prefix),
            "{l}"
        );
    }
    for l in select(&r, 0, "node/node-1", "y/c") {
        assert_eq!(l["ok"], true, "a node reaches another node's pods: {l}");
    }
    for l in select(&r, 0, "external", "x/a") {
        assert_eq!(
            l["error"], "unreachable",
            "external has no route to pods: {l}"
        );
    }
}

#[test]
fn all_to_all_pods_across_two_nodes_ipv4() {
    connectivity("connectivity-ipv4.yaml", &["IPv4"]);
}

#[test]
fn all_to_all_pods_across_two_nodes_ipv6() {
    connectivity("connectivity-ipv6.yaml", &["IPv6"]);
}

#[test]
fn all_to_all_pods_across_two_nodes_dual_stack() {
    connectivity("connectivity-dualstack.yaml", &["IPv4", "IPv6"]);
}

#[test]
fn cluster_ip_scaling_terminating_and_held_connections() {
    let r = ok_run("clusterip.yaml");
    let all = ["shop/web-1", "shop/web-2", "shop/web-3"];
    // step 0: every replica, on both nodes, from pods on both nodes and from a node
    for from in ["shop/client-1", "shop/client-2", "node/node-1"] {
        let lines: Vec<&Value> = select(&r, 0, from, "service/shop/web")
            .into_iter()
            .filter(|l| l["protocol"] == "TCP" && l["target"] == "10.96.0.10:80")
            .collect();
        let by = served_by(&lines);
        assert_eq!(
            by.keys().map(String::as_str).collect::<Vec<_>>(),
            all,
            "{from}: {by:?}"
        );
        let seen: BTreeSet<&str> = lines
            .iter()
            .map(|l| l["client_seen"].as_str().unwrap())
            .collect();
        let want = match from {
            "shop/client-1" => "10.244.1.11",
            "shop/client-2" => "10.244.2.12",
            _ => "10.100.0.1",
        };
        assert_eq!(
            seen,
            BTreeSet::from([want]),
            "{from}: the server sees the real client"
        );
    }
    // named targetPort: web-2 listens on 8081, the others on 8080 (served above)
    let udp: Vec<&Value> = select(&r, 0, "shop/client-1", "service/shop/web")
        .into_iter()
        .filter(|l| l["protocol"] == "UDP")
        .collect();
    assert_eq!(served_by(&udp).len(), 3, "UDP over all replicas");
    // from outside: no ClusterIP; the NodePort works
    for l in select(&r, 0, "external", "service/shop/web") {
        assert_eq!(l["error"], "unreachable", "{l}");
    }
    for l in select(&r, 0, "external", "nodeport/node-1/shop/web-np") {
        assert_eq!(l["ok"], true, "{l}");
    }
    // the held connection
    let held = &select(&r, 0, "shop/client-2", "service/shop/web")
        .into_iter()
        .filter(|l| l["protocol"] == "TCP")
        .collect::<Vec<_>>();
    let kept_by = held.last().unwrap()["served_by"].clone();
    // step 1: scaled to one ready replica; the held connection still works
    let by = served_by(&select(&r, 1, "shop/client-1", "service/shop/web"));
    assert_eq!(by.keys().collect::<Vec<_>>(), ["shop/web-1"], "{by:?}");
    let reused = select(&r, 1, "shop/client-2", "service/shop/web");
    assert_eq!(reused.len(), 1);
    assert_eq!(
        reused[0]["ok"], true,
        "held connection broke across a step: {}",
        reused[0]
    );
    assert_eq!(reused[0]["served_by"], kept_by);
    // step 2: back to three
    assert_eq!(
        served_by(&select(&r, 2, "shop/client-1", "service/shop/web")).len(),
        3
    );
    // step 3: no ready replica; the terminating one still serves
    let by = served_by(&select(&r, 3, "shop/client-1", "service/shop/web"));
    assert_eq!(by.keys().collect::<Vec<_>>(), ["shop/web-2"], "{by:?}");
    let by = served_by(&select(&r, 3, "shop/client-2", "service/shop/web"));
    assert_eq!(
        by.keys().collect::<Vec<_>>(),
        ["shop/web-2"],
        "UDP too: {by:?}"
    );
}

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
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let out = Command::new(lb_tests::agent_bin())
            .args(["status", "-o", "json"])
            .arg(format!("--pin-dir={}", pin.display()))
            .output()
            .unwrap();
        if serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|v| v["synced_generation"] == 1) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the lab never got to its probes"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
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
fn node_port_lb_and_external_ips_from_inside_the_cluster() {
    let r = ok_run("frontends-in-cluster.yaml");
    for (from, to, target) in [
        ("x/client", "loadbalancer/x/web", "10.200.0.1:80"),
        ("x/client", "externalip/x/web", "10.200.1.1:80"),
        ("x/client", "nodeport/node-1/x/web", "10.100.0.1:30080"),
        ("node/node-1", "nodeport/node-1/x/web", "10.100.0.1:30080"),
        ("node/node-1", "ip/127.0.0.1", "127.0.0.1:30080"),
    ] {
        let lines: Vec<&Value> = select(&r, 0, from, to)
            .into_iter()
            .filter(|l| l["protocol"] == "TCP")
            .collect();
        assert_eq!(lines.len(), 20, "{from} -> {to}");
        assert!(lines.iter().all(|l| l["target"] == target), "{lines:?}");
        let by = served_by(&lines);
        assert_eq!(
            by.keys().collect::<Vec<_>>(),
            ["x/web-1", "x/web-2"],
            "{from} -> {to}: all endpoints, on both nodes: {by:?}"
        );
    }
    let udp: Vec<&Value> = select(&r, 0, "node/node-1", "nodeport/node-1/x/web")
        .into_iter()
        .filter(|l| l["protocol"] == "UDP")
        .collect();
    assert_eq!(served_by(&udp).len(), 2);
}

#[test]
fn node_ports_lb_ips_and_external_ips_from_outside() {
    let dump = DumpDir::new("dump");
    let r = lab_with(&scenario("external-frontends.yaml"), Some(&dump.0));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let replica_node = |who: &str| if who == "x/web-1" { "node-1" } else { "node-2" };
    let node_ip = |node: &str, fam: &str| {
        let k = &node[5..];
        if fam == "IPv4" {
            format!("10.100.0.{k}")
        } else {
            format!("fd00:100::{k}")
        }
    };
    let cases = [
        ("nodeport/node-1/x/web", "TCP", "node-1"),
        ("nodeport/node-2/x/web", "TCP", "node-2"),
        ("nodeport/node-3/x/web", "TCP", "node-3"),
        ("nodeport/node-1/x/web", "UDP", "node-1"),
        ("nodeport/node-3/x/web", "UDP", "node-3"),
        ("loadbalancer/x/web", "TCP", "node-1"),
        ("externalip/x/web", "UDP", "node-1"),
    ];
    for (to, proto, ingress) in cases {
        for fam in ["IPv4", "IPv6"] {
            let lines: Vec<&Value> = select(&r, 0, "external", to)
                .into_iter()
                .filter(|l| l["protocol"] == proto && l["family"] == fam)
                // the LoadBalancer IP is probed twice: the first 30 go via node-1
                .take(30)
                .collect();
            assert_eq!(lines.len(), 30, "{to} {proto} {fam}");
            let by = served_by(&lines);
            assert_eq!(
                by.len(),
                3,
                "{to} {proto} {fam}: every replica, on both nodes, answers: {by:?}"
            );
            for l in &lines {
                let who = l["served_by"].as_str().unwrap();
                // A replica on the ingress node sees the client; one on
                // another node sees the ingress node (SNAT).
                let want = if replica_node(who) == ingress {
                    (if fam == "IPv4" {
                        "10.100.0.200"
                    } else {
                        "fd00:100::200"
                    })
                    .to_string()
                } else {
                    node_ip(ingress, fam)
                };
                assert_eq!(
                    l["client_seen"].as_str(),
                    Some(want.as_str()),
                    "{to} via {ingress}: {l}"
                );
            }
        }
    }
    // via node-3: the LoadBalancer IP handled by node-3 (SNAT to all replicas)
    let via3: Vec<&Value> = select(&r, 0, "external", "loadbalancer/x/web")
        .into_iter()
        .skip(60)
        .collect();
    assert_eq!(via3.len(), 60);
    for l in &via3 {
        assert_eq!(l["ok"], true, "{l}");
        let fam = l["family"].as_str().unwrap();
        assert_eq!(
            l["client_seen"].as_str(),
            Some(node_ip("node-3", fam).as_str()),
            "{l}"
        );
    }
    // The packet path did the work: the ingress nodes' conntrack holds the
    // flows from `external` to their frontends, the TC counters grew, and no
    // node holds packet-filter rules.
    for (node, frontend) in [
        ("node-1", "10.100.0.1:30080"),
        ("node-3", "[fd00:100::3]:30053"),
        ("node-3", "10.200.0.1:80"),
    ] {
        let ct = dump.json(0, node, "ct");
        let hit = ct.as_array().unwrap().iter().any(|e| {
            e["kind"] == "forward"
                && e["dst"] == frontend
                && e["src"]
                    .as_str()
                    .is_some_and(|s| s.contains("10.100.0.200") || s.contains("fd00:100::200"))
        });
        assert!(
            hit,
            "{node}'s conntrack has no forward entry to {frontend}: {ct}"
        );
        let st = dump.json(0, node, "status");
        assert!(
            st["counters"]["tc_dnat"].as_u64().unwrap() > 0,
            "{node}: {st}"
        );
        // Backends were picked through Maglev tables: one per external
        // frontend with backends (NodePorts on both families, LB IPs,
        // externalIPs, TCP and UDP).
        let tables = st["maps"]["LB_MAGLEV_V1"]["entries"].as_u64().unwrap();
        assert!(tables >= 8, "{node}: {tables} Maglev tables: {st}");
    }
    let st = dump.json(0, "node-3", "status");
    assert!(
        st["counters"]["tc_snat"].as_u64().unwrap() > 0
            && st["counters"]["tc_reverse_dnat"].as_u64().unwrap() > 0,
        "{st}"
    );
    // The flows it tracks, by state: answered ones, none left orphaned.
    let flows = &st["conntrack_flows"];
    assert!(flows["flows"].as_u64().unwrap() > 0, "{st}");
    assert!(
        flows["unanswered"].as_u64().unwrap() < flows["flows"].as_u64().unwrap(),
        "{st}"
    );
    for node in ["node-1", "node-2", "node-3"] {
        let rules = dump.rules(0, node);
        let found: Vec<&str> = rules
            .lines()
            .filter(|l| l.starts_with("-A") || l.starts_with("table") || l.starts_with("*"))
            .collect();
        assert!(
            found.is_empty(),
            "{node} holds packet-filter rules: {found:?}"
        );
        assert!(
            !rules.contains("not found"),
            "the rule listing tools must be installed (cargo xtask setup): {rules}"
        );
    }
}

#[test]
fn no_endpoints_is_refused_from_outside_and_from_pods() {
    let dump = DumpDir::new("dump");
    let r = lab_with(&scenario("no-endpoints.yaml"), Some(&dump.0));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.lines.len(), 30);
    for l in &r.lines {
        assert_eq!(l["error"], "refused", "{l}");
        let slow_ok = l["from"] == "external" && l["family"] == "IPv6" && l["protocol"] == "TCP";
        let ms = l["ms"].as_f64().unwrap();
        assert!(
            ms < 50.0 || (slow_ok && ms < 2500.0),
            "refused, not timed out: {l}"
        );
    }
    let st = dump.json(0, "node-1", "status");
    assert!(
        st["counters"]["icmp_port_unreachable_sent"]
            .as_u64()
            .unwrap()
            >= 12,
        "{st}"
    );
}

#[test]
fn external_traffic_policy_local_and_health_check_node_port() {
    let dump = DumpDir::new("dump");
    let r = lab_with(&scenario("external-local.yaml"), Some(&dump.0));
    assert_eq!(r.code, 0, "{}", r.stderr);
    // The packet path did the work: node-1 tracks the client's flows to
    // its NodePort; node-2 dropped for want of a local endpoint.
    let ct = dump.json(0, "node-1", "ct");
    assert!(
        ct.as_array().unwrap().iter().any(|e| e["kind"] == "forward"
            && e["dst"] == "10.100.0.1:30080"
            && e["src"]
                .as_str()
                .is_some_and(|s| s.starts_with("10.100.0.200:"))),
        "{ct}"
    );
    let st = dump.json(0, "node-2", "status");
    assert!(
        st["counters"]["drop_no_local_backend"].as_u64().unwrap() > 0,
        "{st}"
    );
    let only = |to: &str, proto: &str, want: &str| {
        let lines: Vec<&Value> = select(&r, 0, "external", to)
            .into_iter()
            .filter(|l| l["protocol"] == proto && l["ok"] == true)
            .collect();
        assert!(!lines.is_empty(), "{to}");
        let by = served_by(&lines);
        assert_eq!(
            by.keys().collect::<Vec<_>>(),
            [want],
            "{to} {proto}: only the probed node's replica: {by:?}"
        );
        for l in lines {
            assert_eq!(
                l["client_seen"], "10.100.0.200",
                "the client's address is kept: {l}"
            );
        }
    };
    only("nodeport/node-1/x/web", "TCP", "x/web-1");
    only("nodeport/node-3/x/web", "TCP", "x/web-3");
    only("nodeport/node-3/x/web", "UDP", "x/web-3");
    let via1: Vec<&Value> = select(&r, 0, "external", "loadbalancer/x/web")
        .into_iter()
        .take(10)
        .collect();
    assert_eq!(served_by(&via1).keys().collect::<Vec<_>>(), ["x/web-1"]);
    // a node without a local replica drops: timeout, not refused
    for l in select(&r, 0, "external", "nodeport/node-2/x/web")
        .into_iter()
        .chain(
            select(&r, 0, "external", "loadbalancer/x/web")
                .into_iter()
                .skip(10),
        )
    {
        assert_eq!(l["error"], "timeout", "{l}");
    }
    // pods still reach every replica, through any frontend
    for to in ["nodeport/node-2/x/web", "loadbalancer/x/web"] {
        let by = served_by(&select(&r, 0, "x/client", to));
        assert_eq!(by.len(), 2, "{to}: {by:?}");
    }
    let hc = |step: u64, node: &str| {
        select(&r, step, "external", &format!("healthcheck/{node}/x/web"))[0]["http_status"]
            .as_u64()
    };
    assert_eq!(hc(0, "node-1"), Some(200));
    assert_eq!(hc(0, "node-2"), Some(503));
    assert_eq!(hc(0, "node-3"), Some(200));
    // web-1 not ready: node-1 has no local endpoint left
    assert_eq!(hc(1, "node-1"), Some(503));
    for l in select(&r, 1, "external", "nodeport/node-1/x/web") {
        assert_eq!(l["error"], "timeout", "{l}");
    }
}

#[test]
fn client_ip_affinity_keeps_one_backend_per_client() {
    let dump = DumpDir::new("dump");
    let r = lab_with(&scenario("affinity.yaml"), Some(&dump.0));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let ct = dump.json(0, "node-1", "ct");
    let sticky: std::collections::BTreeSet<&str> = ct
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "forward" && e["dst"] == "10.100.0.1:30080")
        .filter_map(|e| e["to"].as_str())
        .collect();
    assert_eq!(
        sticky.len(),
        1,
        "every tracked flow of the client went to one backend: {sticky:?}"
    );
    for (from, to) in [
        ("x/client", "service/x/sticky"),
        ("external", "nodeport/node-1/x/sticky"),
    ] {
        let by = served_by(&select(&r, 0, from, to));
        assert_eq!(by.values().sum::<usize>(), 50);
        assert_eq!(
            by.len(),
            1,
            "{from} -> {to}: 50 connections, one backend: {by:?}"
        );
    }
    for (from, to) in [
        ("x/client", "service/x/plain"),
        ("external", "nodeport/node-1/x/plain"),
    ] {
        let by = served_by(&select(&r, 0, from, to));
        assert!(
            by.len() >= 2,
            "{from} -> {to}: without affinity connections spread: {by:?}"
        );
    }
}

#[test]
fn held_node_port_connection_survives_backend_changes_and_hairpin_works() {
    let dump = DumpDir::new("held");
    let r = lab_with(&scenario("nodeport-held.yaml"), Some(&dump.0));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let held = select(&r, 0, "external", "nodeport/node-2/x/web");
    assert_eq!(held.len(), 1);
    assert_eq!(held[0]["served_by"], "x/web-1", "{}", held[0]);
    for step in [1, 2] {
        let l = select(&r, step, "external", "nodeport/node-2/x/web");
        assert_eq!(
            l[0]["ok"], true,
            "step {step}: the held connection broke: {}",
            l[0]
        );
        assert_eq!(l[0]["served_by"], "x/web-1");
    }
    // hairpin: web-1 reaches its own Service and, picked as the backend, answers itself
    for to in ["nodeport/node-1/x/web", "loadbalancer/x/web"] {
        let by = served_by(&select(&r, 0, "x/web-1", to));
        assert_eq!(by.keys().collect::<Vec<_>>(), ["x/web-1"], "{to}: {by:?}");
    }
    let by = served_by(&select(&r, 1, "x/web-1", "nodeport/node-1/x/web"));
    assert_eq!(by.len(), 2, "{by:?}");
    // The held connection is node-2's conntrack flow (SNAT'd to web-1 on
    // node-1), the same entry after every change of backends.
    for step in [0, 1, 2] {
        let ct = dump.json(step, "node-2", "ct");
        let held: Vec<&Value> = ct
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "forward" && e["dst"] == "10.100.0.2:30080")
            .collect();
        assert!(
            held.iter()
                .any(|e| e["to"].as_str().unwrap_or("").starts_with("10.244.1.")),
            "step {step}: node-2 tracks the held flow to web-1: {ct}"
        );
        assert!(
            ct.as_array().unwrap().iter().any(|e| e["kind"] == "snat"),
            "step {step}: and its SNAT: {ct}"
        );
    }
}

#[test]
fn held_node_port_connections_drain_to_a_listed_backend_while_new_ones_rebalance() {
    let dump = DumpDir::new("drain");
    let r = lab_with(&scenario("nodeport-draining.yaml"), Some(&dump.0));
    assert_eq!(r.code, 0, "{}", r.stderr);
    for to in ["nodeport/node-2/x/web", "nodeport/node-1/x/web"] {
        let held = select(&r, 0, "external", to);
        assert_eq!(held[0]["served_by"], "x/web-1", "{}", held[0]);
    }
    // Terminating, not ready, its pod deleted: still listed, so both held
    // connections keep their backend, while every new connection goes to
    // web-2.
    for step in [1, 2, 3] {
        for to in ["nodeport/node-2/x/web", "nodeport/node-1/x/web"] {
            // probe order: the reuse of the held connection, then the new ones
            let lines = select(&r, step, "external", to);
            assert_eq!(lines.len(), 11, "step {step} {to}");
            assert_eq!(
                (&lines[0]["ok"], &lines[0]["served_by"]),
                (&Value::Bool(true), &Value::from("x/web-1")),
                "step {step} {to}: the held connection drains to web-1: {}",
                lines[0]
            );
            assert_eq!(
                served_by(&lines[1..]).keys().collect::<Vec<_>>(),
                ["x/web-2"],
                "step {step} {to}: new connections re-balance"
            );
        }
        // The agents kept web-1 as a draining backend, and node-2 still
        // tracks the SNAT'd flow to it.
        for node in ["node-1", "node-2"] {
            let bes = dump.json(step, node, "backends");
            assert!(
                bes.as_array().unwrap().iter().any(|b| b["address"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("10.244.1.10:")
                    && b["draining"] == true),
                "step {step} {node}: {bes}"
            );
        }
        let ct = dump.json(step, "node-2", "ct");
        assert!(
            ct.as_array().unwrap().iter().any(|e| e["kind"] == "forward"
                && e["dst"] == "10.100.0.2:30080"
                && e["to"] == "10.244.1.10:8080"),
            "step {step}: node-2 tracks the held flow to web-1: {ct}"
        );
    }
    // Gone from every slice: no backend entry left; new connections work.
    for node in ["node-1", "node-2"] {
        let bes = dump.json(4, node, "backends");
        assert!(
            !bes.to_string().contains("10.244.1.10:"),
            "step 4 {node}: {bes}"
        );
    }
    // (the held connection may break now: it is not checked)
    for to in ["nodeport/node-2/x/web", "nodeport/node-1/x/web"] {
        let lines = select(&r, 4, "external", to);
        let new = &lines[lines.len() - 10..];
        assert_eq!(
            served_by(new).keys().collect::<Vec<_>>(),
            ["x/web-2"],
            "step 4 {to}"
        );
    }
}

#[test]
fn loopback_node_ports_exist_in_the_host_namespace_only() {
    for (args, node_loopback) in [
        (vec![], true),
        (
            vec!["--nodeport-addresses", "10.100.0.0/24,fd00:100::/64"],
            false,
        ),
    ] {
        let r = lab_args(&scenario("loopback-nodeport.yaml"), None, &args);
        assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
        let only = |from: &str, to: &str, want: &str| {
            let lines = select(&r, 0, from, to);
            assert!(!lines.is_empty(), "{from} -> {to}");
            let by = served_by(&lines);
            assert_eq!(
                by.keys().collect::<Vec<_>>(),
                [want],
                "{args:?}: {from} -> {to}: {by:?}"
            );
        };
        // A pod's loopback is its own, at any port: its sidecar answers
        // (TCP and UDP, both families), never the Service.
        for to in ["ip/127.0.0.1", "ip/::1"] {
            only("x/sidecar", to, "x/sidecar");
        }
        for l in select(&r, 0, "x/plain", "ip/127.0.0.1") {
            assert_eq!(l["error"], "refused", "its own stack refuses: {l}");
        }
        only("x/sidecar", "nodeport/node-1/x/web", "x/web");
        // The node's loopback NodePorts, when --nodeport-addresses allows.
        for to in ["ip/127.0.0.1", "ip/::1"] {
            let lines = select(&r, 0, "node/node-1", to);
            assert!(!lines.is_empty());
            for l in lines {
                if node_loopback {
                    assert_eq!(l["served_by"], "x/web", "{args:?}: {l}");
                } else {
                    assert_eq!(l["ok"], false, "{args:?}: {l}");
                }
            }
        }
    }
}

#[test]
fn prefer_close_keeps_traffic_in_the_clients_zone_on_three_nodes() {
    let r = ok_run("topology.yaml");
    let only = |step: u64, from: &str, to: &str, want: &[&str]| {
        let lines = select(&r, step, from, to);
        assert!(!lines.is_empty(), "step {step} {from} -> {to}");
        let by = served_by(&lines);
        assert_eq!(
            by.keys().map(String::as_str).collect::<Vec<_>>(),
            want,
            "step {step} {from} -> {to}: {by:?}"
        );
    };
    let zone_a = &["x/web-1", "x/web-2"];
    // zone a's pods and node, and outside clients of zone a's NodePort
    only(0, "x/client-1", "service/x/close", zone_a);
    only(0, "node/node-1", "service/x/close", zone_a);
    only(0, "external", "nodeport/node-1/x/close", zone_a);
    // zone b's
    only(0, "x/client-3", "service/x/close", &["x/web-3"]);
    only(0, "node/node-3", "service/x/close", &["x/web-3"]);
    only(0, "external", "nodeport/node-3/x/close", &["x/web-3"]);
    only(0, "x/client-1", "service/x/same-node", &["x/web-1"]);
    only(0, "x/client-3", "service/x/same-node", &["x/web-3"]);
    only(
        0,
        "x/client-3",
        "service/x/anywhere",
        &["x/web-1", "x/web-2", "x/web-3"],
    );
    // zone b has no ready endpoint: node-3 uses every ready one
    only(1, "x/client-3", "service/x/close", zone_a);
    only(1, "x/client-1", "service/x/close", zone_a);
}

#[test]
fn udp_client_with_a_fixed_port_moves_on_when_its_endpoint_stops_serving() {
    let dump = DumpDir::new("stale");
    let r = lab_with(&scenario("stale-udp.yaml"), Some(&dump.0));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let by = served_by(&select(&r, 0, "external", "nodeport/node-1/x/dns"));
    assert_eq!(by.keys().collect::<Vec<_>>(), ["x/dns-1"]);
    let by = served_by(&select(&r, 1, "external", "nodeport/node-1/x/dns"));
    assert_eq!(
        by.keys().collect::<Vec<_>>(),
        ["x/dns-2"],
        "the same client port must reach the new endpoint: {by:?}"
    );
    // The packet path did it: node-1's forward entry for the client's port
    // pointed at dns-1, then at dns-2 (its old entry was a miss, not a drop).
    let forward_to = |step: u64| -> Vec<String> {
        dump.json(step, "node-1", "ct")
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| {
                e["kind"] == "forward"
                    && e["src"].as_str().unwrap_or("").ends_with(":40053")
                    && e["dst"] == "10.100.0.1:30053"
            })
            .map(|e| e["to"].as_str().unwrap().to_string())
            .collect()
    };
    let before = forward_to(0);
    let after = forward_to(1);
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(
        before[0].starts_with("10.244.1."),
        "dns-1 on node-1: {before:?}"
    );
    assert!(
        after[0].starts_with("10.244.2."),
        "dns-2 on node-2: {after:?}"
    );
}

#[test]
fn load_balancer_source_ranges_filter_the_lb_ip_not_the_node_port() {
    let dump = DumpDir::new("dump");
    let r = lab_with(&scenario("source-ranges.yaml"), Some(&dump.0));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let st = dump.json(0, "node-1", "status");
    assert!(
        st["counters"]["drop_source_range"].as_u64().unwrap() >= 2,
        "the datapath dropped them: {st}"
    );
    served_by(&select(&r, 0, "external", "loadbalancer/x/open"));
    for l in select(&r, 0, "external", "loadbalancer/x/closed") {
        assert_eq!(l["error"], "timeout", "outside the ranges: dropped: {l}");
    }
    served_by(&select(&r, 0, "external", "nodeport/node-1/x/closed"));
    for l in select(&r, 0, "external", "loadbalancer/x/pods-only") {
        assert_eq!(l["error"], "timeout", "outside the ranges: dropped: {l}");
    }
    // Pods are filtered too: by the TC programs on their interfaces.
    for l in select(&r, 0, "x/client", "loadbalancer/x/open") {
        assert_eq!(l["error"], "timeout", "a pod outside the ranges: {l}");
    }
    for from in ["x/client", "x/local-client"] {
        let lines = select(&r, 0, from, "loadbalancer/x/pods-only");
        assert_eq!(served_by(&lines).get("x/web-1"), Some(&3), "{from}");
        for l in &lines {
            assert_eq!(
                l["target"], "10.200.0.3:80",
                "the pod's connection is to the LB IP"
            );
        }
    }
    served_by(&select(&r, 0, "x/client", "nodeport/node-1/x/closed"));
    // An IPv6 range (`::/0`) says nothing about IPv4 clients: `mixed`'s
    // IPv4 LB IP admits 192.0.2.0/24 only; `v6-only` has no IPv4 range, so
    // its IPv4 LB IP is unfiltered (as kube-proxy).
    let mixed = select(&r, 0, "external", "loadbalancer/x/mixed");
    assert_eq!(mixed.len(), 2);
    for l in mixed {
        assert_eq!(l["error"], "timeout", "outside 192.0.2.0/24: dropped: {l}");
    }
    served_by(&select(&r, 0, "external", "loadbalancer/x/v6-only"));
    let by = served_by(&select(&r, 0, "x/web-1", "loadbalancer/x/pods-only"));
    assert_eq!(
        by.get("x/web-1"),
        Some(&3),
        "hairpin through the LB IP: {by:?}"
    );
    let st2 = dump.json(0, "node-2", "status");
    assert!(
        st2["counters"]["drop_source_range"].as_u64().unwrap() >= 2,
        "node-2 dropped its pod's packets to the closed LB IP: {st2}"
    );
    let ct2 = dump.json(0, "node-2", "ct");
    assert!(
        ct2.as_array()
            .unwrap()
            .iter()
            .any(|e| e.to_string().contains("10.200.0.3")),
        "node-2's conntrack holds its pod's flow to the LB IP: {ct2}"
    );
}

#[test]
fn internal_traffic_policy_local_and_local_terminating_fallback() {
    let r = ok_run("traffic-policy-local.yaml");
    let only = |step: u64, from: &str, to: &str, proto: &str, want: &[&str]| {
        let lines: Vec<&Value> = select(&r, step, from, to)
            .into_iter()
            .filter(|l| l["protocol"] == proto)
            .collect();
        assert!(!lines.is_empty(), "step {step} {from} -> {to} {proto}");
        let by = served_by(&lines);
        assert_eq!(
            by.keys().map(String::as_str).collect::<Vec<_>>(),
            want,
            "step {step} {from} -> {to} {proto}: {by:?}"
        );
    };
    // iTP Local: a node's pods and the node itself reach its own endpoint
    only(0, "x/client-1", "service/x/itp", "TCP", &["x/web-1"]);
    only(0, "x/client-1", "service/x/itp", "UDP", &["x/web-1"]);
    only(0, "node/node-1", "service/x/itp", "TCP", &["x/web-1"]);
    only(0, "node/node-2", "service/x/itp", "TCP", &["x/web-2"]);
    // none on node-3: dropped (EPERM from the socket hook), never refused
    let dropped = |step: u64, from: &str| {
        let lines = select(&r, step, from, "service/x/itp");
        assert!(!lines.is_empty(), "step {step} {from}");
        for l in lines {
            assert_eq!(l["ok"], false, "{l}");
            let e = l["error"].as_str().unwrap();
            assert!(e.contains("not permitted"), "dropped, not refused: {l}");
        }
    };
    dropped(0, "x/client-3");
    dropped(0, "node/node-3");
    // the NodePort is an external destination: every endpoint, from a pod
    // of node-3 and from outside
    only(
        0,
        "x/client-3",
        "nodeport/node-3/x/itp",
        "TCP",
        &["x/web-1", "x/web-2"],
    );
    only(
        0,
        "external",
        "nodeport/node-3/x/itp",
        "TCP",
        &["x/web-1", "x/web-2"],
    );
    only(0, "external", "nodeport/node-1/x/etp", "TCP", &["x/web-1"]);
    let hc = |step: u64| {
        select(&r, step, "external", "healthcheck/node-1/x/etp")[0]["http_status"].as_u64()
    };
    assert_eq!(hc(0), Some(200));
    // step 1: web-1 terminates, still serving: node-1 keeps using it (not
    // node-2's ready web-2) for iTP and ETP Local; its health check fails
    only(1, "x/client-1", "service/x/itp", "TCP", &["x/web-1"]);
    only(1, "node/node-1", "service/x/itp", "TCP", &["x/web-1"]);
    only(1, "external", "nodeport/node-1/x/etp", "TCP", &["x/web-1"]);
    only(1, "external", "loadbalancer/x/etp", "TCP", &["x/web-1"]);
    assert_eq!(hc(1), Some(503), "only terminating endpoints: unhealthy");
    dropped(1, "x/client-3");
}

/// Runs external-ips.yaml with `args` for the agents; `node_ip_allowed`:
/// whether they let the node-address externalIP in.
fn external_ips(args: &[&str], node_ip_allowed: bool) {
    let r = lab_args(&scenario("external-ips.yaml"), None, args);
    assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
    let by = |step: u64, from: &str, to: &str| {
        served_by(&select(&r, step, from, to))
            .into_keys()
            .collect::<Vec<_>>()
    };
    // the older Service holds the contested externalIP, from outside and
    // from pods; without it the younger one; back, the older again
    for from in ["external", "x/client"] {
        assert_eq!(
            by(0, from, "externalip/x/a-new"),
            ["x/old-1"],
            "{args:?} {from}"
        );
        assert_eq!(
            by(1, from, "externalip/x/a-new"),
            ["x/new-1"],
            "{args:?} {from}"
        );
        assert_eq!(
            by(2, from, "externalip/x/a-new"),
            ["x/old-1"],
            "{args:?} {from}"
        );
    }
    // the ClusterIP stays its Service's, whatever the other claim's age
    // and whether --external-ip-cidrs lets it in
    for from in ["x/client", "node/node-1"] {
        assert_eq!(
            by(0, from, "service/x/z-dns"),
            ["x/dns-1"],
            "{args:?} {from}"
        );
    }
    // an externalIP on node-1's own address: refused by default (no
    // listener there: RST), programmed when allowed
    let node = select(&r, 0, "external", "ip/10.100.0.1");
    assert_eq!(node.len(), 2);
    if node_ip_allowed {
        assert_eq!(by(0, "external", "ip/10.100.0.1"), ["x/thief-1"]);
    } else {
        for l in node {
            assert_eq!(l["error"], "refused", "{l}");
        }
    }
}

#[test]
fn external_ip_conflicts_go_to_the_oldest_and_node_and_cluster_ips_are_refused() {
    external_ips(&[], false);
    external_ips(
        &["--external-ip-cidrs=10.96.0.0/16,10.100.0.0/24,10.200.0.0/16"],
        true,
    );
}

#[test]
fn tc_programs_also_attach_as_clsact_filters_for_kernels_without_tcx() {
    let dump = DumpDir::new("clsact");
    let r = lab_args(
        &scenario("external-frontends.yaml"),
        Some(&dump.0),
        &["--tc-attach", "netlink"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    for l in &r.lines {
        assert_eq!(l["ok"], true, "{l}");
    }
    for node in ["node-1", "node-3"] {
        let st = dump.json(0, node, "status");
        assert!(
            st["counters"]["tc_dnat"].as_u64().unwrap() > 0,
            "{node}: {st}"
        );
        let links = st["links"].as_object().unwrap();
        assert!(
            !links.keys().any(|k| k.starts_with("tc-")),
            "{node}: no tcx link may be pinned in netlink mode: {st}"
        );
    }
}

#[test]
fn xdp_fast_path_native_and_generic() {
    for mode in ["native", "generic"] {
        let dump = DumpDir::new("xdp");
        let r = lab_args(
            &scenario("external-frontends.yaml"),
            Some(&dump.0),
            &["--xdp", mode],
        );
        assert_eq!(r.code, 0, "{mode}: {}", r.stderr);
        for l in &r.lines {
            assert_eq!(l["ok"], true, "{mode}: {l}");
        }
        // node-1 and node-2 hold replicas: established flows to them are
        // translated by XDP; everything else passed on to TC.
        for node in ["node-1", "node-2"] {
            let st = dump.json(0, node, "status");
            let c = &st["counters"];
            assert!(
                c["xdp_dnat"].as_u64().unwrap() > 0 && c["xdp_pass"].as_u64().unwrap() > 0,
                "{mode} {node}: {c}"
            );
        }
    }
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

/// (step, from, to, family, protocol, ok) of every attempt.
fn reachability(r: &Run) -> BTreeSet<(u64, String, String, String, String, bool)> {
    r.lines
        .iter()
        .map(|l| {
            (
                l["step"].as_u64().unwrap(),
                l["from"].as_str().unwrap().into(),
                l["to"].as_str().unwrap().into(),
                l["family"].as_str().unwrap().into(),
                l["protocol"].as_str().unwrap().into(),
                l["ok"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[test]
fn packet_path_scenarios_reach_the_same_in_xdp_mode() {
    for name in [
        "external-local.yaml",
        "no-endpoints.yaml",
        "affinity.yaml",
        "source-ranges.yaml",
        "stale-udp.yaml",
        "nodeport-held.yaml",
        "nodeport-draining.yaml",
    ] {
        let tc = lab(&scenario(name));
        assert_eq!(tc.code, 0, "{name}: {}", tc.stderr);
        let xdp = lab_args(&scenario(name), None, &["--xdp", "native"]);
        assert_eq!(xdp.code, 0, "{name} with XDP: {}", xdp.stderr);
        assert_eq!(
            reachability(&tc),
            reachability(&xdp),
            "{name}: XDP mode must reach exactly what TC-only mode does"
        );
    }
}

/// Path MTU discovery through a NodePort (tests/scenarios/pmtu.yaml): the
/// node's "fragmentation needed" about a client's oversized request, whose
/// quote is translated back to the NodePort, reaches the client's socket
/// (EMSGSIZE rather than a silent timeout); a request that fits is served.
#[test]
fn path_mtu_discovery_works_through_a_node_port() {
    let r = ok_run("pmtu.yaml");
    let lines = select(&r, 0, "external", "nodeport/node-1/x/web");
    assert_eq!(lines.len(), 2, "{lines:?}");
    let by_size = |ok: bool| lines.iter().find(|l| l["ok"] == ok).copied();
    let big =
        by_size(false).unwrap_or_else(|| panic!("the 1400-byte request went through: {lines:?}"));
    assert_eq!(
        big["error"], "message too long",
        "the client must learn the path MTU: {big}"
    );
    let small = by_size(true).unwrap_or_else(|| panic!("the 1200-byte request failed: {lines:?}"));
    assert_eq!(small["served_by"], "x/web", "{small}");
}
