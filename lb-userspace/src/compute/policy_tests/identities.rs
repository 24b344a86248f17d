//! Identities, endpoint ids, flags.

use super::*;

#[test]
fn identities_are_shared_by_equal_labels_in_one_namespace_only() {
    let mut c = cluster(&[
        pod("x/a", "app=web", "10.0.1.1,fd00:1::1"),
        remote_pod("x/b", "app=web", "10.0.2.2"),
        pod("y/c", "app=web", "10.0.1.3"),
        pod("x/d", "app=db", "10.0.1.4"),
        pod("w/e", "app=web", "10.0.1.5"),
    ]);
    let id = |c: &Cluster, p: &str| c.identity(p);
    assert_eq!(id(&c, "x/a"), id(&c, "x/b"));
    assert_ne!(id(&c, "x/a"), id(&c, "y/c"));
    assert_ne!(id(&c, "x/a"), id(&c, "x/d"));
    assert_ne!(id(&c, "y/c"), id(&c, "w/e"));
    // Both addresses of a pod, and its endpoint, carry its identity.
    let v6 = net_addr("fd00:1::1".parse().unwrap());
    assert_eq!(c.maps.ipcache[&(v6, 128)], id(&c, "x/a"));
    assert_eq!(c.maps.endpoints[&v6], c.ep("x/a"));
    assert_eq!(c.ep("x/a").identity, id(&c, "x/a"));
    for i in [id(&c, "x/a"), id(&c, "y/c"), id(&c, "x/d")] {
        assert!((ID_FIRST_LABELS..ID_FIRST_CIDR).contains(&i));
    }
    let web = c
        .report
        .identities
        .iter()
        .find(|i| i.identity == id(&c, "x/a"))
        .unwrap();
    assert_eq!((web.namespace.as_str(), web.pods), ("x", 2));
    assert_eq!(c.report.identities.len(), 4);

    // A Namespace object without labels only names what was assumed.
    let before = id(&c, "w/e");
    c.apply(&namespace("w", ""));
    c.recompute();
    assert_eq!(id(&c, "w/e"), before);

    // An identity no pod holds is forgotten.
    c.delete("Pod", "x/d");
    c.recompute();
    assert_eq!(c.report.identities.len(), 3);
}

#[test]
fn endpoint_ids_survive_a_recompute_and_a_restart() {
    let mut c = cluster(&[
        pod("x/b", "app=b", "10.0.1.2,fd00:1::2"),
        pod("x/c", "app=c", "10.0.1.3"),
        remote_pod("x/r", "app=r", "10.0.2.1"),
        netpol(
            "x/p",
            "{podSelector: {}, ingress: [{from: [{podSelector: {matchLabels: {app: b}}}]}]}",
        ),
    ]);
    // Local pods only.
    assert_eq!(c.maps.endpoints.len(), 3);
    assert!(
        !c.maps
            .endpoints
            .contains_key(&net_addr("10.0.2.1".parse().unwrap()))
    );
    let (b, cc) = (c.ep("x/b").ep_id, c.ep("x/c").ep_id);
    assert_ne!(b, cc);

    let first = c.maps.clone();
    c.recompute();
    assert_eq!(
        c.maps, first,
        "a recompute of the same snapshot changes nothing"
    );

    // A new pod that sorts first takes a new id; the others keep theirs.
    c.apply(&pod("x/a", "app=a", "10.0.1.1"));
    c.recompute();
    let a = c.ep("x/a").ep_id;
    assert_eq!((c.ep("x/b").ep_id, c.ep("x/c").ep_id), (b, cc));
    assert!(a != b && a != cc);

    // A pod leaving frees nothing the others hold.
    c.delete("Pod", "x/b");
    c.recompute();
    assert_eq!((c.ep("x/a").ep_id, c.ep("x/c").ep_id), (a, cc));
    check(&c, &[("x/c", Ingress, "x/a", TCP, 80, DENY)]);

    // A restarted agent reads the ids back from the maps and computes the
    // same maps (identities are derived from the labels).
    let before = c.maps.clone();
    c.ids = Identities::default();
    c.ep_ids = EpIds::adopt(&before);
    c.recompute();
    assert_eq!(c.maps, before);
}

