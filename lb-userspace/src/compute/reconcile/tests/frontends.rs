//! Who holds a frontend: contests, refused externalIPs, node addresses.

use super::*;

#[test]
fn conflicting_cluster_ip_is_reported_and_first_owner_kept() {
    let mut r = Reconciler::new(Mirror::from_entries([], []), None);
    let mut w = Fake::default();
    let out = r
        .apply(
            &objs(&(svc("a", "10.96.0.10", "") + &svc("b", "10.96.0.10", ""))),
            true,
            &mut w,
        )
        .unwrap();
    assert_eq!(out.errors.len(), 2, "{:?}", out.errors); // marker and port
    assert!(
        out.errors[0].to_string().contains("Service x/b")
            && out.errors[0].to_string().contains("Service x/a")
    );
    assert!(
        out.errors.iter().all(|e| e.label() == "frontend_taken"),
        "{:?}",
        out.errors
    );
    assert_eq!(r.mirror().frontends().count(), 2);
}

#[test]
fn this_nodes_addresses_become_node_port_frontends() {
    let mut r = Reconciler::new(Mirror::from_entries([], []), Some("n1".into()));
    let mut w = Fake::default();
    let y = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: x}\nspec: {type: NodePort, clusterIP: 10.96.0.10, ports: [{port: 80, nodePort: 30000}]}\n---\n\
                 apiVersion: v1\nkind: Node\nmetadata: {name: n2}\nstatus: {addresses: [{type: InternalIP, address: 10.100.0.2}]}\n";
    r.apply(&objs(y), true, &mut w).unwrap();
    // ClusterIP marker + port, and loopback NodePort; not node n2's address
    assert_eq!(r.mirror().frontends().count(), 3);
    let n1 = "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nstatus: {addresses: [{type: InternalIP, address: 10.100.0.1}, {type: Hostname, address: n1}]}\n";
    r.apply(&objs(n1), false, &mut w).unwrap();
    let keys: Vec<String> = r.mirror().frontends().map(describe_key).collect();
    assert!(
        keys.contains(&"10.100.0.1:30000/TCP".to_string()),
        "{keys:?}"
    );
    assert_eq!(keys.len(), 4);
    r.apply(
        &[Change::Delete {
            kind: "Node".into(),
            key: ObjRef::new("", "n1"),
        }],
        false,
        &mut w,
    )
    .unwrap();
    assert_eq!(r.mirror().frontends().count(), 3);
}

#[test]
fn nodeport_addresses_pick_which_node_addresses_serve() {
    let mut r = Reconciler::new(Mirror::from_entries([], []), Some("n1".into()));
    r.node_port_cidrs = vec!["10.100.0.0/24".parse().unwrap()];
    let mut w = Fake::default();
    let y = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: x}\nspec: {type: NodePort, clusterIP: 10.96.0.10, ports: [{port: 80, nodePort: 30000}]}\n---\n\
                 apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nstatus: {addresses: [{type: InternalIP, address: 10.100.0.1}, {type: ExternalIP, address: 192.0.2.1}]}\n";
    r.apply(&objs(y), true, &mut w).unwrap();
    let keys: Vec<String> = r.mirror().frontends().map(describe_key).collect();
    assert!(
        keys.contains(&"10.100.0.1:30000/TCP".to_string()),
        "{keys:?}"
    );
    assert!(
        !keys.contains(&"192.0.2.1:30000/TCP".to_string()),
        "{keys:?}"
    );
    // Loopback serves NodePorts only where the CIDRs allow it (and by
    // default, without --nodeport-addresses).
    for (cidrs, loopback) in [
        ("10.100.0.0/24", false),
        ("10.100.0.0/24,127.0.0.0/8", true),
        ("", true),
    ] {
        let mut r = Reconciler::new(Mirror::from_entries([], []), Some("n1".into()));
        r.node_port_cidrs = cidrs
            .split(',')
            .filter(|c| !c.is_empty())
            .map(|c| c.parse().unwrap())
            .collect();
        r.apply(&objs(y), true, &mut Fake::default()).unwrap();
        let keys: Vec<String> = r.mirror().frontends().map(describe_key).collect();
        assert_eq!(
            keys.contains(&"127.0.0.1:30000/TCP".to_string()),
            loopback,
            "--nodeport-addresses {cidrs}: {keys:?}"
        );
    }
}

/// A Service with `externalIPs` at port 80 (its ClusterIP `cip`),
/// created `created` (None: no timestamp).
fn ext_svc(name: &str, cip: &str, ext: &str, created: Option<&str>) -> String {
    let ts = created
        .map(|t| format!(", creationTimestamp: '{t}'"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: x{ts}}}\nspec: {{clusterIP: {cip}, externalIPs: [{ext}], ports: [{{port: 80}}]}}\n---\n"
    )
}

