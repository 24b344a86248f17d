//! internalTrafficPolicy and externalTrafficPolicy Local.

use super::*;

#[test]
fn external_traffic_policy_local_adds_a_local_only_external_scope() {
    let mut s = svc(&["10.96.0.10"], &[("http", 80, Proto::Tcp)]);
    s.ports[0].node_port = Some(30000);
    s.external_local = true;
    let mut a = ready("10.0.0.1");
    a.node = Some("n1".into());
    let mut b = ready("10.0.0.2");
    b.node = Some("n2".into());
    let sl = slice(Family::V4, &[("http", 8080, Proto::Tcp)], vec![a, b]);
    let node: Vec<IpAddr> = vec!["10.100.0.1".parse().unwrap()];
    let fe = service_frontends(&s, &[&sl], Some("n1"), &node);
    let np: Vec<&Frontend> = fe
        .iter()
        .filter(|f| {
            f.key.port.to_host() == 30000
                && f.key.addr.is_v4()
                && ip_of(&f.key.addr).to_string() == "10.100.0.1"
        })
        .collect();
    assert_eq!(np.len(), 2);
    let internal = np.iter().find(|f| f.key.scope == SCOPE_INTERNAL).unwrap();
    let external = np.iter().find(|f| f.key.scope == SCOPE_EXTERNAL).unwrap();
    assert_eq!(
        internal.backends.len(),
        2,
        "pods and nodes reach every endpoint"
    );
    assert!(internal.flags & SVC_FLAG_EXT_LOCAL != 0);
    assert_eq!(
        external.backends.len(),
        1,
        "outside clients: this node's endpoints only"
    );
    assert!(external.backends[0].flags & BACKEND_LOCAL != 0);
    // the ClusterIP and loopback NodePort keep in-cluster semantics
    assert!(
        fe.iter()
            .filter(|f| f.key.scope == SCOPE_EXTERNAL)
            .all(|f| f.flags & SVC_FLAG_EXTERNAL != 0)
    );
}

#[test]
fn internal_traffic_policy_local_keeps_cluster_ips_to_this_nodes_endpoints() {
    // (endpoints, ClusterIP backends on n1, drop flag, NodePort backends)
    type Case<'a> = (Vec<EndpointInfo>, Vec<&'a str>, bool, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        // a local endpoint: only it; NodePorts (external destinations,
        // pods included) keep every endpoint
        (
            vec![on("n1", ready("10.0.0.1")), on("n2", ready("10.0.0.2"))],
            vec!["10.0.0.1:8080"],
            true,
            vec!["10.0.0.1:8080", "10.0.0.2:8080"],
        ),
        // none here, some elsewhere: empty, dropped
        (
            vec![on("n2", ready("10.0.0.2"))],
            vec![],
            true,
            vec!["10.0.0.2:8080"],
        ),
        // none anywhere: empty, refused as usual
        (vec![], vec![], false, vec![]),
        (vec![on("n1", gone("10.0.0.1"))], vec![], false, vec![]),
        // the local one terminates but serves: used, though n2 has a
        // ready one
        (
            vec![
                on("n1", terminating("10.0.0.1")),
                on("n2", ready("10.0.0.2")),
            ],
            vec!["10.0.0.1:8080"],
            true,
            vec!["10.0.0.2:8080"],
        ),
        // a local ready one hides the local terminating ones
        (
            vec![
                on("n1", terminating("10.0.0.1")),
                on("n1", ready("10.0.0.3")),
            ],
            vec!["10.0.0.3:8080"],
            true,
            vec!["10.0.0.3:8080"],
        ),
        // terminating and no longer serving: never
        (
            vec![on("n1", gone("10.0.0.1")), on("n2", ready("10.0.0.2"))],
            vec![],
            true,
            vec!["10.0.0.2:8080"],
        ),
    ];
    for (eps, want, drop, want_np) in cases {
        let mut s = svc(&["10.96.0.10"], &[("http", 80, Proto::Tcp)]);
        s.internal_local = true;
        s.ports[0].node_port = Some(30000);
        let sl = slice(Family::V4, &[("http", 8080, Proto::Tcp)], eps.clone());
        let node: Vec<IpAddr> = vec!["10.100.0.1".parse().unwrap(), "127.0.0.1".parse().unwrap()];
        let fe = service_frontends(&s, &[&sl], Some("n1"), &node);
        let at = |ip: &str, port: u16| {
            fe.iter()
                .find(|f| {
                    ip_of(&f.key.addr).to_string() == ip
                        && f.key.port.to_host() == port
                        && f.key.scope == SCOPE_INTERNAL
                })
                .unwrap_or_else(|| panic!("{ip}:{port} in {fe:?}"))
        };
        let names = |f: &Frontend| -> Vec<String> {
            f.backends
                .iter()
                .map(|b| format!("{}:{}", ip_of(&b.addr), b.port.to_host()))
                .collect()
        };
        let cip = at("10.96.0.10", 80);
        assert_eq!(names(cip), want, "ClusterIP, endpoints {eps:?}");
        assert_eq!(
            cip.flags & SVC_FLAG_INT_LOCAL != 0,
            drop,
            "drop flag, endpoints {eps:?}"
        );
        for (ip, port) in [("10.100.0.1", 30000), ("127.0.0.1", 30000)] {
            let f = at(ip, port);
            assert_eq!(names(f), want_np, "{ip}:{port}, endpoints {eps:?}");
            assert_eq!(f.flags & SVC_FLAG_INT_LOCAL, 0);
        }
    }
    // Cluster policy: the flag never appears.
    let s = svc(&["10.96.0.10"], &[("http", 80, Proto::Tcp)]);
    let sl = slice(
        Family::V4,
        &[("http", 8080, Proto::Tcp)],
        vec![on("n2", ready("10.0.0.2"))],
    );
    let fe = service_frontends(&s, &[&sl], Some("n1"), &[]);
    assert!(fe.iter().all(|f| f.flags & SVC_FLAG_INT_LOCAL == 0));
    assert_eq!(backends(&fe, 80, PROTO_TCP), vec!["10.0.0.2:8080"]);
}

