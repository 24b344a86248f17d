//! Peers.

use super::*;

#[test]
fn a_pod_selector_peer_matches_pods_of_the_policy_namespace_only() {
    let c = cluster(&[
        pod("x/a", "app=a", "10.0.1.1,fd00:1::1"),
        pod("x/b", "app=b", "10.0.1.2,fd00:1::2"),
        pod("y/b", "app=b", "10.0.1.12,fd00:1::12"),
        pod("y/a", "app=a", "10.0.1.11"),
        remote_pod("x/r", "app=b", "10.0.2.1,fd00:2::1"),
        netpol(
            "x/p",
            "{podSelector: {matchLabels: {app: a}}, ingress: [{from: [{podSelector: {matchLabels: {app: b}}}]}]}",
        ),
    ]);
    check(
        &c,
        &[
            ("x/a", Ingress, "x/b", TCP, 80, ALLOW),
            ("x/a", Ingress, "x/r", TCP, 80, ALLOW),
            ("x/a", Ingress, "y/b", TCP, 80, DENY),
            ("x/a", Ingress, "10.9.9.9", TCP, 80, DENY),
            // The policy of x does not isolate y/a.
            ("y/a", Ingress, "10.9.9.9", TCP, 80, ALLOW),
        ],
    );
    check6(
        &c,
        &[
            ("x/a", Ingress, "x/b", TCP, 80, ALLOW),
            ("x/a", Ingress, "x/r", TCP, 80, ALLOW),
            ("x/a", Ingress, "y/b", TCP, 80, DENY),
        ],
    );
}

#[test]
fn a_namespace_selector_peer_matches_every_pod_of_matching_namespaces() {
    let c = cluster(&[
        namespace("blue", "team=blue"),
        namespace("red", "team=red"),
        pod("x/a", "app=a", "10.0.1.1"),
        pod("x/g", "app=g", "10.0.1.2"),
        pod("blue/c", "app=c", "10.0.1.3"),
        remote_pod("blue/d", "app=d", "10.0.2.4"),
        pod("red/e", "app=e", "10.0.1.5"),
        // No Namespace object: its name label is still known.
        pod("plain/f", "app=f", "10.0.1.6"),
        netpol(
            "x/blue",
            "{podSelector: {matchLabels: {app: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}}], ports: [{port: 80}]}]}",
        ),
        netpol(
            "x/plain",
            "{podSelector: {matchLabels: {app: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {\"kubernetes.io/metadata.name\": plain}}}], ports: [{port: 81}]}]}",
        ),
    ]);
    check(
        &c,
        &[
            ("x/a", Ingress, "blue/c", TCP, 80, ALLOW),
            ("x/a", Ingress, "blue/d", TCP, 80, ALLOW),
            ("x/a", Ingress, "red/e", TCP, 80, DENY),
            ("x/a", Ingress, "x/g", TCP, 80, DENY),
            ("x/a", Ingress, "plain/f", TCP, 80, DENY),
            ("x/a", Ingress, "plain/f", TCP, 81, ALLOW),
            ("x/a", Ingress, "blue/c", TCP, 81, DENY),
            ("x/a", Ingress, "10.9.9.9", TCP, 80, DENY),
        ],
    );
}

#[test]
fn namespace_labels_changing_changes_who_a_namespace_selector_admits() {
    let mut c = cluster(&[
        namespace("other", "team=red"),
        pod("x/a", "app=a", "10.0.1.1"),
        pod("other/c", "app=c", "10.0.1.3"),
        netpol(
            "x/blue",
            "{podSelector: {matchLabels: {app: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}}]}]}",
        ),
    ]);
    let before = c.identity("other/c");
    check(&c, &[("x/a", Ingress, "other/c", TCP, 80, DENY)]);
    c.apply(&namespace("other", "team=blue"));
    c.recompute();
    check(&c, &[("x/a", Ingress, "other/c", TCP, 80, ALLOW)]);
    // Namespace labels are part of the identity.
    assert_ne!(c.identity("other/c"), before);
}

#[test]
fn pod_and_namespace_selector_in_one_peer_must_both_match() {
    let c = cluster(&[
        namespace("blue", "team=blue"),
        namespace("red", "team=red"),
        pod("x/a", "app=a", "10.0.1.1"),
        pod("x/db", "app=db", "10.0.1.2"),
        pod("blue/db", "app=db", "10.0.1.3"),
        pod("blue/web", "app=web", "10.0.1.4"),
        pod("red/db", "app=db", "10.0.1.5"),
        netpol(
            "x/and",
            "{podSelector: {matchLabels: {app: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}, podSelector: {matchLabels: {app: db}}}]}]}",
        ),
    ]);
    check(
        &c,
        &[
            ("x/a", Ingress, "blue/db", TCP, 5432, ALLOW),
            ("x/a", Ingress, "blue/web", TCP, 5432, DENY),
            ("x/a", Ingress, "red/db", TCP, 5432, DENY),
            ("x/a", Ingress, "x/db", TCP, 5432, DENY),
        ],
    );
}

#[test]
fn pod_and_namespace_selectors_in_separate_peers_each_admit() {
    let c = cluster(&[
        namespace("blue", "team=blue"),
        namespace("red", "team=red"),
        pod("x/a", "app=a", "10.0.1.1"),
        pod("x/db", "app=db", "10.0.1.2"),
        pod("blue/db", "app=db", "10.0.1.3"),
        pod("blue/web", "app=web", "10.0.1.4"),
        pod("red/db", "app=db", "10.0.1.5"),
        pod("x/web", "app=web", "10.0.1.6"),
        netpol(
            "x/or",
            "{podSelector: {matchLabels: {app: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}}, {podSelector: {matchLabels: {app: db}}}]}]}",
        ),
    ]);
    check(
        &c,
        &[
            ("x/a", Ingress, "blue/db", TCP, 5432, ALLOW),
            ("x/a", Ingress, "blue/web", TCP, 5432, ALLOW),
            ("x/a", Ingress, "x/db", TCP, 5432, ALLOW),
            // The podSelector alone stays in the policy's namespace.
            ("x/a", Ingress, "red/db", TCP, 5432, DENY),
            ("x/a", Ingress, "x/web", TCP, 5432, DENY),
        ],
    );
}

