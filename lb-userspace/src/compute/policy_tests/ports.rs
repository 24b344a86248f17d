//! Ports and protocols.

use super::*;

#[test]
fn a_named_port_on_ingress_is_the_destination_pods_own() {
    let c = cluster(&[
        pod_ports("x/a", "app=web", "10.0.1.1", "http=8080,dns=53/UDP"),
        pod_ports("x/a2", "app=web", "10.0.1.2", "http=9090"),
        pod_ports("x/u", "app=web", "10.0.1.3", "metrics=9100"),
        pod("x/cli", "app=cli", "10.0.1.4"),
        netpol(
            "x/p",
            "{podSelector: {matchLabels: {app: web}}, ingress: [\
             {from: [{podSelector: {matchLabels: {app: cli}}}], ports: [{port: http}]}, \
             {from: [{podSelector: {matchLabels: {app: cli}}}], ports: [{port: dns, protocol: UDP}]}, \
             {from: [{ipBlock: {cidr: 192.0.2.0/24}}], ports: [{port: http}]}, \
             {ports: [{port: metrics}]}]}",
        ),
    ]);
    check(
        &c,
        &[
            ("x/a", Ingress, "x/cli", TCP, 8080, ALLOW),
            ("x/a", Ingress, "x/cli", TCP, 9090, DENY),
            ("x/a2", Ingress, "x/cli", TCP, 9090, ALLOW),
            ("x/a2", Ingress, "x/cli", TCP, 8080, DENY),
            ("x/u", Ingress, "x/cli", TCP, 8080, DENY),
            ("x/u", Ingress, "x/cli", TCP, 9090, DENY),
            ("x/a", Ingress, "x/cli", UDP, 53, ALLOW),
            ("x/a", Ingress, "x/cli", TCP, 53, DENY),
            ("x/a2", Ingress, "x/cli", UDP, 53, DENY),
            ("x/a", Ingress, "192.0.2.7", TCP, 8080, ALLOW),
            ("x/a2", Ingress, "192.0.2.7", TCP, 9090, ALLOW),
            ("x/a2", Ingress, "192.0.2.7", TCP, 8080, DENY),
            ("x/u", Ingress, "8.8.8.8", TCP, 9100, ALLOW),
            ("x/a", Ingress, "8.8.8.8", TCP, 9100, DENY),
        ],
    );
}

#[test]
fn a_named_port_on_egress_is_the_peer_pods_own() {
    let c = cluster(&[
        pod("x/cli", "app=cli", "10.0.1.1"),
        pod_ports("x/s1", "app=srv", "10.0.1.2", "http=8080"),
        pod_yaml("node-2", "y2/s2", "app=srv", "10.0.2.3", "http=9090", false),
        pod_ports("x/s3", "app=other", "10.0.1.4", "http=7070"),
        netpol(
            "x/to-srv",
            "{podSelector: {matchLabels: {app: cli}}, egress: [\
             {to: [{namespaceSelector: {}, podSelector: {matchLabels: {app: srv}}}], ports: [{port: http}]}]}",
        ),
    ]);
    check(
        &c,
        &[
            ("x/cli", Egress, "x/s1", TCP, 8080, ALLOW),
            ("x/cli", Egress, "x/s1", TCP, 9090, DENY),
            ("x/cli", Egress, "y2/s2", TCP, 9090, ALLOW),
            ("x/cli", Egress, "y2/s2", TCP, 8080, DENY),
            ("x/cli", Egress, "x/s3", TCP, 7070, DENY),
            ("x/cli", Egress, "8.8.8.8", TCP, 8080, DENY),
        ],
    );

    // No peers: the named port of whichever pod is reached; numeric ports
    // of the same rule reach anything.
    let c = cluster(&[
        pod("x/cli", "app=cli", "10.0.1.1"),
        pod_ports("x/s1", "app=srv", "10.0.1.2", "http=8080"),
        pod_yaml("node-2", "y2/s2", "app=srv", "10.0.2.3", "http=9090", false),
        pod_ports("x/s3", "app=other", "10.0.1.4", "http=7070"),
        netpol(
            "x/any-http",
            "{podSelector: {matchLabels: {app: cli}}, egress: [{ports: [{port: http}, {port: 53, protocol: UDP}]}]}",
        ),
    ]);
    check(
        &c,
        &[
            ("x/cli", Egress, "x/s1", TCP, 8080, ALLOW),
            ("x/cli", Egress, "y2/s2", TCP, 9090, ALLOW),
            ("x/cli", Egress, "x/s3", TCP, 7070, ALLOW),
            ("x/cli", Egress, "x/s3", TCP, 8080, DENY),
            ("x/cli", Egress, "8.8.8.8", TCP, 8080, DENY),
            ("x/cli", Egress, "8.8.8.8", UDP, 53, ALLOW),
            ("x/cli", Egress, "x/s1", UDP, 53, ALLOW),
        ],
    );

    // An ipBlock: the named port of the pods inside it (not excepted);
    // numeric ports for every address of the block.
    let c = cluster(&[
        pod("x/cli", "app=cli", "10.0.1.1"),
        pod_ports("x/s1", "app=srv", "10.0.1.2", "http=8080"),
        pod_yaml("node-2", "y2/s2", "app=srv", "10.0.2.3", "http=9090", false),
        pod_ports("z/s5", "app=out", "172.16.0.5", "http=5050"),
        netpol(
            "x/block",
            "{podSelector: {matchLabels: {app: cli}}, egress: [\
             {to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.2.3/32]}}], ports: [{port: http}, {port: 443}]}]}",
        ),
    ]);
    check(
        &c,
        &[
            ("x/cli", Egress, "x/s1", TCP, 8080, ALLOW),
            ("x/cli", Egress, "x/s1", TCP, 443, ALLOW),
            ("x/cli", Egress, "y2/s2", TCP, 9090, DENY),
            ("x/cli", Egress, "y2/s2", TCP, 443, DENY),
            ("x/cli", Egress, "z/s5", TCP, 5050, DENY),
            ("x/cli", Egress, "10.9.9.9", TCP, 443, ALLOW),
            ("x/cli", Egress, "10.9.9.9", TCP, 8080, DENY),
        ],
    );
}

