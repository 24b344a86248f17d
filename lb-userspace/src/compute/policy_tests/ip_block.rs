//! ipBlock.

use super::*;

#[test]
fn an_ip_block_except_carves_out_exactly_that_pod() {
    let c = cluster(&[
        pod("x/a", "app=a", "10.0.1.1,fd00:1::1"),
        pod("y/b", "app=b", "10.0.1.2"),
        pod("y/c", "app=c", "10.0.1.3"),
        remote_pod("y/r", "app=c", "10.0.2.5"),
        netpol(
            "x/p",
            "{podSelector: {matchLabels: {app: a}}, policyTypes: [Ingress, Egress], \
             ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.1.3/32]}}]}], \
             egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.1.3/32]}}]}]}",
        ),
    ]);
    check(
        &c,
        &[
            ("x/a", Ingress, "y/b", TCP, 80, ALLOW),
            ("x/a", Ingress, "y/c", TCP, 80, DENY),
            // Same labels as y/c, other address: the block is by address.
            ("x/a", Ingress, "y/r", TCP, 80, ALLOW),
            ("x/a", Ingress, "10.200.0.1", UDP, 53, ALLOW),
            ("x/a", Ingress, "11.0.0.1", TCP, 80, DENY),
            ("x/a", Ingress, "9.255.255.255", TCP, 80, DENY),
            ("x/a", Ingress, "fd00::1", TCP, 80, DENY),
            ("x/a", Egress, "y/b", TCP, 80, ALLOW),
            ("x/a", Egress, "y/c", TCP, 80, DENY),
            ("x/a", Egress, "10.255.255.255", TCP, 80, ALLOW),
            ("x/a", Egress, "11.0.0.1", TCP, 80, DENY),
        ],
    );
}

#[test]
fn an_except_can_be_readmitted_by_another_block_on_its_own_ports() {
    let c = cluster(&[
        pod("x/a", "app=a", "10.0.1.1"),
        pod("y/b", "app=b", "10.0.1.2"),
        pod("y/c", "app=c", "10.0.1.3"),
        netpol(
            "x/p",
            "{podSelector: {matchLabels: {app: a}}, ingress: [\
             {from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.1.0/24]}}], ports: [{port: 80}]}, \
             {from: [{ipBlock: {cidr: 10.0.1.3/32}}], ports: [{port: 8080}]}]}",
        ),
    ]);
    check(
        &c,
        &[
            ("x/a", Ingress, "10.0.2.1", TCP, 80, ALLOW),
            ("x/a", Ingress, "10.0.2.1", TCP, 8080, DENY),
            ("x/a", Ingress, "y/b", TCP, 80, DENY),
            ("x/a", Ingress, "y/b", TCP, 8080, DENY),
            ("x/a", Ingress, "y/c", TCP, 8080, ALLOW),
            ("x/a", Ingress, "y/c", TCP, 80, DENY),
        ],
    );
}

#[test]
fn overlapping_ip_blocks_keep_the_shorter_blocks_ports() {
    let c = cluster(&[
        pod("x/a", "app=a", "10.0.1.1"),
        netpol(
            "x/wide",
            "{podSelector: {matchLabels: {app: a}}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}}], ports: [{port: 80}]}]}",
        ),
        // Another policy, a longer block inside, with an except of its own.
        netpol(
            "x/narrow",
            "{podSelector: {matchLabels: {app: a}}, ingress: [\
             {from: [{ipBlock: {cidr: 10.1.0.0/16}}], ports: [{port: 443}]}, \
             {from: [{ipBlock: {cidr: 10.1.1.0/24, except: [10.1.1.128/25]}}], ports: [{port: 8080}]}]}",
        ),
    ]);
    check(
        &c,
        &[
            ("x/a", Ingress, "10.1.2.3", TCP, 80, ALLOW),
            ("x/a", Ingress, "10.1.2.3", TCP, 443, ALLOW),
            ("x/a", Ingress, "10.1.2.3", TCP, 8080, DENY),
            ("x/a", Ingress, "10.1.2.3", TCP, 22, DENY),
            ("x/a", Ingress, "10.2.0.1", TCP, 80, ALLOW),
            ("x/a", Ingress, "10.2.0.1", TCP, 443, DENY),
            ("x/a", Ingress, "10.1.1.5", TCP, 80, ALLOW),
            ("x/a", Ingress, "10.1.1.5", TCP, 443, ALLOW),
            ("x/a", Ingress, "10.1.1.5", TCP, 8080, ALLOW),
            // Carved out of the /24 only: the /16 and /8 still hold.
            ("x/a", Ingress, "10.1.1.200", TCP, 80, ALLOW),
            ("x/a", Ingress, "10.1.1.200", TCP, 443, ALLOW),
            ("x/a", Ingress, "10.1.1.200", TCP, 8080, DENY),
            ("x/a", Ingress, "11.0.0.1", TCP, 80, DENY),
        ],
    );
}

#[test]
fn an_ipv6_catch_all_block_does_not_admit_ipv4_peers_nor_the_reverse() {
    let c = cluster(&[
        pod("x/a", "app=a", "10.0.1.1,fd00:1::1"),
        pod("x/b", "app=b", "10.0.1.2,fd00:1::2"),
        pod("x/c", "app=c", "10.0.1.3,fd00:1::3"),
        netpol(
            "x/v6",
            "{podSelector: {matchLabels: {app: a}}, ingress: [{from: [{ipBlock: {cidr: \"::/0\"}}], ports: [{port: 80}]}]}",
        ),
        netpol(
            "x/v4",
            "{podSelector: {matchLabels: {app: a}}, ingress: [{from: [{ipBlock: {cidr: 0.0.0.0/0}}], ports: [{port: 443}]}]}",
        ),
        netpol(
            "x/v6-except",
            "{podSelector: {matchLabels: {app: a}}, ingress: [{from: [{ipBlock: {cidr: \"fd00:1::/64\", except: [\"fd00:1::2/128\"]}}], ports: [{port: 8080}]}]}",
        ),
    ]);
    check(
        &c,
        &[
            ("x/a", Ingress, "2001:db8::1", TCP, 80, ALLOW),
            ("x/a", Ingress, "10.9.9.9", TCP, 80, DENY),
            ("x/a", Ingress, "::ffff:10.9.9.9", TCP, 80, DENY),
            ("x/a", Ingress, "x/b", TCP, 80, DENY),
            ("x/a", Ingress, "10.9.9.9", TCP, 443, ALLOW),
            ("x/a", Ingress, "2001:db8::1", TCP, 443, DENY),
            ("x/a", Ingress, "fd00:1::3", TCP, 8080, ALLOW),
            ("x/a", Ingress, "fd00:1::2", TCP, 8080, DENY),
            ("x/a", Ingress, "fd00:2::2", TCP, 8080, DENY),
        ],
    );
    check6(
        &c,
        &[
            ("x/a", Ingress, "x/b", TCP, 80, ALLOW),
            ("x/a", Ingress, "x/b", TCP, 443, DENY),
            ("x/a", Ingress, "x/b", TCP, 8080, DENY),
            ("x/a", Ingress, "x/c", TCP, 8080, ALLOW),
        ],
    );
}
