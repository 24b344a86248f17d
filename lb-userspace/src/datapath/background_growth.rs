//! Growing the maps the programs write (conntrack, policy conntrack,
//! affinity) without holding up the sync loop: the
//! object is loaded with the bigger maps on a thread of its own (the
//! verifier takes a good part of a second), while the sync loop goes on
//! writing through this datapath; the maps the agent writes keep their
//! pins, so they are the new object's maps too. Once loaded, the sync loop
//! swaps the new programs in under the links (`become_grown`), and the old
//! entries come over after the swap (`migrate`: looked up on a miss until
//! then).

use std::time::Instant;

use anyhow::Context as _;

use super::{Datapath, Fill, MapSizes, grow::undo_load};

/// A growth loading on its thread.
pub(super) struct Loading {
    thread: std::thread::JoinHandle<anyhow::Result<Datapath>>,
    sizes: MapSizes,
    started: Instant,
}

impl Datapath {
    /// Starts growing the maps the programs write to `sizes` (only they
    /// programs write may differ from this datapath's): true when it
    /// started, false while another growth or a carry of a map the
    /// programs write is under way (the next sweep asks again).
    /// `poll_background_growth` ends it.
    pub fn grow_in_background(&mut self, sizes: MapSizes) -> anyhow::Result<bool> {
        if self.loading.is_some() || self.carrying_written() {
            return Ok(false);
        }
        // An earlier agent's carries of maps only the agent writes (held
        // open by a link not swapped yet) end here, as in `grow`.
        let none_under_way = self.end_agent_written_carries();
        debug_assert!(none_under_way.is_empty());
        debug_assert_eq!(
            MapSizes {
                ct: self.sizes.ct,
                pol_ct: self.sizes.pol_ct,
                affinity: self.sizes.affinity,
                ..sizes
            },
            self.sizes,
            "only the maps the programs write grow in the background"
        );
        let opts = self.options(sizes);
        let thread = std::thread::Builder::new()
            .name("grow-load".into())
            .spawn(move || super::load_with(&opts, &[], Fill::AfterSwap))
            .context("starting the thread that loads the grown maps")?;
        self.loading = Some(Loading {
            thread,
            sizes,
            started: Instant::now(),
        });
        Ok(true)
    }

    /// A growth is loading on its thread.
    pub fn growing(&self) -> bool {
        self.loading.is_some()
    }

    /// Ends a growth whose load is done: None while it loads (or when none
    /// was started), else the sizes now in use, or why the load failed
    /// (this datapath then stays as it was, every pin with it).
    pub fn poll_background_growth(&mut self) -> Option<anyhow::Result<MapSizes>> {
        if !self.loading.as_ref()?.thread.is_finished() {
            return None;
        }
        self.end_background_growth()
    }

    /// Ends a growth loading on its thread, waiting for its load.
    pub(super) fn end_background_growth(&mut self) -> Option<anyhow::Result<MapSizes>> {
        let l = self.loading.take()?;
        let loaded = l
            .thread
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the loading thread panicked")));
        Some(match loaded {
            Ok(new) => {
                self.become_grown(new, vec![], l.started);
                Ok(self.sizes)
            }
            Err(e) => {
                undo_load(&self.pin_dir, l.sizes, &[]);
                Err(e.context("loading the programs with the grown maps"))
            }
        })
    }
}
