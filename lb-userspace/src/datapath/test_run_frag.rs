//! Fragmented datagrams through a NodePort: the first fragment is
//! translated as any packet, the later ones follow it (addresses only:
//! they carry no ports), and the reassembled datagram's checksum holds.

use lb_common::{BACKEND_LOCAL, PROTO_UDP};

use super::test_run::{Bed, TC_ACT_OK, addrs, dst4, dst6, ip_payload, ipv4, ipv6, src4};

/// A UDP datagram (8-byte header and 32 bytes of payload) from
/// `src`:`sport` to `dst`:`dport`, as two IPv4 fragments (16 and 24 bytes
/// of the IP payload).
fn fragments4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, id: u16) -> [Vec<u8>; 2] {
    let mut full = Vec::new();
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xc8], [2, 0, 0, 0, 0, 1])
        .ipv4(src, dst, 64)
        .udp(sport, dport)
        .write(&mut full, &[7u8; 32])
        .unwrap();
    let l4 = full[34..].to_vec();
    let frag = |part: &[u8], offset_words: u16, more: bool| {
        let mut p = full[..34].to_vec();
        p[16..18].copy_from_slice(&((20 + part.len()) as u16).to_be_bytes());
        p[18..20].copy_from_slice(&id.to_be_bytes());
        let flags = if more { 0x2000 } else { 0 };
        p[20..22].copy_from_slice(&(flags | offset_words).to_be_bytes());
        p[24..26].copy_from_slice(&[0, 0]);
        let c = !fold(sum(&p[14..34], 0));
        p[24..26].copy_from_slice(&c.to_be_bytes());
        p.extend_from_slice(part);
        p
    };
    [frag(&l4[..16], 0, true), frag(&l4[16..], 2, false)]
}

/// The same as two IPv6 fragments (a Fragment header after the IPv6 one).
fn fragments6(src: &str, sport: u16, dst: &str, dport: u16, id: u32) -> [Vec<u8>; 2] {
    let s: std::net::Ipv6Addr = src.parse().unwrap();
    let d: std::net::Ipv6Addr = dst.parse().unwrap();
    let mut full = Vec::new();
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xc8], [2, 0, 0, 0, 0, 1])
        .ipv6(s.octets(), d.octets(), 64)
        .udp(sport, dport)
        .write(&mut full, &[7u8; 32])
        .unwrap();
    let l4 = full[54..].to_vec();
    let frag = |part: &[u8], offset_words: u16, more: bool| {
        let mut p = full[..54].to_vec();
        p[18..20].copy_from_slice(&((8 + part.len()) as u16).to_be_bytes());
        p[20] = 44;
        p.extend_from_slice(&[PROTO_UDP, 0]);
        p.extend_from_slice(&((offset_words << 3) | more as u16).to_be_bytes());
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(part);
        p
    };
    [frag(&l4[..16], 0, true), frag(&l4[16..], 2, false)]
}

