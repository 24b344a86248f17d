//! The plan: a diff of desired frontends against a mirror of what the maps
//! hold, as ordered map operations. Pure: the writer applies the ops.
//!
//! Order is the property that keeps the datapath whole at every instant:
//! backends first, then slots, then the frontend (whose count makes the
//! slots reachable); removals in reverse. Slots keep their positions where
//! they can, so a change rewrites only the entries it must.
//!
//! Split by job: this file holds the ops and the mirror's state; `ids`
//! hands out backend and service ids and settles their references;
//! `slots` writes and removes a frontend with its slots; `ranges` its
//! loadBalancerSourceRanges entries; `maglev` its Maglev table.

mod entries;
mod id_table;
mod ids;
mod maglev;
mod ranges;
mod slots;

pub use id_table::IdTable;
#[cfg(test)]
mod tests;

pub use entries::ServiceEntries;
pub use maglev::MaglevTable;

use std::collections::{BTreeSet, HashMap};

use lb_common::{BACKEND_DRAINING, Backend, ServiceKey, ServiceValue, SrcRangeData};

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

/// What the kernel maps hold, plus the indexes that make a diff O(change).
#[derive(Default, Debug, Clone)]
pub struct Mirror {
    services: ServiceEntries,
    /// As the kernel holds them (`BACKEND_DRAINING` included).
    backends: IdTable<Backend>,
    /// By identity: the backend without `BACKEND_DRAINING`, which the
    /// agent flips in place.
    backend_ids: ids::ByIdentity,
    /// Slots naming each backend.
    backend_refs: IdTable<u32>,
    /// Frontends listing each backend as draining, and each frontend's
    /// draining backends: a backend lives while a slot or a frontend
    /// references it, flagged draining while only the latter do.
    drain_refs: IdTable<u32>,
    drains: HashMap<ServiceKey, Vec<u32>>,
    free_backend_ids: BTreeSet<u32>,
    next_backend_id: u32,
    service_ids: BTreeSet<u32>,
    /// loadBalancerSourceRanges entries by frontend (slot-0 key).
    ranges: HashMap<ServiceKey, BTreeSet<(u32, SrcRangeData)>>,
    /// Entries in `ranges`, all frontends together.
    range_entries: usize,
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
    /// Backend ids deleted since `take_left_backends`: the conntrack sweep
    /// looks their flows up.
    left_backends: Vec<u32>,
}

/// A backend as the mirror indexes it: without the draining flag.
fn identity(b: Backend) -> Backend {
    Backend {
        flags: b.flags & !BACKEND_DRAINING,
        ..b
    }
}

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
            m.backend_ids.insert(id, &m.backends);
            m.next_backend_id = m.next_backend_id.max(id + 1);
        }
        for (k, v) in m.services.iter() {
            if k.slot == 0 {
                if v.service_id != 0 {
                    m.service_ids.insert(v.service_id);
                    m.next_service_id = m.next_service_id.max(v.service_id + 1);
                }
            } else {
                *m.backend_refs.get_or_zero(v.backend_id) += 1;
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

    pub fn maglev_size(&self) -> usize {
        self.maglev_size
    }

    pub fn services(&self) -> &ServiceEntries {
        &self.services
    }

    pub fn backends(&self) -> &IdTable<Backend> {
        &self.backends
    }

    /// Slot-0 keys: every frontend the maps hold.
    pub fn frontends(&self) -> impl Iterator<Item = &ServiceKey> {
        self.services.frontends()
    }

    /// The maps hold backend `b` (under some id): taking it costs no entry.
    pub fn holds_backend(&self, b: &Backend) -> bool {
        self.backend_ids.get(b, &self.backends).is_some()
    }

    /// The frontend `service_id` has a Maglev table in the maps.
    pub fn has_maglev(&self, service_id: u32) -> bool {
        self.maglev.contains(&service_id)
    }

    /// Maglev tables the maps hold (one entry each in the outer map).
    pub fn maglev_tables(&self) -> usize {
        self.maglev.len()
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

    /// The backend ids deleted since the last call (an id may be reused by
    /// now: it names another backend then).
    pub fn take_left_backends(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.left_backends)
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

    pub fn note_left_backends(&mut self, ids: Vec<u32>) {
        self.left_backends.extend(ids);
    }
}