fn holder(r: &Reconciler, k: &ServiceKey) -> Option<String> {
    assert_eq!(
        r.owner.contains_key(k),
        r.mirror().services().contains_key(k),
        "owned frontends and only they are in the maps"
    );
    r.owner.get(k).map(|o| o.to_string())
}

#[test]
fn contested_external_ip_goes_to_the_oldest_service_in_any_order_and_after_restarts() {
    let new = ext_svc(
        "a-new",
        "10.96.0.1",
        "10.200.0.9",
        Some("2024-01-01T00:00:00Z"),
    );
    let old = ext_svc(
        "b-old",
        "10.96.0.2",
        "10.200.0.9",
        Some("2020-01-01T00:00:00Z"),
    );
    let ext = fkey("10.200.0.9", 80);
    // (change sets in order)
    let orders: Vec<Vec<String>> = vec![
        vec![new.clone() + &old],
        vec![old.clone() + &new],
        vec![new.clone(), old.clone()],
        vec![old.clone(), new.clone()],
    ];
    for order in &orders {
        let mut r = Reconciler::new(Mirror::from_entries([], []), None);
        let mut w = Fake::default();
        let mut errors = vec![];
        for y in order {
            errors.extend(r.apply(&objs(y), true, &mut w).unwrap().errors);
        }
        assert_eq!(holder(&r, &ext).as_deref(), Some("x/b-old"), "{order:?}");
        // the loser is reported, naming both
        assert!(
            errors
                .iter()
                .any(|e| e.to_string().contains("Service x/a-new")
                    && e.to_string().contains("Service x/b-old")
                    && e.to_string().contains("10.200.0.9:80/TCP")),
            "{errors:?}"
        );
        // a restarted agent (its mirror from the maps, objects in
        // another order), and a full resync, keep the same holder
        let mut w2 = Fake {
            mirror: r.mirror().clone(),
            ..Default::default()
        };
        let mut r2 = Reconciler::new(r.mirror().clone(), None);
        r2.apply(&objs(&(old.clone() + &new)), true, &mut w2)
            .unwrap();
        assert_eq!(holder(&r2, &ext).as_deref(), Some("x/b-old"));
        r2.resync(&mut w2).unwrap();
        assert_eq!(holder(&r2, &ext).as_deref(), Some("x/b-old"));
        // the winner goes: the other takes the frontend over in place
        // (no removal in between); it comes back: it wins it again
        w.applied.clear();
        let del = Change::Delete {
            kind: "Service".into(),
            key: ObjRef::new("x", "b-old"),
        };
        r.apply(&[del], false, &mut w).unwrap();
        assert_eq!(holder(&r, &ext).as_deref(), Some("x/a-new"));
        assert!(
            !w.applied
                .iter()
                .any(|o| matches!(o, Op::DelService { key } if *key == ext)),
            "{:?}",
            w.applied
        );
        r.apply(&objs(&old), false, &mut w).unwrap();
        assert_eq!(holder(&r, &ext).as_deref(), Some("x/b-old"));
        // the loser stops wanting it: nothing changes for the holder
        let moved = ext_svc(
            "a-new",
            "10.96.0.1",
            "10.200.0.10",
            Some("2024-01-01T00:00:00Z"),
        );
        r.apply(&objs(&moved), false, &mut w).unwrap();
        assert_eq!(holder(&r, &ext).as_deref(), Some("x/b-old"));
        assert!(r.contenders.is_empty(), "{:?}", r.contenders);
    }
    // Same age, or no timestamps: namespace/name decides.
    for (a, b) in [
        (
            ext_svc("a", "10.96.0.1", "10.200.0.9", Some("2024-01-01T00:00:00Z")),
            ext_svc("b", "10.96.0.2", "10.200.0.9", Some("2024-01-01T00:00:00Z")),
        ),
        (
            ext_svc("a", "10.96.0.1", "10.200.0.9", None),
            ext_svc("b", "10.96.0.2", "10.200.0.9", None),
        ),
    ] {
        for y in [a.clone() + &b, b.clone() + &a] {
            let mut r = Reconciler::new(Mirror::from_entries([], []), None);
            r.apply(&objs(&y), true, &mut Fake::default()).unwrap();
            assert_eq!(holder(&r, &ext).as_deref(), Some("x/a"));
        }
    }
}

