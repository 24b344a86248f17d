//! What is refused, rate limited, dropped and counted, or left alone.

use etherparse::{
    Icmpv4Type, Icmpv6Type, Ipv4Header, icmpv4::DestUnreachableHeader, icmpv6::DestUnreachableCode,
};

use super::*;

#[test]
fn no_backend_answers_port_unreachable() {
    let mut bed = Bed::new("icmp");
    bed.service("10.100.0.1", 30080, PROTO_TCP, None);
    bed.service("fd00:100::1", 30053, PROTO_UDP, None);
    let syn = tcp4([10, 100, 0, 200], 40002, [10, 100, 0, 1], 30080, true);
    let before = bed.counters();
    let (verdict, out) = bed.run("lb_tc_ingress", &syn);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(bed.moved(&before), [("icmp_port_unreachable_sent", 1)]);
    assert_eq!(
        eth_dst(&out),
        [2, 0, 0, 0, 0, 0xc8],
        "back to the sender's MAC"
    );
    assert_eq!(
        addrs(&out),
        ("10.100.0.1".into(), "10.100.0.200".into()),
        "from the node to the client"
    );
    let (kind, quote) = icmp4(&out);
    assert_eq!(
        kind,
        Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port),
        "port unreachable"
    );
    let (quoted, rest) = Ipv4Header::from_slice(quote).expect("a quoted IPv4 header");
    assert_eq!(quoted, ipv4(&syn), "quotes the offending header");
    assert!(
        !rest.is_empty() && ip_payload(&syn).starts_with(rest),
        "then the start of its segment"
    );
    assert_checksums(&out);
    // a non-SYN segment is dropped, not answered
    let ack = tcp4([10, 100, 0, 200], 40002, [10, 100, 0, 1], 30080, false);
    let before = bed.counters();
    assert_eq!(bed.run("lb_tc_ingress", &ack).0, TC_ACT_SHOT);
    assert_eq!(bed.moved(&before), [("drop_no_backend", 1)]);
    let q = udp6("fd00:100::200", 50001, "fd00:100::1", 30053);
    let before = bed.counters();
    let (verdict, out) = bed.run("lb_tc_ingress", &q);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(bed.moved(&before), [("icmp_port_unreachable_sent", 1)]);
    assert_eq!(
        addrs(&out),
        ("fd00:100::1".into(), "fd00:100::200".into()),
        "from the node to the client"
    );
    assert_eq!(
        icmp6(&out).0,
        Icmpv6Type::DestinationUnreachable(DestUnreachableCode::Port),
        "port unreachable"
    );
    assert_checksums(&out);
}

/// A flood of SYNs to a Service without endpoints gets at most the node's
/// ICMP budget back (a burst of 50, then 1,000 a second); the rest are
/// dropped and counted.
#[test]
fn port_unreachables_are_rate_limited_per_node() {
    use crate::datapath::test_run_conntrack::counter;
    let mut bed = Bed::new("icmprl");
    bed.service("10.100.0.1", 30080, PROTO_TCP, None);
    let (sent0, limited0) = (
        counter(&bed, "icmp_port_unreachable_sent"),
        counter(&bed, "drop_icmp_rate_limited"),
    );
    let started = std::time::Instant::now();
    let mut answered = 0u64;
    let mut dropped = 0u64;
    for i in 0..400u16 {
        let syn = tcp4([10, 100, 0, 200], 1024 + i, [10, 100, 0, 1], 30080, true);
        match bed.run("lb_tc_ingress", &syn).0 {
            TC_ACT_REDIRECT => answered += 1,
            TC_ACT_SHOT => dropped += 1,
            v => panic!("verdict {v}"),
        }
    }
    let refill = started.elapsed().as_millis() as u64 + 1;
    assert!(answered >= 50, "the burst goes out: {answered}");
    assert!(
        answered <= 50 + refill,
        "{answered} answered in {refill} ms: more than the budget"
    );
    assert_eq!(answered + dropped, 400);
    assert!(dropped > 0, "a flood must be cut");
    assert_eq!(
        counter(&bed, "icmp_port_unreachable_sent") - sent0,
        answered
    );
    assert_eq!(counter(&bed, "drop_icmp_rate_limited") - limited0, dropped);
}

