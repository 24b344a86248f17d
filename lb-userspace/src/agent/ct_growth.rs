//! The maps the programs write (the packet path's conntrack, the
//! policy's, the sessionAffinity clients) grow while the agent runs when a
//! sweep finds one more than three quarters full (`datapath::ct_grown`): a
//! full LRU evicts live flows (or clients' backends) to make room. The
//! object with the bigger maps loads on a thread
//! (`datapath::background_growth`), so changes keep flowing meanwhile. A
//! map a flag fixes is named once when it gets that full, and so is a
//! growth that failed (the maps then stay as they are until a restart: no
//! retry every sweep).

use std::sync::{Arc, Mutex};

use crate::datapath::{Datapath, Kept, MapSizes, nearly_full};

#[derive(Default)]
pub(super) struct CtGrowth {
    /// What the latest sweep left in the maps, written by the sweeper's
    /// thread; None once taken.
    last: Arc<Mutex<Option<Kept>>>,
    said_full: [bool; 3],
    failed: bool,
    /// A growth loading: the sizes it started from and grows to, and what
    /// the sweep left.
    pending: Option<(MapSizes, MapSizes, Kept)>,
}

impl CtGrowth {
    /// What the sweeper's report callback records each sweep with.
    pub(super) fn recorder(&self) -> impl Fn(Kept) + Send + 'static {
        let last = self.last.clone();
        move |kept| {
            if let Ok(mut l) = last.lock() {
                *l = Some(kept);
            }
        }
    }

    /// After a sweep: starts growing the conntrack maps that may and must
    /// (loaded on a thread: `ended` says when they grew).
    pub(super) fn grow_if_full(&mut self, dp: &mut Datapath) {
        let Some(kept) = self.last.lock().ok().and_then(|mut l| l.take()) else {
            return;
        };
        let sizes = dp.sizes();
        self.say_fixed_full(sizes, kept);
        // A carry under way reuses those maps' pins as they are: they grow
        // at the first sweep after it ends.
        if self.failed || self.pending.is_some() || dp.carrying_written() {
            return;
        }
        let Some(to) = crate::datapath::ct_grown(sizes, kept) else {
            return;
        };
        match dp.grow_in_background(to) {
            Ok(true) => self.pending = Some((sizes, to, kept)),
            Ok(false) => {}
            Err(e) => self.failure(sizes, to, &e),
        }
    }

    /// A growth `grow_if_full` started, once it ended (in its load's own
    /// time, or because another growth had to wait for it): true when the
    /// maps grew.
    pub(super) fn ended(&mut self, dp: &mut Datapath) -> bool {
        let Some((from, to, kept)) = self.pending else {
            return false;
        };
        let outcome = dp.poll_background_growth();
        if outcome.is_none() && dp.growing() {
            return false;
        }
        self.pending = None;
        let now = dp.sizes();
        if now.ct >= to.ct && now.pol_ct >= to.pol_ct && now.affinity >= to.affinity {
            tracing::info!(
                "conntrack maps grown: packet path {} -> {} entries (a sweep left {}), policy {} -> {} (left {}), affinity {} -> {} (left {}); more than three quarters full grows",
                from.ct,
                now.ct,
                kept.ct,
                from.pol_ct,
                now.pol_ct,
                kept.pol_ct,
                from.affinity,
                now.affinity,
                kept.affinity
            );
            return true;
        }
        let e = match outcome {
            Some(Err(e)) => e,
            _ => anyhow::anyhow!("the maps kept their sizes"),
        };
        self.failure(from, to, &e);
        false
    }

    fn failure(&mut self, from: MapSizes, to: MapSizes, e: &anyhow::Error) {
        self.failed = true;
        tracing::error!(
            "growing the conntrack maps (packet path {} -> {} entries, policy {} -> {}, affinity {} -> {}) failed: {e:#}; they stay as they are until a restart (--ct-initial, --max-ct, --policy-ct-initial, --max-policy-ct, --affinity-initial, --max-affinity size them then)",
            from.ct,
            to.ct,
            from.pol_ct,
            to.pol_ct,
            from.affinity,
            to.affinity
        );
    }

    /// A map a flag fixes, nearly full: said once per map.
    fn say_fixed_full(&mut self, sizes: MapSizes, kept: Kept) {
        let maps = [
            (sizes.grow_ct, sizes.ct, kept.ct, "conntrack", "--max-ct"),
            (
                sizes.grow_pol_ct,
                sizes.pol_ct,
                kept.pol_ct,
                "policy conntrack",
                "--max-policy-ct",
            ),
            (
                sizes.grow_affinity,
                sizes.affinity,
                kept.affinity,
                "affinity",
                "--max-affinity",
            ),
        ];
        for ((grows, cap, kept, map, flag), said) in maps.into_iter().zip(&mut self.said_full) {
            if !grows && !*said && nearly_full(cap, kept) {
                *said = true;
                tracing::warn!(
                    "the {map} map holds {kept} of its {cap} entries after a sweep: a full map evicts live entries; {flag} fixes its size (raise it at the next restart, or leave it out and the map grows)"
                );
            }
        }
    }
}
