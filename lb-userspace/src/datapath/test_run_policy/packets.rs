//! Crafted frames: TCP, UDP, SCTP, GRE, ICMP errors and echoes, ARP,
//! fragments.

use super::*;

pub(super) const MAC_POD: [u8; 6] = [2, 0, 0, 0, 0, 0x0a];
pub(super) const MAC_HOST: [u8; 6] = [2, 0, 0, 0, 0, 1];

pub(super) fn ip_step(src: &str, dst: &str) -> PacketBuilderStep<IpHeaders> {
    let eth = PacketBuilder::ethernet2(MAC_HOST, MAC_POD);
    match (parse(src), parse(dst)) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => panic!("{src} -> {dst}: mixed families"),
    }
}

pub(super) fn is_v4(addr: &str) -> bool {
    parse(addr).is_ipv4()
}

pub(super) fn tcp(src: &str, sport: u16, dst: &str, dport: u16, syn: bool, ack: bool) -> Vec<u8> {
    let b = ip_step(src, dst).tcp(sport, dport, 1000, 64000);
    let b = if syn { b.syn() } else { b };
    let b = if ack { b.ack(1) } else { b };
    let mut v = Vec::new();
    b.write(&mut v, b"hello").unwrap();
    v
}

pub(super) fn syn(src: &str, sport: u16, dst: &str, dport: u16) -> Vec<u8> {
    tcp(src, sport, dst, dport, true, false)
}

pub(super) fn synack(src: &str, sport: u16, dst: &str, dport: u16) -> Vec<u8> {
    tcp(src, sport, dst, dport, true, true)
}

pub(super) fn ack(src: &str, sport: u16, dst: &str, dport: u16) -> Vec<u8> {
    tcp(src, sport, dst, dport, false, true)
}

pub(super) fn udp(src: &str, sport: u16, dst: &str, dport: u16) -> Vec<u8> {
    let mut v = Vec::new();
    ip_step(src, dst)
        .udp(sport, dport)
        .write(&mut v, &[0x5a; 32])
        .unwrap();
    v
}

/// An IP packet of any protocol, `payload` as its L4 bytes.
pub(super) fn raw(src: &str, dst: &str, proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    ip_step(src, dst)
        .write(&mut v, IpNumber(proto), payload)
        .unwrap();
    v
}

/// SCTP: the 12-byte common header (ports first, verification tag,
/// checksum), then an INIT chunk's header.
pub(super) fn sctp(src: &str, sport: u16, dst: &str, dport: u16) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&sport.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    l4.extend_from_slice(&[0; 8]);
    l4.extend_from_slice(&[1, 0, 0, 20]);
    l4.extend_from_slice(&[0; 16]);
    raw(src, dst, PROTO_SCTP, &l4)
}

/// GRE with a zero header (no options) carrying nothing in particular.
pub(super) fn gre(src: &str, dst: &str) -> Vec<u8> {
    raw(src, dst, GRE, &[0, 0, 0x08, 0x00, 0x45, 0, 0, 20])
}

/// Destination (port) unreachable from `src` to `dst`, quoting `quoted`.
pub(super) fn unreachable(src: &str, dst: &str, quoted: &[u8]) -> Vec<u8> {
    let b = ip_step(src, dst);
    let mut v = Vec::new();
    if is_v4(src) {
        b.icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ))
        .write(&mut v, quoted)
        .unwrap();
    } else {
        b.icmpv6(etherparse::Icmpv6Type::DestinationUnreachable(
            etherparse::icmpv6::DestUnreachableCode::Port,
        ))
        .write(&mut v, quoted)
        .unwrap();
    }
    v
}

pub(super) fn echo(src: &str, dst: &str, id: u16, request: bool) -> Vec<u8> {
    let b = ip_step(src, dst);
    let mut v = Vec::new();
    match (is_v4(src), request) {
        (true, true) => b.icmpv4_echo_request(id, 1).write(&mut v, b"ping"),
        (true, false) => b.icmpv4_echo_reply(id, 1).write(&mut v, b"ping"),
        (false, true) => b.icmpv6_echo_request(id, 1).write(&mut v, b"ping"),
        (false, false) => b.icmpv6_echo_reply(id, 1).write(&mut v, b"ping"),
    }
    .unwrap();
    v
}

pub(super) fn echo_request(src: &str, dst: &str, id: u16) -> Vec<u8> {
    echo(src, dst, id, true)
}

pub(super) fn echo_reply(src: &str, dst: &str, id: u16) -> Vec<u8> {
    echo(src, dst, id, false)
}

/// ICMPv6 of type `ty` (code 0) with `body` after the first 8 bytes.
pub(super) fn icmp6(src: &str, dst: &str, ty: u8, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    ip_step(src, dst)
        .icmpv6_raw(ty, 0, [0; 4])
        .write(&mut v, body)
        .unwrap();
    v
}

/// An ARP request from `spa` for `tpa`.
pub(super) fn arp(spa: &str, tpa: &str) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(t)) = (parse(spa), parse(tpa)) else {
        panic!("ARP is IPv4");
    };
    let mut v = vec![0xff; 6];
    v.extend_from_slice(&MAC_POD);
    v.extend_from_slice(&[0x08, 0x06]);
    v.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    v.extend_from_slice(&MAC_POD);
    v.extend_from_slice(&s.octets());
    v.extend_from_slice(&[0; 6]);
    v.extend_from_slice(&t.octets());
    v
}

/// `pkt` as a fragment at `offset` (8-byte units), more to come or not.
/// IPv4: the header's fields; IPv6: a fragment extension header. The L4
/// bytes stay as they were: a later fragment whose payload happens to look
/// like the ports of an allowed flow must not be read as such.
pub(super) fn fragment(pkt: &[u8], offset: u16, more: bool) -> Vec<u8> {
    let (eth, l3) = etherparse::Ethernet2Header::from_slice(pkt).expect("an Ethernet frame");
    let mut v = eth.to_bytes().to_vec();
    let offset = etherparse::IpFragOffset::try_new(offset).expect("a fragment offset");
    if let Ok((mut ip, payload)) = etherparse::Ipv4Header::from_slice(l3) {
        ip.dont_fragment = false;
        ip.more_fragments = more;
        ip.fragment_offset = offset;
        ip.header_checksum = ip.calc_header_checksum();
        ip.write(&mut v).unwrap();
        v.extend_from_slice(payload);
        return v;
    }
    let (mut ip, payload) = etherparse::Ipv6Header::from_slice(l3).expect("an IP packet");
    let frag = etherparse::Ipv6FragmentHeader::new(ip.next_header, offset, more, 0x1234);
    ip.next_header = etherparse::IpNumber::IPV6_FRAGMENTATION_HEADER;
    ip.payload_length += etherparse::Ipv6FragmentHeader::LEN as u16;
    ip.write(&mut v).unwrap();
    frag.write(&mut v).unwrap();
    v.extend_from_slice(payload);
    v
}
