//! What a change set touches, rejects and keeps.

use super::*;

#[test]
fn invalid_objects_stay_rejected_until_fixed_or_deleted() {
    let mut r = Reconciler::new(Mirror::from_entries([], []), None);
    let mut w = Fake::default();
    let file: Option<std::sync::Arc<str>> = Some("/m/f.yaml".into());
    r.apply_from(
        objs(&svc("a", "10.96.0.300", "")),
        std::slice::from_ref(&file),
        false,
        &mut w,
    )
    .unwrap();
    let rej: Vec<&Rejected> = r.rejected.values().collect();
    assert_eq!(rej.len(), 1);
    assert_eq!(rej[0].file.as_deref(), Some("/m/f.yaml"));
    assert_eq!(rej[0].object.as_deref(), Some("Service x/a"));
    assert!(
        rej[0].reason.starts_with("spec.clusterIPs[0]"),
        "{}",
        rej[0].reason
    );
    // another object's change leaves it listed
    r.apply(&objs(&svc("b", "10.96.0.11", "")), false, &mut w)
        .unwrap();
    assert_eq!(r.rejected.len(), 1);
    // fixed: gone from the list
    r.apply(&objs(&svc("a", "10.96.0.10", "")), false, &mut w)
        .unwrap();
    assert!(r.rejected.is_empty());
    // broken again, then deleted: gone too
    r.apply(&objs(&svc("a", "10.96.0.300", "")), false, &mut w)
        .unwrap();
    assert_eq!(r.rejected.len(), 1);
    let del = Change::Delete {
        kind: "Service".into(),
        key: ObjRef::new("x", "a"),
    };
    r.apply(&[del], false, &mut w).unwrap();
    assert!(r.rejected.is_empty());
}

#[test]
fn full_batch_removes_unclaimed_frontends_and_partial_does_not() {
    let mut r = Reconciler::new(Mirror::from_entries([], []), None);
    let mut w = Fake::default();
    r.apply(&objs(&svc("a", "10.96.0.10", "")), true, &mut w)
        .unwrap();
    // an agent restarted: mirror from the maps, a snapshot without `a`
    let mut r2 = Reconciler::new(r.mirror().clone(), None);
    r2.apply(&objs(&svc("b", "10.96.0.11", "")), false, &mut w)
        .unwrap();
    assert_eq!(r2.mirror().frontends().count(), 4);
    r2.apply(&[], true, &mut w).unwrap();
    assert_eq!(r2.mirror().frontends().count(), 2);
}

#[test]
fn one_slice_change_rewrites_only_its_service() {
    let slice = |name: &str, svc: &str, ip: &str| {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: x, labels: {{kubernetes.io/service-name: {svc}}}}}\naddressType: IPv4\nendpoints: [{{addresses: [{ip}], conditions: {{ready: true}}}}]\nports: [{{port: 8080}}]\n---\n"
        )
    };
    let mut r = Reconciler::new(Mirror::from_entries([], []), None);
    let mut w = Fake::default();
    let mut y = String::new();
    for i in 0..50 {
        y += &svc(&format!("s{i}"), &format!("10.96.1.{i}"), "");
        y += &slice(
            &format!("s{i}-a"),
            &format!("s{i}"),
            &format!("10.244.1.{i}"),
        );
    }
    r.apply(&objs(&y), true, &mut w).unwrap();
    w.applied.clear();
    let out = r
        .apply(&objs(&slice("s7-a", "s7", "10.244.2.7")), false, &mut w)
        .unwrap();
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let s7 = crate::compute::desired::net_addr("10.96.1.7".parse().unwrap());
    for op in &w.applied {
        match op {
            Op::PutService { key, .. } | Op::DelService { key } => {
                assert_eq!(key.addr, s7, "only s7's frontend is written: {op:?}")
            }
            Op::PutBackend { .. } | Op::DelBackend { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    // new backend, slot rewritten, old backend dropped: a handful of ops
    assert!((1..=4).contains(&w.applied.len()), "{:?}", w.applied);
}

#[test]
fn labelled_and_headless_services_get_nothing() {
    let mut r = Reconciler::new(Mirror::from_entries([], []), None);
    let mut w = Fake::default();
    let y = svc(
        "a",
        "10.96.0.10",
        ", labels: {service.kubernetes.io/headless: ''}",
    ) + &svc(
        "b",
        "10.96.0.11",
        ", labels: {service.kubernetes.io/service-proxy-name: other}",
    ) + &svc("c", "None", "")
        + "apiVersion: v1\nkind: Service\nmetadata: {name: d, namespace: x}\nspec: {type: ExternalName, externalName: example.com}\n";
    let out = r.apply(&objs(&y), true, &mut w).unwrap();
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    assert_eq!(r.mirror().frontends().count(), 0);
    assert!(w.applied.is_empty());
}

#[test]
fn internal_traffic_policy_local_is_read_from_the_service() {
    let y = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: x}\nspec: {clusterIP: 10.96.0.10, internalTrafficPolicy: Local, ports: [{port: 80}]}\n---\n\
                 apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: a-1, namespace: x, labels: {kubernetes.io/service-name: a}}\naddressType: IPv4\nendpoints: [{addresses: [10.244.1.10], nodeName: n1}, {addresses: [10.244.2.10], nodeName: n2}]\nports: [{port: 8080}]\n";
    for (node, count, flags) in [
        ("n1", 1, lb_common::SVC_FLAG_INT_LOCAL),
        ("n3", 0, lb_common::SVC_FLAG_INT_LOCAL),
    ] {
        let mut r = Reconciler::new(Mirror::from_entries([], []), Some(node.into()));
        r.apply(&objs(y), true, &mut Fake::default()).unwrap();
        let v = r.mirror().services().get(&fkey("10.96.0.10", 80)).unwrap();
        assert_eq!((v.count, v.flags), (count, flags), "{node}");
    }
}

