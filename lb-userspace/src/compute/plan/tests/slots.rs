//! Slot placement (`slots::place`) as properties over random slot tables
//! and wanted sets (proptest shrinks a failure to a smallest case).

use std::collections::BTreeSet;

use proptest::{collection::vec, prelude::*};

use crate::compute::plan::slots::place;

/// Backend ids as slots hold them: each at most once, in slot order.
fn ids() -> impl Strategy<Value = Vec<u32>> {
    vec(1u32..48, 0..24).prop_map(|v| {
        let mut seen = BTreeSet::new();
        v.into_iter().filter(|id| seen.insert(*id)).collect()
    })
}

fn sorted(v: &[u32]) -> Vec<u32> {
    let mut v = v.to_vec();
    v.sort_unstable();
    v
}

proptest! {
    #[test]
    fn every_wanted_backend_gets_exactly_one_slot(old in ids(), want in ids()) {
        let got = place(&old, &want);
        prop_assert_eq!(sorted(&got), sorted(&want), "old {:?}", old);
    }

    /// A backend that stays keeps its slot, unless its slot is past the
    /// new end (then it fills a hole: the table must stay dense).
    #[test]
    fn a_backend_that_stays_keeps_its_slot_within_the_new_count(old in ids(), want in ids()) {
        let got = place(&old, &want);
        for (slot, id) in old.iter().enumerate().take(got.len()) {
            if want.contains(id) {
                prop_assert_eq!(got[slot], *id, "slot {} of old {:?}, want {:?}: {:?}", slot + 1, old, want, got);
            }
        }
    }

    /// Only adding: nothing moves, the new ones go after.
    #[test]
    fn adding_backends_moves_none(old in ids(), extra in ids()) {
        let mut want: Vec<u32> = extra.into_iter().filter(|id| !old.contains(id)).collect();
        want.extend(&old);
        let got = place(&old, &want);
        prop_assert_eq!(&got[..old.len()], &old[..], "{:?}", got);
    }

    /// Only removing: as many slots move as the removed ones left holes
    /// below the new count, no more.
    #[test]
    fn removing_backends_moves_one_per_hole_below_the_new_count(old in ids(), keep in vec(any::<bool>(), 24)) {
        let want: Vec<u32> = old.iter().zip(&keep).filter(|(_, k)| **k).map(|(id, _)| *id).collect();
        let got = place(&old, &want);
        let holes = old[..got.len()].iter().filter(|id| !want.contains(id)).count();
        let moved = got.iter().zip(&old).filter(|(g, o)| g != o).count();
        prop_assert_eq!(moved, holes, "old {:?}, want {:?}: {:?}", old, want, got);
    }
}
