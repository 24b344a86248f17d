//! Backend and service ids: handed out, reused, and each backend kept,
//! flagged draining or deleted as the references to it say.

use std::collections::BTreeSet;

use lb_common::{BACKEND_DRAINING, Backend};

use super::{IdTable, Mirror, Op, identity};

impl Mirror {
    /// The id of backend `b`, created (flagged draining when `draining`)
    /// if the maps do not hold it. A backend taken for a slot loses its
    /// draining flag here, before any slot names it.
    pub(super) fn take_backend_id(&mut self, b: Backend, draining: bool, ops: &mut Vec<Op>) -> u32 {
        let b = identity(b);
        if let Some(id) = self.backend_ids.get(&b, &self.backends) {
            if !draining {
                self.set_backend(id, b, ops);
            }
            return id;
        }
        let id = self.free_backend_ids.pop_first().unwrap_or_else(|| {
            self.next_backend_id += 1;
            self.next_backend_id - 1
        });
        let value = if draining {
            Backend {
                flags: b.flags | BACKEND_DRAINING,
                ..b
            }
        } else {
            b
        };
        self.backends.insert(id, value);
        self.backend_ids.insert(id, &self.backends);
        ops.push(Op::PutBackend { id, backend: value });
        id
    }

    fn set_backend(&mut self, id: u32, value: Backend, ops: &mut Vec<Op>) {
        if self.backends.get(&id) != Some(&value) {
            self.backends.insert(id, value);
            ops.push(Op::PutBackend { id, backend: value });
        }
    }

    /// Makes the maps agree with the references to backend `id`: gone
    /// when nothing references it, flagged draining when only frontends
    /// listing it as draining do, unflagged when a slot names it.
    fn settle(&mut self, id: u32, ops: &mut Vec<Op>) {
        let Some(b) = self.backends.get(&id).copied() else {
            return;
        };
        let in_slot = self.backend_refs.contains_key(&id);
        if !in_slot && !self.drain_refs.contains_key(&id) {
            // The index compares through `backends`: out of it first.
            self.backend_ids.remove(id, &self.backends);
            self.backends.remove(&id);
            self.free_backend_ids.insert(id);
            self.left_backends.push(id);
            ops.push(Op::DelBackend { id });
            return;
        }
        let flags = if in_slot {
            b.flags & !BACKEND_DRAINING
        } else {
            b.flags | BACKEND_DRAINING
        };
        self.set_backend(id, Backend { flags, ..b }, ops);
    }

    /// After a complete listing: backends nothing references (left by an
    /// earlier agent, e.g. draining for a frontend since removed) go, and
    /// every flag agrees with the references.
    pub fn remove_unreferenced(&mut self, ops: &mut Vec<Op>) {
        let ids: Vec<u32> = self.backends.keys().collect();
        for id in ids {
            self.settle(id, ops);
        }
    }

    pub(super) fn take_service_id(&mut self) -> u32 {
        let id = self.free_service_ids.pop_first().unwrap_or_else(|| {
            self.next_service_id += 1;
            self.next_service_id - 1
        });
        self.service_ids.insert(id);
        id
    }

    /// Settles each of `ids` once, in order (removals after the slots and
    /// frontends that named them).
    pub(super) fn settle_all(&mut self, mut ids: Vec<u32>, ops: &mut Vec<Op>) {
        let mut seen = BTreeSet::new();
        ids.retain(|id| seen.insert(*id));
        for id in ids {
            self.settle(id, ops);
        }
    }
}

/// Backend ids by identity (the backend without `BACKEND_DRAINING`): the
/// table holds ids and compares through the mirror's backends, four bytes
/// a slot where a map keyed by the backend held twenty-four. An identity
/// held under two ids (an earlier agent's maps) finds the last inserted.
#[derive(Clone, Debug, Default)]
pub(super) struct ByIdentity {
    table: hashbrown::HashTable<u32>,
    hasher: std::hash::RandomState,
}

impl ByIdentity {
    fn hash(&self, b: &Backend) -> u64 {
        std::hash::BuildHasher::hash_one(&self.hasher, identity(*b))
    }

    pub(super) fn get(&self, b: &Backend, backends: &IdTable<Backend>) -> Option<u32> {
        let b = identity(*b);
        self.table
            .find(self.hash(&b), |id| {
                backends.get(id).is_some_and(|x| identity(*x) == b)
            })
            .copied()
    }

    /// Indexes `id`, which `backends` holds.
    pub(super) fn insert(&mut self, id: u32, backends: &IdTable<Backend>) {
        let b = identity(backends[&id]);
        let h = self.hash(&b);
        let hasher = &self.hasher;
        let same = |x: &u32| backends.get(x).is_some_and(|x| identity(*x) == b);
        match self.table.find_mut(h, same) {
            Some(held) => *held = id,
            None => {
                self.table.insert_unique(h, id, |x| {
                    std::hash::BuildHasher::hash_one(hasher, identity(backends[x]))
                });
            }
        }
    }

    /// Forgets `id` (while `backends` still holds it).
    pub(super) fn remove(&mut self, id: u32, backends: &IdTable<Backend>) {
        let Some(b) = backends.get(&id) else { return };
        if let Ok(e) = self.table.find_entry(self.hash(b), |x| *x == id) {
            e.remove();
        }
    }
}
