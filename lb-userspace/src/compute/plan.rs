//! The plan: a diff of desired frontends against a mirror of what the maps
//! hold, as ordered map operations. Pure: the writer applies the ops.
//!
//! Order is the property that keeps the datapath whole at every instant:
//! backends first, then slots, then the frontend (whose count makes the
//! slots reachable); removals in reverse. Slots keep their positions where
//! they can, so a change rewrites only the entries it must.

use std::collections::{BTreeSet, HashMap, VecDeque};

use lb_common::{
    BACKEND_DRAINING, Backend, PROTO_UDP, SRC_RANGE_FRONT_BITS, ServiceKey, ServiceValue,
    SrcRangeData,
};

use crate::compute::desired::Frontend;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    PutBackend {
        id: u32,
        backend: Backend,
    },
    /// A loadBalancerSourceRanges entry (LPM prefix length, data).
    PutRange {
        len: u32,
        data: SrcRangeData,
    },
    DelRange {
        len: u32,
        data: SrcRangeData,
    },
    PutService {
        key: ServiceKey,
        value: ServiceValue,
    },
    DelService {
        key: ServiceKey,
    },
    DelBackend {
        id: u32,
    },
    /// A frontend's whole Maglev table (slot number per entry), swapped in
    /// for its service id at once.
    PutMaglev {
        service_id: u32,
        table: MaglevTable,
    },
    DelMaglev {
        service_id: u32,
    },
}

/// A Maglev table (slot number per entry), shared by the frontends whose
/// backends are the same; printed by its size, not its 16k entries.
#[derive(Clone, PartialEq, Eq)]
pub struct MaglevTable(pub std::sync::Arc<[u32]>);

impl MaglevTable {
    /// The very same table (one inner map can serve both).
    pub fn same(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl std::ops::Deref for MaglevTable {
    type Target = [u32];
    fn deref(&self) -> &[u32] {
        &self.0
    }
}

impl std::fmt::Debug for MaglevTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MaglevTable({} entries)", self.0.len())
    }
}

/// What the kernel maps hold, plus the indexes that make a diff O(change).
#[derive(Default, Debug, Clone)]
pub struct Mirror {
    services: HashMap<ServiceKey, ServiceValue>,
    /// As the kernel holds them (`BACKEND_DRAINING` included).
    backends: HashMap<u32, Backend>,
    /// By identity: the backend without `BACKEND_DRAINING`, which the
    /// agent flips in place.
    backend_ids: HashMap<Backend, u32>,
    /// Slots naming each backend.
    backend_refs: HashMap<u32, u32>,
    /// Frontends listing each backend as draining, and each frontend's
    /// draining backends: a backend lives while a slot or a frontend
    /// references it, flagged draining while only the latter do.
    drain_refs: HashMap<u32, u32>,
    drains: HashMap<ServiceKey, Vec<u32>>,
    free_backend_ids: BTreeSet<u32>,
    next_backend_id: u32,
    service_ids: BTreeSet<u32>,
    /// loadBalancerSourceRanges entries by frontend (slot-0 key).
    ranges: HashMap<ServiceKey, BTreeSet<(u32, SrcRangeData)>>,
    free_service_ids: BTreeSet<u32>,
    next_service_id: u32,
    /// Entries per Maglev table (0: no tables).
    maglev_size: usize,
    /// Service ids whose frontend has a table.
    maglev: BTreeSet<u32>,
    /// Tables built lately, by backend addresses in slot order (content,
    /// so never stale); bounded.
    maglev_built: HashMap<Vec<std::net::SocketAddr>, MaglevTable>,
    /// UDP backends that left a frontend since `take_left_udp`: sockets
    /// connected to them through it are to be destroyed.
    left_udp: Vec<lb_common::SockDoomedKey>,
}

/// A backend as the mirror indexes it: without the draining flag.
fn identity(b: Backend) -> Backend {
    Backend {
        flags: b.flags & !BACKEND_DRAINING,
        ..b
    }
}

/// At most this many recent Maglev tables are kept for reuse (64 KiB each at
/// the default size).
const MAGLEV_BUILT_MAX: usize = 64;

