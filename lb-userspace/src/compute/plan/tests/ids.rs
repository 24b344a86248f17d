//! Backend ids and their references: shared, draining, reloaded, UDP
//! backends that leave.

use super::*;

#[test]
fn udp_backends_that_leave_a_frontend_are_noted_with_its_id() {
    let udp = |backends: &[u8]| {
        let mut f = fe("10.96.0.10", 53, backends);
        f.key.proto = PROTO_UDP;
        f
    };
    let mut m = Mirror::from_entries([], []);
    m.upsert(&udp(&[1, 2, 3]), &mut vec![]);
    m.upsert(&fe("10.96.0.10", 80, &[1, 2]), &mut vec![]);
    assert!(m.take_left_udp().is_empty(), "nothing left yet");
    let sid = m.services().get(&udp(&[]).key).unwrap().service_id;
    let left = |m: &mut Mirror| -> Vec<(u32, String)> {
        m.take_left_udp()
            .into_iter()
            .map(|k| {
                (
                    k.service_id,
                    crate::compute::desired::ip_of(&k.addr).to_string(),
                )
            })
            .collect()
    };
    m.upsert(&udp(&[1, 3]), &mut vec![]);
    m.upsert(&fe("10.96.0.10", 80, &[1]), &mut vec![]);
    assert_eq!(left(&mut m), [(sid, "10.0.0.2".to_string())], "UDP only");
    assert!(m.take_left_udp().is_empty(), "taken once");
    m.remove(&udp(&[]).key, &mut vec![]);
    assert_eq!(
        left(&mut m),
        [(sid, "10.0.0.1".to_string()), (sid, "10.0.0.3".to_string())]
    );
}

#[test]
fn shared_backend_lives_while_any_frontend_uses_it() {
    let mut m = Mirror::from_entries([], []);
    let a = fe("10.96.0.10", 80, &[1]);
    let b = fe("10.96.0.11", 80, &[1]);
    let mut ops = vec![];
    m.upsert(&a, &mut ops);
    m.upsert(&b, &mut ops);
    assert_eq!(
        ops.iter()
            .filter(|o| matches!(o, Op::PutBackend { .. }))
            .count(),
        1
    );
    ops.clear();
    m.remove(&a.key, &mut ops);
    assert!(!ops.iter().any(|o| matches!(o, Op::DelBackend { .. })));
    m.remove(&b.key, &mut ops);
    assert_eq!(
        ops.iter()
            .filter(|o| matches!(o, Op::DelBackend { .. }))
            .count(),
        1
    );
}

#[test]
fn mirror_reloaded_from_maps_plans_nothing_new() {
    let mut m = Mirror::from_entries([], []);
    let fs = [
        fe("10.96.0.10", 80, &[1, 2]),
        fe("10.96.0.11", 53, &[2, 3, 4]),
    ];
    let mut k = Kernel::default();
    let mut ops = vec![];
    for f in &fs {
        m.upsert(f, &mut ops);
    }
    ops.iter().for_each(|o| k.apply(o));
    let mut again = Mirror::from_entries(k.services.clone(), k.backends.clone());
    let mut ops = vec![];
    for f in &fs {
        again.upsert(f, &mut ops);
    }
    assert!(ops.is_empty(), "{ops:?}");
    // and new ids never collide with adopted ones
    again.upsert(&fe("10.96.0.12", 80, &[9]), &mut ops);
    ops.iter().for_each(|o| k.apply(o));
    assert_eq!(k.backends.len(), 5);
}

