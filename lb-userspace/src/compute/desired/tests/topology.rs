//! Topology hints.

use super::*;

#[test]
fn topology_hints_follow_kube_proxy() {
    let a1 = || on("n1", ready("10.0.0.1"));
    let a2 = || on("n2", ready("10.0.0.2"));
    let b3 = || on("n3", ready("10.0.0.3"));
    let all = vec!["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"];
    // (endpoints, this node's zone, Cluster-policy backends on n1)
    type Case<'a> = (&'a str, Vec<EndpointInfo>, Option<&'a str>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "no hints: every endpoint",
            vec![a1(), a2(), b3()],
            Some("a"),
            all.clone(),
        ),
        (
            "zone hints: this zone's endpoints",
            vec![
                hinted(a1(), &["a"], &[]),
                hinted(a2(), &["a"], &[]),
                hinted(b3(), &["b"], &[]),
            ],
            Some("a"),
            vec!["10.0.0.1:8080", "10.0.0.2:8080"],
        ),
        (
            "an endpoint hinted for several zones",
            vec![
                hinted(a1(), &["b"], &[]),
                hinted(a2(), &["b"], &[]),
                hinted(b3(), &["a", "b"], &[]),
            ],
            Some("a"),
            vec!["10.0.0.3:8080"],
        ),
        (
            "one ready endpoint without hints: hints ignored",
            vec![hinted(a1(), &["a"], &[]), hinted(a2(), &["a"], &[]), b3()],
            Some("a"),
            all.clone(),
        ),
        (
            "an endpoint with only a node hint lacks a zone hint",
            vec![
                hinted(a1(), &["a"], &[]),
                hinted(a2(), &["a"], &[]),
                hinted(b3(), &[], &["n3"]),
            ],
            Some("a"),
            all.clone(),
        ),
        (
            "no endpoint for this zone: every endpoint",
            vec![hinted(a2(), &["b"], &[]), hinted(b3(), &["b"], &[])],
            Some("a"),
            vec!["10.0.0.2:8080", "10.0.0.3:8080"],
        ),
        (
            "this node has no zone label: every endpoint",
            vec![
                hinted(a1(), &["a"], &[]),
                hinted(a2(), &["a"], &[]),
                hinted(b3(), &["b"], &[]),
            ],
            None,
            all.clone(),
        ),
        (
            "endpoints not ready need no hints (and are never used)",
            vec![
                hinted(a1(), &["a"], &[]),
                on("n1", not_ready("10.0.0.4")),
                hinted(b3(), &["b"], &[]),
            ],
            Some("a"),
            vec!["10.0.0.1:8080"],
        ),
        (
            "node hints everywhere, one for this node: that one",
            vec![
                hinted(a1(), &["a"], &["n1"]),
                hinted(a2(), &["a"], &["n2"]),
                hinted(b3(), &["b"], &["n3"]),
            ],
            Some("a"),
            vec!["10.0.0.1:8080"],
        ),
        (
            "node hints, none for this node: zone hints",
            vec![hinted(a2(), &["a"], &["n2"]), hinted(b3(), &["b"], &["n3"])],
            Some("a"),
            vec!["10.0.0.2:8080"],
        ),
        (
            "no ready endpoint: serving terminating ones, hints aside",
            vec![
                hinted(on("n1", terminating("10.0.0.1")), &["a"], &[]),
                hinted(on("n3", terminating("10.0.0.3")), &["b"], &[]),
            ],
            Some("a"),
            vec!["10.0.0.1:8080", "10.0.0.3:8080"],
        ),
    ];
    let names = |bs: &[Backend]| -> Vec<String> {
        bs.iter()
            .map(|b| format!("{}:{}", ip_of(&b.addr), b.port.to_host()))
            .collect()
    };
    for (what, eps, zone, want) in cases {
        let mut s = svc(&["10.96.0.10"], &[("http", 80, Proto::Tcp)]);
        s.ports[0].node_port = Some(30000);
        let sl = slice(Family::V4, &[("http", 8080, Proto::Tcp)], eps);
        let node: Vec<IpAddr> = vec!["10.100.0.1".parse().unwrap(), "127.0.0.1".parse().unwrap()];
        let here = Here {
            node: Some("n1"),
            zone,
        };
        let fe = frontends_here(&s, &[&sl], here, &node);
        // ClusterIP, loopback and node-address NodePorts alike: kube-proxy
        // filters its Cluster-policy endpoints for internal and
        // external traffic
        for f in fe.iter().filter(|f| f.flags & SVC_FLAG_ADDR_ONLY == 0) {
            assert_eq!(
                names(&f.backends),
                want,
                "{what}: {}:{}",
                ip_of(&f.key.addr),
                f.key.port.to_host()
            );
        }
    }
}

#[test]
fn topology_hints_leave_traffic_policy_local_alone() {
    let eps = vec![
        hinted(on("n1", ready("10.0.0.1")), &["b"], &[]),
        hinted(on("n2", ready("10.0.0.2")), &["a"], &[]),
    ];
    let here = Here {
        node: Some("n1"),
        zone: Some("a"),
    };
    let node: Vec<IpAddr> = vec!["10.100.0.1".parse().unwrap()];
    let sl = slice(Family::V4, &[("http", 8080, Proto::Tcp)], eps);
    // iTP Local: this node's endpoint, whatever its hints
    let mut s = svc(&["10.96.0.10"], &[("http", 80, Proto::Tcp)]);
    s.internal_local = true;
    let fe = frontends_here(&s, &[&sl], here, &node);
    assert_eq!(backends(&fe, 80, PROTO_TCP), vec!["10.0.0.1:8080"]);
    // ETP Local: the external scope holds this node's endpoint; the
    // in-cluster entry (Cluster policy) follows the hints
    let mut s = svc(&["10.96.0.10"], &[("http", 80, Proto::Tcp)]);
    s.external_local = true;
    s.ports[0].node_port = Some(30000);
    let fe = frontends_here(&s, &[&sl], here, &node);
    let at = |scope: u8| -> Vec<String> {
        fe.iter()
            .find(|f| {
                f.key.port.to_host() == 30000
                    && f.key.scope == scope
                    && f.flags & SVC_FLAG_EXTERNAL != 0
            })
            .unwrap()
            .backends
            .iter()
            .map(|b| format!("{}:{}", ip_of(&b.addr), b.port.to_host()))
            .collect()
    };
    assert_eq!(at(SCOPE_EXTERNAL), vec!["10.0.0.1:8080"]);
    assert_eq!(at(SCOPE_INTERNAL), vec!["10.0.0.2:8080"]);
}