impl Mirror {
    /// Rebuilds the indexes from map contents read from the kernel.
    pub fn from_entries(
        services: impl IntoIterator<Item = (ServiceKey, ServiceValue)>,
        backends: impl IntoIterator<Item = (u32, Backend)>,
    ) -> Self {
        let mut m = Mirror {
            next_backend_id: 1,
            next_service_id: 1,
            ..Default::default()
        };
        m.services = services.into_iter().collect();
        for (id, b) in backends {
            m.backends.insert(id, b);
            m.backend_ids.insert(identity(b), id);
            m.next_backend_id = m.next_backend_id.max(id + 1);
        }
        for (k, v) in &m.services {
            if k.slot == 0 {
                if v.service_id != 0 {
                    m.service_ids.insert(v.service_id);
                    m.next_service_id = m.next_service_id.max(v.service_id + 1);
                }
            } else {
                *m.backend_refs.entry(v.backend_id).or_default() += 1;
            }
        }
        for id in 1..m.next_backend_id {
            if !m.backends.contains_key(&id) {
                m.free_backend_ids.insert(id);
            }
        }
        for id in 1..m.next_service_id {
            if !m.service_ids.contains(&id) {
                m.free_service_ids.insert(id);
            }
        }
        m
    }

    /// Adds the source-range entries the kernel holds.
    pub fn with_ranges(mut self, ranges: impl IntoIterator<Item = (u32, SrcRangeData)>) -> Self {
        for (len, d) in ranges {
            let front = ServiceKey::frontend(d.front, d.port, d.proto, lb_common::SCOPE_INTERNAL);
            self.ranges.entry(front).or_default().insert((len, d));
        }
        self
    }

    /// Maglev tables of `size` entries for external frontends; `have`: the
    /// service ids the kernel holds a table of that size for.
    pub fn with_maglev(mut self, size: usize, have: impl IntoIterator<Item = u32>) -> Self {
        self.maglev_size = size;
        self.maglev = have.into_iter().collect();
        self
    }

    pub fn maglev_size(&self) -> usize {
        self.maglev_size
    }

    pub fn services(&self) -> &HashMap<ServiceKey, ServiceValue> {
        &self.services
    }

    pub fn backends(&self) -> &HashMap<u32, Backend> {
        &self.backends
    }

    /// Slot-0 keys: every frontend the maps hold.
    pub fn frontends(&self) -> impl Iterator<Item = &ServiceKey> {
        self.services.keys().filter(|k| k.slot == 0)
    }

    /// The maps hold backend `b` (under some id): taking it costs no entry.
    pub fn holds_backend(&self, b: &Backend) -> bool {
        self.backend_ids.contains_key(b)
    }

    /// The frontend `service_id` has a Maglev table in the maps.
    pub fn has_maglev(&self, service_id: u32) -> bool {
        self.maglev.contains(&service_id)
    }

    /// Maglev tables the maps hold (one entry each in the outer map).
    pub fn maglev_tables(&self) -> usize {
        self.maglev.len()
    }

    fn slot_ids(&self, key: &ServiceKey) -> Vec<u32> {
        let count = self.services.get(key).map_or(0, |v| v.count);
        (1..=count)
            .filter_map(|s| self.services.get(&key.with_slot(s)).map(|v| v.backend_id))
            .collect()
    }