#[test]
fn invalid_object_keeps_previous_state() {
    let mut r = Reconciler::new(Mirror::from_entries([], []), None);
    let mut w = Fake::default();
    r.apply(&objs(&svc("a", "10.96.0.10", "")), true, &mut w)
        .unwrap();
    let bad = objs(&svc("a", "10.96.0.300", ""));
    let out = r.apply(&bad, false, &mut w).unwrap();
    assert!(
        out.errors[0].to_string().contains("Service x/a")
            && out.errors[0].to_string().contains("spec.clusterIPs[0]"),
        "{:?}",
        out.errors
    );
    assert_eq!(out.errors[0].label(), "invalid_object");
    assert_eq!(r.mirror().frontends().count(), 2);
    let _ = Object::Service(Box::default());
}

#[test]
fn a_deleted_backends_id_is_handed_to_the_conntrack_sweep_once() {
    let mut r = Reconciler::new(Mirror::from_entries([], []), None);
    let mut w = Fake::default();
    let both = svc_eps("a", "10.96.0.10", &["10.244.0.1", "10.244.0.2"]);
    r.apply(&objs(&both), false, &mut w).unwrap();
    assert!(r.take_left_backends().is_empty(), "nothing left yet");
    let id_of = |r: &Reconciler, ip: &str| {
        let a = crate::compute::desired::net_addr(ip.parse().unwrap());
        let ids: Vec<u32> = r
            .mirror()
            .backends()
            .iter()
            .filter(|(_, b)| b.addr == a)
            .map(|(id, _)| id)
            .collect();
        ids
    };
    let gone = id_of(&r, "10.244.0.2");
    assert_eq!(gone.len(), 1);
    let one = svc_eps("a", "10.96.0.10", &["10.244.0.1"]);
    r.apply(&objs(&one), false, &mut w).unwrap();
    assert_eq!(r.take_left_backends(), gone);
    assert!(r.take_left_backends().is_empty(), "taken once");
    assert_eq!(id_of(&r, "10.244.0.1").len(), 1, "the other one stays");
}

/// The log lines at info level `f` writes.
fn info_lines(f: impl FnOnce()) -> Vec<String> {
    #[derive(Clone, Default)]
    struct Lines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Lines {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let out = Lines::default();
    let w = out.clone();
    let sub = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || w.clone())
        .finish();
    tracing::subscriber::with_default(sub, f);
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    text.lines().map(str::to_owned).collect()
}

#[test]
fn a_big_change_set_logs_one_line_and_a_small_one_a_line_per_service() {
    let mut r = Reconciler::new(Mirror::from_entries([], []), None);
    let mut w = Fake::default();
    let many: String = (0..150)
        .map(|i| {
            svc(
                &format!("s{i}"),
                &format!("10.96.{}.{}", i / 200, 1 + i % 200),
                "",
            )
        })
        .collect();
    let big = info_lines(|| {
        r.apply(&objs(&many), true, &mut w).unwrap();
    });
    let applied: Vec<&String> = big.iter().filter(|l| l.contains("applied")).collect();
    assert_eq!(applied.len(), 1, "{big:#?}");
    assert!(applied[0].contains("services=150"), "{}", applied[0]);
    let small = info_lines(|| {
        let two = format!(
            "{}{}",
            svc("t1", "10.96.1.1", ""),
            svc("t2", "10.96.1.2", "")
        );
        r.apply(&objs(&two), false, &mut w).unwrap();
    });
    let applied: Vec<&String> = small.iter().filter(|l| l.contains("applied")).collect();
    assert_eq!(applied.len(), 2, "{small:#?}");
    assert!(applied.iter().any(|l| l.contains("x/t1")), "{applied:#?}");
}
