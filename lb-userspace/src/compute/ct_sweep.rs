//! Which conntrack entries a sweep removes, flow by flow: a flow's entries
//! (forward, reverse, SNAT, reverse SNAT) live and die together. The
//! kernel marks only the entries a packet touched (a client's RST marks
//! the forward entry closing, not the reverse SNAT entry the backend's
//! packets refresh), so a flow is judged on all of them at once: closing
//! when any is, idle since the latest packet on any. Entries no flow
//! claims (a forward entry lost to LRU eviction) go after the short
//! closing timeout. Pure; the datapath's sweep applies it.

use std::collections::{HashMap, HashSet};

use lb_common::{
    Backend, CT_F_CLOSING, CT_F_ESTABLISHED, CT_FWD, CT_REV, CT_RSNAT, CT_SNAT, CtKey, CtValue,
    PROTO_TCP,
};

use crate::compute::conntrack_gc::Timeouts;

/// How often the agent sweeps conntrack.
pub const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

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

/// A fast hasher for the walk's own tables: their keys come from the
/// kernel's map, not from anyone who could aim at collisions, and a sweep
/// of 1M entries hashes a few million times.
type Fast = foldhash::fast::RandomState;

/// One walk of the conntrack map grouped into flows once: the decision, the
/// statistics and the eviction count all read it (each used to build its
/// own index and groups).
pub struct Flows<'a> {
    entries: &'a [(CtKey, CtValue)],
    index: HashMap<&'a CtKey, u32, Fast>,
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
    pub fn of(entries: &'a [(CtKey, CtValue)]) -> Self {
        let mut index = HashMap::with_capacity_and_hasher(entries.len(), Fast::default());
        for (i, (k, _)) in entries.iter().enumerate() {
            index.insert(k, i as u32);
        }
        let mut flows = Self {
            entries,
            index,
            groups: Vec::new(),
        };
        flows.groups = entries
            .iter()
            .enumerate()
            .filter(|(_, (k, _))| k.kind == CT_FWD)
            .map(|(i, (k, v))| flows.group(i as u32, k, v))
            .collect();
        flows
    }

    /// The forward entry `i`'s flow: its reverse entry, and its SNAT pair
    /// when the reverse SNAT entry points back at this flow's client.
    fn group(&self, i: u32, k: &CtKey, v: &CtValue) -> Group {
        let mut g = Group {
            members: [i, 0, 0, 0],
            len: 1,
            flags: v.flags,
            last: v.last_seen,
        };
        let mut add = |j: u32| {
            let e = &self.entries[j as usize].1;
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
        if let Some(&j) = self
            .index
            .get(&tuple(v.addr, rev_port, k.saddr, k.sport, CT_REV))
        {
            add(j);
        }
        if let Some(&j) = self
            .index
            .get(&tuple(k.saddr, snat_sport, v.addr, v.port, CT_SNAT))
        {
            add(j);
            let sv = &self.entries[j as usize].1;
            let rsnat = tuple(v.addr, v.port, sv.addr, sv.port, CT_RSNAT);
            if let Some(&r) = self.index.get(&rsnat) {
                let rv = &self.entries[r as usize].1;
                if rv.addr == k.saddr && rv.port == k.sport {
                    add(r);
                }
            }
        }
        g
    }

    /// The entries to remove (indices): a flow goes whole when its backend
    /// left or it has been idle past its state's timeout; an entry no flow
    /// claims goes after the closing timeout. `now` and `last_seen` are
    /// seconds of CLOCK_MONOTONIC.
    pub fn doomed(&self, now: u32, backends: &HashMap<u32, Backend>, t: &Timeouts) -> Vec<u32> {
        let mut claimed = vec![false; self.entries.len()];
        let mut out = Vec::new();
        for g in &self.groups {
            let (k, v) = &self.entries[g.members[0] as usize];
            let backend_gone = !backends
                .get(&v.backend_id)
                .is_some_and(|b| b.addr == v.addr && b.port == v.port);
            let limit = if k.proto != PROTO_TCP {
                t.other
            } else if g.flags & CT_F_CLOSING != 0 {
                t.tcp_closing
            } else if g.flags & CT_F_ESTABLISHED != 0 {
                t.tcp
            } else {
                t.tcp_syn
            };
            let dead = backend_gone || now.saturating_sub(g.last) > limit;
            for &m in g.members() {
                if dead {
                    out.push(m);
                }
                claimed[m as usize] = true;
            }
        }
        for (i, (_, v)) in self.entries.iter().enumerate() {
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
        st.orphans = self.entries.len() - claimed.min(self.entries.len());
        st
    }
}

/// Flows by state, from one walk of the map.
pub fn stats(entries: &[(CtKey, CtValue)]) -> CtStats {
    Flows::of(entries).stats()
}

/// What the LRU evicted behind the sweeps' backs, judged from one sweep to
/// the next: entries (those the map held after the last sweep, plus the
/// new ones the datapath counted since, less what this walk read), and
/// answered flows (alive and answered after the last sweep, their forward
/// entry gone now though no sweep removed it).
#[derive(Debug, Default)]
pub struct Evictions {
    primed: bool,
    left: usize,
    new_at: u64,
    answered: HashSet<CtKey, Fast>,
    pub entries_total: u64,
    pub answered_flows_total: u64,
}

impl Evictions {
    /// One sweep: `new_entries` the datapath's count of new entries (read
    /// before the walk), `entries` what the walk read, `doomed` what the
    /// sweep removes.
    pub fn observe(&mut self, new_entries: u64, entries: &[(CtKey, CtValue)], doomed: &[CtKey]) {
        let flows = Flows::of(entries);
        let doomed: Vec<u32> = doomed
            .iter()
            .filter_map(|k| flows.index.get(k).copied())
            .collect();
        self.observe_flows(new_entries, &flows, &doomed);
    }

    /// [`Self::observe`] on a walk already grouped; `doomed` as indices.
    pub fn observe_flows(&mut self, new_entries: u64, flows: &Flows<'_>, doomed: &[u32]) {
        let entries = flows.entries;
        if self.primed {
            let made = new_entries.saturating_sub(self.new_at) as usize;
            let evicted = (self.left + made).saturating_sub(entries.len());
            self.entries_total += evicted as u64;
            self.answered_flows_total += self
                .answered
                .iter()
                .filter(|k| !flows.index.contains_key(k))
                .count() as u64;
        }
        let mut gone = vec![false; entries.len()];
        for &i in doomed {
            gone[i as usize] = true;
        }
        self.answered = flows
            .groups
            .iter()
            .filter(|g| !gone[g.members[0] as usize] && g.flags & CT_F_ESTABLISHED != 0)
            .map(|g| entries[g.members[0] as usize].0)
            .collect();
        self.left = entries.len().saturating_sub(doomed.len());
        self.new_at = new_entries;
        self.primed = true;
    }
}

/// The keys to remove among `entries` (one walk of the map); see
/// [`Flows::doomed`].
pub fn doomed(
    entries: &[(CtKey, CtValue)],
    now: u32,
    backends: &HashMap<u32, Backend>,
    t: &Timeouts,
) -> Vec<CtKey> {
    Flows::of(entries)
        .doomed(now, backends, t)
        .into_iter()
        .map(|i| entries[i as usize].0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
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