    /// The id of backend `b`, created (flagged draining when `draining`)
    /// if the maps do not hold it. A backend taken for a slot loses its
    /// draining flag here, before any slot names it.
    fn take_backend_id(&mut self, b: Backend, draining: bool, ops: &mut Vec<Op>) -> u32 {
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

    fn take_service_id(&mut self) -> u32 {
        let id = self.free_service_ids.pop_first().unwrap_or_else(|| {
            self.next_service_id += 1;
            self.next_service_id - 1
        });
        self.service_ids.insert(id);
        id
    }

    fn put(&mut self, key: ServiceKey, value: ServiceValue, ops: &mut Vec<Op>) {
        if self.services.get(&key) != Some(&value) {
            self.services.insert(key, value);
            ops.push(Op::PutService { key, value });
        }
    }

    fn unref(refs: &mut HashMap<u32, u32>, id: u32) {
        if let Some(r) = refs.get_mut(&id) {
            *r -= 1;
            if *r == 0 {
                refs.remove(&id);
            }
        }
    }

    /// Settles each of `ids` once, in order (removals after the slots and
    /// frontends that named them).
    fn settle_all(&mut self, mut ids: Vec<u32>, ops: &mut Vec<Op>) {
        let mut seen = BTreeSet::new();
        ids.retain(|id| seen.insert(*id));
        for id in ids {
            self.settle(id, ops);
        }
    }

    /// Ops that make the maps hold `fe`, appended to `ops`.
    pub fn upsert(&mut self, fe: &Frontend, ops: &mut Vec<Op>) {
        let key = fe.key;
        // Ranges go in before the flag that makes the datapath check them,
        // and leave after it.
        // A range matches clients of its own family only: an IPv6 prefix
        // over a v4 frontend's IPv4-mapped clients (`::/0`) would match
        // them all.
        let want_ranges: BTreeSet<(u32, SrcRangeData)> = fe
            .source_ranges
            .iter()
            .filter(|c| c.addr.is_ipv4() == key.addr.is_v4())
            .map(|c| {
                let client = crate::compute::desired::net_addr(c.addr);
                let bits = if c.addr.is_ipv4() {
                    96 + c.len as u32
                } else {
                    c.len as u32
                };
                let d = SrcRangeData {
                    front: key.addr,
                    port: key.port,
                    proto: key.proto,
                    _pad: 0,
                    client,
                };
                (SRC_RANGE_FRONT_BITS + bits, d)
            })
            .collect();
        let have_ranges = self.ranges.remove(&key).unwrap_or_default();
        for (len, data) in want_ranges.difference(&have_ranges) {
            ops.push(Op::PutRange {
                len: *len,
                data: *data,
            });
        }
        let stale_ranges: Vec<(u32, SrcRangeData)> =
            have_ranges.difference(&want_ranges).copied().collect();
        if !want_ranges.is_empty() {
            self.ranges.insert(key, want_ranges);
        }
        let old = self.services.get(&key).copied();
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
            *self.drain_refs.entry(*id).or_default() += 1;
        }
        let old_drains = if drain_ids.is_empty() {
            self.drains.remove(&key)
        } else {
            self.drains.insert(key, drain_ids.clone())
        }
        .unwrap_or_default();
        let want_set: BTreeSet<u32> = want.iter().copied().collect();

        // Keep every surviving backend in its slot; fill holes with new ones;
        // close remaining holes with entries moved from the end.
        let mut placed = BTreeSet::new();
        let mut slots: Vec<Option<u32>> = old_ids
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
        let new_ids: Vec<u32> = slots.into_iter().flatten().collect();

        for id in &new_ids {
            *self.backend_refs.entry(*id).or_default() += 1;
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
            Self::unref(&mut self.backend_refs, *id);
        }
        for id in &old_drains {
            Self::unref(&mut self.drain_refs, *id);
        }
        let mut touched = old_ids;
        touched.extend(old_drains);
        touched.extend(drain_ids);
        self.settle_all(touched, ops);
        for (len, data) in stale_ranges {
            ops.push(Op::DelRange { len, data });
        }
    }

    /// External frontends (the packet path's) get a Maglev table built from
    /// their backends' addresses, rebuilt whenever their slots change.
    fn sync_maglev(
        &mut self,
        service_id: u32,
        flags: u8,
        slots: &[u32],
        reuse: bool,
        ops: &mut Vec<Op>,
    ) {
        let wanted = self.maglev_size > 0
            && service_id != 0
            && flags & lb_common::SVC_FLAG_EXTERNAL != 0
            && !slots.is_empty();
        if !wanted {
            self.drop_maglev(service_id, ops);
            return;
        }
        if reuse && self.maglev.contains(&service_id) {
            return;
        }
        let addrs: Vec<std::net::SocketAddr> = slots
            .iter()
            .map(|id| {
                let b = &self.backends[id];
                std::net::SocketAddr::new(crate::compute::desired::ip_of(&b.addr), b.port.to_host())
            })
            .collect();
        // A Service's frontends on several addresses (NodePort on each node
        // address, LB IPs, externalIPs) share one backend list: one table.
        if self.maglev_built.len() >= MAGLEV_BUILT_MAX {
            self.maglev_built.clear();
        }
        let size = self.maglev_size;
        let table = self
            .maglev_built
            .entry(addrs)
            .or_insert_with_key(|addrs| {
                MaglevTable(
                    crate::compute::maglev::table(addrs, size)
                        .into_iter()
                        .map(|i| i as u32 + 1)
                        .collect(),
                )
            })
            .clone();
        self.maglev.insert(service_id);
        ops.push(Op::PutMaglev { service_id, table });
    }

