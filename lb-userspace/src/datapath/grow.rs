//! Growing maps while the agent runs, when no flag fixed their size: the
//! services, backends, Maglev and loadBalancerSourceRanges maps when the
//! cluster outgrows them, the NetworkPolicy maps the agent writes before a policy
//! state that does not fit them is written, and the maps the programs
//! write (the two conntrack maps, the affinity map) when a sweep finds one
//! nearly full. The object is loaded again with
//! bigger maps, which get every entry before any of its programs runs
//! (see `migrate`), and its programs are swapped in under the pinned
//! links (cgroup, tcx, XDP) as a restarted agent's are. Only the agent
//! writes the first kinds, so their copy is complete and no lookup ever
//! misses. The maps the programs write are copied after the swap only, on
//! a thread of their own, their programs looking up the old map on a miss
//! until the copy is done (`migrate::bridge`): the sync loop never waits
//! for a million entries.

use super::{Datapath, LoadOptions, MapSizes, migrate};

/// The most entries a grown map gets: beyond it the Services that do not
/// fit are reported as for a map of fixed size.
pub const GROW_MAX: u32 = 1 << 24;

/// Room for `wanted` entries with headroom: half again, as a power of two.
fn with_headroom(wanted: u64) -> u32 {
    let w = wanted.saturating_add(wanted / 2).max(1);
    let p = w.checked_next_power_of_two().unwrap_or(u64::MAX);
    u32::try_from(p).unwrap_or(GROW_MAX).min(GROW_MAX)
}

/// Entries a map is to hold: what it holds plus what the Services left
/// out need of it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Wanted {
    pub services: u64,
    pub backends: u64,
    pub ranges: u64,
    pub maglev: u64,
    pub ipcache: u64,
    pub pol_entries: u64,
    pub pol_cidrs: u64,
}

/// The sizes to grow to, when a map that may grow needs more than it has.
/// None: nothing to grow (or no room left to grow into).
pub fn grown(sizes: MapSizes, wanted: Wanted) -> Option<MapSizes> {
    let grow = |may: bool, wanted: u64, has: u32| {
        if may && wanted > u64::from(has) {
            with_headroom(wanted).max(has)
        } else {
            has
        }
    };
    let to = MapSizes {
        services: grow(sizes.grow_services, wanted.services, sizes.services),
        backends: grow(sizes.grow_backends, wanted.backends, sizes.backends),
        ranges: grow(sizes.grow_ranges, wanted.ranges, sizes.ranges),
        maglev: grow(sizes.grow_maglev, wanted.maglev, sizes.maglev),
        ipcache: grow(sizes.grow_policy, wanted.ipcache, sizes.ipcache),
        pol_entries: grow(sizes.grow_policy, wanted.pol_entries, sizes.pol_entries),
        pol_cidrs: grow(sizes.grow_policy, wanted.pol_cidrs, sizes.pol_cidrs),
        ..sizes
    };
    (to != sizes).then_some(to)
}

/// What the latest sweep left in the maps the programs write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Kept {
    pub ct: u64,
    pub pol_ct: u64,
    pub affinity: u64,
}

/// More than three quarters full: an LRU is about to evict live flows (or
/// already does).
pub fn nearly_full(capacity: u32, kept: u64) -> bool {
    kept.saturating_mul(4) > u64::from(capacity) * 3
}

/// The sizes to grow to when a sweep left `kept` entries in the conntrack
/// maps: each one nearly full grows. None when none may grow, has room,
/// or is as big as a map grows.
pub fn ct_grown(sizes: MapSizes, kept: Kept) -> Option<MapSizes> {
    let grow = |may: bool, has: u32, kept: u64| {
        if may && nearly_full(has, kept) {
            with_headroom(kept).max(has)
        } else {
            has
        }
    };
    let to = MapSizes {
        ct: grow(sizes.grow_ct, sizes.ct, kept.ct),
        pol_ct: grow(sizes.grow_pol_ct, sizes.pol_ct, kept.pol_ct),
        affinity: grow(sizes.grow_affinity, sizes.affinity, kept.affinity),
        ..sizes
    };
    (to != sizes).then_some(to)
}

