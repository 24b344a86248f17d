//! Isolation: which pods, which directions.

use super::*;

#[test]
fn without_policies_every_pod_is_open_and_no_flag_is_set() {
    let c = cluster(&[
        pod("x/a", "app=a", "10.0.1.1"),
        pod("x/b", "app=b", "10.0.1.2"),
    ]);
    assert_eq!(c.maps.flags, 0);
    assert_eq!(c.isolation("x/a"), (false, false));
    assert!(c.maps.entries.is_empty() && c.maps.cidrs.is_empty());
    check(
        &c,
        &[
            ("x/a", Ingress, "x/b", TCP, 80, ALLOW),
            ("x/a", Ingress, "8.8.8.8", UDP, 53, ALLOW),
            ("x/a", Egress, "8.8.8.8", TCP, 443, ALLOW),
        ],
    );
}

#[test]
fn a_pod_no_policy_selects_is_open_both_ways() {
    let c = cluster(&[
        pod("x/a", "app=a", "10.0.1.1"),
        pod("x/b", "app=b", "10.0.1.2"),
        // Same labels as x/a, other namespace: a policy of x never selects it.
        pod("y/a", "app=a", "10.0.1.3"),
        netpol(
            "x/deny-a",
            "{podSelector: {matchLabels: {app: a}}, policyTypes: [Ingress, Egress]}",
        ),
    ]);
    assert_eq!(c.isolation("x/a"), (true, true));
    assert_eq!(c.isolation("x/b"), (false, false));
    assert_eq!(c.isolation("y/a"), (false, false));
    check(
        &c,
        &[
            ("x/a", Ingress, "x/b", TCP, 80, DENY),
            ("x/a", Egress, "x/b", TCP, 80, DENY),
            ("x/b", Ingress, "x/a", TCP, 80, ALLOW),
            ("x/b", Egress, "x/a", TCP, 80, ALLOW),
            ("x/b", Ingress, "8.8.8.8", TCP, 80, ALLOW),
            ("x/b", Egress, "8.8.8.8", UDP, 53, ALLOW),
            ("y/a", Ingress, "x/b", TCP, 80, ALLOW),
            ("y/a", Egress, "8.8.8.8", TCP, 80, ALLOW),
        ],
    );
}

