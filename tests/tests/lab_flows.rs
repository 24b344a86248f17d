//! Lab scenarios: held and draining connections, UDP clients on a fixed
//! port, the packet path as clsact filters and in XDP mode.

mod common;

use common::expect::reachability;
use common::*;
use serde_json::Value;

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