impl Datapath {
    /// How many entries the NetworkPolicy maps the agent writes hold.
    pub fn policy_capacity(&self) -> crate::compute::policy::Capacity {
        crate::compute::policy::Capacity {
            ipcache: self.sizes.ipcache as usize,
            entries: self.sizes.pol_entries as usize,
            cidrs: self.sizes.pol_cidrs as usize,
        }
    }

    /// Grows the NetworkPolicy maps to hold `wanted` (with headroom), before
    /// a policy state that does not fit is written: the capacity now, or
    /// None when nothing grew (room enough, as big as a map grows, or the
    /// growth failed, said here).
    pub fn grow_policy_maps(
        &mut self,
        wanted: &crate::compute::policy::Capacity,
    ) -> Option<crate::compute::policy::Capacity> {
        let from = self.sizes;
        let sizes = grown(
            from,
            Wanted {
                ipcache: wanted.ipcache as u64,
                pol_entries: wanted.entries as u64,
                pol_cidrs: wanted.cidrs as u64,
                ..Default::default()
            },
        )?;
        match self.grow(sizes) {
            Ok(()) => {
                tracing::info!(
                    "NetworkPolicy maps grown for the cluster: ipcache {} -> {} entries, policy entries {} -> {}, CIDR entries {} -> {} (the policy state needs {}, {} and {})",
                    from.ipcache,
                    sizes.ipcache,
                    from.pol_entries,
                    sizes.pol_entries,
                    from.pol_cidrs,
                    sizes.pol_cidrs,
                    wanted.ipcache,
                    wanted.entries,
                    wanted.cidrs,
                );
                Some(self.policy_capacity())
            }
            Err(e) => {
                tracing::error!(
                    "growing the NetworkPolicy maps failed: {e:#}; what does not fit stays reported"
                );
                None
            }
        }
    }

    /// The sizes the maps were loaded with.
    pub fn sizes(&self) -> MapSizes {
        self.sizes
    }

    /// What `load` needs to load this datapath's object again with maps
    /// of `sizes`.
    pub(super) fn options(&self, sizes: MapSizes) -> LoadOptions {
        LoadOptions {
            pin_dir: self.pin_dir.clone(),
            maglev_size: self.maglev_size,
            cgroup: self.cgroup.clone(),
            xdp: self.xdp,
            tc_attach: self.tc_attach,
            sizes,
        }
    }

