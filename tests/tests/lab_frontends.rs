//! Lab scenarios: NodePorts, LoadBalancer IPs and externalIPs from inside
//! and outside the cluster, loopback NodePorts, source ranges, refusals,
//! path MTU discovery.

mod common;

use common::*;
use serde_json::Value;

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
        let tables = st["maps"]["LB_MAGLEV_V2"]["entries"].as_u64().unwrap();
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
