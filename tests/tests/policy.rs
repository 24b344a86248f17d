//! NetworkPolicy in the lab: three namespaces of three pods on two nodes,
//! every pod probing every pod through its Service at each step, each
//! step's matrix held against the rule it demonstrates, and the nodes'
//! own counters showing who dropped.

mod common;

use common::*;
use serde_json::Value;

/// Where the lab puts each pod (round-robin in file order).
fn node_of(pod: &str) -> &'static str {
    match pod {
        "ant/a" | "ant/c" | "bee/b" | "cat/a" | "cat/c" => "node-1",
        _ => "node-2",
    }
}

/// Every `service/*` probe of `step` answers as `allowed(from, to, proto)`
/// says (a pod reaching itself always does); a denied one is dropped (a
/// timeout), never refused. Returns how many probes were checked.
fn expect_matrix(r: &Run, step: u64, allowed: impl Fn(&str, &str, &str) -> bool) -> usize {
    let mut n = 0;
    for l in r.lines.iter().filter(|l| l["step"] == step) {
        let Some(to) = l["to"].as_str().and_then(|t| t.strip_prefix("service/")) else {
            continue;
        };
        let from = l["from"].as_str().unwrap();
        let proto = l["protocol"].as_str().unwrap();
        let want = from == to || allowed(from, to, proto);
        assert_eq!(l["ok"], want, "step {step}: {from} -> {to} {proto}: {l}");
        if want {
            assert_eq!(l["served_by"], to, "{l}");
        } else {
            assert_eq!(l["error"], "timeout", "a denied flow is dropped: {l}");
        }
        n += 1;
    }
    assert!(n > 0, "step {step} has no service probes");
    n
}

fn ns(pod: &str) -> &str {
    pod.split('/').next().unwrap()
}

fn counter(dump: &DumpDir, step: u64, node: &str, reason: &str) -> u64 {
    dump.json(step, node, "status")["policy"][reason]
        .as_u64()
        .unwrap_or_else(|| panic!("step {step} {node}: no policy counter {reason}"))
}

fn endpoint<'a>(eps: &'a Value, pod: &str) -> &'a Value {
    eps.as_array()
        .unwrap()
        .iter()
        .find(|e| e["pod"] == pod)
        .unwrap_or_else(|| panic!("no endpoint {pod} in {eps}"))
}

#[test]
fn ingress_rules_selectors_named_ports_and_label_changes() {
    let dump = DumpDir::new("pol-in");
    let r = lab_with(&scenario("policy-ingress.yaml"), Some(&dump.0));
    assert_eq!(r.code, 0, "{}", r.stderr);
    // 0: no policy, everything reaches everything.
    assert_eq!(expect_matrix(&r, 0, |_, _, _| true), 9 * 9 * 2);
    for node in ["node-1", "node-2"] {
        assert_eq!(counter(&dump, 0, node, "policy-denied-ingress"), 0);
    }
    // 1: default deny ingress in ant: nothing reaches ant, except its own node.
    expect_matrix(&r, 1, |_, to, _| ns(to) != "ant");
    for l in r
        .lines
        .iter()
        .filter(|l| l["step"] == 1 && l["from"].as_str().unwrap().starts_with("node/"))
    {
        assert_eq!(l["ok"], true, "a pod's own node always reaches it: {l}");
    }
    for node in ["node-1", "node-2"] {
        assert!(
            counter(&dump, 1, node, "policy-denied-ingress") > 0,
            "{node} holds ant pods and dropped for them"
        );
    }
    let eps = dump.json(1, "node-1", "endpoints");
    let a = endpoint(&eps, "ant/a");
    assert!(
        a["ifindex"].as_u64().unwrap() > 0,
        "its interface is known, its source validated: {a}"
    );
    assert_eq!(a["ingress_isolated"], true);
    assert_eq!(a["egress_isolated"], false);
    assert!(a["verdicts"]["policy-denied-ingress"].as_u64().unwrap() > 0);
    assert_eq!(endpoint(&eps, "bee/b")["ingress_isolated"], false);
    // 2: TCP on the named port from team=blue namespaces (bee); ant/c's
    // named port is 8080, the others' 80.
    expect_matrix(&r, 2, |from, to, p| {
        ns(to) != "ant" || (ns(from) == "bee" && p == "TCP")
    });
    // 3: cat relabelled team=blue.
    expect_matrix(&r, 3, |from, to, p| {
        ns(to) != "ant" || (ns(from) != "ant" && p == "TCP")
    });
    // 4: namespace AND pod selector in one peer: only the `a` pods of blue namespaces.
    expect_matrix(&r, 4, |from, to, p| {
        ns(to) != "ant" || (matches!(from, "bee/a" | "cat/a") && p == "TCP")
    });
    // 5: bee/a labelled blocked=yes falls out of the peer's expression.
    expect_matrix(&r, 5, |from, to, p| {
        ns(to) != "ant" || (from == "cat/a" && p == "TCP")
    });
    // 6: the same selectors as separate peers (OR), UDP 81 by number.
    expect_matrix(&r, 6, |from, to, _| {
        ns(to) != "ant" || ns(from) != "ant" || from == "ant/a"
    });
    // 7: policies deleted: open again.
    expect_matrix(&r, 7, |_, _, _| true);
}

#[test]
fn egress_rules_are_judged_at_the_backend_replies_pass_and_revocation_ends_connections() {
    let dump = DumpDir::new("pol-eg");
    let r = lab_with(&scenario("policy-egress.yaml"), Some(&dump.0));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let families: std::collections::BTreeSet<&str> = r
        .lines
        .iter()
        .filter_map(|l| l["family"].as_str())
        .collect();
    assert_eq!(families, ["IPv4", "IPv6"].into(), "both families probed");
    // 0: ant reaches only `a` pods, on TCP, through their ClusterIPs (the
    // policy names pods, never the ClusterIP); everyone reaches ant and
    // ant's replies pass its isolated egress.
    expect_matrix(&r, 0, |from, to, p| {
        ns(from) != "ant" || (to.ends_with("/a") && p == "TCP")
    });
    for node in ["node-1", "node-2"] {
        assert!(
            counter(&dump, 0, node, "policy-denied-egress") > 0,
            "{node}"
        );
        assert_eq!(
            counter(&dump, 0, node, "policy-denied-ingress"),
            0,
            "{node}"
        );
    }
    // 1: ipBlocks of the pod ranges except bee/b, TCP 70-80 (ant/c serves
    // on 8080) and UDP 82-90 (the servers' UDP is 81).
    expect_matrix(&r, 1, |from, to, p| {
        ns(from) != "ant" || (p == "TCP" && to != "bee/b" && to != "ant/c")
    });
    // 2: ant isolated both ways with no rule: the connections held since
    // step 1 into and out of ant end; ant's own node still reaches it.
    expect_matrix(&r, 2, |from, to, _| ns(from) != "ant" && ns(to) != "ant");
    for l in r.lines.iter().filter(|l| l["step"] == 2) {
        if l["from"] == "node/node-1" {
            assert_eq!(l["ok"], true, "{l}");
        }
    }
    let before = counter(&dump, 1, node_of("ant/a"), "policy-denied-ingress");
    assert!(counter(&dump, 2, node_of("ant/a"), "policy-denied-ingress") > before);
}
