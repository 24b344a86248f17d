//! The end of a carry of an earlier agent's maps (see `migrate`): once
//! this agent's programs run under every pinned link, and once a carried
//! map's copy after the swap is done on its thread.

use super::{Datapath, migrate};

impl Datapath {
    /// Ends the carrying of an earlier agent's maps (see `migrate`) once
    /// this agent's programs run under every pinned link: call after the
    /// first change set's devices and pod interfaces, and again later. A
    /// link still running an earlier program gets this agent's (with no
    /// carry too); one that cannot keeps the carry open (the earlier maps
    /// still looked up on a miss), named once. Does nothing once done.
    pub fn finish_carry(&mut self) {
        if self.carried.is_empty() && self.links_settled {
            return;
        }
        // Links settle once per datapath: after that only copies remain.
        let stale = if self.links_settled {
            vec![]
        } else {
            self.adopt_stale_links()
        };
        if !stale.is_empty() {
            let held = stale.join("; ");
            if held != self.carry_held {
                let maps: Vec<&str> = self.carried.iter().map(|c| c.name).collect();
                tracing::warn!(
                    ?maps,
                    "links still running an earlier agent's programs (the carry of these maps stays open meanwhile; tried again every periodic tick): {held}"
                );
                self.carry_held = held;
            }
            return;
        }
        self.carry_held.clear();
        self.links_settled = true;
        self.carried = std::mem::take(&mut self.carried)
            .into_iter()
            .filter_map(|c| migrate::finish(&self.pin_dir, &self.ebpf, c))
            .collect();
    }

    /// A carried map's copy after the swap is done on its thread (every
    /// link already runs this agent's programs): `finish_carry` ends the
    /// carry. Cheap: the sync loop asks at every tick.
    pub fn carry_copied(&self) -> bool {
        self.links_settled && self.carried.iter().any(migrate::Carry::copied)
    }

    /// Before the agent exits: a growth loading on its thread is swapped
    /// in, and the copies after a swap end with their carries, so the next
    /// agent finds no half-done growth (it would start a carry again from
    /// the old map and lose what the programs wrote in the grown one).
    pub fn settle(&mut self) {
        if let Some(Err(e)) = self.end_background_growth() {
            tracing::error!("{e:#}");
        }
        if !self.carried.iter().any(migrate::Carry::copying) {
            return;
        }
        tracing::info!("finishing the copy of a carried map before exiting");
        while self.carried.iter().any(|c| c.copying() && !c.copied()) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        self.finish_carry();
    }

    /// Maps the programs write are being carried (their old maps still
    /// looked up on a miss): they cannot be resized until that ends.
    pub fn carrying_written(&self) -> bool {
        self.carried.iter().any(migrate::Carry::written_by_programs)
    }
}
