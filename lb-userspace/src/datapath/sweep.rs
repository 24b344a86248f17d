//! The conntrack sweeps: what `compute::ct_sweep` and
//! `compute::conntrack_gc` decide, applied to the kernel's LRU maps. The
//! `sweeper` thread runs them.

use super::*;

/// What the conntrack sweeps keep from one to the next: the eviction
/// count's state, and the walk's memory.
#[derive(Default)]
pub struct CtSweep {
    pub evictions: crate::compute::ct_sweep::Evictions,
    walk: Walk<CtKey, CtValue>,
}

/// A map's entries as one sweep read them. The buffers stay for the next
/// sweep: a million entries' worth of fresh pages took longer to fault in
/// than the kernel's walk took to fill them.
pub struct Walk<K, V> {
    keys: Vec<K>,
    values: Vec<V>,
}

impl<K, V> Default for Walk<K, V> {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            values: Vec::new(),
        }
    }
}

impl<K: aya::Pod + Default, V: aya::Pod + Default> Walk<K, V> {
    /// Every entry of an LRU hash map, at most `max`: batch lookups, or a
    /// walk on a kernel without them for LRU maps.
    fn read(&mut self, map: &mut Map, max: usize) -> anyhow::Result<(&[K], &[V])> {
        self.settle();
        let batch = match &*map {
            Map::LruHashMap(m) => {
                super::sys::lookup_batch_into(m.fd().as_fd(), max, &mut self.keys, &mut self.values)
                    .is_ok()
            }
            _ => false,
        };
        if !batch {
            let m: HashMap<_, K, V> = HashMap::try_from(map)?;
            self.keys.clear();
            self.values.clear();
            for (k, v) in m.iter().take(max).filter_map(Result::ok) {
                self.keys.push(k);
                self.values.push(v);
            }
        }
        Ok((&self.keys, &self.values))
    }

    /// Keeps memory for about what the last walk read, not for a peak
    /// long gone (a map that emptied). Growing by doubling leaves up to
    /// twice what was read: that much stays.
    fn settle(&mut self) {
        let len = self.keys.len();
        if self.keys.capacity() > 4 * len + 65536 {
            self.keys.shrink_to(2 * len);
            self.values.shrink_to(2 * len);
        }
    }
}

/// One conntrack sweep: removes what `compute::ct_sweep::Flows::doomed`
/// says, reading at most `max` entries with batch lookups, and deleting an
/// entry only if its last-seen time is still the one read (nothing touched
/// it since); at most `budget` deletions, flows whole, the rest left for
/// the next sweep (which finds them again). Returns how many entries went, how many
/// stayed, and the flows it saw. `new_entries`: the datapath's count of
/// entries made, read before.
pub fn sweep_ct(
    map: &mut Map,
    state: &mut CtSweep,
    max: usize,
    new_entries: u64,
    backend_gone: impl FnMut(&CtValue) -> bool,
    t: &crate::compute::conntrack_gc::Timeouts,
    budget: usize,
) -> anyhow::Result<(usize, usize, crate::compute::ct_sweep::CtStats)> {
    let now = crate::datapath::host::monotonic_s();
    let evictions = &mut state.evictions;
    let (keys, values) = state.walk.read(map, max)?;
    let seen = keys.len();
    let flows = crate::compute::ct_sweep::Flows::of(keys, values, evictions.hasher());
    let doomed = flows.doomed(now, backend_gone, t, budget);
    let stats = flows.stats();
    evictions.observe_flows(new_entries, &flows, &doomed);
    let mut ct: HashMap<_, CtKey, CtValue> = HashMap::try_from(map)?;
    let mut n = 0;
    for i in doomed {
        let (k, walked) = (&keys[i as usize], &values[i as usize]);
        // Only what nothing touched since the walk: its flow may have
        // come back (a new connection on the tuple) meanwhile.
        // Gone already (evicted, or its flow ended) is fine.
        match ct.get(k, 0) {
            Ok(v) if v.last_seen == walked.last_seen && ct.remove(k).is_ok() => n += 1,
            _ => {}
        }
    }
    Ok((n, seen - n, stats))
}

/// The same sweep over the affinity map: clients whose Service's timeout
/// passed since their last connection go (the programs would not use
/// them, and they would count towards the map's growth), at most `budget`.
/// Returns how many went and how many live entries stay.
pub fn sweep_affinity(
    map: &mut Map,
    walk: &mut Walk<lb_common::AffinityKey, lb_common::AffinityValue>,
    max: usize,
    budget: usize,
) -> anyhow::Result<(usize, usize)> {
    use crate::compute::conntrack_gc::affinity_expired;
    let now = crate::datapath::host::monotonic_s();
    remove_expired(
        map,
        walk,
        max,
        budget,
        |_, v| affinity_expired(v, now),
        |v| v.last_used_s,
    )
}

/// The same sweep over the policy conntrack: idle entries go, at most
/// `budget` of them.
pub fn sweep_policy_ct(
    map: &mut Map,
    walk: &mut Walk<lb_common::PolCtKey, lb_common::PolCtValue>,
    max: usize,
    t: &crate::compute::conntrack_gc::Timeouts,
    budget: usize,
) -> anyhow::Result<(usize, usize)> {
    use crate::compute::conntrack_gc::policy_expired;
    let now = crate::datapath::host::monotonic_s();
    remove_expired(
        map,
        walk,
        max,
        budget,
        |k, v| policy_expired(k, v, now, t),
        |v| v.last_seen,
    )
}

/// Removes the entries `expired` judges so, at most `budget` of them, each
/// only if its time (`stamp`) is still the one read (nothing used it
/// since). Returns how many went and how many entries were not expired:
/// what counts towards a growth (expired ones past the budget go at the
/// next sweep).
fn remove_expired<K: aya::Pod + Default, V: aya::Pod + Default>(
    map: &mut Map,
    walk: &mut Walk<K, V>,
    max: usize,
    budget: usize,
    expired: impl Fn(&K, &V) -> bool,
    stamp: impl Fn(&V) -> u32,
) -> anyhow::Result<(usize, usize)> {
    let (keys, values) = walk.read(map, max)?;
    let mut m: HashMap<_, K, V> = HashMap::try_from(map)?;
    let mut expired_n = 0;
    let mut removed = 0;
    for (k, walked) in keys.iter().zip(values) {
        if !expired(k, walked) {
            continue;
        }
        expired_n += 1;
        if expired_n <= budget
            && m.get(k, 0)
                .is_ok_and(|v| stamp(&v) == stamp(walked) && m.remove(k).is_ok())
        {
            removed += 1;
        }
    }
    Ok((removed, keys.len() - expired_n))
}
