//! Room in the maps: what a Service's frontends need beyond what the maps
//! hold, checked before any write so a Service goes in whole or keeps its
//! previous state, and retried when a change set frees entries.

use std::collections::BTreeSet;

use lb_common::SVC_FLAG_ADDR_ONLY;

use super::Reconciler;
use crate::{compute::desired::Frontend, compute::plan::Op, model::snapshot::ObjRef};

/// How many entries each map the plan writes can hold (None: no limit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capacity {
    pub services: Option<u32>,
    pub backends: Option<u32>,
    pub maglev: Option<u32>,
    /// loadBalancerSourceRanges entries.
    pub ranges: Option<u32>,
}

/// A Service the maps cannot take whole, and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NotProgrammed {
    /// `namespace/name`.
    pub service: String,
    /// The map that is short.
    pub map: String,
    /// Entries of that map the Service needs beyond what it holds there.
    pub needed: u64,
    /// Free entries of the map when the Service was tried.
    pub free: u64,
    pub capacity: u64,
    /// What the map holds, in words.
    pub holds: String,
    /// What an operator can do.
    pub remedy: String,
    /// The Service was in the maps before: that state stays (whole).
    pub previous_state_kept: bool,
    /// What it needs of every map, the short one and the others: maps
    /// grown for it grow together, not one per change set.
    #[serde(default)]
    pub need: Need,
}

impl NotProgrammed {
    /// The same trouble (what is logged once): the map and the need.
    pub(super) fn same(&self, other: &Self) -> bool {
        (&self.map, self.needed, self.previous_state_kept)
            == (&other.map, other.needed, other.previous_state_kept)
    }
}

impl std::fmt::Display for NotProgrammed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = if self.previous_state_kept {
            "its update"
        } else {
            "the Service"
        };
        write!(
            f,
            "Service {} not programmed: map {} ({}) is full: {what} needs {} entries and {} of its {} are free; ",
            self.service, self.map, self.holds, self.needed, self.free, self.capacity,
        )?;
        if self.previous_state_kept {
            f.write_str("its previous state stays programmed; ")?;
        }
        write!(
            f,
            "{} (the agent tries again when entries free up)",
            self.remedy
        )
    }
}

/// Entries one Service's frontends need beyond what the maps hold for them.
#[derive(Clone, Default, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Need {
    pub services: u64,
    pub backends: u64,
    pub maglev: u64,
    #[serde(default)]
    pub ranges: u64,
}

impl Reconciler {
    /// Services skipped for want of room whose shortfall the maps can now
    /// cover are tried again (in name order; each is checked again whole).
    pub(super) fn retry_not_programmed(
        &mut self,
        ops: &mut Vec<Op>,
        errors: &mut Vec<super::Problem>,
    ) {
        let free = |cap: Option<u32>, used: usize| {
            cap.map_or(u64::MAX, |c| (c as u64).saturating_sub(used as u64))
        };
        let m = &self.mirror;
        let (fs, fb, fm, fr) = (
            free(self.capacity.services, m.services().len()),
            free(self.capacity.backends, m.backends().len()),
            free(self.capacity.maglev, m.maglev_tables()),
            free(self.capacity.ranges, m.range_entries()),
        );
        let ready: BTreeSet<ObjRef> = self
            .not_programmed
            .iter()
            .filter(|(_, np)| {
                let room = match np.map.as_str() {
                    lb_common::MAP_SERVICES => fs,
                    lb_common::MAP_BACKENDS => fb,
                    lb_common::MAP_SRC_RANGES => fr,
                    _ => fm,
                };
                np.needed <= room
            })
            .map(|(k, _)| k.clone())
            .collect();
        if !ready.is_empty() {
            self.sync_services(ready, ops, errors);
        }
    }

    /// What the frontends `fes` need beyond what the maps hold for them. A
    /// write of a Service's frontend adds its new slots before dropping
    /// surplus ones, so the need is counted per frontend, never netted
    /// against what another frontend lets go.
    pub(super) fn need<'a>(&self, fes: impl Iterator<Item = &'a Frontend>) -> Need {
        let m = &self.mirror;
        let mut need = Need::default();
        let mut new_backends = std::collections::HashSet::new();
        for fe in fes {
            let old = m.services().get(&fe.key);
            let have = old.map_or(0, |v| 1 + v.count as u64);
            need.services += (1 + fe.backends.len() as u64).saturating_sub(have);
            need.ranges += m.ranges_needed(fe);
            for b in fe.backends.iter().chain(&fe.draining) {
                if !m.holds_backend(b) && new_backends.insert(*b) {
                    need.backends += 1;
                }
            }
            let wants_table = m.maglev_size() > 0
                && fe.flags & lb_common::SVC_FLAG_EXTERNAL != 0
                && fe.flags & SVC_FLAG_ADDR_ONLY == 0
                && !fe.backends.is_empty();
            if wants_table && !old.is_some_and(|v| v.service_id != 0 && m.has_maglev(v.service_id))
            {
                need.maglev += 1;
            }
        }
        need
    }

    /// The first map that cannot take `need`, as a report for `svc`.
    pub(super) fn shortfall(&self, svc: &ObjRef, need: &Need, kept: bool) -> Option<NotProgrammed> {
        let m = &self.mirror;
        let maps = [
            (
                lb_common::MAP_SERVICES,
                need.services,
                m.services().len(),
                self.capacity.services,
                "frontends and one entry per backend slot",
                "raise --max-services",
            ),
            (
                lb_common::MAP_BACKENDS,
                need.backends,
                m.backends().len(),
                self.capacity.backends,
                "one entry per distinct backend address and port",
                "raise --max-backends",
            ),
            (
                lb_common::MAP_MAGLEV,
                need.maglev,
                m.maglev_tables(),
                self.capacity.maglev,
                "one Maglev table per external frontend with backends",
                "raise --max-maglev-tables (a restart carries every table over; each takes 128 KiB of kernel memory at the default table size) or do without tables with --maglev-table-size 0",
            ),
            (
                lb_common::MAP_SRC_RANGES,
                need.ranges,
                m.range_entries(),
                self.capacity.ranges,
                "one entry per loadBalancerSourceRanges CIDR of each frontend",
                "it grows to at most 16M entries unless growing failed (see the log); fewer or wider source ranges per Service make room",
            ),
        ];
        maps.into_iter()
            .find_map(|(map, needed, used, cap, holds, remedy)| {
                let cap = cap? as u64;
                let free = cap.saturating_sub(used as u64);
                (needed > free).then(|| NotProgrammed {
                    service: svc.to_string(),
                    map: map.to_string(),
                    needed,
                    free,
                    capacity: cap,
                    holds: holds.to_string(),
                    remedy: remedy.to_string(),
                    previous_state_kept: kept,
                    need: need.clone(),
                })
            })
    }
}