#[test]
fn a_cluster_ip_always_wins_over_an_external_ip() {
    // The thief is older, and --external-ip-cidrs lets its externalIP in.
    let thief = ext_svc(
        "a-thief",
        "10.96.0.1",
        "10.96.0.50",
        Some("2000-01-01T00:00:00Z"),
    );
    let dns = svc(
        "z-dns",
        "10.96.0.50",
        ", creationTimestamp: '2024-01-01T00:00:00Z'",
    );
    let k = fkey("10.96.0.50", 80);
    for order in [
        vec![thief.clone() + &dns],
        vec![thief.clone(), dns.clone()],
        vec![dns.clone(), thief.clone()],
    ] {
        let mut r = Reconciler::new(Mirror::from_entries([], []), None);
        r.external_ip_cidrs = vec!["0.0.0.0/0".parse().unwrap()];
        let mut w = Fake::default();
        let mut errors = vec![];
        for y in &order {
            errors.extend(r.apply(&objs(y), true, &mut w).unwrap().errors);
        }
        assert_eq!(holder(&r, &k).as_deref(), Some("x/z-dns"), "{order:?}");
        assert!(
            errors
                .iter()
                .any(|e| e.to_string().contains("Service x/a-thief")
                    && e.to_string().contains("Service x/z-dns")
                    && e.to_string().contains("ClusterIP")),
            "{errors:?}"
        );
    }
}

#[test]
fn external_ips_on_node_addresses_or_cluster_ips_are_refused_unless_allowed() {
    let node = "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nstatus: {addresses: [{type: InternalIP, address: 10.100.0.1}]}\n---\n";
    let other = svc("c", "10.96.0.10", "");
    // (--external-ip-cidrs, externalIP, refused with a message containing)
    let cases: Vec<(&str, &str, Option<&str>)> = vec![
        ("", "10.100.0.1", Some("address of this node")),
        ("", "127.0.0.1", Some("address of this node")),
        ("", "10.96.0.10", Some("ClusterIP of Service x/c")),
        ("", "10.200.0.5", None),
        (
            "",
            "10.96.5.5",
            Some("inside the Service CIDR 10.96.0.0/16"),
        ),
        ("10.96.0.0/16", "10.96.5.5", None),
        ("10.100.0.0/24", "10.100.0.1", None),
        ("10.96.0.0/16,10.200.0.0/16", "10.96.0.10", None),
        (
            "10.100.0.0/24",
            "10.200.0.5",
            Some("outside --external-ip-cidrs"),
        ),
    ];
    for (allow, ip, refused) in cases {
        let mut r = Reconciler::new(Mirror::from_entries([], []), Some("n1".into()));
        // The Service range closes 10.96.0.0/16 (here: an unallocated
        // 10.96.5.5) but not 10.200.0.0/16.
        r.service_cidrs = vec!["10.96.0.0/16".parse().unwrap()];
        r.external_ip_cidrs = allow
            .split(',')
            .filter(|c| !c.is_empty())
            .map(|c| c.parse().unwrap())
            .collect();
        let y = format!(
            "{node}{other}{}",
            ext_svc("e", "10.96.0.20", ip, None).replace("port: 80", "port: 8080")
        );
        let out = r.apply(&objs(&y), true, &mut Fake::default()).unwrap();
        let programmed = holder(&r, &fkey(ip, 8080)).is_some();
        match refused {
            Some(why) => {
                assert!(!programmed, "{allow} {ip}");
                assert!(
                    out.errors
                        .iter()
                        .any(|e| e.to_string().contains("Service x/e")
                            && e.to_string().contains("spec.externalIPs[0]")
                            && e.to_string().contains(why)),
                    "{allow} {ip}: {:?}",
                    out.errors
                );
            }
            None => {
                assert!(programmed, "{allow} {ip}");
                assert!(out.errors.is_empty(), "{allow} {ip}: {:?}", out.errors);
            }
        }
    }
    // Refusal follows the addresses: a ClusterIP or node address that
    // appears later takes the externalIP out; gone, it comes back.
    let mut r = Reconciler::new(Mirror::from_entries([], []), Some("n1".into()));
    let mut w = Fake::default();
    let e = ext_svc("e", "10.96.0.20", "10.96.0.77", None).replace("port: 80", "port: 8080");
    r.apply(&objs(&e), true, &mut w).unwrap();
    let k = fkey("10.96.0.77", 8080);
    assert!(holder(&r, &k).is_some());
    r.apply(&objs(&svc("f", "10.96.0.77", "")), false, &mut w)
        .unwrap();
    assert!(holder(&r, &k).is_none());
    let del = Change::Delete {
        kind: "Service".into(),
        key: ObjRef::new("x", "f"),
    };
    r.apply(&[del], false, &mut w).unwrap();
    assert!(holder(&r, &k).is_some());
    let n = "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nstatus: {addresses: [{type: InternalIP, address: 10.96.0.77}]}\n";
    r.apply(&objs(n), false, &mut w).unwrap();
    assert!(holder(&r, &k).is_none());
}