    /// Loads the object again with maps of `sizes` (their entries
    /// carried), adopts every link this datapath holds, and becomes the new
    /// datapath. On failure this one stays as it was, every pin with it.
    pub fn grow(&mut self, sizes: MapSizes) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        // A growth loading on a thread ends first (two loads would move
        // the same pins aside); the maps the programs write never shrink.
        if let Some(Err(e)) = self.end_background_growth() {
            tracing::error!(
                "the growth of the maps the programs write, loading when another growth began: {e:#}"
            );
        }
        let sizes = MapSizes {
            ct: sizes.ct.max(self.sizes.ct),
            pol_ct: sizes.pol_ct.max(self.sizes.pol_ct),
            affinity: sizes.affinity.max(self.sizes.affinity),
            ..sizes
        };
        let opts = self.options(sizes);
        // A carry from an earlier agent still under way (growth in the
        // first change set): the maps only the agent writes hold all of it
        // now, with this change set's writes, so their carries end here and
        // the load carries this agent's maps. The maps the programs write
        // stay as they are, their old maps still looked up on a miss (by
        // the new programs too) until the carry ends after the change set's
        // devices are attached; loading them as an unfinished carry would
        // start over from the earlier agent's map.
        let under_way = self.end_agent_written_carries();
        let names: Vec<&str> = under_way.iter().map(|c| c.name).collect();
        match super::load_with(&opts, &names, super::Fill::AfterSwap) {
            Ok(new) => {
                self.become_grown(new, under_way, started);
                Ok(())
            }
            Err(e) => {
                undo_load(&self.pin_dir, sizes, &names);
                self.carried = under_way;
                Err(e.context("loading the programs with the grown maps"))
            }
        }
    }

    /// Before a load: the carries of maps only the agent writes end (those
    /// maps hold everything now, this agent's writes included, which a
    /// load would otherwise carry again from the earlier map); those of
    /// maps the programs write are taken out, still under way.
    pub(super) fn end_agent_written_carries(&mut self) -> Vec<migrate::Carry> {
        let (under_way, done): (Vec<_>, Vec<_>) = std::mem::take(&mut self.carried)
            .into_iter()
            .partition(migrate::Carry::written_by_programs);
        for c in done {
            migrate::finish(&self.pin_dir, &self.ebpf, c);
        }
        under_way
    }

    /// The rest of a growth once `new` is loaded: it takes over this
    /// datapath's links, devices, pod interfaces and Maglev tables (and
    /// `under_way`, carries of an earlier agent's maps), and becomes it.
    pub(super) fn become_grown(
        &mut self,
        mut new: Datapath,
        mut under_way: Vec<migrate::Carry>,
        started: std::time::Instant,
    ) {
        let swap = std::time::Instant::now();
        for c in &mut under_way {
            if let Err(e) = migrate::bridge(&new.ebpf, c) {
                tracing::warn!(map = c.name, "{e:#}");
            }
        }
        let finish_now = under_way.is_empty();
        new.carried.extend(under_way);
        new.refused_ifaces = std::mem::take(&mut self.refused_ifaces);
        // The socket programs switched in `load`, so from here on the new
        // maps are the ones in use: a link that fails to switch below
        // keeps the carry open (its old program's maps still looked up on
        // a miss) and is tried again, never a reason to go back.
        if let Err(e) = new.attach_devices(&self.devices) {
            tracing::error!("packet programs of the grown maps: {e:#}");
        }
        let pods: Vec<(String, u32)> = self
            .pod_ifaces
            .iter()
            .map(|(n, i)| (n.clone(), *i))
            .collect();
        if let Err(e) = new.sync_pod_ifaces(&pods) {
            tracing::error!("pod interfaces of the grown maps: {e:#}");
        }
        // The tables are the same inner maps (a grown Maglev map holds
        // them too), so their ids, which the bookkeeping keys, still hold.
        new.maglev_tables = std::mem::take(&mut self.maglev_tables);
        if finish_now {
            new.finish_carry();
        }
        let sizes = new.sizes;
        tracing::info!(
            services = sizes.services,
            backends = sizes.backends,
            source_ranges = sizes.ranges,
            maglev_tables = sizes.maglev,
            conntrack = sizes.ct,
            policy_conntrack = sizes.pol_ct,
            affinity = sizes.affinity,
            ipcache = sizes.ipcache,
            policy_entries = sizes.pol_entries,
            policy_cidrs = sizes.pol_cidrs,
            took_ms = started.elapsed().as_secs_f64() * 1e3,
            swap_ms = swap.elapsed().as_secs_f64() * 1e3,
            "maps grown while running: every program now uses them"
        );
        *self = new;
    }
}