fn sum(data: &[u8], mut acc: u32) -> u32 {
    for c in data.chunks(2) {
        acc += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The reassembled UDP datagram of two translated IPv4 fragments, checked
/// against its checksum (pseudo-header from the first fragment).
fn reassembled4_ok(a: &[u8], b: &[u8]) -> bool {
    for (what, f) in [("first", a), ("later", b)] {
        let h = ipv4(f);
        assert_eq!(
            h.header_checksum,
            h.calc_header_checksum(),
            "{what} fragment's IPv4 header checksum"
        );
    }
    let udp = [ip_payload(a), ip_payload(b)].concat();
    let h = ipv4(a);
    let mut pseudo = [h.source, h.destination].concat();
    pseudo.extend_from_slice(&[0, PROTO_UDP]);
    pseudo.extend_from_slice(&(udp.len() as u16).to_be_bytes());
    fold(sum(&udp, sum(&pseudo, 0))) == 0xffff
}

fn udp_bed(tag: &str, backend: &str, flags: u8) -> Bed {
    let mut bed = Bed::new(tag);
    bed.service("10.100.0.1", 30053, PROTO_UDP, Some((backend, 5353, flags)));
    bed
}

#[test]
fn a_fragmented_datagram_to_a_local_backend_is_translated_whole() {
    let bed = udp_bed("fraglocal", "10.244.1.10", BACKEND_LOCAL);
    let [first, later] = fragments4([10, 100, 0, 200], 40010, [10, 100, 0, 1], 30053, 0x1234);
    let (v1, a) = bed.run("lb_tc_ingress", &first);
    let (v2, b) = bed.run("lb_tc_ingress", &later);
    assert_eq!((v1, v2), (TC_ACT_OK, TC_ACT_OK));
    assert_eq!(dst4(&a), ("10.244.1.10".into(), 5353));
    assert_eq!(
        addrs(&b).1,
        "10.244.1.10",
        "the later fragment follows its first"
    );
    assert_eq!(ip_payload(&b), ip_payload(&later), "its payload untouched");
    assert!(reassembled4_ok(&a, &b), "the datagram's UDP checksum");
    // The backend's fragmented answer leaves from the frontend.
    let [r1, r2] = fragments4([10, 244, 1, 10], 5353, [10, 100, 0, 200], 40010, 0x4321);
    let (_, a) = bed.run("lb_tc_egress", &r1);
    let (_, b) = bed.run("lb_tc_egress", &r2);
    assert_eq!(src4(&a), ("10.100.0.1".into(), 30053));
    assert_eq!(addrs(&b).0, "10.100.0.1");
    assert!(reassembled4_ok(&a, &b));
}

#[test]
fn a_fragmented_datagram_to_a_remote_backend_is_translated_and_snatd_whole() {
    let bed = udp_bed("fragsnat", "10.244.2.10", 0);
    let [first, later] = fragments4([10, 100, 0, 200], 40011, [10, 100, 0, 1], 30053, 0x1235);
    let (_, a) = bed.run("lb_tc_ingress", &first);
    let (_, a) = bed.run("lb_tc_egress", &a);
    let (_, b) = bed.run("lb_tc_ingress", &later);
    let (_, b) = bed.run("lb_tc_egress", &b);
    let (node, snat_port) = src4(&a);
    assert_eq!(node, "10.100.0.1");
    assert!(lb_common::is_snat_port(snat_port), "{snat_port}");
    assert_eq!(dst4(&a), ("10.244.2.10".into(), 5353));
    assert_eq!(
        addrs(&b),
        ("10.100.0.1".into(), "10.244.2.10".into()),
        "the later fragment is SNAT'd too"
    );
    assert!(reassembled4_ok(&a, &b));
}

#[test]
fn a_later_fragment_whose_first_was_not_seen_passes_untouched() {
    let bed = udp_bed("fraglone", "10.244.1.10", BACKEND_LOCAL);
    let [_, later] = fragments4([10, 100, 0, 200], 40012, [10, 100, 0, 1], 30053, 0x1236);
    assert_eq!(bed.run("lb_tc_ingress", &later), (TC_ACT_OK, later.clone()));
    assert!(bed.ct().is_empty(), "no flow from a later fragment");
}

#[test]
fn an_ipv6_fragmented_datagram_is_translated_whole() {
    let bed = Bed::with_node_ports("frag6");
    let [first, later] = fragments6("fd00:100::200", 50010, "fd00:100::1", 30053, 0xabcdef);
    let (_, a) = bed.run("lb_tc_ingress", &first);
    let (_, b) = bed.run("lb_tc_ingress", &later);
    let backend = "fd00:244:1::a";
    assert_eq!(
        dst6(&a),
        (backend.into(), 5353),
        "the first one, with its port"
    );
    assert_eq!(addrs(&b).1, backend, "the later fragment follows its first");
    let udp = [ip_payload(&a), ip_payload(&b)].concat();
    let h = ipv6(&a);
    let mut pseudo = [h.source, h.destination].concat();
    pseudo.extend_from_slice(&(udp.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, PROTO_UDP]);
    assert_eq!(
        fold(sum(&udp, sum(&pseudo, 0))),
        0xffff,
        "the datagram's UDP checksum"
    );
}
