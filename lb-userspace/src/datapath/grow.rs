//! Growing the services and backends maps while the agent runs, when the
//! cluster outgrows them and no `--max-*` flag fixed their size: the
//! object is loaded again with bigger maps, which get every entry before
//! any of its programs runs (see `migrate`), and its programs are swapped
//! in under the pinned links (cgroup, tcx, XDP) as a restarted agent's
//! are, so no lookup ever misses. Only the agent writes these maps, so
//! the copy is complete.

use lb_common::{MAP_BACKENDS, MAP_SERVICES};

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

/// The sizes to grow to, when a map that may grow needs more than it has:
/// `wanted_services` and `wanted_backends` are the entries the maps hold
/// plus what the Services left out need. None: nothing to grow (or no
/// room left to grow into).
pub fn grown(sizes: MapSizes, wanted_services: u64, wanted_backends: u64) -> Option<MapSizes> {
    let mut to = sizes;
    if sizes.grow_services && wanted_services > u64::from(sizes.services) {
        to.services = with_headroom(wanted_services).max(sizes.services);
    }
    if sizes.grow_backends && wanted_backends > u64::from(sizes.backends) {
        to.backends = with_headroom(wanted_backends).max(sizes.backends);
    }
    (to != sizes).then_some(to)
}

impl Datapath {
    /// The sizes the maps were loaded with.
    pub fn sizes(&self) -> MapSizes {
        self.sizes
    }

    /// Loads the object again with maps of `sizes` (their entries
    /// carried), adopts every link this datapath holds, and becomes the new
    /// datapath. On failure this one stays as it was, every pin with it.
    pub fn grow(&mut self, sizes: MapSizes) -> anyhow::Result<()> {
        let opts = LoadOptions {
            pin_dir: self.pin_dir.clone(),
            maglev_size: self.maglev_size,
            cgroup: self.cgroup.clone(),
            xdp: self.xdp,
            tc_attach: self.tc_attach,
            sizes,
        };
        let mut new = match super::load(&opts) {
            Ok(new) => new,
            Err(e) => {
                for name in [MAP_SERVICES, MAP_BACKENDS] {
                    migrate::undo(&self.pin_dir, name);
                }
                return Err(e.context("loading the programs with the grown maps"));
            }
        };
        // The socket programs switched in `load`; the packet programs
        // switch as their links are adopted here.
        new.attach_devices(&self.devices)?;
        let pods: Vec<(String, u32)> = self
            .pod_ifaces
            .iter()
            .map(|(n, i)| (n.clone(), *i))
            .collect();
        new.sync_pod_ifaces(&pods)?;
        new.refused_ifaces = std::mem::take(&mut self.refused_ifaces);
        new.finish_carry();
        tracing::info!(
            services = sizes.services,
            backends = sizes.backends,
            "maps grown while running: every program now uses them"
        );
        *self = new;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_grow_only_when_allowed_and_needed_with_headroom() {
        let fixed = MapSizes {
            services: 100,
            backends: 100,
            ..Default::default()
        };
        assert_eq!(grown(fixed, 1000, 1000), None, "flags fix the sizes");
        let auto = MapSizes {
            grow_services: true,
            grow_backends: true,
            ..fixed
        };
        assert_eq!(grown(auto, 100, 50), None, "enough room");
        let g = grown(auto, 101, 50).unwrap();
        assert_eq!(
            (g.services, g.backends),
            (256, 100),
            "1.5 x 101, a power of two"
        );
        let g = grown(auto, 12_000_000, 2_000_000).unwrap();
        assert_eq!((g.services, g.backends), (GROW_MAX, 4_194_304));
        assert_eq!(
            grown(
                MapSizes {
                    services: GROW_MAX,
                    ..auto
                },
                u64::MAX,
                0
            ),
            None
        );
    }
}
