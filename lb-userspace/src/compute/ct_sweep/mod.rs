//! Which conntrack entries a sweep removes, flow by flow: a flow's entries
//! (forward, reverse, SNAT, reverse SNAT) live and die together. The
//! kernel marks only the entries a packet touched (a client's RST marks
//! the forward entry closing, not the reverse SNAT entry the backend's
//! packets refresh), so a flow is judged on all of them at once: closing
//! when any is, idle since the latest packet on any. Entries no flow
//! claims (a forward entry lost to LRU eviction) go after the short
//! closing timeout. Pure; the datapath's sweep applies it.

use std::collections::HashMap;
use std::hash::BuildHasher;

use lb_common::{
    Backend, BeU16, CT_F_CLOSING, CT_F_ESTABLISHED, CT_FWD, CT_REV, CT_RSNAT, CT_SNAT, CtKey,
    CtValue, NetAddr, PROTO_TCP,
};

use crate::compute::conntrack_gc::Timeouts;

mod evictions;
mod partners;
pub use evictions::Evictions;

/// How often the agent sweeps conntrack.
pub const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// The share of one core the sweeps may take: a sweep that took longer
/// than this share of [`SWEEP_EVERY`] puts the next one off.
pub const SWEEP_CORE_SHARE: f64 = 0.05;

/// The time from one sweep's start to the next's, given how long it took:
/// `every`, or less often when that would take more than
/// [`SWEEP_CORE_SHARE`] of a core (a map of millions of entries).
pub fn sweep_period(every: std::time::Duration, took: std::time::Duration) -> std::time::Duration {
    every.max(took.div_f64(SWEEP_CORE_SHARE))
}

/// Conntrack pressure, by flow: what `/metrics` and `status` show.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CtStats {
    /// Flows (forward entries with their partners).
    pub flows: usize,
    /// Flows no packet ever answered (a SYN or datagram without reply, a
    /// scan, a spoofed source): they live the short SYN timeout (UDP: the
    /// UDP one).
    pub unanswered: usize,
    /// Flows past a FIN or RST.
    pub closing: usize,
    /// Entries no flow claims: partners left by a forward entry the LRU
    /// evicted (or one just being made).
    pub orphans: usize,
}

/// The walk's tables hash with foldhash, seeded per agent: the keys hold
/// client addresses and ports anyone can choose, so a fixed hash could be
/// aimed at; and one seed for the agent's life, so a sweep's hashes match
/// the last sweep's.
pub type Fast = foldhash::fast::RandomState;

/// One walk of the conntrack map grouped into flows once: the decision, the
/// statistics and the eviction count all read it.
pub struct Flows<'a> {
    keys: &'a [CtKey],
    values: &'a [CtValue],
    /// Per forward entry: its flow's entries (indices), the flags of all of
    /// them, and the latest packet on any.
    groups: Vec<Group>,
}

struct Group {
    members: [u32; 4],
    len: u8,
    flags: u8,
    last: u32,
}

impl Group {
    fn members(&self) -> &[u32] {
        &self.members[..self.len as usize]
    }
}

impl<'a> Flows<'a> {
    /// `keys[i]`'s value is `values[i]`, as a batch lookup gives them.
    pub fn of(keys: &'a [CtKey], values: &'a [CtValue], hasher: &Fast) -> Self {
        assert_eq!(keys.len(), values.len(), "a value per key");
        // Only partners are ever looked up (a forward entry finds its
        // reverse and SNAT entries): the forward half stays out.
        let hash = |k: &CtKey| hasher.hash_one(k);
        let index = partners::Partners::of(keys, hash);
        let find = |k: &CtKey, h: u64| index.find(keys, h, k);
        let forward: Vec<u32> = (0..keys.len() as u32)
            .filter(|&i| keys[i as usize].kind == CT_FWD)
            .collect();
        let hashes: Vec<[u64; 2]> = forward
            .iter()
            .map(|&i| partner_keys(&keys[i as usize], &values[i as usize]).map(|p| hash(&p)))
            .collect();
        // The probes miss the cache: the slots of flows a few ahead are
        // asked for while this one's are read, and the entries they point
        // at once those slots are in.
        const AHEAD: usize = 8;
        let mut groups = Vec::with_capacity(forward.len());
        for (n, &i) in forward.iter().enumerate() {
            for &h in hashes.get(n + 2 * AHEAD).into_iter().flatten() {
                index.prefetch(h);
            }
            for &h in hashes.get(n + AHEAD).into_iter().flatten() {
                index.prefetch_entry(keys, values, h);
            }
            groups.push(group((keys, values), &find, &hash, i, hashes[n]));
        }
        Self {
            keys,
            values,
            groups,
        }
    }

    fn len(&self) -> usize {
        self.keys.len()
    }

