//! Lab scenarios: pod-to-pod connectivity and a ClusterIP that scales,
//! terminates endpoints and keeps held connections.

mod common;

use std::collections::BTreeSet;

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
