//! Which endpoints become backends: conditions, ports, duplicates,
//! draining.

use super::*;

#[test]
fn endpoint_conditions_pick_ready_else_serving_terminating() {
    // (endpoints, expected backends)
    let cases: Vec<(Vec<EndpointInfo>, Vec<&str>)> = vec![
        (
            vec![ready("10.0.0.1"), ready("10.0.0.2")],
            vec!["10.0.0.1:80", "10.0.0.2:80"],
        ),
        // not ready and not terminating: never used
        (
            vec![ready("10.0.0.1"), not_ready("10.0.0.2")],
            vec!["10.0.0.1:80"],
        ),
        // a ready one hides the terminating ones
        (
            vec![ready("10.0.0.1"), terminating("10.0.0.2")],
            vec!["10.0.0.1:80"],
        ),
        // no ready one: serving+terminating ones serve
        (
            vec![terminating("10.0.0.2"), gone("10.0.0.3")],
            vec!["10.0.0.2:80"],
        ),
        (vec![gone("10.0.0.3")], vec![]),
        (vec![], vec![]),
    ];
    for (eps, want) in cases {
        let s = svc(&["10.96.0.10"], &[("http", 8080, Proto::Tcp)]);
        let sl = slice(Family::V4, &[("http", 80, Proto::Tcp)], eps.clone());
        let fe = service_frontends(&s, &[&sl], None, &[]);
        assert_eq!(backends(&fe, 8080, PROTO_TCP), want, "endpoints {eps:?}");
    }
}

#[test]
fn named_target_port_resolves_per_slice() {
    let s = svc(&["10.96.0.10"], &[("http", 8080, Proto::Tcp)]);
    let mut a = slice(
        Family::V4,
        &[("http", 80, Proto::Tcp)],
        vec![ready("10.0.0.1")],
    );
    a.key.name = "a".into();
    let b = slice(
        Family::V4,
        &[("http", 9090, Proto::Tcp)],
        vec![ready("10.0.0.2")],
    );
    let fe = service_frontends(&s, &[&a, &b], None, &[]);
    assert_eq!(
        backends(&fe, 8080, PROTO_TCP),
        vec!["10.0.0.1:80", "10.0.0.2:9090"]
    );
}

#[test]
fn duplicate_endpoints_across_slices_count_once() {
    let s = svc(&["10.96.0.10"], &[("", 80, Proto::Tcp)]);
    let a = slice(Family::V4, &[("", 80, Proto::Tcp)], vec![ready("10.0.0.1")]);
    let mut b = a.clone();
    b.key.name = "b".into();
    assert_eq!(
        backends(&service_frontends(&s, &[&a, &b], None, &[]), 80, PROTO_TCP),
        vec!["10.0.0.1:80"]
    );
}

#[test]
fn endpoints_listed_but_unusable_drain_on_external_frontends() {
    // (endpoints, NodePort backends, NodePort draining)
    let cases: Vec<(Vec<EndpointInfo>, Vec<&str>, Vec<&str>)> = vec![
        (
            vec![on("n1", ready("10.0.0.1")), on("n2", ready("10.0.0.2"))],
            vec!["10.0.0.1:8080", "10.0.0.2:8080"],
            vec![],
        ),
        // terminating (still serving), not ready, or its pod gone
        // (terminating, not serving): listed, so its flows drain
        (
            vec![
                on("n1", terminating("10.0.0.1")),
                on("n2", ready("10.0.0.2")),
            ],
            vec!["10.0.0.2:8080"],
            vec!["10.0.0.1:8080"],
        ),
        (
            vec![on("n1", not_ready("10.0.0.1")), on("n2", ready("10.0.0.2"))],
            vec!["10.0.0.2:8080"],
            vec!["10.0.0.1:8080"],
        ),
        (
            vec![on("n1", gone("10.0.0.1")), on("n2", ready("10.0.0.2"))],
            vec!["10.0.0.2:8080"],
            vec!["10.0.0.1:8080"],
        ),
        // the terminating one serves again (no ready one left): in a
        // slot, not draining
        (
            vec![
                on("n1", terminating("10.0.0.1")),
                on("n2", not_ready("10.0.0.2")),
            ],
            vec!["10.0.0.1:8080"],
            vec!["10.0.0.2:8080"],
        ),
        // gone from every slice: nothing to drain to
        (
            vec![on("n2", ready("10.0.0.2"))],
            vec!["10.0.0.2:8080"],
            vec![],
        ),
        (
            vec![on("n1", gone("10.0.0.1"))],
            vec![],
            vec!["10.0.0.1:8080"],
        ),
    ];
    let names = |bs: &[Backend]| -> Vec<String> {
        bs.iter()
            .map(|b| format!("{}:{}", ip_of(&b.addr), b.port.to_host()))
            .collect()
    };
    for (eps, want, want_draining) in cases {
        let mut s = svc(&["10.96.0.10"], &[("http", 80, Proto::Tcp)]);
        s.ports[0].node_port = Some(30000);
        s.lb_ips = vec!["10.200.0.1".parse().unwrap()];
        let sl = slice(Family::V4, &[("http", 8080, Proto::Tcp)], eps.clone());
        let node: Vec<IpAddr> = vec!["10.100.0.1".parse().unwrap(), "127.0.0.1".parse().unwrap()];
        let fe = service_frontends(&s, &[&sl], Some("n1"), &node);
        for f in fe.iter().filter(|f| f.flags & SVC_FLAG_ADDR_ONLY == 0) {
            let at = format!("{}:{}", ip_of(&f.key.addr), f.key.port.to_host());
            assert_eq!(names(&f.backends), want, "{at}, endpoints {eps:?}");
            if f.flags & SVC_FLAG_EXTERNAL != 0 {
                assert_eq!(names(&f.draining), want_draining, "{at}, endpoints {eps:?}");
            } else {
                // ClusterIPs and loopback NodePorts: the socket hooks
                // track nothing, so nothing drains there
                assert!(f.draining.is_empty(), "{at}, endpoints {eps:?}");
            }
        }
        // the draining backend keeps its identity (locality included)
        for f in fe.iter().filter(|f| f.flags & SVC_FLAG_EXTERNAL != 0) {
            for b in &f.draining {
                let local = ip_of(&b.addr).to_string() == "10.0.0.1";
                assert_eq!(b.flags, if local { BACKEND_LOCAL } else { 0 });
            }
        }
    }
}
