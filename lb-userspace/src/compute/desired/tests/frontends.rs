//! Which frontends a Service gets: ports, families, NodePorts,
//! LoadBalancer IPs, externalIPs, source ranges, skipped Services.

use super::*;

#[test]
fn one_port_number_over_tcp_and_udp_and_several_ports() {
    let s = svc(
        &["10.96.0.10"],
        &[
            ("dns-tcp", 53, Proto::Tcp),
            ("dns", 53, Proto::Udp),
            ("metrics", 9153, Proto::Tcp),
        ],
    );
    let sl = slice(
        Family::V4,
        &[
            ("dns-tcp", 5353, Proto::Tcp),
            ("dns", 5354, Proto::Udp),
            ("metrics", 9153, Proto::Tcp),
        ],
        vec![ready("10.0.0.1")],
    );
    let fe = service_frontends(&s, &[&sl], None, &[]);
    assert_eq!(backends(&fe, 53, PROTO_TCP), vec!["10.0.0.1:5353"]);
    assert_eq!(backends(&fe, 53, PROTO_UDP), vec!["10.0.0.1:5354"]);
    assert_eq!(backends(&fe, 9153, PROTO_TCP), vec!["10.0.0.1:9153"]);
    // three ports + the address marker
    assert_eq!(fe.len(), 4);
    assert_eq!(
        fe.iter()
            .filter(|f| f.flags & SVC_FLAG_ADDR_ONLY != 0)
            .count(),
        1
    );
}

#[test]
fn families_take_only_their_slices() {
    let s = svc(&["10.96.0.10", "fd00:96::a"], &[("", 80, Proto::Tcp)]);
    let v4 = slice(
        Family::V4,
        &[("", 8080, Proto::Tcp)],
        vec![ready("10.0.0.1")],
    );
    let mut v6 = slice(
        Family::V6,
        &[("", 8080, Proto::Tcp)],
        vec![ready("fd00::1")],
    );
    v6.key.name = "v6".into();
    let fe = service_frontends(&s, &[&v4, &v6], None, &[]);
    let v4fe: Vec<_> = fe
        .iter()
        .filter(|f| f.key.addr.is_v4() && f.key.port.to_host() == 80)
        .collect();
    let v6fe: Vec<_> = fe
        .iter()
        .filter(|f| !f.key.addr.is_v4() && f.key.port.to_host() == 80)
        .collect();
    assert_eq!(v4fe.len(), 1);
    assert_eq!(v6fe.len(), 1);
    assert_eq!(ip_of(&v4fe[0].backends[0].addr).to_string(), "10.0.0.1");
    assert_eq!(ip_of(&v6fe[0].backends[0].addr).to_string(), "fd00::1");
}

#[test]
fn node_ports_lb_ips_and_external_ips_per_family() {
    let mut s = svc(&["10.96.0.10"], &[("http", 80, Proto::Tcp)]);
    s.ports[0].node_port = Some(30000);
    s.lb_ips = vec![
        "10.200.0.1".parse().unwrap(),
        "fd00:200::1".parse().unwrap(),
    ];
    s.external_ips = vec!["10.200.0.2".parse().unwrap()];
    let sl = slice(
        Family::V4,
        &[("http", 8080, Proto::Tcp)],
        vec![ready("10.0.0.1")],
    );
    let node: Vec<IpAddr> = vec![
        "10.100.0.1".parse().unwrap(),
        "fd00:100::1".parse().unwrap(),
        "127.0.0.1".parse().unwrap(),
    ];
    let fe = service_frontends(&s, &[&sl], None, &node);
    let mut got: Vec<(String, u8, usize)> = fe
        .iter()
        .filter(|f| f.flags & SVC_FLAG_ADDR_ONLY == 0)
        .map(|f| {
            (
                format!("{}:{}", ip_of(&f.key.addr), f.key.port.to_host()),
                f.flags,
                f.backends.len(),
            )
        })
        .collect();
    got.sort();
    // IPv6 addresses get nothing: the Service has no IPv6 ClusterIP.
    let ext = SVC_FLAG_EXTERNAL;
    let np = SVC_FLAG_NODEPORT;
    assert_eq!(
        got,
        vec![
            ("10.100.0.1:30000".to_string(), ext | np, 1),
            ("10.200.0.1:80".to_string(), ext, 1),
            ("10.200.0.2:80".to_string(), ext, 1),
            ("10.96.0.10:80".to_string(), 0, 1),
            ("127.0.0.1:30000".to_string(), np, 1),
        ]
    );
}

#[test]
fn source_ranges_apply_to_load_balancer_ips_of_their_own_family() {
    // (ranges, IPv4 LB IP's ranges, IPv6 LB IP's ranges); an empty list
    // means no filter (no flag)
    let cases: Vec<(Vec<&str>, Vec<&str>, Vec<&str>)> = vec![
        (vec!["192.0.2.0/24", "::/0"], vec!["192.0.2.0/24"], vec![]),
        (vec!["fd00:1::/64"], vec![], vec!["fd00:1::/64"]),
        (
            vec!["10.0.0.0/8", " fd00:2::/48"],
            vec!["10.0.0.0/8"],
            vec!["fd00:2::/48"],
        ),
        (vec!["0.0.0.0/0", "10.0.0.0/8"], vec![], vec![]),
        (vec![], vec![], vec![]),
    ];
    for (ranges, want4, want6) in cases {
        let mut s = svc(&["10.96.0.10", "fd00:96::a"], &[("http", 80, Proto::Tcp)]);
        s.ports[0].node_port = Some(30000);
        s.lb_ips = vec![
            "10.200.0.1".parse().unwrap(),
            "fd00:200::1".parse().unwrap(),
        ];
        s.source_ranges = ranges.iter().map(|r| r.parse().unwrap()).collect();
        let node: Vec<IpAddr> = vec![
            "10.100.0.1".parse().unwrap(),
            "fd00:100::1".parse().unwrap(),
        ];
        let fe = service_frontends(&s, &[], None, &node);
        for (ip, want) in [("10.200.0.1", &want4), ("fd00:200::1", &want6)] {
            let f = fe
                .iter()
                .find(|f| ip_of(&f.key.addr).to_string() == ip)
                .unwrap();
            let want: Vec<crate::model::cidr::Cidr> =
                want.iter().map(|r| r.parse().unwrap()).collect();
            assert_eq!(f.source_ranges, want, "{ip}, ranges {ranges:?}");
            assert_eq!(
                f.flags & SVC_FLAG_SOURCE_RANGES != 0,
                !want.is_empty(),
                "{ip}, ranges {ranges:?}"
            );
        }
        // never on NodePorts or ClusterIPs
        assert!(
            fe.iter()
                .filter(|f| !["10.200.0.1", "fd00:200::1"]
                    .contains(&ip_of(&f.key.addr).to_string().as_str()))
                .all(|f| f.source_ranges.is_empty() && f.flags & SVC_FLAG_SOURCE_RANGES == 0)
        );
    }
}

#[test]
fn skipped_services_get_nothing() {
    let mut s = svc(&["10.96.0.10"], &[("", 80, Proto::Tcp)]);
    s.skip = Some("headless");
    let sl = slice(Family::V4, &[("", 80, Proto::Tcp)], vec![ready("10.0.0.1")]);
    assert!(service_frontends(&s, &[&sl], None, &[]).is_empty());
}
