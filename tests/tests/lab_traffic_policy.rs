//! Lab scenarios: external and internal traffic policies, health checks,
//! client IP affinity, topology (PreferClose).

mod common;

use common::*;
use serde_json::Value;

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
