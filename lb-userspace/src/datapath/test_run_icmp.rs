//! ICMP errors about translated flows (PMTU through NodePorts): a router's
//! "fragmentation needed" / "packet too big" about a reply reaches the
//! flow's backend quoting the tuple the backend knows, a local backend's
//! error reaches the client quoting the frontend; every checksum holds.

use etherparse::{Icmpv4Type, Icmpv6Type, PacketBuilder, icmpv4::DestUnreachableHeader};
use lb_common::PROTO_TCP;

use super::test_run::{Bed, TC_ACT_OK, assert_checksums, quote, src4, tcp4, udp6};
use super::test_run_conntrack::counter;

const CLIENT: [u8; 4] = [10, 100, 0, 200];
const NODE: [u8; 4] = [10, 100, 0, 1];
const ROUTER: [u8; 4] = [10, 100, 0, 254];

fn frag_needed(src: [u8; 4], dst: [u8; 4], quoted: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xfe], [2, 0, 0, 0, 0, 1])
        .ipv4(src, dst, 64)
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
        ))
        .write(&mut v, quoted)
        .unwrap();
    v
}

fn port_unreachable(src: [u8; 4], dst: [u8; 4], quoted: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xfe], [2, 0, 0, 0, 0, 1])
        .ipv4(src, dst, 64)
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            DestUnreachableHeader::Port,
        ))
        .write(&mut v, quoted)
        .unwrap();
    v
}

fn v4(b: &[u8]) -> String {
    format!("{}.{}.{}.{}", b[0], b[1], b[2], b[3])
}

/// The quote inside an IPv4 ICMP error: (source, port), (destination,
/// port), and whether its header checksum holds.
fn quoted4(pkt: &[u8]) -> ((String, u16), (String, u16), bool) {
    let q = &pkt[14 + 20 + 8..];
    let port = |o: usize| u16::from_be_bytes([q[o], q[o + 1]]);
    let mut sum: u32 = q[..20]
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    (
        (v4(&q[12..16]), port(20)),
        (v4(&q[16..20]), port(22)),
        sum == 0xffff,
    )
}

#[test]
fn a_routers_fragmentation_needed_about_a_reply_reaches_the_local_backend() {
    let bed = Bed::with_node_port("icmpin");
    bed.run("lb_tc_ingress", &tcp4(CLIENT, 40006, NODE, 30080, true));
    // The node's reply as the client would have got it, too big for a hop.
    let reply = tcp4(NODE, 30080, CLIENT, 40006, false);
    let before = counter(&bed, "icmp_error_translated");
    let (verdict, out) = bed.run("lb_tc_ingress", &frag_needed(ROUTER, NODE, quote(&reply)));
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(v4(&out[30..34]), "10.244.1.10", "to the backend");
    assert_eq!(v4(&out[26..30]), "10.100.0.254", "still from the router");
    let (src, dst, ok) = quoted4(&out);
    assert_eq!(
        src,
        ("10.244.1.10".into(), 8080),
        "quoting the backend's own packet"
    );
    assert_eq!(dst, ("10.100.0.200".into(), 40006));
    assert!(ok, "the quoted IPv4 header checksum");
    assert_checksums(&out);
    assert_eq!(counter(&bed, "icmp_error_translated"), before + 1);
    // An error about a flow nobody has passes untouched.
    let stranger = tcp4(NODE, 30080, CLIENT, 40999, false);
    let e = frag_needed(ROUTER, NODE, quote(&stranger));
    assert_eq!(bed.run("lb_tc_ingress", &e), (TC_ACT_OK, e.clone()));
    assert_eq!(counter(&bed, "icmp_error_translated"), before + 1);
}

#[test]
fn an_error_about_an_snat_flows_reply_quotes_the_nodes_tuple_to_the_remote_backend() {
    let mut bed = Bed::new("icmpsnat");
    bed.service(
        "10.100.0.1",
        30080,
        PROTO_TCP,
        Some(("10.244.2.10", 8080, 0)),
    );
    let (_, fwd) = bed.run("lb_tc_ingress", &tcp4(CLIENT, 40007, NODE, 30080, true));
    let (_, out) = bed.run("lb_tc_egress", &fwd);
    let (_, snat_port) = src4(&out);
    let reply = tcp4(NODE, 30080, CLIENT, 40007, false);
    let (_, out) = bed.run("lb_tc_ingress", &frag_needed(ROUTER, NODE, quote(&reply)));
    assert_eq!(v4(&out[30..34]), "10.244.2.10");
    let (src, dst, ok) = quoted4(&out);
    assert_eq!(src, ("10.244.2.10".into(), 8080));
    assert_eq!(
        dst,
        ("10.100.0.1".into(), snat_port),
        "the tuple the backend knows"
    );
    assert!(ok);
    assert_checksums(&out);
}

