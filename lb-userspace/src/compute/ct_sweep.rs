//! Which conntrack entries a sweep removes, flow by flow: a flow's entries
//! (forward, reverse, SNAT, reverse SNAT) live and die together. The
//! kernel marks only the entries a packet touched (a client's RST marks
//! the forward entry closing, not the reverse SNAT entry the backend's
//! packets refresh), so a flow is judged on all of them at once: closing
//! when any is, idle since the latest packet on any. Entries no flow
//! claims (a forward entry lost to LRU eviction) go after the short
//! closing timeout. Pure; the datapath's sweep applies it.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;

use lb_common::{
    Backend, CT_F_CLOSING, CT_F_ESTABLISHED, CT_FWD, CT_REV, CT_RSNAT, CT_SNAT, CtKey, CtValue,
    PROTO_TCP,
};

use crate::compute::conntrack_gc::Timeouts;

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
        // reverse and SNAT entries): the forward half stays out. A slot
        // holds its key: the compare reads the line the probe just did.
        let hash = |k: &CtKey| hasher.hash_one(k);
        let partners = keys.iter().filter(|k| k.kind != CT_FWD).count();
        let mut index = hashbrown::HashTable::<(CtKey, u32)>::with_capacity(partners);
        for (i, k) in keys.iter().enumerate().filter(|(_, k)| k.kind != CT_FWD) {
            index.insert_unique(hash(k), (*k, i as u32), |(k, _)| hash(k));
        }
        let find = |k: &CtKey| index.find(hash(k), |(e, _)| e == k).map(|&(_, i)| i);
        let groups = keys
            .iter()
            .zip(values)
            .enumerate()
            .filter(|(_, (k, _))| k.kind == CT_FWD)
            .map(|(i, (k, v))| group(values, &find, i as u32, k, v))
            .collect();
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
/// a partner's index by its key.
fn group(
    values: &[CtValue],
    find: &impl Fn(&CtKey) -> Option<u32>,
    i: u32,
    k: &CtKey,
    v: &CtValue,
) -> Group {
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
    let tuple = |saddr, sport, daddr, dport, kind| CtKey {
        saddr,
        daddr,
        sport,
        dport,
        proto: k.proto,
        kind,
        _pad: [0; 2],
    };
    let (rev_port, snat_sport) = if v.snat_port.0 != 0 {
        (v.snat_port, v.snat_port)
    } else {
        (v.port, k.sport)
    };
    if let Some(j) = find(&tuple(v.addr, rev_port, k.saddr, k.sport, CT_REV)) {
        add(j);
    }
    if let Some(j) = find(&tuple(k.saddr, snat_sport, v.addr, v.port, CT_SNAT)) {
        add(j);
        let sv = &values[j as usize];
        if let Some(r) = find(&tuple(v.addr, v.port, sv.addr, sv.port, CT_RSNAT)) {
            let rv = &values[r as usize];
            if rv.addr == k.saddr && rv.port == k.sport {
                add(r);
            }
        }
    }
    g
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
            let h = self.hasher.hash_one(&flows.keys[first]);
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
mod tests {
    use super::*;

    #[test]
    fn sweeps_keep_to_their_share_of_a_core() {
        use std::time::Duration;
        let ms = Duration::from_millis;
        let every = SWEEP_EVERY;
        assert_eq!(sweep_period(every, ms(3)), every, "a small map: the tick");
        assert_eq!(sweep_period(every, ms(500)), every, "5% of 10 s exactly");
        assert_eq!(
            sweep_period(every, ms(600)),
            ms(12_000),
            "put off to keep to 5%"
        );
    }
    use crate::compute::desired::net_addr;
    use lb_common::{BeU16, NetAddr, PROTO_UDP};

    fn a(s: &str) -> NetAddr {
        net_addr(s.parse().unwrap())
    }

    fn key(kind: u8, s: &str, sp: u16, d: &str, dp: u16, proto: u8) -> CtKey {
        CtKey {
            saddr: a(s),
            daddr: a(d),
            sport: BeU16::from_host(sp),
            dport: BeU16::from_host(dp),
            proto,
            kind,
            _pad: [0; 2],
        }
    }

    fn val(addr: &str, port: u16, flags: u8, backend_id: u32, last_seen: u32) -> CtValue {
        CtValue {
            addr: a(addr),
            port: BeU16::from_host(port),
            flags,
            backend_id,
            last_seen,
            ..Default::default()
        }
    }

    /// A client's TCP flow through 10.100.0.1:30080 to a backend on another
    /// node, SNAT'd to port 61000: its four entries, its reverse and SNAT
    /// entries keyed by that port.
    fn snat_flow(
        fwd_flags: u8,
        fwd_seen: u32,
        back_flags: u8,
        back_seen: u32,
    ) -> Vec<(CtKey, CtValue)> {
        snat_flow_on(40000, 61000, [fwd_flags, back_flags], [fwd_seen, back_seen])
    }

    /// As `snat_flow`, from client port `cport` SNAT'd to `snat`; flags and
    /// last-seen times of the client's side, then the backend's.
    fn snat_flow_on(
        cport: u16,
        snat: u16,
        flags: [u8; 2],
        seen: [u32; 2],
    ) -> Vec<(CtKey, CtValue)> {
        let p = PROTO_TCP;
        let mut fwd = val("10.244.2.10", 8080, flags[0], 3, seen[0]);
        fwd.snat_port = BeU16::from_host(snat);
        vec![
            (
                key(CT_FWD, "10.100.0.200", cport, "10.100.0.1", 30080, p),
                fwd,
            ),
            (
                key(CT_REV, "10.244.2.10", snat, "10.100.0.200", cport, p),
                val("10.100.0.1", 30080, flags[1], 0, seen[1]),
            ),
            (
                key(CT_SNAT, "10.100.0.200", snat, "10.244.2.10", 8080, p),
                val("10.100.0.1", snat, flags[0], 0, seen[0]),
            ),
            (
                key(CT_RSNAT, "10.244.2.10", 8080, "10.100.0.1", snat, p),
                val("10.100.0.200", cport, flags[1], 0, seen[1]),
            ),
        ]
    }

    /// The same flow as an earlier agent made it: no SNAT port in the
    /// forward entry, reverse and SNAT entries keyed by the client's port.
    fn earlier_snat_flow(seen: u32) -> Vec<(CtKey, CtValue)> {
        let p = PROTO_TCP;
        let e = CT_F_ESTABLISHED;
        vec![
            (
                key(CT_FWD, "10.100.0.200", 40000, "10.100.0.1", 30080, p),
                val("10.244.2.10", 8080, e, 3, seen),
            ),
            (
                key(CT_REV, "10.244.2.10", 8080, "10.100.0.200", 40000, p),
                val("10.100.0.1", 30080, e, 0, seen),
            ),
            (
                key(CT_SNAT, "10.100.0.200", 40000, "10.244.2.10", 8080, p),
                val("10.100.0.1", 61000, e, 0, seen),
            ),
            (
                key(CT_RSNAT, "10.244.2.10", 8080, "10.100.0.1", 61000, p),
                val("10.100.0.200", 40000, e, 0, seen),
            ),
        ]
    }

    #[test]
    fn a_flows_entries_are_found_in_todays_layout_and_in_an_earlier_agents() {
        let now = 100_000;
        for flow in [
            snat_flow(CT_F_ESTABLISHED, now, CT_F_ESTABLISHED, now),
            earlier_snat_flow(now),
        ] {
            let st = stats(&flow);
            assert_eq!((st.flows, st.orphans), (1, 0), "{flow:?}");
        }
        // Today's layout read the old way (or the other way round) would
        // leave the reverse and SNAT entries unclaimed.
        let mut mixed = snat_flow(CT_F_ESTABLISHED, now, CT_F_ESTABLISHED, now);
        mixed[0].1.snat_port = BeU16(0);
        assert_eq!(stats(&mixed).orphans, 3);
    }

    fn backends() -> HashMap<u32, Backend> {
        HashMap::from([(
            3,
            Backend {
                addr: a("10.244.2.10"),
                port: BeU16::from_host(8080),
                proto: PROTO_TCP,
                flags: 0,
            },
        )])
    }

    #[test]
    fn evictions_are_what_the_map_lost_that_no_sweep_removed() {
        let now = 100_000;
        let e = CT_F_ESTABLISHED;
        let a = snat_flow_on(40001, 61001, [e, e], [now, now]);
        let b = snat_flow_on(40002, 61002, [e, e], [now, now]);
        let c = snat_flow_on(40003, 61003, [0, 0], [now, now]);
        let mut ev = Evictions::default();
        let all: Vec<_> = [a.clone(), b.clone(), c.clone()].concat();
        ev.observe(12, &all, &[]);
        assert_eq!(
            (ev.entries_total, ev.answered_flows_total),
            (0, 0),
            "the first sweep primes"
        );
        // Four new entries (flow d) since; the LRU took answered flow b
        // (four entries) and the sweep removed nothing: 12 + 4 - 12 read.
        let d = snat_flow_on(40004, 61004, [e, e], [now, now]);
        let now_in_map: Vec<_> = [a.clone(), c.clone(), d.clone()].concat();
        ev.observe(16, &now_in_map, &[]);
        assert_eq!(ev.entries_total, 4);
        assert_eq!(ev.answered_flows_total, 1, "b was answered");
        // The sweep removes flow c (unanswered): not an eviction later.
        let c_keys: Vec<CtKey> = c.iter().map(|(k, _)| *k).collect();
        ev.observe(16, &now_in_map, &c_keys);
        assert_eq!(ev.entries_total, 4, "nothing new");
        let after: Vec<_> = [a, d].concat();
        ev.observe(16, &after, &[]);
        assert_eq!(
            (ev.entries_total, ev.answered_flows_total),
            (4, 1),
            "c was the sweep's"
        );
    }

    #[test]
    fn a_flow_closed_by_the_client_goes_whole_after_the_closing_timeout() {
        let t = Timeouts::default();
        let now = 100_000;
        // The client's RST marked only its side; the backend side is
        // "established" and was last seen just before.
        let flow = snat_flow(
            CT_F_CLOSING | CT_F_ESTABLISHED,
            now - 11,
            CT_F_ESTABLISHED,
            now - 12,
        );
        assert_eq!(
            doomed(&flow, now, &backends(), &t).len(),
            4,
            "all four entries go"
        );
        let flow = snat_flow(
            CT_F_CLOSING | CT_F_ESTABLISHED,
            now - 5,
            CT_F_ESTABLISHED,
            now - 12,
        );
        assert!(
            doomed(&flow, now, &backends(), &t).is_empty(),
            "within the closing timeout"
        );
    }

    #[test]
    fn an_active_flow_keeps_every_entry_even_when_one_side_is_quiet() {
        let t = Timeouts::default();
        let now = 100_000;
        // A download: the backend's side is busy, the client's quiet for an hour.
        let flow = snat_flow(CT_F_ESTABLISHED, now - 3600, CT_F_ESTABLISHED, now);
        assert!(doomed(&flow, now, &backends(), &t).is_empty());
        // Its backend gone: the flow goes whole.
        assert_eq!(doomed(&flow, now, &HashMap::new(), &t).len(), 4);
    }

    #[test]
    fn entries_no_flow_claims_go_after_the_closing_timeout() {
        let t = Timeouts::default();
        let now = 100_000;
        let mut flow = snat_flow(CT_F_ESTABLISHED, now - 11, CT_F_ESTABLISHED, now - 11);
        flow.remove(0); // the forward entry was evicted
        assert_eq!(doomed(&flow, now, &backends(), &t).len(), 3);
        let udp_orphan = vec![(
            key(CT_REV, "10.244.2.10", 53, "10.100.0.200", 5000, PROTO_UDP),
            val("10.100.0.1", 30053, 0, 0, now - 2),
        )];
        assert!(
            doomed(&udp_orphan, now, &backends(), &t).is_empty(),
            "recent"
        );
    }

    #[test]
    fn a_flow_to_a_draining_backend_stays_until_it_ends() {
        let t = Timeouts::default();
        let now = 100_000;
        // The endpoint left the usable set but is still listed: the agent
        // keeps its backend, flagged draining, and its flows live on.
        let draining: HashMap<u32, Backend> = backends()
            .into_iter()
            .map(|(id, b)| {
                let flags = b.flags | lb_common::BACKEND_DRAINING;
                (id, Backend { flags, ..b })
            })
            .collect();
        let flow = snat_flow(CT_F_ESTABLISHED, now - 3600, CT_F_ESTABLISHED, now - 3600);
        assert!(doomed(&flow, now, &draining, &t).is_empty());
        let flow = snat_flow(
            CT_F_CLOSING | CT_F_ESTABLISHED,
            now - 11,
            CT_F_ESTABLISHED,
            now - 11,
        );
        assert_eq!(doomed(&flow, now, &draining, &t).len(), 4, "then it goes");
    }

    #[test]
    fn the_sweep_counts_flows_by_state_and_orphans() {
        let now = 100_000;
        let mut all = snat_flow(CT_F_ESTABLISHED | CT_F_CLOSING, now, CT_F_ESTABLISHED, now);
        // An unanswered SYN: forward and partners, no flag set.
        all.extend(snat_flow_on(40001, 61001, [0, 0], [now, now]));
        // An orphan: a reverse entry whose forward entry was evicted.
        all.push((
            key(
                CT_REV,
                "10.244.2.10",
                8080,
                "10.100.0.250",
                40000,
                PROTO_TCP,
            ),
            val("10.100.0.1", 30080, CT_F_ESTABLISHED, 0, now),
        ));
        let s = stats(&all);
        assert_eq!(
            s,
            CtStats {
                flows: 2,
                unanswered: 1,
                closing: 1,
                orphans: 1
            }
        );
    }
}
