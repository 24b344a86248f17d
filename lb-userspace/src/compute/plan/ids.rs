//! Backend and service ids: handed out, reused, and each backend kept,
//! flagged draining or deleted as the references to it say.

use std::collections::{BTreeSet, HashMap};

use lb_common::{BACKEND_DRAINING, Backend};

use super::{Mirror, Op, identity};

impl Mirror {
    /// The id of backend `b`, created (flagged draining when `draining`)
    /// if the maps do not hold it. A backend taken for a slot loses its
    /// draining flag here, before any slot names it.
    pub(super) fn take_backend_id(&mut self, b: Backend, draining: bool, ops: &mut Vec<Op>) -> u32 {
        let b = identity(b);
        if let Some(id) = self.backend_ids.get(&b).copied() {
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
        self.backend_ids.insert(b, id);
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
            self.backends.remove(&id);
            self.backend_ids.remove(&identity(b));
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
        let mut ids: Vec<u32> = self.backends.keys().copied().collect();
        ids.sort_unstable();
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

    pub(super) fn unref(refs: &mut HashMap<u32, u32>, id: u32) {
        if let Some(r) = refs.get_mut(&id) {
            *r -= 1;
            if *r == 0 {
                refs.remove(&id);
            }
        }
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
