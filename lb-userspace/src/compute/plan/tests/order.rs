//! Write order and what a change rewrites: the datapath stays whole.

use super::*;

#[test]
fn first_write_orders_backends_slots_frontend() {
    let mut m = Mirror::from_entries([], []);
    let mut ops = vec![];
    m.upsert(&fe("10.96.0.10", 80, &[1, 2]), &mut ops);
    let kinds: Vec<&str> = ops
        .iter()
        .map(|o| match o {
            Op::PutBackend { .. } => "backend",
            Op::PutService { key, .. } if key.slot == 0 => "frontend",
            Op::PutService { .. } => "slot",
            Op::DelService { .. } => "del",
            Op::DelBackend { .. } => "delbackend",
            Op::PutRange { .. } => "range",
            Op::DelRange { .. } => "delrange",
            Op::PutMaglev { .. } => "maglev",
            Op::DelMaglev { .. } => "delmaglev",
        })
        .collect();
    assert_eq!(kinds, ["backend", "backend", "slot", "slot", "frontend"]);
}

#[test]
fn removal_orders_frontend_slots_backends() {
    let mut m = Mirror::from_entries([], []);
    let f = fe("10.96.0.10", 80, &[1, 2]);
    m.upsert(&f, &mut vec![]);
    let mut ops = vec![];
    m.remove(&f.key, &mut ops);
    assert!(matches!(ops[0], Op::DelService { key } if key.slot == 0));
    assert!(matches!(ops[1], Op::DelService { key } if key.slot != 0));
    assert!(matches!(ops[2], Op::DelService { key } if key.slot != 0));
    assert!(matches!(ops[3], Op::DelBackend { .. }));
    assert!(matches!(ops[4], Op::DelBackend { .. }));
    assert_eq!(ops.len(), 5);
}

#[test]
fn unchanged_entries_are_not_rewritten() {
    let mut m = Mirror::from_entries([], []);
    let f = fe("10.96.0.10", 80, &[1, 2, 3]);
    m.upsert(&f, &mut vec![]);
    let mut ops = vec![];
    m.upsert(&f, &mut ops);
    assert!(ops.is_empty(), "{ops:?}");
    // Removing one backend rewrites its slot (with the moved tail), the
    // count, deletes the tail slot and the backend: nothing else.
    m.upsert(&fe("10.96.0.10", 80, &[2, 3]), &mut ops);
    assert_eq!(ops.len(), 4, "{ops:?}");
}

#[test]
fn source_ranges_are_written_before_their_flag_and_removed_after() {
    let mut m = Mirror::from_entries([], []);
    let mut k = Kernel::default();
    let mut f = fe("10.200.0.1", 80, &[1]);
    f.flags = lb_common::SVC_FLAG_SOURCE_RANGES | lb_common::SVC_FLAG_EXTERNAL;
    f.source_ranges = vec![
        "10.100.0.0/24".parse().unwrap(),
        "192.0.2.0/24".parse().unwrap(),
    ];
    let mut ops = vec![];
    m.upsert(&f, &mut ops);
    ops.iter().for_each(|o| k.apply(o));
    assert_eq!(k.ranges.len(), 2);
    // narrowed, then none: the flag goes before the last range
    f.source_ranges.pop();
    let mut ops = vec![];
    m.upsert(&f, &mut ops);
    ops.iter().for_each(|o| k.apply(o));
    assert_eq!(k.ranges.len(), 1);
    f.source_ranges.clear();
    f.flags = lb_common::SVC_FLAG_EXTERNAL;
    let mut ops = vec![];
    m.upsert(&f, &mut ops);
    ops.iter().for_each(|o| k.apply(o));
    assert!(k.ranges.is_empty());
    f.flags = lb_common::SVC_FLAG_SOURCE_RANGES;
    f.source_ranges = vec!["10.0.0.0/8".parse().unwrap()];
    let mut ops = vec![];
    m.upsert(&f, &mut ops);
    m.remove(&f.key, &mut ops);
    ops.iter().for_each(|o| k.apply(o));
    assert!(k.ranges.is_empty() && k.services.is_empty());
}

#[test]
fn random_changes_keep_every_reachable_entry_whole() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut m = Mirror::from_entries([], []);
    let mut k = Kernel::default();
    let ips = ["10.96.0.10", "10.96.0.11", "fd00:96::a"];
    for _ in 0..2000 {
        let ip = ips[rnd(3) as usize];
        let mut ops = vec![];
        if rnd(5) == 0 {
            m.remove(&fe(ip, 80, &[]).key, &mut ops);
            ops.iter().for_each(|o| k.apply(o));
            assert!(k.backends_of(&fe(ip, 80, &[]).key).is_empty());
        } else {
            let n = rnd(8);
            let bs: Vec<u8> = (0..n)
                .map(|_| rnd(12) as u8 + 1)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let draining: Vec<u8> = (0..rnd(3))
                .map(|_| rnd(12) as u8 + 1)
                .filter(|b| !bs.contains(b))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let f = with_draining(fe(ip, 80, &bs), &draining);
            m.upsert(&f, &mut ops);
            ops.iter().for_each(|o| k.apply(o));
            assert_eq!(k.backends_of(&f.key), f.backends.iter().copied().collect());
            for b in &f.draining {
                assert!(
                    k.backends.values().any(|x| x.addr == b.addr),
                    "draining {b:?} kept"
                );
            }
        }
        assert_eq!(k.services, m.services().iter().collect());
        assert_eq!(
            k.backends,
            m.backends().iter().map(|(id, b)| (id, *b)).collect()
        );
    }
}
