//! loadBalancerSourceRanges entries (LPM keys per frontend): written
//! before the flag that makes the datapath check them, deleted after.

use std::collections::BTreeSet;

use lb_common::{SRC_RANGE_FRONT_BITS, ServiceKey, SrcRangeData};

use super::{Mirror, Op};
use crate::compute::desired::Frontend;

impl Mirror {
    /// Adds the source-range entries the kernel holds.
    pub fn with_ranges(mut self, ranges: impl IntoIterator<Item = (u32, SrcRangeData)>) -> Self {
        for (len, d) in ranges {
            let front = ServiceKey::frontend(d.front, d.port, d.proto, lb_common::SCOPE_INTERNAL);
            if self.ranges.entry(front).or_default().insert((len, d)) {
                self.range_entries += 1;
            }
        }
        self
    }

    /// Entries the source-ranges map holds.
    pub fn range_entries(&self) -> usize {
        self.range_entries
    }

    /// Source-range entries `fe` wants that the map lacks (its stale ones
    /// leave only after the new ones are in).
    pub fn ranges_needed(&self, fe: &Frontend) -> u64 {
        let want = wanted_ranges(fe);
        match self.ranges.get(&fe.key) {
            Some(have) => want.difference(have).count() as u64,
            None => want.len() as u64,
        }
    }

    /// Writes the source ranges `fe` wants that the maps lack; returns the
    /// stale ones, deleted once the frontend no longer checks them.
    pub(super) fn put_ranges(
        &mut self,
        fe: &Frontend,
        ops: &mut Vec<Op>,
    ) -> Vec<(u32, SrcRangeData)> {
        let key = fe.key;
        // Ranges go in before the flag that makes the datapath check them,
        // and leave after it.
        let want_ranges = wanted_ranges(fe);
        let have_ranges = self.ranges.remove(&key).unwrap_or_default();
        self.range_entries = self.range_entries - have_ranges.len() + want_ranges.len();
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
        stale_ranges
    }
}

/// The source-range entries (LPM keys) frontend `fe` wants.
fn wanted_ranges(fe: &Frontend) -> BTreeSet<(u32, SrcRangeData)> {
    // A range matches clients of its own family only: an IPv6 prefix
    // over a v4 frontend's IPv4-mapped clients (`::/0`) would match
    // them all.
    let key = fe.key;
    fe.source_ranges
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
        .collect()
}