    fn drop_maglev(&mut self, service_id: u32, ops: &mut Vec<Op>) {
        if self.maglev.remove(&service_id) {
            ops.push(Op::DelMaglev { service_id });
        }
    }

    fn note_left(&mut self, service_id: u32, backend_id: u32) {
        if service_id == 0 {
            return;
        }
        if let Some(b) = self.backends.get(&backend_id) {
            self.left_udp.push(lb_common::SockDoomedKey {
                service_id,
                port: b.port,
                _pad: 0,
                addr: b.addr,
            });
        }
    }

    /// The UDP backends that left a frontend since the last call, with the
    /// frontend's id.
    pub fn take_left_udp(&mut self) -> Vec<lb_common::SockDoomedKey> {
        let mut v = std::mem::take(&mut self.left_udp);
        v.sort_unstable();
        v.dedup();
        v
    }

    pub fn note_left_udp(&mut self, left: Vec<lb_common::SockDoomedKey>) {
        self.left_udp.extend(left);
    }

    /// Ops that remove the frontend `key` (slot 0) and its slots.
    pub fn remove(&mut self, key: &ServiceKey, ops: &mut Vec<Op>) {
        let Some(front) = self.services.get(key).copied() else {
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
            Self::unref(&mut self.backend_refs, *id);
        }
        let drains = self.drains.remove(key).unwrap_or_default();
        for id in &drains {
            Self::unref(&mut self.drain_refs, *id);
        }
        let mut touched = ids;
        touched.extend(drains);
        self.settle_all(touched, ops);
        for (len, data) in self.ranges.remove(key).unwrap_or_default() {
            ops.push(Op::DelRange { len, data });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::desired::net_addr;
    use lb_common::{BeU16, PROTO_TCP, PROTO_UDP, SCOPE_INTERNAL};

    fn fe(ip: &str, port: u16, backends: &[u8]) -> Frontend {
        Frontend {
            key: ServiceKey::frontend(
                net_addr(ip.parse().unwrap()),
                BeU16::from_host(port),
                PROTO_TCP,
                SCOPE_INTERNAL,
            ),
            flags: 0,
            affinity_timeout: 0,
            source_ranges: vec![],
            backends: backends
                .iter()
                .map(|b| Backend {
                    addr: net_addr(format!("10.0.0.{b}").parse().unwrap()),
                    port: BeU16::from_host(80),
                    proto: PROTO_TCP,
                    flags: 0,
                })
                .collect(),
            draining: vec![],
        }
    }

    /// A fake kernel that applies ops one at a time and checks, after each,
    /// that every reachable slot and backend exists.
    #[derive(Default)]
    struct Kernel {
        services: HashMap<ServiceKey, ServiceValue>,
        backends: HashMap<u32, Backend>,
        ranges: BTreeSet<(u32, SrcRangeData)>,
        maglev: HashMap<u32, MaglevTable>,
    }

    impl Kernel {
        fn apply(&mut self, op: &Op) {
            match op {
                Op::PutBackend { id, backend } => {
                    self.backends.insert(*id, *backend);
                }
                Op::PutService { key, value } => {
                    self.services.insert(*key, *value);
                }
                Op::DelService { key } => {
                    assert!(
                        self.services.remove(key).is_some(),
                        "deleting absent {key:?}"
                    );
                }
                Op::DelBackend { id } => {
                    assert!(
                        self.backends.remove(id).is_some(),
                        "deleting absent backend {id}"
                    );
                }
                Op::PutRange { len, data } => {
                    assert!(self.ranges.insert((*len, *data)), "range written twice");
                }
                Op::DelRange { len, data } => {
                    assert!(self.ranges.remove(&(*len, *data)), "deleting absent range");
                }
                Op::PutMaglev { service_id, table } => {
                    self.maglev.insert(*service_id, table.clone());
                }
                Op::DelMaglev { service_id } => {
                    assert!(
                        self.maglev.remove(service_id).is_some(),
                        "deleting absent Maglev table {service_id}"
                    );
                }
            }
            self.assert_whole(op);
        }

        fn assert_whole(&self, after: &Op) {
            for (k, v) in self.services.iter().filter(|(k, _)| k.slot == 0) {
                if v.flags & lb_common::SVC_FLAG_SOURCE_RANGES != 0 {
                    assert!(
                        self.ranges
                            .iter()
                            .any(|(_, d)| d.front == k.addr && d.port == k.port),
                        "after {after:?}: {k:?} checks source ranges but has none"
                    );
                }
                for s in 1..=v.count {
                    let slot = self.services.get(&k.with_slot(s));
                    let slot = slot
                        .unwrap_or_else(|| panic!("after {after:?}: slot {s} of {k:?} missing"));
                    assert!(
                        self.backends.contains_key(&slot.backend_id),
                        "after {after:?}: backend {} of {k:?} missing",
                        slot.backend_id
                    );
                    assert_eq!(
                        self.backends[&slot.backend_id].flags & lb_common::BACKEND_DRAINING,
                        0,
                        "after {after:?}: backend {} in a slot of {k:?} is flagged draining",
                        slot.backend_id
                    );
                }
            }
        }

        fn backends_of(&self, key: &ServiceKey) -> BTreeSet<Backend> {
            let n = self.services.get(key).map_or(0, |v| v.count);
            (1..=n)
                .map(|s| self.backends[&self.services[&key.with_slot(s)].backend_id])
                .collect()
        }
    }

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
        let sid = m.services()[&udp(&[]).key].service_id;
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
            assert_eq!(&k.services, m.services());
            assert_eq!(&k.backends, m.backends());
        }
    }