#[test]
fn listed_but_unusable_backends_stay_flagged_draining_under_their_id() {
    use lb_common::BACKEND_DRAINING;
    let mut m = Mirror::from_entries([], []);
    let mut k = Kernel::default();
    let step = |m: &mut Mirror, k: &mut Kernel, f: &Frontend| {
        let mut ops = vec![];
        m.upsert(f, &mut ops);
        ops.iter().for_each(|o| k.apply(o));
        assert_eq!(
            k.backends,
            m.backends().iter().map(|(id, b)| (id, *b)).collect()
        );
        ops
    };
    step(&mut m, &mut k, &external("192.0.2.1", &[1, 2]));
    let id1 = id_of(&m, 1).unwrap();
    // 1 leaves the usable set but stays listed: out of the slots, kept
    // under its id with the flag (after the slots stop naming it)
    let ops = step(
        &mut m,
        &mut k,
        &with_draining(external("192.0.2.1", &[2]), &[1]),
    );
    assert_eq!(k.backends[&id1].flags & BACKEND_DRAINING, BACKEND_DRAINING);
    assert_eq!(k.backends[&id1].addr, net_addr("10.0.0.1".parse().unwrap()));
    let key = external("192.0.2.1", &[]).key;
    assert_eq!(k.services[&key].count, 1);
    assert!(
        matches!(ops.last(), Some(Op::PutBackend { id, .. }) if *id == id1),
        "{ops:?}"
    );
    // unchanged: nothing written
    assert!(
        step(
            &mut m,
            &mut k,
            &with_draining(external("192.0.2.1", &[2]), &[1])
        )
        .is_empty()
    );
    // usable again: the same id, unflagged before a slot names it
    // (the fake kernel checks that after every op)
    step(&mut m, &mut k, &external("192.0.2.1", &[1, 2]));
    assert_eq!(id_of(&m, 1), Some(id1));
    assert_eq!(k.backends[&id1].flags & BACKEND_DRAINING, 0);
    // draining again, then gone from every slice: removed
    step(
        &mut m,
        &mut k,
        &with_draining(external("192.0.2.1", &[2]), &[1]),
    );
    step(&mut m, &mut k, &external("192.0.2.1", &[2]));
    assert_eq!(id_of(&m, 1), None);
    assert!(!k.backends.contains_key(&id1));
    // A backend draining for one frontend but in the slots of another
    // is not flagged; when the other lets it go, it is.
    step(&mut m, &mut k, &external("192.0.2.2", &[3]));
    step(
        &mut m,
        &mut k,
        &with_draining(external("192.0.2.1", &[2]), &[3]),
    );
    let id3 = id_of(&m, 3).unwrap();
    assert_eq!(k.backends[&id3].flags & BACKEND_DRAINING, 0);
    step(&mut m, &mut k, &external("192.0.2.2", &[]));
    assert_eq!(id_of(&m, 3), Some(id3));
    assert_eq!(k.backends[&id3].flags & BACKEND_DRAINING, BACKEND_DRAINING);
    // Removing the frontend lets its draining backends go.
    let mut ops = vec![];
    m.remove(&key, &mut ops);
    ops.iter().for_each(|o| k.apply(o));
    assert_eq!(id_of(&m, 3), None);
    assert_eq!(
        k.backends,
        m.backends().iter().map(|(id, b)| (id, *b)).collect()
    );
}

#[test]
fn a_restarted_agent_reclaims_draining_backends_and_a_full_sync_drops_the_rest() {
    use lb_common::BACKEND_DRAINING;
    let mut m = Mirror::from_entries([], []);
    let mut k = Kernel::default();
    let fs = [
        with_draining(external("192.0.2.1", &[2]), &[1]),
        with_draining(external("192.0.2.2", &[4]), &[5]),
    ];
    let mut ops = vec![];
    for f in &fs {
        m.upsert(f, &mut ops);
    }
    ops.iter().for_each(|o| k.apply(o));
    let id1 = id_of(&m, 1).unwrap();
    // Restarted: the kernel's entries are all the mirror knows. The
    // Services still want 192.0.2.1 as it was; 192.0.2.2 is gone.
    let mut again = Mirror::from_entries(k.services.clone(), k.backends.clone());
    let mut ops = vec![];
    again.upsert(&fs[0], &mut ops);
    assert!(ops.is_empty(), "{ops:?}");
    again.remove(&fs[1].key, &mut ops);
    ops.iter().for_each(|o| k.apply(o));
    // Backend 5 drained for a frontend the restarted agent never saw
    // claimed: only a complete listing can tell it is nobody's.
    assert!(id_of(&again, 5).is_some());
    let mut ops = vec![];
    again.remove_unreferenced(&mut ops);
    ops.iter().for_each(|o| k.apply(o));
    assert_eq!(id_of(&again, 5), None);
    assert_eq!(k.backends[&id1].flags & BACKEND_DRAINING, BACKEND_DRAINING);
    assert_eq!(
        k.backends,
        again.backends().iter().map(|(id, b)| (id, *b)).collect()
    );
    assert_eq!(k.backends.len(), 2, "{:?}", k.backends);
}
