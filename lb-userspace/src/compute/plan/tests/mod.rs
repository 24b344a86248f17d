//! Plan tests: a frontend builder and a fake kernel that checks the maps
//! are whole after every op here, the tests by concern in the files below.

use super::*;
use crate::compute::desired::{Frontend, net_addr};
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
                let slot =
                    slot.unwrap_or_else(|| panic!("after {after:?}: slot {s} of {k:?} missing"));
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
        .map(|(id, _)| id)
}

fn external(ip: &str, backends: &[u8]) -> Frontend {
    let mut f = fe(ip, 30080, backends);
    f.flags = lb_common::SVC_FLAG_EXTERNAL | lb_common::SVC_FLAG_NODEPORT;
    f
}

mod ids;
mod maglev;
mod order;
mod slots;