    /// `f` with the backends `draining` (as `fe` names them) draining.
    fn with_draining(mut f: Frontend, draining: &[u8]) -> Frontend {
        f.draining = fe("10.96.0.1", 80, draining).backends;
        f
    }

    fn id_of(m: &Mirror, b: u8) -> Option<u32> {
        let addr = net_addr(format!("10.0.0.{b}").parse().unwrap());
        m.backends()
            .iter()
            .find(|(_, x)| x.addr == addr)
            .map(|(id, _)| *id)
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
            assert_eq!(&k.backends, m.backends());
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
        assert_eq!(&k.backends, m.backends());
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
        assert_eq!(&k.backends, again.backends());
        assert_eq!(k.backends.len(), 2, "{:?}", k.backends);
    }

    fn external(ip: &str, backends: &[u8]) -> Frontend {
        let mut f = fe(ip, 30080, backends);
        f.flags = lb_common::SVC_FLAG_EXTERNAL | lb_common::SVC_FLAG_NODEPORT;
        f
    }

    /// Entry -> backend address, through the slots the table names.
    fn maglev_backends(m: &Mirror, ops: &[Op], key: &ServiceKey) -> Vec<Backend> {
        let table = ops
            .iter()
            .rev()
            .find_map(|o| match o {
                Op::PutMaglev { service_id, table }
                    if *service_id == m.services()[key].service_id =>
                {
                    Some(table.clone())
                }
                _ => None,
            })
            .expect("a Maglev table for the frontend");
        table
            .iter()
            .map(|s| m.backends()[&m.services()[&key.with_slot(*s as u16)].backend_id])
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
            a.services()[&key.with_slot(1)].backend_id,
            b.services()[&key.with_slot(1)].backend_id,
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
                .any(|o| matches!(o, Op::PutMaglev { service_id, .. } if *service_id == b.services()[&fe("10.96.0.99", 80, &[]).key].service_id))
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
        let id = m.services()[&external("192.0.2.1", &[]).key].service_id;
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
                m.services().iter().map(|(k, v)| (*k, *v)),
                m.backends().iter().map(|(k, v)| (*k, *v)),
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
        // No backends left, then removed: the table goes with them.
        let mut ops = vec![];
        m.upsert(&external("192.0.2.1", &[]), &mut ops);
        assert!(
            ops.iter()
                .any(|o| matches!(o, Op::DelMaglev { service_id } if *service_id == id))
        );
        m.upsert(&external("192.0.2.1", &[3]), &mut ops);
        let mut ops = vec![];
        m.remove(&external("192.0.2.1", &[]).key, &mut ops);
        assert!(
            ops.iter()
                .any(|o| matches!(o, Op::DelMaglev { service_id } if *service_id == id))
        );
    }
}