#[test]
fn policy_types_default_to_ingress_and_add_egress_only_with_egress_rules() {
    // spec, (ingress isolated, egress isolated), (x/b reaches x/a, x/a reaches x/b)
    type Row<'a> = (&'a str, (bool, bool), (bool, bool));
    let rows: &[Row] = &[
        (
            "{podSelector: {matchLabels: {app: a}}}",
            (true, false),
            (DENY, ALLOW),
        ),
        (
            "{podSelector: {matchLabels: {app: a}}, ingress: [{}]}",
            (true, false),
            (ALLOW, ALLOW),
        ),
        (
            "{podSelector: {matchLabels: {app: a}}, egress: [{to: [{podSelector: {matchLabels: {app: nobody}}}]}]}",
            (true, true),
            (DENY, DENY),
        ),
        (
            "{podSelector: {matchLabels: {app: a}}, egress: [{}]}",
            (true, true),
            (DENY, ALLOW),
        ),
        // An empty egress list is no egress rule: Ingress only.
        (
            "{podSelector: {matchLabels: {app: a}}, egress: []}",
            (true, false),
            (DENY, ALLOW),
        ),
        (
            "{podSelector: {matchLabels: {app: a}}, policyTypes: [Egress]}",
            (false, true),
            (ALLOW, DENY),
        ),
        // Ingress rules of a policy whose types leave Ingress out do nothing.
        (
            "{podSelector: {matchLabels: {app: a}}, policyTypes: [Egress], ingress: [{from: [{podSelector: {matchLabels: {app: nobody}}}]}]}",
            (false, true),
            (ALLOW, DENY),
        ),
        (
            "{podSelector: {matchLabels: {app: a}}, policyTypes: [Ingress], egress: [{to: [{podSelector: {matchLabels: {app: nobody}}}]}]}",
            (true, false),
            (DENY, ALLOW),
        ),
        (
            "{podSelector: {matchLabels: {app: a}}, policyTypes: [Ingress, Egress]}",
            (true, true),
            (DENY, DENY),
        ),
        (
            "{podSelector: {matchLabels: {app: a}}, policyTypes: [Egress], egress: [{}]}",
            (false, true),
            (ALLOW, ALLOW),
        ),
    ];
    let mut bad = vec![];
    for (spec, isolation, (inbound, outbound)) in rows {
        let c = cluster(&[
            pod("x/a", "app=a", "10.0.1.1,fd00:1::1"),
            pod("x/b", "app=b", "10.0.1.2,fd00:1::2"),
            netpol("x/p", spec),
        ]);
        let got = (
            c.isolation("x/a"),
            allows(&c, "x/a", Ingress, "x/b", TCP, 80),
            allows(&c, "x/a", Egress, "x/b", TCP, 80),
            allows6(&c, "x/a", Ingress, "x/b", TCP, 80),
            allows6(&c, "x/a", Egress, "x/b", TCP, 80),
            c.isolation("x/b"),
        );
        let want = (
            *isolation,
            *inbound,
            *outbound,
            *inbound,
            *outbound,
            (false, false),
        );
        if got != want {
            bad.push(format!("{spec}:\n    got {got:?}\n   want {want:?}"));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// Kubernetes defaults an empty `policyTypes` like a missing one
/// (`SetDefaults_NetworkPolicy`: `len(PolicyTypes) == 0`), so
/// `policyTypes: []` isolates for Ingress.
#[test]
fn an_empty_policy_types_list_defaults_like_a_missing_one() {
    let c = cluster(&[
        pod("x/a", "app=a", "10.0.1.1"),
        pod("x/b", "app=b", "10.0.1.2"),
        netpol(
            "x/p",
            "{podSelector: {matchLabels: {app: a}}, policyTypes: []}",
        ),
        netpol(
            "x/q",
            "{podSelector: {matchLabels: {app: b}}, policyTypes: [], egress: [{to: [{podSelector: {matchLabels: {app: nobody}}}]}]}",
        ),
    ]);
    assert_eq!(c.isolation("x/a"), (true, false));
    assert_eq!(c.isolation("x/b"), (true, true));
    check(
        &c,
        &[
            ("x/a", Ingress, "8.8.8.8", TCP, 80, DENY),
            ("x/b", Egress, "8.8.8.8", TCP, 80, DENY),
        ],
    );
}

#[test]
fn default_deny_ingress_closes_every_inbound_peer_and_leaves_egress_open() {
    let c = cluster(&[
        pod("x/a", "app=a", "10.0.1.1,fd00:1::1"),
        pod("x/b", "app=b", "10.0.1.2,fd00:1::2"),
        remote_pod("y/r", "app=r", "10.0.2.1,fd00:2::1"),
        netpol("x/deny", "{podSelector: {}}"),
    ]);
    check(
        &c,
        &[
            ("x/a", Ingress, "x/b", TCP, 80, DENY),
            ("x/a", Ingress, "y/r", UDP, 53, DENY),
            ("x/a", Ingress, "8.8.8.8", ICMP, 0, DENY),
            ("x/a", Ingress, "2001:db8::1", TCP, 443, DENY),
            ("x/a", Egress, "x/b", TCP, 80, ALLOW),
            ("x/a", Egress, "8.8.8.8", UDP, 53, ALLOW),
            ("x/a", Egress, "2001:db8::1", TCP, 443, ALLOW),
        ],
    );
    check6(&c, &[("x/a", Ingress, "x/b", TCP, 80, DENY)]);
    assert_eq!(c.entries_of("x/a"), 0);
}

#[test]
fn default_deny_egress_closes_every_outbound_peer_and_leaves_ingress_open() {
    let c = cluster(&[
        pod("x/a", "app=a", "10.0.1.1,fd00:1::1"),
        pod("x/b", "app=b", "10.0.1.2,fd00:1::2"),
        netpol("x/deny", "{podSelector: {}, policyTypes: [Egress]}"),
    ]);
    check(
        &c,
        &[
            ("x/a", Egress, "x/b", TCP, 80, DENY),
            ("x/a", Egress, "8.8.8.8", UDP, 53, DENY),
            ("x/a", Egress, "2001:db8::1", TCP, 443, DENY),
            // Egress has no host exemption.
            ("x/a", Egress, NODE_IP, TCP, 10250, DENY),
            ("x/a", Ingress, "x/b", TCP, 80, ALLOW),
            ("x/a", Ingress, "8.8.8.8", TCP, 80, ALLOW),
        ],
    );
    check6(&c, &[("x/a", Egress, "x/b", TCP, 80, DENY)]);
}

#[test]
fn a_pod_always_reaches_itself() {
    let c = cluster(&[
        pod("x/a", "app=a", "10.0.1.1,fd00:1::1"),
        netpol(
            "x/deny",
            "{podSelector: {}, policyTypes: [Ingress, Egress]}",
        ),
    ]);
    check(
        &c,
        &[
            ("x/a", Ingress, "x/a", TCP, 80, ALLOW),
            ("x/a", Egress, "x/a", TCP, 80, ALLOW),
        ],
    );
    check6(&c, &[("x/a", Egress, "x/a", UDP, 53, ALLOW)]);
}

#[test]
fn two_policies_allow_the_union_of_their_rules() {
    let c = cluster(&[
        pod("x/a", "app=a", "10.0.1.1"),
        pod("x/b", "app=b", "10.0.1.2"),
        pod("x/c", "app=c", "10.0.1.3"),
        netpol(
            "x/from-b",
            "{podSelector: {matchLabels: {app: a}}, ingress: [{from: [{podSelector: {matchLabels: {app: b}}}], ports: [{port: 80}]}]}",
        ),
        netpol(
            "x/from-c",
            "{podSelector: {matchLabels: {app: a}}, ingress: [{from: [{podSelector: {matchLabels: {app: c}}}], ports: [{port: 443}]}]}",
        ),
        // A deny-all next to them takes nothing away.
        netpol("x/deny", "{podSelector: {}}"),
    ]);
    check(
        &c,
        &[
            ("x/a", Ingress, "x/b", TCP, 80, ALLOW),
            ("x/a", Ingress, "x/b", TCP, 443, DENY),
            ("x/a", Ingress, "x/c", TCP, 443, ALLOW),
            ("x/a", Ingress, "x/c", TCP, 80, DENY),
            ("x/b", Ingress, "x/c", TCP, 80, DENY),
            ("x/b", Ingress, "x/a", TCP, 443, DENY),
        ],
    );
    // The report names the rules an allow came from.
    let a = c.report.endpoints.iter().find(|e| e.pod == "x/a").unwrap();
    let from: Vec<&str> = a
        .allows
        .iter()
        .flat_map(|x| x.from.iter().map(String::as_str))
        .collect();
    assert!(from.contains(&"x/from-b ingress[0]") && from.contains(&"x/from-c ingress[0]"));
}
