//! IPv4 options on both ICMP paths: a SYN with options to a Service
//! without endpoints is refused like any other, its whole header quoted
//! (RFC 792: the header and 64 bits of data); an ICMP error with options
//! outside and in its quote is translated like any other.

use etherparse::{
    Icmpv4Type, IpHeaders, IpNumber, Ipv4Header, Ipv4HeaderSlice, PacketBuilder,
    icmpv4::DestUnreachableHeader,
};
use lb_common::PROTO_TCP;

use super::test_run::{
    Bed, TC_ACT_OK, TC_ACT_REDIRECT, assert_checksums, icmp4, ipv4, quote, tcp4_with_options,
};

const CLIENT: [u8; 4] = [10, 100, 0, 200];
const NODE: [u8; 4] = [10, 100, 0, 1];
const ROUTER: [u8; 4] = [10, 100, 0, 254];
/// Router alert: a 4-byte option any router may add.
const OPTION: [u8; 4] = [0x94, 0x04, 0, 0];

/// An ICMP error from `src` to `dst` quoting `quoted`, with `options` in
/// its own header.
fn error4(src: [u8; 4], dst: [u8; 4], ty: Icmpv4Type, quoted: &[u8], options: bool) -> Vec<u8> {
    let mut ip = Ipv4Header::new(0, 64, IpNumber::ICMP, src, dst).unwrap();
    if options {
        ip.options = OPTION.into();
    }
    let mut v = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xfe], [2, 0, 0, 0, 0, 1])
        .ip(IpHeaders::Ipv4(ip, Default::default()))
        .icmpv4(ty)
        .write(&mut v, quoted)
        .unwrap();
    v
}

/// The quoted header (its checksum checked) and its ports.
fn quoted(q: &[u8]) -> (Ipv4Header, u16, u16) {
    let h = Ipv4HeaderSlice::from_slice(q).expect("a quoted IPv4 header");
    let hdr = h.to_header();
    assert_eq!(
        hdr.header_checksum,
        hdr.calc_header_checksum(),
        "the quoted header's checksum"
    );
    let l4 = &q[h.slice().len()..];
    let port = |o: usize| u16::from_be_bytes([l4[o], l4[o + 1]]);
    (hdr, port(0), port(2))
}

#[test]
fn a_syn_with_ip_options_to_a_service_without_endpoints_is_refused_quoting_its_whole_header() {
    let mut bed = Bed::new("icmpopt");
    bed.service("10.100.0.1", 30080, PROTO_TCP, None);
    let syn = tcp4_with_options(CLIENT, 40200, NODE, 30080, true);
    let before = bed.counters();
    let (verdict, out) = bed.run("lb_tc_ingress", &syn);
    assert_eq!(bed.moved(&before), [("icmp_port_unreachable_sent", 1)]);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let (ip, (ty, payload)) = (ipv4(&out), icmp4(&out));
    assert_eq!((ip.source, ip.destination), (NODE, CLIENT));
    assert!(
        ip.options.is_empty(),
        "the reply carries no options of its own"
    );
    assert_eq!(
        ty,
        Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port)
    );
    assert_eq!(
        payload,
        quote(&syn),
        "the header with its options, and 8 bytes"
    );
    let (q, sport, dport) = quoted(payload);
    assert_eq!(&q.options[..], &OPTION);
    assert_eq!((sport, dport), (40200, 30080));
    assert_checksums(&out);
}

#[test]
fn an_icmp_error_with_ip_options_outside_and_in_its_quote_is_translated() {
    let bed = Bed::with_node_port("icmpoptnat");
    bed.run(
        "lb_tc_ingress",
        &tcp4_with_options(CLIENT, 40201, NODE, 30080, true),
    );
    // The node's reply as the client got it, too big for a hop on the way.
    let reply = tcp4_with_options(NODE, 30080, CLIENT, 40201, false);
    let too_big = Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
        next_hop_mtu: 1400,
    });
    let e = error4(ROUTER, NODE, too_big.clone(), quote(&reply), true);
    let before = bed.counters();
    let (verdict, out) = bed.run("lb_tc_ingress", &e);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(bed.moved(&before), [("icmp_error_translated", 1)]);
    let (ip, (ty, payload)) = (ipv4(&out), icmp4(&out));
    assert_eq!(ip.destination, [10, 244, 1, 10], "to the backend");
    assert_eq!(ip.source, ROUTER);
    assert_eq!(&ip.options[..], &OPTION, "its own options stay");
    assert_eq!(ty, too_big);
    let (q, sport, dport) = quoted(payload);
    assert_eq!(
        (q.source, sport),
        ([10, 244, 1, 10], 8080),
        "quoting the backend's own packet"
    );
    assert_eq!((q.destination, dport), (CLIENT, 40201));
    assert_eq!(&q.options[..], &OPTION, "the quoted options stay");
    assert_checksums(&out);
}