#[test]
fn end_port_ranges_are_inclusive_at_both_ends() {
    let mut bad = vec![];
    for (start, end) in [
        (8000u16, 8007u16),
        (1000, 2000),
        (80, 80),
        (1023, 1025),
        (32768, 65535),
        (1, 65535),
        (65535, 65535),
    ] {
        let c = cluster(&[
            pod("x/a", "app=a", "10.0.1.1"),
            netpol(
                "x/p",
                &format!(
                    "{{podSelector: {{}}, ingress: [{{ports: [{{port: {start}, endPort: {end}}}, {{protocol: UDP, port: {start}, endPort: {end}}}]}}]}}"
                ),
            ),
        ]);
        let mut probes = vec![
            (start, true),
            (end, true),
            (start + (end - start) / 2, true),
        ];
        if start > 1 {
            probes.push((start - 1, false));
        }
        if end < u16::MAX {
            probes.push((end + 1, false));
        }
        for (port, want) in probes {
            for proto in [TCP, UDP] {
                if allows(&c, "x/a", Ingress, "8.8.8.8", proto, port) != want {
                    bad.push(format!(
                        "{start}-{end} proto {proto}: port {port} want {want}"
                    ));
                }
            }
            if allows(&c, "x/a", Ingress, "8.8.8.8", SCTP, port) {
                bad.push(format!("{start}-{end}: SCTP port {port} allowed"));
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn the_protocol_must_match_and_defaults_to_tcp() {
    let c = cluster(&[
        pod("x/sctp", "app=sctp", "10.0.1.1"),
        pod("x/dflt", "app=dflt", "10.0.1.2"),
        pod("x/udp", "app=udp", "10.0.1.3"),
        netpol(
            "x/sctp",
            "{podSelector: {matchLabels: {app: sctp}}, ingress: [{ports: [{protocol: SCTP, port: 80}]}]}",
        ),
        netpol(
            "x/dflt",
            "{podSelector: {matchLabels: {app: dflt}}, ingress: [{ports: [{port: 80}]}]}",
        ),
        netpol(
            "x/udp",
            "{podSelector: {matchLabels: {app: udp}}, ingress: [{ports: [{protocol: UDP}]}]}",
        ),
    ]);
    check(
        &c,
        &[
            ("x/sctp", Ingress, "8.8.8.8", SCTP, 80, ALLOW),
            ("x/sctp", Ingress, "8.8.8.8", SCTP, 81, DENY),
            ("x/sctp", Ingress, "8.8.8.8", TCP, 80, DENY),
            ("x/sctp", Ingress, "8.8.8.8", UDP, 80, DENY),
            ("x/dflt", Ingress, "8.8.8.8", TCP, 80, ALLOW),
            ("x/dflt", Ingress, "8.8.8.8", UDP, 80, DENY),
            ("x/dflt", Ingress, "8.8.8.8", SCTP, 80, DENY),
            ("x/udp", Ingress, "8.8.8.8", UDP, 53, ALLOW),
            ("x/udp", Ingress, "8.8.8.8", UDP, 1, ALLOW),
            ("x/udp", Ingress, "8.8.8.8", UDP, 65535, ALLOW),
            // A later fragment is judged with port 0: any-port rules pass it.
            ("x/udp", Ingress, "8.8.8.8", UDP, 0, ALLOW),
            ("x/udp", Ingress, "8.8.8.8", TCP, 53, DENY),
            ("x/udp", Ingress, "8.8.8.8", ICMP, 0, DENY),
        ],
    );
}

#[test]
fn a_rule_with_ports_and_no_peers_admits_any_peer_on_those_ports() {
    let c = cluster(&[
        pod("x/a", "app=a", "10.0.1.1,fd00:1::1"),
        pod("y/b", "app=b", "10.0.1.2,fd00:1::2"),
        remote_pod("y/r", "app=r", "10.0.2.1"),
        netpol(
            "x/p",
            "{podSelector: {}, ingress: [{ports: [{port: 80}]}], egress: [{ports: [{port: 53, protocol: UDP}]}]}",
        ),
    ]);
    check(
        &c,
        &[
            ("x/a", Ingress, "y/b", TCP, 80, ALLOW),
            ("x/a", Ingress, "y/r", TCP, 80, ALLOW),
            ("x/a", Ingress, "8.8.8.8", TCP, 80, ALLOW),
            ("x/a", Ingress, "2001:db8::1", TCP, 80, ALLOW),
            ("x/a", Ingress, "8.8.8.8", TCP, 81, DENY),
            ("x/a", Ingress, "8.8.8.8", UDP, 80, DENY),
            ("x/a", Egress, "8.8.8.8", UDP, 53, ALLOW),
            ("x/a", Egress, "2001:db8::53", UDP, 53, ALLOW),
            ("x/a", Egress, "8.8.8.8", TCP, 53, DENY),
        ],
    );
    check6(&c, &[("x/a", Ingress, "y/b", TCP, 80, ALLOW)]);
}

#[test]
fn a_rule_with_peers_and_no_ports_admits_every_protocol_and_port() {
    let c = cluster(&[
        pod("x/a", "app=a", "10.0.1.1,fd00:1::1"),
        pod("x/b", "app=b", "10.0.1.2,fd00:1::2"),
        pod("x/c", "app=c", "10.0.1.3"),
        netpol(
            "x/p",
            "{podSelector: {matchLabels: {app: a}}, \
             ingress: [{from: [{podSelector: {matchLabels: {app: b}}}]}], \
             egress: [{to: [{podSelector: {matchLabels: {app: b}}}, {ipBlock: {cidr: 203.0.113.0/24}}]}]}",
        ),
    ]);
    let mut cases: Vec<Case> = vec![];
    for (proto, port) in [
        (TCP, 1),
        (TCP, 80),
        (TCP, 65535),
        (UDP, 53),
        (SCTP, 9),
        (ICMP, 0),
        (GRE, 0),
    ] {
        cases.push(("x/a", Ingress, "x/b", proto, port, ALLOW));
        cases.push(("x/a", Egress, "x/b", proto, port, ALLOW));
        cases.push(("x/a", Egress, "203.0.113.9", proto, port, ALLOW));
        cases.push(("x/a", Ingress, "x/c", proto, port, DENY));
        cases.push(("x/a", Egress, "x/c", proto, port, DENY));
    }
    check(&c, &cases);
    check6(&c, &[("x/a", Ingress, "x/b", PROTO_ICMP_V6, 0, ALLOW)]);
}

const PROTO_ICMP_V6: u8 = lb_common::PROTO_ICMPV6;

#[test]
fn an_empty_rule_admits_everything() {
    let c = cluster(&[
        pod("x/a", "app=a", "10.0.1.1,fd00:1::1"),
        pod("y/b", "app=b", "10.0.1.2"),
        netpol("x/p", "{podSelector: {}, ingress: [{}], egress: [{}]}"),
    ]);
    assert_eq!(c.isolation("x/a"), (true, true));
    check(
        &c,
        &[
            ("x/a", Ingress, "y/b", TCP, 80, ALLOW),
            ("x/a", Ingress, "8.8.8.8", ICMP, 0, ALLOW),
            ("x/a", Ingress, "2001:db8::1", SCTP, 7, ALLOW),
            ("x/a", Egress, "8.8.8.8", UDP, 53, ALLOW),
            ("x/a", Egress, "2001:db8::1", TCP, 443, ALLOW),
        ],
    );
    // And `from: []` (an empty list of peers) is the same.
    let c = cluster(&[
        pod("x/a", "app=a", "10.0.1.1"),
        netpol("x/p", "{podSelector: {}, ingress: [{from: [], ports: []}]}"),
    ]);
    check(&c, &[("x/a", Ingress, "8.8.8.8", GRE, 0, ALLOW)]);
}
