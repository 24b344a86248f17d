//! A frontend and its slots: written in the order that keeps the datapath
//! whole (backends, slots, then the frontend's count), slots kept in place
//! where they can be, and removed in reverse.

use std::collections::{BTreeSet, VecDeque};

use lb_common::{PROTO_UDP, ServiceKey, ServiceValue};

use super::{Mirror, Op};
use crate::compute::desired::Frontend;

/// The backend ids by slot (from slot 1) that serve `want` when `old`
/// held the slots: every surviving backend keeps its slot, new ones fill
/// the holes the others left, and holes still open are closed with entries
/// moved from the end. So a connection's slot choice changes only where
/// it must, and the slots stay dense (the datapath picks among the first
/// `count`).
pub(super) fn place(old: &[u32], want: &[u32]) -> Vec<u32> {
    let want_set: BTreeSet<u32> = want.iter().copied().collect();
    let mut placed = BTreeSet::new();
    let mut slots: Vec<Option<u32>> = old
        .iter()
        .map(|id| (want_set.contains(id) && placed.insert(*id)).then_some(*id))
        .collect();
    let mut to_place: VecDeque<u32> = want
        .iter()
        .copied()
        .filter(|id| !placed.contains(id))
        .collect();
    for s in slots.iter_mut().filter(|s| s.is_none()) {
        *s = to_place.pop_front();
    }
    slots.extend(to_place.into_iter().map(Some));
    while let Some(pos) = slots.iter().position(Option::is_none) {
        while slots.last() == Some(&None) {
            slots.pop();
        }
        if pos < slots.len() {
            slots[pos] = slots.pop().flatten();
        }
    }
    slots.into_iter().flatten().collect()
}

impl Mirror {
    fn slot_ids(&self, key: &ServiceKey) -> Vec<u32> {
        let count = self.services.get(key).map_or(0, |v| v.count);
        (1..=count)
            .filter_map(|s| self.services.get(&key.with_slot(s)).map(|v| v.backend_id))
            .collect()
    }

    fn put(&mut self, key: ServiceKey, value: ServiceValue, ops: &mut Vec<Op>) {
        if self.services.get(&key) != Some(value) {
            self.services.insert(key, value);
            ops.push(Op::PutService { key, value });
        }
    }

    /// Ops that make the maps hold `fe`, appended to `ops`.
    pub fn upsert(&mut self, fe: &Frontend, ops: &mut Vec<Op>) {
        let key = fe.key;
        // Source ranges go in first and the stale ones last (ranges.rs).
        let stale_ranges = self.put_ranges(fe, ops);
        let old = self.services.get(&key);
        let old_ids = self.slot_ids(&key);

        let want: Vec<u32> = fe
            .backends
            .iter()
            .map(|b| self.take_backend_id(*b, false, ops))
            .collect();
        // Draining backends stay (or come back) under their ids, in no slot.
        let drain_ids: Vec<u32> = fe
            .draining
            .iter()
            .map(|b| self.take_backend_id(*b, true, ops))
            .collect();
        for id in &drain_ids {
            *self.drain_refs.get_or_zero(*id) += 1;
        }
        let old_drains = if drain_ids.is_empty() {
            self.drains.remove(&key)
        } else {
            self.drains.insert(key, drain_ids.clone())
        }
        .unwrap_or_default();
        let new_ids = place(&old_ids, &want);
        for id in &new_ids {
            *self.backend_refs.get_or_zero(*id) += 1;
        }
        for (i, id) in new_ids.iter().enumerate() {
            let v = ServiceValue {
                backend_id: *id,
                ..Default::default()
            };
            self.put(key.with_slot(i as u16 + 1), v, ops);
        }
        // Every frontend but the address-only markers has an id of its own:
        // affinity and Maglev state are keyed by it.
        let addr_only = fe.flags & lb_common::SVC_FLAG_ADDR_ONLY != 0;
        let service_id = match old {
            Some(v) if v.service_id != 0 || addr_only => v.service_id,
            _ if addr_only => 0,
            _ => self.take_service_id(),
        };
        let front = ServiceValue {
            backend_id: 0,
            count: new_ids.len() as u16,
            flags: fe.flags,
            _pad: 0,
            service_id,
            affinity_timeout: fe.affinity_timeout,
        };
        self.put(key, front, ops);
        let reuse = old.is_some_and(|v| v.service_id == service_id) && old_ids == new_ids;
        self.sync_maglev(service_id, fe.flags, &new_ids, reuse, ops);
        if let Some(v) = old.filter(|v| v.service_id != service_id && v.service_id != 0) {
            self.drop_maglev(v.service_id, ops);
        }
        if let Some(sid) = old.map(|v| v.service_id).filter(|_| key.proto == PROTO_UDP) {
            let kept: BTreeSet<u32> = if sid == service_id {
                new_ids.iter().copied().collect()
            } else {
                BTreeSet::new()
            };
            for id in old_ids.iter().filter(|id| !kept.contains(id)) {
                self.note_left(sid, *id);
            }
        }
        for s in new_ids.len() + 1..=old_ids.len() {
            let k = key.with_slot(s as u16);
            self.services.remove(&k);
            ops.push(Op::DelService { key: k });
        }
        for id in &old_ids {
            self.backend_refs.unref(*id);
        }
        for id in &old_drains {
            self.drain_refs.unref(*id);
        }
        let mut touched = old_ids;
        touched.extend(old_drains);
        touched.extend(drain_ids);
        self.settle_all(touched, ops);
        for (len, data) in stale_ranges {
            ops.push(Op::DelRange { len, data });
        }
    }

    /// Ops that remove the frontend `key` (slot 0) and its slots.
    pub fn remove(&mut self, key: &ServiceKey, ops: &mut Vec<Op>) {
        let Some(front) = self.services.get(key) else {
            return;
        };
        let ids = self.slot_ids(key);
        if key.proto == PROTO_UDP {
            for id in &ids {
                self.note_left(front.service_id, *id);
            }
        }
        self.services.remove(key);
        ops.push(Op::DelService { key: *key });
        for s in 1..=front.count {
            let k = key.with_slot(s);
            if self.services.remove(&k).is_some() {
                ops.push(Op::DelService { key: k });
            }
        }
        self.drop_maglev(front.service_id, ops);
        if front.service_id != 0 && self.service_ids.remove(&front.service_id) {
            self.free_service_ids.insert(front.service_id);
        }
        for id in &ids {
            self.backend_refs.unref(*id);
        }
        let drains = self.drains.remove(key).unwrap_or_default();
        for id in &drains {
            self.drain_refs.unref(*id);
        }
        let mut touched = ids;
        touched.extend(drains);
        self.settle_all(touched, ops);
        let ranges = self.ranges.remove(key).unwrap_or_default();
        self.range_entries -= ranges.len();
        for (len, data) in ranges {
            ops.push(Op::DelRange { len, data });
        }
    }
}
