//! The services map as the mirror holds it: the same entries as a map from
//! key to value, stored by frontend. A slot is a backend id in its
//! frontend's list (four bytes) where a map entry took forty and a share
//! of a table: at 100,000 Services of ten endpoints, 1.1M entries.

use std::collections::HashMap;

use lb_common::{ServiceKey, ServiceValue};

/// Keys and values exactly as a `HashMap<ServiceKey, ServiceValue>` would
/// hold them (`get`, `insert`, `remove`, `len`, `iter` agree with one).
#[derive(Clone, Debug, Default)]
pub struct ServiceEntries {
    /// By frontend (slot-0 key): its value once the maps hold it, and the
    /// backend ids of its slots, slot 1 first (0: no entry there).
    fronts: HashMap<ServiceKey, Front>,
    /// Slot entries that are not a bare backend id (none this agent
    /// writes; an earlier writer's), as read.
    odd: HashMap<ServiceKey, ServiceValue>,
    len: usize,
}

#[derive(Clone, Debug, Default)]
struct Front {
    value: Option<ServiceValue>,
    slots: Vec<u32>,
}

/// A slot's value as this agent writes it: the backend id, nothing else.
fn bare(id: u32) -> ServiceValue {
    ServiceValue {
        backend_id: id,
        ..Default::default()
    }
}

impl ServiceEntries {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, k: &ServiceKey) -> Option<ServiceValue> {
        if k.slot == 0 {
            return self.fronts.get(k)?.value;
        }
        if let Some(v) = self.odd.get(k) {
            return Some(*v);
        }
        let id = *self
            .fronts
            .get(&k.with_slot(0))?
            .slots
            .get(k.slot as usize - 1)?;
        (id != 0).then(|| bare(id))
    }

    pub fn contains_key(&self, k: &ServiceKey) -> bool {
        self.get(k).is_some()
    }

    pub fn insert(&mut self, k: ServiceKey, v: ServiceValue) {
        if !self.contains_key(&k) {
            self.len += 1;
        }
        if k.slot == 0 {
            self.fronts.entry(k).or_default().value = Some(v);
            return;
        }
        let i = k.slot as usize - 1;
        if v.backend_id != 0 && v == bare(v.backend_id) {
            self.odd.remove(&k);
            let f = self.fronts.entry(k.with_slot(0)).or_default();
            if f.slots.len() <= i {
                f.slots.resize(i + 1, 0);
            }
            f.slots[i] = v.backend_id;
        } else {
            self.clear_slot(&k);
            self.odd.insert(k, v);
        }
    }

    pub fn remove(&mut self, k: &ServiceKey) -> Option<ServiceValue> {
        let old = self.get(k)?;
        self.len -= 1;
        if k.slot == 0 {
            if let Some(f) = self.fronts.get_mut(k) {
                f.value = None;
            }
            self.forget_if_empty(k);
        } else if self.odd.remove(k).is_none() {
            self.clear_slot(k);
        }
        Some(old)
    }

    /// Every entry (in no particular order).
    pub fn iter(&self) -> impl Iterator<Item = (ServiceKey, ServiceValue)> + '_ {
        self.fronts
            .iter()
            .flat_map(|(k, f)| {
                let front = f.value.map(|v| (*k, v));
                let slots = f.slots.iter().enumerate().filter(|(_, id)| **id != 0);
                front
                    .into_iter()
                    .chain(slots.map(|(i, id)| (k.with_slot(i as u16 + 1), bare(*id))))
            })
            .chain(self.odd.iter().map(|(k, v)| (*k, *v)))
    }

    /// Slot-0 keys: the frontends the maps hold.
    pub fn frontends(&self) -> impl Iterator<Item = &ServiceKey> {
        self.fronts
            .iter()
            .filter(|(_, f)| f.value.is_some())
            .map(|(k, _)| k)
    }

    fn clear_slot(&mut self, k: &ServiceKey) {
        let front = k.with_slot(0);
        if let Some(f) = self.fronts.get_mut(&front) {
            if let Some(id) = f.slots.get_mut(k.slot as usize - 1) {
                *id = 0;
            }
            while f.slots.last() == Some(&0) {
                f.slots.pop();
            }
        }
        self.forget_if_empty(&front);
    }

    fn forget_if_empty(&mut self, front: &ServiceKey) {
        if self
            .fronts
            .get(front)
            .is_some_and(|f| f.value.is_none() && f.slots.is_empty())
        {
            self.fronts.remove(front);
        }
    }
}

impl FromIterator<(ServiceKey, ServiceValue)> for ServiceEntries {
    fn from_iter<I: IntoIterator<Item = (ServiceKey, ServiceValue)>>(it: I) -> Self {
        let mut e = Self::default();
        for (k, v) in it {
            e.insert(k, v);
        }
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(front: u8, slot: u16) -> ServiceKey {
        ServiceKey::frontend(
            crate::compute::desired::net_addr(format!("10.96.0.{front}").parse().unwrap()),
            lb_common::BeU16::from_host(80),
            lb_common::PROTO_TCP,
            lb_common::SCOPE_INTERNAL,
        )
        .with_slot(slot)
    }

    fn value(id: u32, extra: bool) -> ServiceValue {
        ServiceValue {
            backend_id: id,
            count: if extra { 3 } else { 0 },
            ..Default::default()
        }
    }

    proptest! {
        /// Whatever is put and removed, in whatever order, the entries
        /// agree with a plain map of the same operations.
        #[test]
        fn the_entries_agree_with_a_map(
            ops in proptest::collection::vec(
                (any::<bool>(), 0u8..3, 0u16..6, 0u32..4, any::<bool>()),
                0..200,
            )
        ) {
            let mut map: HashMap<ServiceKey, ServiceValue> = HashMap::new();
            let mut e = ServiceEntries::default();
            for (put, front, slot, id, extra) in ops {
                let k = key(front, slot);
                if put {
                    map.insert(k, value(id, extra));
                    e.insert(k, value(id, extra));
                } else {
                    prop_assert_eq!(map.remove(&k), e.remove(&k));
                }
                prop_assert_eq!(map.len(), e.len());
                prop_assert_eq!(map.get(&k).copied(), e.get(&k));
            }
            let all: HashMap<ServiceKey, ServiceValue> = e.iter().collect();
            prop_assert_eq!(all.len(), e.len(), "no entry twice");
            prop_assert_eq!(&all, &map);
            let fronts: std::collections::HashSet<ServiceKey> = e.frontends().copied().collect();
            let want: std::collections::HashSet<ServiceKey> =
                map.keys().filter(|k| k.slot == 0).copied().collect();
            prop_assert_eq!(fronts, want);
        }
    }
}