/// After a load of `sizes` that failed: every map it moved aside goes
/// back, but those named in `keep` (a carry still under way keeps the
/// earlier agent's map aside).
pub(super) fn undo_load(pin_dir: &std::path::Path, sizes: MapSizes, keep: &[&str]) {
    for spec in super::map_specs(sizes) {
        if !keep.contains(&spec.name) {
            migrate::undo(pin_dir, spec.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted(services: u64, backends: u64, ranges: u64) -> Wanted {
        Wanted {
            services,
            backends,
            ranges,
            ..Default::default()
        }
    }

    #[test]
    fn maps_grow_only_when_allowed_and_needed_with_headroom() {
        let fixed = MapSizes {
            services: 100,
            backends: 100,
            ranges: 100,
            ..Default::default()
        };
        assert_eq!(
            grown(fixed, wanted(1000, 1000, 1000)),
            None,
            "flags fix the sizes"
        );
        let auto = MapSizes {
            grow_services: true,
            grow_backends: true,
            grow_ranges: true,
            ..fixed
        };
        assert_eq!(grown(auto, wanted(100, 50, 100)), None, "enough room");
        let g = grown(auto, wanted(101, 50, 0)).unwrap();
        assert_eq!(
            (g.services, g.backends, g.ranges),
            (256, 100, 100),
            "1.5 x 101, a power of two"
        );
        let g = grown(auto, wanted(0, 0, 20_000)).unwrap();
        assert_eq!((g.services, g.ranges), (100, 32_768), "the ranges alone");
        let g = grown(auto, wanted(12_000_000, 2_000_000, 0)).unwrap();
        assert_eq!((g.services, g.backends), (GROW_MAX, 4_194_304));
        assert_eq!(
            grown(
                MapSizes {
                    services: GROW_MAX,
                    ..auto
                },
                wanted(u64::MAX, 0, 0)
            ),
            None
        );
        // The Maglev map: tables wanted past its size, when no flag fixed it.
        let tables = Wanted {
            maglev: 3,
            ..Default::default()
        };
        let two = MapSizes { maglev: 2, ..fixed };
        assert_eq!(grown(two, tables), None, "--max-maglev-tables fixes it");
        let g = grown(
            MapSizes {
                grow_maglev: true,
                ..two
            },
            tables,
        );
        assert_eq!(g.map(|g| (g.maglev, g.services)), Some((4, 100)));
    }

    #[test]
    fn the_policy_maps_grow_only_when_allowed_and_short() {
        let sizes = MapSizes::default();
        let short = Wanted {
            ipcache: 70_000,
            pol_cidrs: 17_000,
            ..Default::default()
        };
        assert_eq!(grown(sizes, short), None, "grow_policy off: fixed");
        let auto = MapSizes {
            grow_policy: true,
            ..sizes
        };
        let g = grown(auto, short).unwrap();
        assert_eq!(
            (g.ipcache, g.pol_entries, g.pol_cidrs),
            (131_072, sizes.pol_entries, 32_768),
            "the short maps, with headroom; the other as it was"
        );
        assert_eq!(
            (g.services, g.backends, g.ct),
            (sizes.services, sizes.backends, sizes.ct)
        );
    }

    #[test]
    fn conntrack_grows_past_three_quarters_full_unless_fixed() {
        let auto = MapSizes {
            ct: 256,
            grow_ct: true,
            ..Default::default()
        };
        let ct = |ct| Kept {
            ct,
            ..Default::default()
        };
        assert_eq!(ct_grown(auto, ct(192)), None, "three quarters: room left");
        assert_eq!(ct_grown(auto, ct(193)).map(|s| s.ct), Some(512));
        assert_eq!(ct_grown(auto, ct(256)).map(|s| s.ct), Some(512), "full");
        let g = ct_grown(auto, ct(256)).unwrap();
        assert_eq!(MapSizes { ct: 256, ..g }, auto, "nothing else changes");
        let fixed = MapSizes {
            grow_ct: false,
            ..auto
        };
        assert_eq!(ct_grown(fixed, ct(256)), None, "--max-ct fixes it");
        let biggest = MapSizes {
            ct: GROW_MAX,
            ..auto
        };
        assert_eq!(ct_grown(biggest, ct(u64::from(GROW_MAX))), None);
        // The policy conntrack by its own count and flag, with the other.
        let both = MapSizes {
            pol_ct: 100,
            grow_pol_ct: true,
            ..auto
        };
        let pol = |pol_ct| Kept {
            pol_ct,
            ..Default::default()
        };
        assert_eq!(ct_grown(both, pol(75)), None);
        let g = ct_grown(both, pol(76)).unwrap();
        assert_eq!((g.ct, g.pol_ct), (256, 128));
        let g = ct_grown(
            both,
            Kept {
                ct: 200,
                pol_ct: 90,
                affinity: 0,
            },
        )
        .unwrap();
        assert_eq!((g.ct, g.pol_ct), (512, 256), "both in one growth");
        let fixed = MapSizes {
            grow_pol_ct: false,
            ..both
        };
        assert_eq!(ct_grown(fixed, pol(100)), None, "--max-policy-ct fixes it");
        // The affinity map too, by its own count and flag.
        let aff = MapSizes {
            affinity: 64,
            grow_affinity: true,
            ..Default::default()
        };
        let clients = |affinity| Kept {
            affinity,
            ..Default::default()
        };
        assert_eq!(ct_grown(aff, clients(48)), None);
        let g = ct_grown(aff, clients(49)).unwrap();
        assert_eq!(MapSizes { affinity: 64, ..g }, aff, "nothing else changes");
        assert_eq!(g.affinity, 128);
        let fixed = MapSizes {
            grow_affinity: false,
            ..aff
        };
        assert_eq!(
            ct_grown(fixed, clients(64)),
            None,
            "--max-affinity fixes it"
        );
    }
}