#[test]
fn external_traffic_policy_local_falls_back_to_local_serving_terminating() {
    // (endpoints, external-scope backends on n1, in-cluster backends,
    // health check count)
    type Case<'a> = (Vec<EndpointInfo>, Vec<&'a str>, Vec<&'a str>, usize);
    let cases: Vec<Case> = vec![
        (
            vec![on("n1", ready("10.0.0.1")), on("n2", ready("10.0.0.2"))],
            vec!["10.0.0.1:8080"],
            vec!["10.0.0.1:8080", "10.0.0.2:8080"],
            1,
        ),
        // the local one terminates (still serving) while n2's is ready:
        // outside clients here still reach it; the health check fails
        // (kube-proxy counts ready endpoints only) so load balancers
        // move away while it drains
        (
            vec![
                on("n1", terminating("10.0.0.1")),
                on("n2", ready("10.0.0.2")),
            ],
            vec!["10.0.0.1:8080"],
            vec!["10.0.0.2:8080"],
            0,
        ),
        (
            vec![
                on("n1", terminating("10.0.0.1")),
                on("n1", ready("10.0.0.3")),
            ],
            vec!["10.0.0.3:8080"],
            vec!["10.0.0.3:8080"],
            1,
        ),
        (
            vec![on("n1", gone("10.0.0.1")), on("n2", ready("10.0.0.2"))],
            vec![],
            vec!["10.0.0.2:8080"],
            0,
        ),
        (
            vec![on("n2", terminating("10.0.0.2"))],
            vec![],
            vec!["10.0.0.2:8080"],
            0,
        ),
    ];
    for (eps, want_ext, want_int, health) in cases {
        let mut s = svc(&["10.96.0.10"], &[("http", 80, Proto::Tcp)]);
        s.external_local = true;
        s.ports[0].node_port = Some(30000);
        s.lb_ips = vec!["10.200.0.1".parse().unwrap()];
        let sl = slice(Family::V4, &[("http", 8080, Proto::Tcp)], eps.clone());
        let node: Vec<IpAddr> = vec!["10.100.0.1".parse().unwrap()];
        let fe = service_frontends(&s, &[&sl], Some("n1"), &node);
        for ip in ["10.100.0.1", "10.200.0.1"] {
            for (scope, want) in [(SCOPE_EXTERNAL, &want_ext), (SCOPE_INTERNAL, &want_int)] {
                let f = fe
                    .iter()
                    .find(|f| ip_of(&f.key.addr).to_string() == ip && f.key.scope == scope)
                    .unwrap();
                let got: Vec<String> = f
                    .backends
                    .iter()
                    .map(|b| format!("{}:{}", ip_of(&b.addr), b.port.to_host()))
                    .collect();
                assert_eq!(&got, want, "{ip} scope {scope}, endpoints {eps:?}");
            }
        }
        assert_eq!(
            local_ready_endpoints(&[&sl], Some("n1")),
            health,
            "health check, endpoints {eps:?}"
        );
    }
}
