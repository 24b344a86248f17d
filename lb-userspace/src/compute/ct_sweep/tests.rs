//! The sweep's decision, statistics and eviction count, on walks built
//! by hand.

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
fn snat_flow_on(cport: u16, snat: u16, flags: [u8; 2], seen: [u32; 2]) -> Vec<(CtKey, CtValue)> {
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
fn a_walk_of_a_map_still_filling_judges_no_eviction() {
    let now = 100_000;
    let e = CT_F_ESTABLISHED;
    let a = snat_flow_on(40001, 61001, [e, e], [now, now]);
    let b = snat_flow_on(40002, 61002, [e, e], [now, now]);
    let mut ev = Evictions::default();
    let all: Vec<_> = [a.clone(), b.clone()].concat();
    ev.observe(8, &all, &[]);
    // A grown map, its entries not all copied yet: b not in it so far.
    ev.forget();
    ev.observe(8, &a, &[]);
    assert_eq!((ev.entries_total, ev.answered_flows_total), (0, 0));
    // The copy done, the next walk is judged against that one.
    ev.observe(8, &all, &[]);
    assert_eq!((ev.entries_total, ev.answered_flows_total), (0, 0));
    ev.observe(8, &a, &[]);
    assert_eq!((ev.entries_total, ev.answered_flows_total), (4, 1));
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