#[test]
fn any_ingress_and_any_egress_flags_follow_the_policies() {
    let rows: &[(&[&str], u32)] = &[
        (&[], 0),
        // Selecting no pod still isolates that direction (on some node).
        (
            &["{podSelector: {matchLabels: {app: nobody}}}"],
            POL_F_ANY_INGRESS,
        ),
        (&["{podSelector: {}, ingress: [{}]}"], POL_F_ANY_INGRESS),
        (
            &["{podSelector: {}, policyTypes: [Egress]}"],
            POL_F_ANY_EGRESS,
        ),
        (
            &["{podSelector: {}, egress: [{}]}"],
            POL_F_ANY_INGRESS | POL_F_ANY_EGRESS,
        ),
        (
            &[
                "{podSelector: {}, policyTypes: [Ingress]}",
                "{podSelector: {}, policyTypes: [Egress]}",
            ],
            POL_F_ANY_INGRESS | POL_F_ANY_EGRESS,
        ),
    ];
    for (specs, flags) in rows {
        let mut docs = vec![pod("x/a", "app=a", "10.0.1.1")];
        for (i, s) in specs.iter().enumerate() {
            docs.push(netpol(&format!("z/p{i}"), s));
        }
        let c = cluster(&docs);
        assert_eq!(c.maps.flags, *flags, "{specs:?}");
        // x/a is never selected by a policy of namespace z.
        assert_eq!(c.isolation("x/a"), (false, false));
    }
    // The flags drop when the policy goes.
    let mut c = cluster(&[
        pod("x/a", "app=a", "10.0.1.1"),
        netpol("x/p", "{podSelector: {}, egress: [{}]}"),
    ]);
    assert_eq!(c.maps.flags, POL_F_ANY_INGRESS | POL_F_ANY_EGRESS);
    c.delete("NetworkPolicy", "x/p");
    c.recompute();
    assert_eq!(c.maps.flags, 0);
    assert_eq!(c.isolation("x/a"), (false, false));
}

#[test]
fn a_finished_pod_is_neither_an_endpoint_nor_in_the_ipcache() {
    let mut c = cluster(&[
        pod("x/a", "app=a", "10.0.1.1"),
        pod("x/b", "app=b", "10.0.1.2"),
        netpol(
            "x/p",
            "{podSelector: {matchLabels: {app: a}}, ingress: [{from: [{podSelector: {matchLabels: {app: b}}}]}]}",
        ),
    ]);
    check(&c, &[("x/a", Ingress, "10.0.1.2", TCP, 80, ALLOW)]);
    c.apply(&pod("x/b", "app=b", "10.0.1.2").replace("phase: Running", "phase: Succeeded"));
    c.recompute();
    let b = net_addr("10.0.1.2".parse().unwrap());
    assert!(!c.maps.ipcache.contains_key(&(b, 128)));
    assert!(!c.maps.endpoints.contains_key(&b));
    check(&c, &[("x/a", Ingress, "10.0.1.2", TCP, 80, DENY)]);
}

/// Egress named ports through an ipBlock are granted per peer identity,
/// so they must not reach replicas (same labels, same identity) that the
/// block leaves out: an `except`ed address, or an address outside it.
#[test]
fn an_egress_ip_block_with_a_named_port_reaches_only_pods_inside_it() {
    let c = cluster(&[
        pod("x/cli", "app=cli", "10.0.1.1"),
        pod_ports("x/s1", "app=srv", "10.0.1.2", "http=8080"),
        pod_ports("x/s2", "app=srv", "10.0.1.3", "http=8080"),
        pod_yaml("node-2", "x/s3", "app=srv", "10.1.0.4", "http=8080", false),
        netpol(
            "x/p",
            "{podSelector: {matchLabels: {app: cli}}, egress: [\
             {to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.1.3/32]}}], ports: [{port: http}]}]}",
        ),
    ]);
    check(
        &c,
        &[
            ("x/cli", Egress, "x/s1", TCP, 8080, ALLOW),
            ("x/cli", Egress, "x/s2", TCP, 8080, DENY),
            ("x/cli", Egress, "x/s3", TCP, 8080, DENY),
        ],
    );
}

/// A named port is the destination pod's own number even when two pods
/// share an identity (same labels) but number the port differently.
#[test]
fn egress_named_ports_of_pods_sharing_an_identity_stay_per_pod() {
    let c = cluster(&[
        pod("x/cli", "app=cli", "10.0.1.1"),
        pod_ports("x/s1", "app=srv", "10.0.1.2", "http=8080"),
        pod_ports("x/s2", "app=srv", "10.0.1.3", "http=9090"),
        netpol(
            "x/p",
            "{podSelector: {matchLabels: {app: cli}}, egress: [\
             {to: [{podSelector: {matchLabels: {app: srv}}}], ports: [{port: http}]}]}",
        ),
    ]);
    assert_eq!(c.identity("x/s1"), c.identity("x/s2"));
    check(
        &c,
        &[
            ("x/cli", Egress, "x/s1", TCP, 8080, ALLOW),
            ("x/cli", Egress, "x/s2", TCP, 9090, ALLOW),
            ("x/cli", Egress, "x/s1", TCP, 9090, DENY),
            ("x/cli", Egress, "x/s2", TCP, 8080, DENY),
        ],
    );
}