    /// The entries to remove (indices): a flow goes whole when its backend
    /// left (`backend_gone` of its forward entry's value) or it has been
    /// idle past its state's timeout; an entry no flow claims goes after
    /// the closing timeout. `now` and `last_seen` are seconds of
    /// CLOCK_MONOTONIC. At most `budget` entries, flows whole: a flow cut
    /// in two would leave orphans behind.
    pub fn doomed(
        &self,
        now: u32,
        mut backend_gone: impl FnMut(&CtValue) -> bool,
        t: &Timeouts,
        budget: usize,
    ) -> Vec<u32> {
        let mut claimed = vec![false; self.len()];
        let mut out = Vec::new();
        for g in &self.groups {
            if out.len() + g.members().len() > budget {
                // The rest is the next sweep's: nothing here is claimed,
                // so no orphan judgement either.
                return out;
            }
            let i = g.members[0] as usize;
            let (k, v) = (&self.keys[i], &self.values[i]);
            let limit = if k.proto != PROTO_TCP {
                t.other
            } else if g.flags & CT_F_CLOSING != 0 {
                t.tcp_closing
            } else if g.flags & CT_F_ESTABLISHED != 0 {
                t.tcp
            } else {
                t.tcp_syn
            };
            let dead = now.saturating_sub(g.last) > limit || backend_gone(v);
            for &m in g.members() {
                if dead {
                    out.push(m);
                }
                claimed[m as usize] = true;
            }
        }
        for (i, v) in self.values.iter().enumerate() {
            if out.len() == budget {
                break;
            }
            if !claimed[i] && now.saturating_sub(v.last_seen) > t.tcp_closing {
                out.push(i as u32);
            }
        }
        out
    }

    pub fn stats(&self) -> CtStats {
        let mut st = CtStats::default();
        let mut claimed = 0;
        for g in &self.groups {
            claimed += g.len as usize;
            st.flows += 1;
            if g.flags & CT_F_ESTABLISHED == 0 {
                st.unanswered += 1;
            }
            if g.flags & CT_F_CLOSING != 0 {
                st.closing += 1;
            }
        }
        st.orphans = self.len() - claimed.min(self.len());
        st
    }
}

/// The forward entry `i`'s flow: its reverse entry, and its SNAT pair when
/// the reverse SNAT entry points back at this flow's client. `find` gives
/// a partner's index by its key and hash; `partner_hashes` are those of
/// [`partner_keys`].
fn group(
    (keys, values): (&[CtKey], &[CtValue]),
    find: &impl Fn(&CtKey, u64) -> Option<u32>,
    hash: &impl Fn(&CtKey) -> u64,
    i: u32,
    partner_hashes: [u64; 2],
) -> Group {
    let (k, v) = (&keys[i as usize], &values[i as usize]);
    let mut g = Group {
        members: [i, 0, 0, 0],
        len: 1,
        flags: v.flags,
        last: v.last_seen,
    };
    let mut add = |j: u32| {
        let e = &values[j as usize];
        g.members[g.len as usize] = j;
        g.len += 1;
        g.flags |= e.flags;
        g.last = g.last.max(e.last_seen);
    };
    let [rev, snat] = partner_keys(k, v);
    let [h_rev, h_snat] = partner_hashes;
    if let Some(j) = find(&rev, h_rev) {
        add(j);
    }
    if let Some(j) = find(&snat, h_snat) {
        add(j);
        let sv = &values[j as usize];
        let rsnat = tuple(k, v.addr, v.port, sv.addr, sv.port, CT_RSNAT);
        if let Some(r) = find(&rsnat, hash(&rsnat)) {
            let rv = &values[r as usize];
            if rv.addr == k.saddr && rv.port == k.sport {
                add(r);
            }
        }
    }
    g
}

/// A key of forward entry `k`'s protocol.
fn tuple(k: &CtKey, saddr: NetAddr, sport: BeU16, daddr: NetAddr, dport: BeU16, kind: u8) -> CtKey {
    CtKey {
        saddr,
        daddr,
        sport,
        dport,
        proto: k.proto,
        kind,
        _pad: [0; 2],
    }
}

/// The keys of forward entry `k`'s reverse and SNAT entries (`v` its
/// value), were they there.
fn partner_keys(k: &CtKey, v: &CtValue) -> [CtKey; 2] {
    let (rev_port, snat_sport) = if v.snat_port.0 != 0 {
        (v.snat_port, v.snat_port)
    } else {
        (v.port, k.sport)
    };
    [
        tuple(k, v.addr, rev_port, k.saddr, k.sport, CT_REV),
        tuple(k, k.saddr, snat_sport, v.addr, v.port, CT_SNAT),
    ]
}

/// `backend_gone` for [`Flows::doomed`] from the backends the maps hold:
/// an entry's backend is gone when its id names no backend, or another one
/// (the id was reused).
pub fn gone_from(backends: &HashMap<u32, Backend>) -> impl Fn(&CtValue) -> bool + '_ {
    |v| {
        !backends
            .get(&v.backend_id)
            .is_some_and(|b| b.addr == v.addr && b.port == v.port)
    }
}

/// The walk as separate keys and values, as [`Flows::of`] takes it.
fn split(entries: &[(CtKey, CtValue)]) -> (Vec<CtKey>, Vec<CtValue>) {
    entries.iter().copied().unzip()
}

/// Flows by state, from one walk of the map.
pub fn stats(entries: &[(CtKey, CtValue)]) -> CtStats {
    let (keys, values) = split(entries);
    Flows::of(&keys, &values, &Fast::default()).stats()
}

/// The keys to remove among `entries` (one walk of the map); see
/// [`Flows::doomed`].
pub fn doomed(
    entries: &[(CtKey, CtValue)],
    now: u32,
    backends: &HashMap<u32, Backend>,
    t: &Timeouts,
) -> Vec<CtKey> {
    let (keys, values) = split(entries);
    Flows::of(&keys, &values, &Fast::default())
        .doomed(now, gone_from(backends), t, usize::MAX)
        .into_iter()
        .map(|i| keys[i as usize])
        .collect()
}

#[cfg(test)]
mod tests;
