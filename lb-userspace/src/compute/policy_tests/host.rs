//! The host and host-network pods.

use super::*;

#[test]
fn host_network_pods_are_never_selected_and_never_endpoints() {
    let c = cluster(&[
        pod("x/a", "app=a", "10.0.1.1"),
        pod_yaml(NODE, "x/h", "app=a", NODE_IP, "", true),
        pod_yaml("node-2", "x/r", "app=peer", OTHER_NODE_IP, "", true),
        netpol(
            "x/p",
            "{podSelector: {matchLabels: {app: a}}, \
             ingress: [{from: [{podSelector: {matchLabels: {app: peer}}}]}], \
             egress: [{to: [{podSelector: {matchLabels: {app: peer}}}]}]}",
        ),
    ]);
    assert_eq!(c.maps.endpoints.len(), 1, "{:?}", c.maps.endpoints);
    assert!(
        !c.maps
            .endpoints
            .contains_key(&net_addr(NODE_IP.parse().unwrap()))
    );
    assert_eq!(c.report.endpoints.len(), 1);
    // The node's address is the host, not the host-network pod.
    assert_eq!(c.identity("x/h"), ID_HOST);
    assert!(
        !c.maps
            .ipcache
            .contains_key(&(net_addr(OTHER_NODE_IP.parse().unwrap()), 128))
    );
    // Only x/a holds an identity: host-network pods get none.
    assert_eq!(c.report.identities.len(), 1, "{:?}", c.report.identities);
    check(
        &c,
        &[
            ("x/a", Ingress, "x/r", TCP, 80, DENY),
            ("x/a", Egress, "x/r", TCP, 80, DENY),
        ],
    );
    // An ipBlock reaches them.
    let c = cluster(&[
        pod("x/a", "app=a", "10.0.1.1"),
        pod_yaml("node-2", "x/r", "app=peer", OTHER_NODE_IP, "", true),
        netpol(
            "x/p",
            "{podSelector: {matchLabels: {app: a}}, egress: [{to: [{ipBlock: {cidr: 192.168.0.2/32}}]}]}",
        ),
    ]);
    check(
        &c,
        &[
            ("x/a", Egress, "x/r", TCP, 80, ALLOW),
            ("x/a", Egress, NODE_IP, TCP, 80, DENY),
        ],
    );
}

#[test]
fn this_nodes_addresses_always_reach_its_pods_on_ingress() {
    let c = cluster(&[
        pod("x/a", "app=a", "10.0.1.1,fd00:1::1"),
        netpol(
            "x/deny",
            "{podSelector: {}, policyTypes: [Ingress, Egress]}",
        ),
    ]);
    for ip in [NODE_IP, NODE_IP6, HOST_IF] {
        assert_eq!(
            c.maps.ipcache[&(net_addr(ip.parse().unwrap()), 128)],
            ID_HOST
        );
    }
    check(
        &c,
        &[
            ("x/a", Ingress, NODE_IP, TCP, 10250, ALLOW),
            ("x/a", Ingress, NODE_IP6, TCP, 10250, ALLOW),
            ("x/a", Ingress, HOST_IF, ICMP, 0, ALLOW),
            ("x/a", Ingress, OTHER_NODE_IP, TCP, 10250, DENY),
            ("x/a", Egress, NODE_IP, TCP, 6443, DENY),
            ("x/a", Egress, HOST_IF, UDP, 53, DENY),
        ],
    );
}
