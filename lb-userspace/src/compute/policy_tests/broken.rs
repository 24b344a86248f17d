//! Broken policies.

use super::*;

#[test]
fn a_broken_policy_isolates_every_pod_of_its_namespace_and_allows_nothing() {
    let rows: &[(&str, &str)] = &[
        (
            "{podSelector: {matchExpressions: [{key: app, operator: Foo, values: [a]}]}, ingress: [{}], egress: [{}]}",
            "spec.podSelector.matchExpressions[0].operator",
        ),
        (
            "{podSelector: {matchLabels: {app: nothing}}, egress: [{to: [{podSelector: {matchExpressions: [{key: app, operator: In}]}}]}]}",
            "spec.egress[0].to[0].podSelector.matchExpressions[0].values",
        ),
        (
            "{podSelector: {}, ingress: [{ports: [{protocol: ICMP}]}]}",
            "spec.ingress[0].ports[0].protocol",
        ),
        (
            "{podSelector: {}, ingress: [{ports: [{port: 90, endPort: 80}]}]}",
            "spec.ingress[0].ports[0].endPort",
        ),
        (
            "{podSelector: {}, ingress: [{ports: [{port: http, endPort: 80}]}]}",
            "spec.ingress[0].ports[0].endPort",
        ),
        (
            "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]}",
            "spec.ingress[0].from[0]",
        ),
        (
            "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]}",
            "spec.ingress[0].from[0].ipBlock.cidr",
        ),
        (
            "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]}]}",
            "spec.ingress[0].from[0].ipBlock.except[0]",
        ),
        (
            "{podSelector: {}, policyTypes: [Sideways]}",
            "spec.policyTypes[0]",
        ),
        (
            "{podSelector: {}, ingress: [{from: [{}]}]}",
            "spec.ingress[0].from[0]",
        ),
    ];
    let mut bad = vec![];
    for (spec, field) in rows {
        let c = cluster(&[
            pod("x/a", "app=a", "10.0.1.1,fd00:1::1"),
            pod("x/b", "app=b", "10.0.1.2"),
            pod("y/c", "app=c", "10.0.1.3"),
            netpol("x/bad", spec),
        ]);
        if !c.snap.warnings.iter().any(|w| w.why.contains(field)) {
            bad.push(format!(
                "{spec}: no warning naming {field}: {:?}",
                c.snap.warnings
            ));
        }
        let got = (
            c.isolation("x/a"),
            c.isolation("x/b"),
            c.isolation("y/c"),
            c.entries_of("x/a") + c.entries_of("x/b"),
        );
        if got != ((true, true), (true, true), (false, false), 0) {
            bad.push(format!("{spec}: (isolation a, b, y/c; entries) = {got:?}"));
        }
        let verdicts = [
            allows(&c, "x/a", Ingress, "x/b", TCP, 80),
            allows(&c, "x/a", Ingress, "y/c", TCP, 80),
            allows(&c, "x/a", Egress, "x/b", TCP, 80),
            allows(&c, "x/a", Egress, "8.8.8.8", UDP, 53),
            allows(&c, "x/a", Ingress, "2001:db8::1", TCP, 80),
            allows(&c, "y/c", Ingress, "x/a", TCP, 80),
            allows(&c, "x/a", Ingress, NODE_IP, TCP, 10250),
        ];
        if verdicts != [DENY, DENY, DENY, DENY, DENY, ALLOW, ALLOW] {
            bad.push(format!("{spec}: verdicts {verdicts:?}"));
        }
        let ep = c.report.endpoints.iter().find(|e| e.pod == "x/a").unwrap();
        if !(ep.ingress_isolated && ep.egress_isolated && ep.allows.is_empty()) {
            bad.push(format!("{spec}: report {ep:?}"));
        }
        if c.maps.flags != POL_F_ANY_INGRESS | POL_F_ANY_EGRESS {
            bad.push(format!("{spec}: flags {:#x}", c.maps.flags));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}
