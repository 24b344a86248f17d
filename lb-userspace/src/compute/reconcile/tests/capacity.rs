//! Services the maps cannot take whole.

use super::*;

#[test]
fn services_that_do_not_fit_are_skipped_whole_and_retried_when_room_frees() {
    // Each Service: its ClusterIP marker, the port's frontend and one
    // slot per backend. 7 entries hold two of three one-backend ones.
    let mut r = Reconciler::new(Mirror::from_entries([], []), None);
    let mut w = Fake {
        capacity: Capacity {
            services: Some(7),
            ..Default::default()
        },
        ..Default::default()
    };
    let y = svc_eps("a", "10.96.0.10", &["10.244.0.1"])
        + &svc_eps("b", "10.96.0.11", &["10.244.0.2"])
        + &svc_eps("c", "10.96.0.12", &["10.244.0.3"]);
    let out = r.apply(&objs(&y), true, &mut w).unwrap();
    assert!(!writes_to(&w.applied, "10.96.0.12"), "{:?}", w.applied);
    assert_eq!(r.mirror().services().len(), 6);
    let np: Vec<&NotProgrammed> = out.not_programmed.iter().collect();
    assert_eq!(np.len(), 1, "{np:?}");
    assert_eq!(
        (np[0].service.as_str(), np[0].map.as_str()),
        ("x/c", lb_common::MAP_SERVICES)
    );
    assert_eq!((np[0].needed, np[0].free, np[0].capacity), (3, 1, 7));
    assert!(!np[0].previous_state_kept);
    let msg = np[0].to_string();
    for words in [
        "Service x/c not programmed",
        "needs 3 entries",
        "1 of its 7",
        "--max-services",
    ] {
        assert!(msg.contains(words), "`{words}` in: {msg}");
    }
    assert_eq!(r.not_programmed.len(), 1);
    // Other change sets: c stays out, and is not reported again.
    let out = r
        .apply(
            &objs(&svc_eps("a", "10.96.0.10", &["10.244.0.9"])),
            false,
            &mut w,
        )
        .unwrap();
    assert!(out.not_programmed.is_empty(), "{:?}", out.not_programmed);
    assert!(r.not_programmed.contains_key(&ObjRef::new("x", "c")));
    // a goes: room for c, programmed whole.
    w.applied.clear();
    let del = Change::Delete {
        kind: "Service".into(),
        key: ObjRef::new("x", "a"),
    };
    let out = r.apply(&[del], false, &mut w).unwrap();
    assert_eq!(out.programmed_again, [ObjRef::new("x", "c")]);
    assert!(r.not_programmed.is_empty());
    assert!(writes_to(&w.applied, "10.96.0.12"));
    assert_eq!(r.mirror().services().len(), 6);

    // An update that does not fit keeps the Service's previous state.
    w.applied.clear();
    let out = r
        .apply(
            &objs(&svc_eps(
                "b",
                "10.96.0.11",
                &["10.244.0.2", "10.244.0.4", "10.244.0.5"],
            )),
            false,
            &mut w,
        )
        .unwrap();
    assert!(!writes_to(&w.applied, "10.96.0.11"), "{:?}", w.applied);
    assert_eq!(out.not_programmed.len(), 1);
    assert_eq!(out.not_programmed[0].needed, 2);
    assert!(out.not_programmed[0].previous_state_kept);
    assert!(
        out.not_programmed[0].to_string().contains("previous"),
        "{}",
        out.not_programmed[0]
    );
    assert_eq!(r.mirror().services().len(), 6);

    // The backends map the same way.
    let mut r = Reconciler::new(Mirror::from_entries([], []), None);
    let mut w = Fake {
        capacity: Capacity {
            backends: Some(3),
            ..Default::default()
        },
        ..Default::default()
    };
    let y = svc_eps("a", "10.96.0.10", &["10.244.0.1", "10.244.0.2"])
        + &svc_eps("b", "10.96.0.11", &["10.244.0.1", "10.244.0.3"])
        + &svc_eps("c", "10.96.0.12", &["10.244.0.4", "10.244.0.5"]);
    let out = r.apply(&objs(&y), true, &mut w).unwrap();
    assert_eq!(r.mirror().backends().len(), 3, "b shares a backend with a");
    assert_eq!(out.not_programmed.len(), 1);
    let np = &out.not_programmed[0];
    assert_eq!(
        (np.service.as_str(), np.map.as_str(), np.needed, np.free),
        ("x/c", lb_common::MAP_BACKENDS, 2, 0)
    );
    assert!(np.to_string().contains("--max-backends"), "{np}");
    assert!(!writes_to(&w.applied, "10.96.0.12"));
}

/// LoadBalancer Service `name` at ingress IP `lb` with `ranges` as its
/// loadBalancerSourceRanges and one ready endpoint.
fn lb_with_ranges(name: &str, cluster_ip: &str, lb: &str, ranges: &[&str]) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: x}}\nspec: {{type: LoadBalancer, clusterIP: {cluster_ip}, ports: [{{port: 80, nodePort: 30080}}], loadBalancerSourceRanges: [{}]}}\nstatus: {{loadBalancer: {{ingress: [{{ip: {lb}}}]}}}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: x, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nendpoints: [{{addresses: [10.244.0.1], conditions: {{ready: true}}}}]\nports: [{{port: 8080}}]\n---\n",
        ranges.join(", ")
    )
}

fn range_writes(ops: &[Op]) -> usize {
    ops.iter()
        .filter(|o| matches!(o, Op::PutRange { .. }))
        .count()
}