#[test]
fn packets_it_does_not_understand_pass_untouched() {
    let bed = Bed::with_node_ports("pass");
    let syn = tcp4([10, 100, 0, 200], 40003, [10, 100, 0, 1], 30080, true);
    // a later fragment whose first this hook never saw (first fragments
    // are translated: test_run_frag.rs), a truncated TCP header
    let later = tcp4_fragment([10, 100, 0, 200], 40003, [10, 100, 0, 1], 30080, 8, false);
    let truncated = syn[..14 + 20 + 10].to_vec();
    // an IPv6 packet with a hop-by-hop extension header before UDP
    let hbh = udp6_hop_by_hop("fd00:100::200", 50002, "fd00:100::1", 30053);
    // not IP at all
    let arp = {
        let mut v = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xc8], [2, 0, 0, 0, 0, 1])
            .arp(
                etherparse::ArpPacket::new(
                    etherparse::ArpHardwareId::ETHERNET,
                    etherparse::EtherType::IPV4,
                    etherparse::ArpOperation::REQUEST,
                    &[2, 0, 0, 0, 0, 0xc8],
                    &[10, 100, 0, 200],
                    &[0; 6],
                    &[10, 100, 0, 1],
                )
                .unwrap(),
            )
            .write(&mut v)
            .unwrap();
        v
    };
    // an ICMP error (destination unreachable) quoting a packet to the frontend
    let icmp_err = {
        let mut v = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xc8], [2, 0, 0, 0, 0, 1])
            .ipv4([10, 100, 0, 200], [10, 100, 0, 1], 64)
            .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::Port,
            ))
            .write(&mut v, &syn[14..14 + 28])
            .unwrap();
        v
    };
    for (what, pkt) in [
        ("later fragment", later),
        ("truncated", truncated),
        ("IPv6 extension header", hbh),
        ("ARP", arp),
        ("ICMP error", icmp_err),
    ] {
        for prog in ["lb_tc_ingress", "lb_tc_egress"] {
            let before = bed.counters();
            let (verdict, out) = bed.run(prog, &pkt);
            assert_eq!(verdict, TC_ACT_OK, "{what} at {prog}");
            assert_eq!(out, pkt, "{what} must pass untouched through {prog}");
            assert_eq!(
                bed.moved(&before),
                [("pass_unparsed", 1)],
                "{what} at {prog}"
            );
        }
        let before = bed.counters();
        assert_eq!(
            bed.run_xdp(&pkt),
            (XDP_PASS, pkt.clone()),
            "{what} must pass untouched through XDP"
        );
        assert_eq!(bed.moved(&before), [("xdp_pass", 1)], "{what} at XDP");
    }
    assert!(bed.ct().is_empty(), "nothing tracked");
}

/// Every drop is counted once, under its own reason: an answered SYN to a
/// Service without endpoints is not also a drop, a bare ACK there is one,
/// and a slot naming no backend entry has a reason of its own.
#[test]
fn each_drop_is_counted_once_under_its_own_reason() {
    let mut bed = Bed::new("reasons");
    bed.service("10.100.0.1", 30080, PROTO_TCP, None);
    bed.service(
        "10.100.0.1",
        30081,
        PROTO_TCP,
        Some(("10.244.1.10", 8080, BACKEND_LOCAL)),
    );
    // The second frontend's backend entry goes (a write in flight).
    let mut bes: HashMap<_, u32, Backend> =
        HashMap::try_from(bed.ebpf.map_mut(lb_common::MAP_BACKENDS).unwrap()).unwrap();
    let ids: Vec<u32> = bes.keys().filter_map(Result::ok).collect();
    for id in ids {
        bes.remove(&id).unwrap();
    }
    let c = [10, 100, 0, 200];
    let n = [10, 100, 0, 1];
    let before = bed.counters();
    assert_eq!(
        bed.run("lb_tc_ingress", &tcp4(c, 40040, n, 30080, true)).0,
        TC_ACT_REDIRECT
    );
    assert_eq!(bed.moved(&before), [("icmp_port_unreachable_sent", 1)]);
    let before = bed.counters();
    assert_eq!(
        bed.run("lb_tc_ingress", &tcp4(c, 40041, n, 30080, false)).0,
        TC_ACT_SHOT
    );
    assert_eq!(bed.moved(&before), [("drop_no_backend", 1)]);
    let before = bed.counters();
    assert_eq!(
        bed.run("lb_tc_ingress", &tcp4(c, 40042, n, 30081, true)).0,
        TC_ACT_SHOT
    );
    assert_eq!(bed.moved(&before), [("drop_backend_missing", 1)]);
}

/// A new flow that needs SNAT on a node without an address of its family
/// is dropped under a reason of its own, not as if SNAT ports ran out.
#[test]
fn a_flow_needing_snat_without_a_node_address_is_dropped_under_its_own_reason() {
    let mut bed = Bed::new("nonode");
    {
        let mut cfg: Array<_, Config> =
            Array::try_from(bed.ebpf.map_mut(lb_common::MAP_CONFIG).unwrap()).unwrap();
        let mut c = cfg.get(&0, 0).unwrap();
        c.flags = CONFIG_HAS_IP6;
        cfg.set(0, c, 0).unwrap();
    }
    bed.service(
        "10.100.0.1",
        30080,
        PROTO_TCP,
        Some(("10.244.2.10", 8080, 0)),
    );
    let before = bed.counters();
    let syn = tcp4([10, 100, 0, 200], 40050, [10, 100, 0, 1], 30080, true);
    assert_eq!(bed.run("lb_tc_ingress", &syn).0, TC_ACT_SHOT);
    assert_eq!(bed.moved(&before), [("drop_no_node_address", 1)]);
    // XDP leaves it to TC (a backend on another node).
    let before = bed.counters();
    assert_eq!(bed.run_xdp(&syn), (XDP_PASS, syn.clone()));
    assert_eq!(bed.moved(&before), [("xdp_pass", 1)]);
}
