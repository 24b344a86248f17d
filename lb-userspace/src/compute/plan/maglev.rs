//! Maglev tables of external frontends: built from their backends'
//! addresses (compute::maglev), shared by frontends with the same
//! backends, rebuilt when their slots change.

use super::{Mirror, Op};

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

/// At most this many recent Maglev tables are kept for reuse (64 KiB each at
/// the default size).
const MAGLEV_BUILT_MAX: usize = 64;

impl Mirror {
    /// Maglev tables of `size` entries for external frontends; `have`: the
    /// service ids the kernel holds a table of that size for.
    pub fn with_maglev(mut self, size: usize, have: impl IntoIterator<Item = u32>) -> Self {
        self.maglev_size = size;
        self.maglev = have.into_iter().collect();
        self
    }

    /// External frontends (the packet path's) get a Maglev table built from
    /// their backends' addresses, rebuilt whenever their slots change.
    pub(super) fn sync_maglev(
        &mut self,
        service_id: u32,
        flags: u8,
        slots: &[u32],
        reuse: bool,
        ops: &mut Vec<Op>,
    ) {
        let wanted =
            self.maglev_size > 0 && service_id != 0 && flags & lb_common::SVC_FLAG_EXTERNAL != 0;
        if !wanted {
            self.drop_maglev(service_id, ops);
            return;
        }
        if slots.is_empty() {
            // No flow reads the table of a frontend without backends (a
            // zero count is refused first): it stays, so the next backend
            // rewrites it in place instead of swapping a new one in (an RCU
            // grace period per frontend; see datapath::maglev_tables).
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

    pub(super) fn drop_maglev(&mut self, service_id: u32, ops: &mut Vec<Op>) {
        if self.maglev.remove(&service_id) {
            ops.push(Op::DelMaglev { service_id });
        }
    }
}
