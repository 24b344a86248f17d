//! The conntrack sweeps: what `compute::ct_sweep` and
//! `compute::conntrack_gc` decide, applied to the kernel's LRU maps.

use super::*;

impl Datapath {
    /// One conntrack sweep of this datapath's map (see [`sweep_ct`]).
    pub fn ct_gc(
        &mut self,
        backends: &std::collections::HashMap<u32, Backend>,
        t: &crate::compute::conntrack_gc::Timeouts,
        evictions: &mut crate::compute::ct_sweep::Evictions,
    ) -> anyhow::Result<(usize, usize, crate::compute::ct_sweep::CtStats)> {
        // Read before the walk: what the datapath made up to now.
        let new_entries = self.counter(lb_common::C_CT_ENTRY_NEW)?;
        let max = self.ct_max as usize;
        let map = self
            .ebpf
            .map_mut(MAP_CT)
            .ok_or_else(|| anyhow!("map {MAP_CT} missing"))?;
        sweep_ct(map, max, new_entries, backends, t, evictions)
    }

    /// A packet counter, summed over CPUs.
    fn counter(&self, r: lb_common::Reason) -> anyhow::Result<u64> {
        let map = self
            .ebpf
            .map(lb_common::MAP_COUNTERS)
            .ok_or_else(|| anyhow!("map {} missing", lb_common::MAP_COUNTERS))?;
        let m: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
        Ok(m.get(&(r as u32), 0)?.iter().sum())
    }

    /// The same sweep over the policy conntrack: idle entries go.
    pub fn policy_ct_gc(
        &mut self,
        t: &crate::compute::conntrack_gc::Timeouts,
    ) -> anyhow::Result<(usize, usize)> {
        use lb_common::{PolCtKey, PolCtValue};
        let now = crate::datapath::host::monotonic_s();
        let map = self
            .ebpf
            .map_mut(lb_common::MAP_POL_CT)
            .ok_or_else(|| anyhow!("map {} missing", lb_common::MAP_POL_CT))?;
        let mut ct: HashMap<_, PolCtKey, PolCtValue> = HashMap::try_from(map)?;
        let mut seen = 0;
        let doomed: Vec<PolCtKey> = ct
            .iter()
            .take(lb_common::DEFAULT_POL_CT_MAX as usize)
            .filter_map(Result::ok)
            .inspect(|_| seen += 1)
            .filter(|(k, v)| crate::compute::conntrack_gc::policy_expired(k, v, now, t))
            .map(|(k, _)| k)
            .collect();
        let n = doomed
            .iter()
            .filter(|k| {
                ct.get(k, 0)
                    .is_ok_and(|v| crate::compute::conntrack_gc::policy_expired(k, &v, now, t))
                    && ct.remove(k).is_ok()
            })
            .count();
        Ok((n, seen - n))
    }
}

/// One conntrack sweep: removes what `compute::ct_sweep::doomed` says,
/// reading at most `max` entries with batch lookups, and deleting an entry
/// only if its last-seen time is still the one read (nothing touched it
/// since). Returns how many entries went, how many stayed, and the flows it
/// saw. `new_entries`: the datapath's count of entries made, read before.
pub fn sweep_ct(
    map: &mut Map,
    max: usize,
    new_entries: u64,
    backends: &std::collections::HashMap<u32, Backend>,
    t: &crate::compute::conntrack_gc::Timeouts,
    evictions: &mut crate::compute::ct_sweep::Evictions,
) -> anyhow::Result<(usize, usize, crate::compute::ct_sweep::CtStats)> {
    let now = crate::datapath::host::monotonic_s();
    // Batch lookups: a few calls for the whole map.
    let batch = match &*map {
        Map::LruHashMap(m) => super::sys::lookup_batch(m.fd().as_fd(), max).ok(),
        _ => None,
    };
    let mut ct: HashMap<_, CtKey, CtValue> = HashMap::try_from(map)?;
    // A kernel without batch lookups on LRU maps gets the walk.
    let (keys, values): (Vec<CtKey>, Vec<CtValue>) =
        batch.unwrap_or_else(|| ct.iter().take(max).filter_map(Result::ok).unzip());
    let seen = keys.len();
    let flows = crate::compute::ct_sweep::Flows::of(&keys, &values, evictions.hasher());
    let doomed = flows.doomed(now, backends, t);
    let stats = flows.stats();
    evictions.observe_flows(new_entries, &flows, &doomed);
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