#[test]
fn a_local_backends_port_unreachable_reaches_the_client_from_the_frontend() {
    let bed = Bed::with_node_port("icmpout");
    let (_, fwd) = bed.run("lb_tc_ingress", &tcp4(CLIENT, 40008, NODE, 30080, true));
    let e = port_unreachable([10, 244, 1, 10], CLIENT, quote(&fwd));
    let (verdict, out) = bed.run("lb_tc_egress", &e);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(v4(&out[26..30]), "10.100.0.1", "from the frontend");
    let (src, dst, ok) = quoted4(&out);
    assert_eq!(src, ("10.100.0.200".into(), 40008));
    assert_eq!(
        dst,
        ("10.100.0.1".into(), 30080),
        "quoting the client's own packet"
    );
    assert!(ok);
    assert_checksums(&out);
}

/// The node itself, forwarding to a pod whose link has a smaller MTU,
/// tells the client "fragmentation needed": the quote names the frontend
/// the client knows; the error keeps the node as its source.
#[test]
fn the_nodes_own_fragmentation_needed_about_a_clients_packet_quotes_the_frontend() {
    let bed = Bed::with_node_port("icmpnode");
    let (_, fwd) = bed.run("lb_tc_ingress", &tcp4(CLIENT, 40010, NODE, 30080, true));
    let e = frag_needed(NODE, CLIENT, quote(&fwd));
    let (verdict, out) = bed.run("lb_tc_egress", &e);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(v4(&out[26..30]), "10.100.0.1", "from the node, as sent");
    let (src, dst, ok) = quoted4(&out);
    assert_eq!(src, ("10.100.0.200".into(), 40010));
    assert_eq!(
        dst,
        ("10.100.0.1".into(), 30080),
        "quoting the client's own packet"
    );
    assert!(ok);
    assert_checksums(&out);
}

#[test]
fn an_ipv6_packet_too_big_about_a_reply_reaches_the_backend() {
    let bed = Bed::with_node_ports("icmp6");
    bed.run(
        "lb_tc_ingress",
        &udp6("fd00:100::200", 50006, "fd00:100::1", 30053),
    );
    let reply = udp6("fd00:100::1", 30053, "fd00:100::200", 50006);
    let router: std::net::Ipv6Addr = "fd00:100::fe".parse().unwrap();
    let node: std::net::Ipv6Addr = "fd00:100::1".parse().unwrap();
    let mut e = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xfe], [2, 0, 0, 0, 0, 1])
        .ipv6(router.octets(), node.octets(), 64)
        .icmpv6(Icmpv6Type::PacketTooBig { mtu: 1280 })
        .write(&mut e, quote(&reply))
        .unwrap();
    let (verdict, out) = bed.run("lb_tc_ingress", &e);
    assert_eq!(verdict, TC_ACT_OK);
    let backend: std::net::Ipv6Addr = "fd00:244:1::a".parse().unwrap();
    assert_eq!(&out[38..54], &backend.octets(), "to the backend");
    let q = &out[14 + 40 + 8..];
    assert_eq!(&q[8..24], &backend.octets(), "quoting the backend");
    assert_eq!(u16::from_be_bytes([q[40], q[41]]), 5353);
    assert_checksums(&out);
    // The same on a CHECKSUM_COMPLETE skb: skb->csum stays right.
    use std::os::fd::AsFd as _;
    let again = bed.run("lb_tc_ingress", &e);
    let p: &aya::programs::SchedClassifier = bed
        .ebpf
        .program("lb_tc_ingress")
        .unwrap()
        .try_into()
        .unwrap();
    let (_, complete) = super::sys::prog_test_run(p.fd().unwrap().as_fd(), &e, 1 << 2)
        .expect("skb->csum matches the packet after the translation");
    assert_eq!(complete, again.1);
}

#[test]
fn a_remote_backends_port_unreachable_reaches_the_client_from_the_frontend() {
    let mut bed = Bed::new("icmpremote");
    bed.service(
        "10.100.0.1",
        30080,
        PROTO_TCP,
        Some(("10.244.2.10", 8080, 0)),
    );
    let (_, fwd) = bed.run("lb_tc_ingress", &tcp4(CLIENT, 40009, NODE, 30080, true));
    let (_, sent) = bed.run("lb_tc_egress", &fwd);
    // The backend refuses what reached it (node:SNAT port -> backend).
    let e = port_unreachable([10, 244, 2, 10], NODE, quote(&sent));
    let (_, mid) = bed.run("lb_tc_ingress", &e);
    assert_eq!(v4(&mid[30..34]), "10.100.0.200", "to the client");
    let (_, out) = bed.run("lb_tc_egress", &mid);
    assert_eq!(v4(&out[26..30]), "10.100.0.1", "from the frontend");
    assert_eq!(v4(&out[30..34]), "10.100.0.200");
    let (src, dst, ok) = quoted4(&out);
    assert_eq!(
        src,
        ("10.100.0.200".into(), 40009),
        "quoting the client's own packet"
    );
    assert_eq!(dst, ("10.100.0.1".into(), 30080));
    assert!(ok);
    assert_checksums(&out);
}