#[test]
fn source_ranges_that_do_not_fit_leave_their_service_out_whole_until_room_frees() {
    let mut r = Reconciler::new(Mirror::from_entries([], []), None);
    let mut w = Fake {
        capacity: Capacity {
            ranges: Some(3),
            ..Default::default()
        },
        ..Default::default()
    };
    let y = lb_with_ranges(
        "a",
        "10.96.0.10",
        "10.200.0.1",
        &["10.1.0.0/16", "10.2.0.0/16"],
    ) + &lb_with_ranges(
        "b",
        "10.96.0.11",
        "10.200.0.2",
        &["10.3.0.0/16", "10.4.0.0/16"],
    );
    let out = r.apply(&objs(&y), true, &mut w).unwrap();
    assert_eq!(range_writes(&w.applied), 2, "{:?}", w.applied);
    assert!(!writes_to(&w.applied, "10.200.0.2"), "{:?}", w.applied);
    assert!(!writes_to(&w.applied, "10.96.0.11"), "b stays out whole");
    assert_eq!(r.mirror().range_entries(), 2);
    assert_eq!(out.not_programmed.len(), 1, "{:?}", out.not_programmed);
    let np = &out.not_programmed[0];
    assert_eq!(
        (np.service.as_str(), np.map.as_str()),
        ("x/b", lb_common::MAP_SRC_RANGES)
    );
    assert_eq!((np.needed, np.free, np.capacity), (2, 1, 3));
    let msg = np.to_string();
    for words in [
        "Service x/b not programmed",
        "loadBalancerSourceRanges",
        "needs 2 entries",
    ] {
        assert!(msg.contains(words), "`{words}` in: {msg}");
    }

    // a drops a range: two free, room for both of b's.
    w.applied.clear();
    let out = r
        .apply(
            &objs(&lb_with_ranges(
                "a",
                "10.96.0.10",
                "10.200.0.1",
                &["10.1.0.0/16"],
            )),
            false,
            &mut w,
        )
        .unwrap();
    assert_eq!(out.programmed_again, [ObjRef::new("x", "b")]);
    assert!(writes_to(&w.applied, "10.200.0.2"), "{:?}", w.applied);
    assert_eq!(r.mirror().range_entries(), 3);
    assert!(r.not_programmed.is_empty());

    // A change to a that needs one more range than the free ones keeps a's
    // previous state.
    w.applied.clear();
    let out = r
        .apply(
            &objs(&lb_with_ranges(
                "a",
                "10.96.0.10",
                "10.200.0.1",
                &["10.1.0.0/16", "10.5.0.0/16"],
            )),
            false,
            &mut w,
        )
        .unwrap();
    assert_eq!(range_writes(&w.applied), 0, "{:?}", w.applied);
    assert_eq!(out.not_programmed.len(), 1);
    assert!(out.not_programmed[0].previous_state_kept);
    assert_eq!(r.mirror().range_entries(), 3);
}

/// A policy state that outgrows the policy maps: they grow (here to just
/// what is asked, so it may take rounds) before anything is written, so
/// no pod is written isolated for want of room and nothing is reported.
#[test]
fn policy_maps_grow_before_a_state_that_does_not_fit_is_written() {
    let mut r = Reconciler::new(Mirror::from_entries([], []), Some("n1".into()));
    let small = crate::compute::policy::Capacity {
        ipcache: 3,
        entries: 4,
        cidrs: 4,
    };
    let mut w = Fake {
        policy_capacity: small,
        policy_grows: true,
        ..Default::default()
    };
    let mut y: String = (1..=6)
        .map(|i| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: x, labels: {{app: a}}}}\n\
                 spec: {{nodeName: n1, containers: [{{name: c, image: i}}]}}\n\
                 status: {{phase: Running, podIP: 10.244.0.{i}, podIPs: [{{ip: 10.244.0.{i}}}]}}\n---\n"
            )
        })
        .collect();
    y += "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\n\
          spec: {podSelector: {}, ingress: [{from: [{podSelector: {}}, {ipBlock: {cidr: 192.0.2.0/24}}], ports: [{port: 80}, {port: 81}]}]}\n";
    let out = r.apply(&objs(&y), true, &mut w).unwrap();
    let short: Vec<String> = out
        .errors
        .iter()
        .map(ToString::to_string)
        .filter(|e| e.contains("do not fit"))
        .collect();
    assert_eq!(short, Vec::<String>::new(), "{:?}", w.policy_capacity);
    assert!(w.policy_growths >= 1, "{:?}", w.policy_capacity);
    assert_eq!(w.policy_writes, 1, "one write, after the growth");
    assert!(w.policy_capacity.ipcache >= 6 && w.policy_capacity.entries > small.entries);
    assert_eq!(w.policy.endpoints.len(), 6);
    assert!(
        w.policy
            .endpoints
            .values()
            .all(|e| e.flags & lb_common::EP_F_EGRESS_ISOLATED == 0),
        "no pod isolated both ways for want of room: {:?}",
        w.policy.endpoints
    );
    // The maps fixed: the same state does not fit and is reported.
    let mut r = Reconciler::new(Mirror::from_entries([], []), Some("n1".into()));
    let mut fixed = Fake {
        policy_capacity: small,
        ..Default::default()
    };
    let out = r.apply(&objs(&y), true, &mut fixed).unwrap();
    assert!(
        out.errors
            .iter()
            .any(|e| e.to_string().contains("do not fit")),
        "{:?}",
        out.errors
    );
}
