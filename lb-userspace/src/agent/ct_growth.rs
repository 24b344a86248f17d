//! The conntrack map grows while the agent runs when a sweep finds it more
//! than three quarters full (`datapath::ct_grown`): a full LRU evicts live
//! flows to make room. A map `--max-ct` fixes is named once when it gets
//! that full, and so is a growth that failed (the map then stays as it is
//! until a restart: no retry every sweep).

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use crate::datapath::Datapath;

#[derive(Default)]
pub(super) struct CtGrowth {
    /// The entries the latest sweep left in the map, written by the
    /// sweeper's thread: its count plus one, 0 when taken.
    last: Arc<AtomicU64>,
    said_full: bool,
    failed: bool,
}

impl CtGrowth {
    /// What the sweeper's report callback records each sweep with.
    pub(super) fn recorder(&self) -> impl Fn(usize) + Send + 'static {
        let last = self.last.clone();
        move |kept| last.store(kept as u64 + 1, Ordering::Relaxed)
    }

    /// After a sweep: grows the conntrack map when it may and must; true
    /// when it grew.
    pub(super) fn grow_if_full(&mut self, dp: &mut Datapath) -> bool {
        let kept = match self.last.swap(0, Ordering::Relaxed) {
            0 => return false,
            n => n - 1,
        };
        let sizes = dp.sizes();
        if !sizes.grow_ct {
            if !self.said_full && kept.saturating_mul(4) > u64::from(sizes.ct) * 3 {
                self.said_full = true;
                tracing::warn!(
                    "the conntrack map holds {kept} of its {} entries after a sweep: a full map evicts live flows; --max-ct fixes its size (raise it at the next restart, or leave it out and the map grows)",
                    sizes.ct
                );
            }
            return false;
        }
        if self.failed {
            return false;
        }
        let Some(to) = crate::datapath::ct_grown(sizes, kept) else {
            return false;
        };
        match dp.grow(to) {
            Ok(()) => {
                tracing::info!(
                    "conntrack map grown from {} to {} entries: a sweep left {kept} in it, more than three quarters",
                    sizes.ct,
                    to.ct
                );
                true
            }
            Err(e) => {
                self.failed = true;
                tracing::error!(
                    "growing the conntrack map from {} to {} entries failed: {e:#}; it stays at {} until a restart (--ct-initial or --max-ct size it then)",
                    sizes.ct,
                    to.ct,
                    sizes.ct
                );
                false
            }
        }
    }
}
