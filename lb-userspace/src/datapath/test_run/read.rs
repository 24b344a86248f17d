//! Reading the frames the programs put out, with etherparse: a test names
//! the field it checks (an address, a port, an ICMP type, the quoted
//! header), never a byte offset.

use std::net::{IpAddr, Ipv4Addr};

use etherparse::{
    IpNumber, Ipv4Header, Ipv6Header, LinkHeader, NetHeaders, PacketHeaders, PayloadSlice,
    TcpHeader, TransportHeader, UdpHeader,
};

/// `pkt`'s headers; panics when etherparse cannot read them.
pub(in crate::datapath) fn headers(pkt: &[u8]) -> PacketHeaders<'_> {
    PacketHeaders::from_ethernet_slice(pkt)
        .unwrap_or_else(|e| panic!("a frame etherparse cannot read: {e}"))
}

/// The Ethernet destination address.
pub(in crate::datapath) fn eth_dst(pkt: &[u8]) -> [u8; 6] {
    headers(pkt)
        .link
        .and_then(LinkHeader::ethernet2)
        .expect("an Ethernet II header")
        .destination
}

pub(in crate::datapath) fn ipv4(pkt: &[u8]) -> Ipv4Header {
    match headers(pkt).net {
        Some(NetHeaders::Ipv4(h, _)) => h,
        other => panic!("not IPv4: {other:?}"),
    }
}

pub(in crate::datapath) fn ipv6(pkt: &[u8]) -> Ipv6Header {
    match headers(pkt).net {
        Some(NetHeaders::Ipv6(h, _)) => h,
        other => panic!("not IPv6: {other:?}"),
    }
}

/// The IP header's (source, destination), as `dst4` writes addresses.
pub(in crate::datapath) fn addrs(pkt: &[u8]) -> (String, String) {
    let (src, dst): (IpAddr, IpAddr) = match headers(pkt).net {
        Some(NetHeaders::Ipv4(h, _)) => (h.source.into(), h.destination.into()),
        Some(NetHeaders::Ipv6(h, _)) => (h.source.into(), h.destination.into()),
        other => panic!("not IP: {other:?}"),
    };
    (src.to_string(), dst.to_string())
}

/// The IP payload: the L4 header and data, or a fragment's share of them.
pub(in crate::datapath) fn ip_payload(pkt: &[u8]) -> &[u8] {
    etherparse::SlicedPacket::from_ethernet(pkt)
        .unwrap_or_else(|e| panic!("a frame etherparse cannot read: {e}"))
        .ip_payload()
        .expect("an IP payload")
        .payload
}

/// The TCP or UDP header's (source, destination) ports, a first
/// fragment's too (etherparse leaves a fragment's payload unread).
pub(in crate::datapath) fn ports(pkt: &[u8]) -> (u16, u16) {
    let h = headers(pkt);
    match h.transport {
        Some(TransportHeader::Tcp(t)) => (t.source_port, t.destination_port),
        Some(TransportHeader::Udp(u)) => (u.source_port, u.destination_port),
        None => {
            let PayloadSlice::Ip(p) = &h.payload else {
                panic!("no IP payload: {:?}", h.payload);
            };
            let first = match &h.net {
                Some(NetHeaders::Ipv4(ip, _)) => ip.fragment_offset.value() == 0,
                Some(NetHeaders::Ipv6(_, exts)) => exts
                    .fragment
                    .as_ref()
                    .is_none_or(|f| f.fragment_offset.value() == 0),
                _ => false,
            };
            assert!(p.fragmented && first, "no ports in {:?}", h.net);
            match p.ip_number {
                IpNumber::UDP => {
                    let (u, _) = UdpHeader::from_slice(p.payload).expect("a UDP header");
                    (u.source_port, u.destination_port)
                }
                IpNumber::TCP => {
                    let (t, _) = TcpHeader::from_slice(p.payload).expect("a TCP header");
                    (t.source_port, t.destination_port)
                }
                n => panic!("no ports in protocol {n:?}"),
            }
        }
        other => panic!("neither TCP nor UDP: {other:?}"),
    }
}

/// An ICMPv4 message's type and what it quotes.
pub(in crate::datapath) fn icmp4(pkt: &[u8]) -> (etherparse::Icmpv4Type, &[u8]) {
    let h = headers(pkt);
    match (h.transport, h.payload) {
        (Some(TransportHeader::Icmpv4(i)), PayloadSlice::Icmpv4(quote)) => (i.icmp_type, quote),
        (other, _) => panic!("not ICMPv4: {other:?}"),
    }
}

/// An ICMPv6 message's type and what it quotes.
pub(in crate::datapath) fn icmp6(pkt: &[u8]) -> (etherparse::Icmpv6Type, &[u8]) {
    let h = headers(pkt);
    match (h.transport, h.payload) {
        (Some(TransportHeader::Icmpv6(i)), PayloadSlice::Icmpv6(quote)) => (i.icmp_type, quote),
        (other, _) => panic!("not ICMPv6: {other:?}"),
    }
}

/// The IPv4 destination (address, port).
pub(in crate::datapath) fn dst4(pkt: &[u8]) -> (String, u16) {
    let dst = ipv4(pkt).destination;
    (Ipv4Addr::from(dst).to_string(), ports(pkt).1)
}

/// The IPv4 source (address, port).
pub(in crate::datapath) fn src4(pkt: &[u8]) -> (String, u16) {
    let src = ipv4(pkt).source;
    (Ipv4Addr::from(src).to_string(), ports(pkt).0)
}

/// The IPv6 destination (address, port).
pub(in crate::datapath) fn dst6(pkt: &[u8]) -> (String, u16) {
    (ipv6(pkt).destination_addr().to_string(), ports(pkt).1)
}

/// The IPv6 source (address, port).
pub(in crate::datapath) fn src6(pkt: &[u8]) -> (String, u16) {
    (ipv6(pkt).source_addr().to_string(), ports(pkt).0)
}