#[test]
fn empty_selectors_in_a_peer_mean_every_pod_of_their_scope() {
    let docs = |from: &str| {
        vec![
            pod("x/a", "app=a", "10.0.1.1,fd00:1::1"),
            pod("x/b", "app=b", "10.0.1.2,fd00:1::2"),
            pod("y2/c", "app=c", "10.0.1.3,fd00:1::3"),
            remote_pod("y2/d", "", "10.0.2.4"),
            netpol(
                "x/p",
                &format!(
                    "{{podSelector: {{matchLabels: {{app: a}}}}, ingress: [{{from: [{from}]}}]}}"
                ),
            ),
        ]
    };
    // from, (x/b, y2/c, y2/d, world)
    let rows: &[(&str, [bool; 4])] = &[
        ("{podSelector: {}}", [ALLOW, DENY, DENY, DENY]),
        ("{namespaceSelector: {}}", [ALLOW, ALLOW, ALLOW, DENY]),
        (
            "{namespaceSelector: {}, podSelector: {}}",
            [ALLOW, ALLOW, ALLOW, DENY],
        ),
        (
            "{namespaceSelector: {}, podSelector: {matchLabels: {app: c}}}",
            [DENY, ALLOW, DENY, DENY],
        ),
    ];
    for (from, [b, c2, d, world]) in rows {
        let c = cluster(&docs(from));
        let ctx = format!("from {from}");
        let got = [
            allows(&c, "x/a", Ingress, "x/b", TCP, 80),
            allows(&c, "x/a", Ingress, "y2/c", TCP, 80),
            allows(&c, "x/a", Ingress, "y2/d", TCP, 80),
            allows(&c, "x/a", Ingress, "10.9.9.9", TCP, 80),
        ];
        assert_eq!(got, [*b, *c2, *d, *world], "{ctx}");
        assert_eq!(
            allows6(&c, "x/a", Ingress, "y2/c", TCP, 80),
            *c2,
            "{ctx} (IPv6)"
        );
        assert!(!allows(&c, "x/a", Ingress, "2001:db8::1", TCP, 80), "{ctx}");
    }
}

#[test]
fn match_expressions_select_pods_and_peers() {
    // Pods: x/a {app: a, tier: fe}, x/b {app: b, tier: be}, x/c {app: c}.
    // expression, the pods it matches among a, b, c
    let rows: &[(&str, [bool; 3])] = &[
        (
            "[{key: tier, operator: In, values: [fe]}]",
            [true, false, false],
        ),
        (
            "[{key: tier, operator: In, values: [fe, be]}]",
            [true, true, false],
        ),
        // NotIn matches pods without the key too.
        (
            "[{key: tier, operator: NotIn, values: [fe]}]",
            [false, true, true],
        ),
        ("[{key: tier, operator: Exists}]", [true, true, false]),
        (
            "[{key: tier, operator: DoesNotExist}]",
            [false, false, true],
        ),
        (
            "[{key: tier, operator: Exists}, {key: app, operator: NotIn, values: [a]}]",
            [false, true, false],
        ),
        (
            "[{key: app, operator: In, values: [zzz]}]",
            [false, false, false],
        ),
    ];
    let pods = || {
        vec![
            pod("x/a", "app=a,tier=fe", "10.0.1.1"),
            pod("x/b", "app=b,tier=be", "10.0.1.2"),
            pod("x/c", "app=c", "10.0.1.3"),
            pod("x/t", "role=target", "10.0.1.4"),
        ]
    };
    let mut bad = vec![];
    for (exprs, want) in rows {
        // As the policy's podSelector: which pods it isolates.
        let mut docs = pods();
        docs.push(netpol(
            "x/p",
            &format!("{{podSelector: {{matchExpressions: {exprs}}}}}"),
        ));
        let c = cluster(&docs);
        let got = ["x/a", "x/b", "x/c"].map(|p| c.isolation(p).0);
        if got != *want {
            bad.push(format!(
                "podSelector {exprs}: isolated {got:?}, want {want:?}"
            ));
        }
        // As a peer: which pods reach x/t.
        let mut docs = pods();
        docs.push(netpol(
            "x/p",
            &format!(
                "{{podSelector: {{matchLabels: {{role: target}}}}, ingress: [{{from: [{{podSelector: {{matchExpressions: {exprs}}}}}]}}]}}"
            ),
        ));
        let c = cluster(&docs);
        let got = ["x/a", "x/b", "x/c"].map(|p| allows(&c, "x/t", Ingress, p, TCP, 80));
        if got != *want {
            bad.push(format!("peer {exprs}: admitted {got:?}, want {want:?}"));
        }
    }
    // matchLabels and matchExpressions together: both hold.
    let mut docs = pods();
    docs.push(netpol(
        "x/p",
        "{podSelector: {matchLabels: {role: target}}, ingress: [{from: [{podSelector: {matchLabels: {app: a}, matchExpressions: [{key: tier, operator: DoesNotExist}]}}]}]}",
    ));
    let c = cluster(&docs);
    if allows(&c, "x/t", Ingress, "x/a", TCP, 80) {
        bad.push("matchLabels app=a with tier DoesNotExist admitted x/a".into());
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}
