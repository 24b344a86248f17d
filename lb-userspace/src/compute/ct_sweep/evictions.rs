//! What the LRU evicted behind the sweeps' backs: the eviction count
//! `/metrics` shows, judged from one sweep's walk to the next.

use std::collections::HashSet;
use std::hash::BuildHasher;

use lb_common::{CT_F_ESTABLISHED, CtKey, CtValue};

use super::{Fast, Flows, split};

/// What the LRU evicted behind the sweeps' backs, judged from one sweep to
/// the next: entries (those the map held after the last sweep, plus the
/// new ones the datapath counted since, less what this walk read), and
/// answered flows (alive and answered after the last sweep, their forward
/// entry gone now though no sweep removed it).
#[derive(Default)]
pub struct Evictions {
    primed: bool,
    left: usize,
    new_at: u64,
    hasher: Fast,
    /// The answered flows alive after the last sweep: their forward keys'
    /// hashes, sorted (eight bytes a flow; a collision could hide one
    /// eviction from the count, one in 2^64).
    answered: Vec<u64>,
    pub entries_total: u64,
    pub answered_flows_total: u64,
}

impl Evictions {
    /// The hasher a sweep's [`Flows`] use: the same for the agent's life.
    pub fn hasher(&self) -> &Fast {
        &self.hasher
    }

    /// One sweep: `new_entries` the datapath's count of new entries (read
    /// before the walk), `entries` what the walk read, `doomed` what the
    /// sweep removes.
    pub fn observe(&mut self, new_entries: u64, entries: &[(CtKey, CtValue)], doomed: &[CtKey]) {
        let (keys, values) = split(entries);
        let flows = Flows::of(&keys, &values, &self.hasher);
        let doomed: HashSet<&CtKey> = doomed.iter().collect();
        let doomed: Vec<u32> = (0..keys.len() as u32)
            .filter(|&i| doomed.contains(&keys[i as usize]))
            .collect();
        self.observe_flows(new_entries, &flows, &doomed);
    }

    /// The next observation judges nothing, only counts again (the map it
    /// walks is not the whole map: a carried one, filling).
    pub fn forget(&mut self) {
        self.primed = false;
    }

    /// [`Self::observe`] on a walk already grouped; `doomed` as indices.
    pub fn observe_flows(&mut self, new_entries: u64, flows: &Flows<'_>, doomed: &[u32]) {
        let mut gone = vec![false; flows.len()];
        for &i in doomed {
            gone[i as usize] = true;
        }
        let mut read = Vec::with_capacity(flows.groups.len());
        let mut answered = Vec::new();
        for g in &flows.groups {
            let first = g.members[0] as usize;
            let h = self.hasher.hash_one(flows.keys[first]);
            read.push(h);
            if !gone[first] && g.flags & CT_F_ESTABLISHED != 0 {
                answered.push(h);
            }
        }
        if self.primed {
            let made = new_entries.saturating_sub(self.new_at) as usize;
            let evicted = (self.left + made).saturating_sub(flows.len());
            self.entries_total += evicted as u64;
            read.sort_unstable();
            self.answered_flows_total += missing(&self.answered, &read) as u64;
        }
        answered.sort_unstable();
        self.answered = answered;
        self.left = flows.len().saturating_sub(doomed.len());
        self.new_at = new_entries;
        self.primed = true;
    }
}

/// How many of `wanted` are not in `have` (both sorted): one merge.
fn missing(wanted: &[u64], have: &[u64]) -> usize {
    let mut j = 0;
    let mut n = 0;
    for &h in wanted {
        while j < have.len() && have[j] < h {
            j += 1;
        }
        if have.get(j) != Some(&h) {
            n += 1;
        }
    }
    n
}