/// Two pods of x and one of y, x's pods allowing every namespace on three
/// ports: 3 identities x 3 ports = 9 entries per pod of x.
fn three_pods_allowed_three_ports() -> Cluster {
    cluster(&[
        pod("x/a", "app=a", "10.0.1.1"),
        pod("x/b", "app=b", "10.0.1.2"),
        pod("y/c", "app=c", "10.0.2.1"),
        netpol(
            "x/allow",
            "{podSelector: {}, ingress: [{from: [{namespaceSelector: {}}], ports: [{port: 80}, {port: 81}, {port: 82}]}]}",
        ),
    ])
}

#[test]
fn a_pod_whose_entries_do_not_fit_is_isolated_with_nothing_allowed_and_named() {
    let mut c = three_pods_allowed_three_ports();
    let cap = crate::compute::policy::Capacity {
        ipcache: 100,
        entries: 10,
        cidrs: 10,
    };
    let out = crate::compute::policy::compute_within(
        &c.snap,
        &c.host_addrs,
        &std::collections::HashMap::new(),
        &mut c.ids,
        &mut c.ep_ids,
        &cap,
    );
    // 3 identities x 3 ports = 9 entries per pod of x: the first fits, the second does not.
    let errs: Vec<String> = out
        .errors
        .iter()
        .filter(|e| e.label() == "policy_entries_do_not_fit")
        .map(ToString::to_string)
        .collect();
    assert_eq!(errs.len(), 1, "{:?}", out.errors);
    assert!(
        errs[0].contains("pod x/b") && errs[0].contains("do not fit"),
        "{}",
        errs[0]
    );
    c.maps = out.maps;
    c.report = out.report;
    check(
        &c,
        &[
            ("x/a", Ingress, "y/c", TCP, 80, ALLOW),
            ("x/b", Ingress, "y/c", TCP, 80, DENY),
            ("x/b", Egress, "y/c", TCP, 80, DENY),
            ("y/c", Egress, "x/a", TCP, 80, ALLOW),
        ],
    );
    let b = c.report.endpoints.iter().find(|e| e.pod == "x/b").unwrap();
    assert!(b.ingress_isolated && b.egress_isolated && b.error.is_some());
}

/// The room `Capacity::wanted` asks for what a computation left out for
/// want of it is enough to compute it whole, and grows only the maps that
/// were short.
#[test]
fn the_room_wanted_for_what_did_not_fit_holds_it() {
    let mut c = three_pods_allowed_three_ports();
    let cap = crate::compute::policy::Capacity {
        ipcache: 3,
        entries: 10,
        cidrs: 10,
    };
    let mut compute = |cap: &crate::compute::policy::Capacity| {
        crate::compute::policy::compute_within(
            &c.snap,
            &c.host_addrs,
            &std::collections::HashMap::new(),
            &mut c.ids,
            &mut c.ep_ids,
            cap,
        )
        .errors
    };
    let short = compute(&cap);
    let labels: Vec<&str> = short.iter().map(|e| e.label()).collect();
    assert!(
        labels.contains(&"policy_ipcache_full") && labels.contains(&"policy_entries_do_not_fit"),
        "{short:?}"
    );
    let wanted = cap.wanted(&short).expect("something was left out for room");
    assert!(wanted.ipcache > cap.ipcache, "{wanted:?}");
    assert!(wanted.entries > cap.entries, "{wanted:?}");
    assert_eq!(wanted.cidrs, cap.cidrs, "the CIDR map was not short");
    let fits = compute(&wanted);
    assert_eq!(fits, vec![], "with that room nothing is left out");
    assert_eq!(wanted.wanted(&fits), None);
}

#[test]
fn each_pod_interface_names_its_endpoint_for_source_validation() {
    let mut c = cluster(&[
        pod("x/a", "app=a", "10.0.1.1,fd00:1::1"),
        pod("x/b", "app=b", "10.0.1.2"),
    ]);
    let routes: std::collections::HashMap<IpAddr, u32> = [
        ("10.0.1.1".parse().unwrap(), 11),
        ("fd00:1::1".parse().unwrap(), 11),
    ]
    .into();
    let out = crate::compute::policy::compute_within(
        &c.snap,
        &c.host_addrs,
        &routes,
        &mut c.ids,
        &mut c.ep_ids,
        &Default::default(),
    );
    let a = out.maps.endpoints[&net_addr("10.0.1.1".parse().unwrap())];
    assert_eq!(a.ifindex, 11);
    assert_eq!(
        out.maps.endpoints[&net_addr("fd00:1::1".parse().unwrap())].ifindex,
        11
    );
    assert_eq!(out.maps.ifaces, [(11, a.ep_id)].into());
    assert_eq!(
        out.maps.endpoints[&net_addr("10.0.1.2".parse().unwrap())].ifindex,
        0,
        "a pod whose route is not known yet is not validated"
    );
}
