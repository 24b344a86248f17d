//! Maglev tables.

use super::*;

/// Entry -> backend address, through the slots the table names.
fn maglev_backends(m: &Mirror, ops: &[Op], key: &ServiceKey) -> Vec<Backend> {
    let table = ops
        .iter()
        .rev()
        .find_map(|o| match o {
            Op::PutMaglev { service_id, table }
                if *service_id == m.services().get(key).unwrap().service_id =>
            {
                Some(table.clone())
            }
            _ => None,
        })
        .expect("a Maglev table for the frontend");
    table
        .iter()
        .map(|s| {
            m.backends()[&m
                .services()
                .get(&key.with_slot(*s as u16))
                .unwrap()
                .backend_id]
        })
        .collect()
}

#[test]
fn maglev_tables_pick_the_same_backends_whatever_the_local_ids_and_slots() {
    // Node A saw the backends in one order, node B in another and with
    // other Services first, so ids and slots differ between them.
    let mut a = Mirror::from_entries([], []).with_maglev(251, []);
    let mut b = Mirror::from_entries([], []).with_maglev(251, []);
    let mut ops_a = vec![];
    let mut ops_b = vec![];
    a.upsert(&external("192.0.2.1", &[1, 2, 3, 4]), &mut ops_a);
    b.upsert(&fe("10.96.0.99", 80, &[9, 8, 7]), &mut ops_b);
    b.upsert(&external("192.0.2.1", &[4, 3, 2, 1]), &mut ops_b);
    let key = external("192.0.2.1", &[]).key;
    assert_ne!(
        a.services().get(&key.with_slot(1)).unwrap().backend_id,
        b.services().get(&key.with_slot(1)).unwrap().backend_id,
        "the test needs different local ids"
    );
    let ta = maglev_backends(&a, &ops_a, &key);
    assert_eq!(ta.len(), 251);
    // The same backends behind another address of the Service: the
    // table is built once and shared.
    a.upsert(&external("192.0.2.2", &[1, 2, 3, 4]), &mut ops_a);
    let tables: Vec<&MaglevTable> = ops_a
        .iter()
        .filter_map(|o| match o {
            Op::PutMaglev { table, .. } => Some(table),
            _ => None,
        })
        .collect();
    assert_eq!(tables.len(), 2);
    assert!(tables[0].same(tables[1]));
    assert_eq!(ta, maglev_backends(&b, &ops_b, &key));
    // A ClusterIP frontend has no table (the socket path never uses one).
    assert!(
            !ops_b
                .iter()
                .any(|o| matches!(o, Op::PutMaglev { service_id, .. } if *service_id == b.services().get(&fe("10.96.0.99", 80, &[]).key).unwrap().service_id))
        );

    // Removing one of four backends moves at most 1/4 + 3 % of entries,
    // and the tables of both nodes still agree.
    let mut ops_a2 = vec![];
    a.upsert(&external("192.0.2.1", &[1, 2, 4]), &mut ops_a2);
    let ta2 = maglev_backends(&a, &ops_a2, &key);
    let moved = ta.iter().zip(&ta2).filter(|(x, y)| x != y).count();
    assert!(
        moved as f64 <= 251.0 * (0.25 + 0.03),
        "{moved} of 251 entries moved"
    );
    let mut ops_b2 = vec![];
    b.upsert(&external("192.0.2.1", &[4, 2, 1]), &mut ops_b2);
    assert_eq!(ta2, maglev_backends(&b, &ops_b2, &key));
}

#[test]
fn maglev_tables_follow_their_frontend() {
    let mut m = Mirror::from_entries([], []).with_maglev(251, []);
    let mut ops = vec![];
    m.upsert(&external("192.0.2.1", &[1, 2]), &mut ops);
    let id = m
        .services()
        .get(&external("192.0.2.1", &[]).key)
        .unwrap()
        .service_id;
    assert!(
        ops.iter()
            .any(|o| matches!(o, Op::PutMaglev { service_id, .. } if *service_id == id))
    );
    // Unchanged: no new table.
    let mut ops = vec![];
    m.upsert(&external("192.0.2.1", &[2, 1]), &mut ops);
    assert!(ops.is_empty(), "{ops:?}");
    // An agent restarted with the table in the kernel writes nothing
    // either; one without it (or with another size) writes it.
    let reread = || {
        Mirror::from_entries(
            m.services().iter(),
            m.backends().iter().map(|(k, v)| (k, *v)),
        )
    };
    let mut again = reread().with_maglev(251, [id]);
    let mut ops = vec![];
    again.upsert(&external("192.0.2.1", &[1, 2]), &mut ops);
    assert!(ops.is_empty(), "{ops:?}");
    let mut fresh = reread().with_maglev(251, []);
    let mut ops = vec![];
    fresh.upsert(&external("192.0.2.1", &[1, 2]), &mut ops);
    assert!(matches!(ops[..], [Op::PutMaglev { .. }]), "{ops:?}");
    // No backends left: the table stays (no flow reads it: a zero count is
    // refused first), so the next backend rewrites it instead of swapping
    // a new one in; removed: the table goes with the frontend.
    let mut ops = vec![];
    m.upsert(&external("192.0.2.1", &[]), &mut ops);
    assert!(
        !ops.iter()
            .any(|o| matches!(o, Op::DelMaglev { .. } | Op::PutMaglev { .. })),
        "{ops:?}"
    );
    let mut ops = vec![];
    m.upsert(&external("192.0.2.1", &[3]), &mut ops);
    assert!(
        ops.iter()
            .any(|o| matches!(o, Op::PutMaglev { service_id, .. } if *service_id == id)),
        "{ops:?}"
    );
    let mut ops = vec![];
    m.remove(&external("192.0.2.1", &[]).key, &mut ops);
    assert!(
        ops.iter()
            .any(|o| matches!(o, Op::DelMaglev { service_id } if *service_id == id))
    );
}
