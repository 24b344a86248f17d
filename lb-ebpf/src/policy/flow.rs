//! The policy's view of a packet: its flow tuple (ports, ICMP echo
//! identifiers, the quoted tuple of an ICMP error), read with the shared
//! IP header parsers of `packet`.

use aya_ebpf::programs::TcContext;
use lb_common::{BeU16, NetAddr, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP};

use crate::frame::Frame;
use crate::packet::{self, ETH_HLEN, ETH_P_IP, ETH_P_IPV6};

/// The `T` at `off`, as the Service parser reads it (straight from the
/// linear data where it can).
#[inline(always)]
fn load<T: Copy>(ctx: &TcContext, off: usize) -> Option<T> {
    Frame::load(ctx, off)
}

/// What the parser made of a packet.
pub(super) const KIND_PASS: u8 = 0;
/// A flow tuple (ports 0 where the protocol has none, or for a later fragment).
pub(super) const KIND_FLOW: u8 = 1;
/// An ICMP error: the tuple is the packet it quotes.
pub(super) const KIND_ICMP_ERR: u8 = 2;

#[derive(Clone, Copy, Default)]
pub struct Flow {
    pub saddr: NetAddr,
    pub daddr: NetAddr,
    pub sport: BeU16,
    pub dport: BeU16,
    pub proto: u8,
    pub kind: u8,
    pub tcp_flags: u8,
    /// The outer header's addresses (for an ICMP error the tuple above is
    /// the quoted packet's): the pod whose interface this is is one of them.
    pub outer_s: NetAddr,
    pub outer_d: NetAddr,
}

/// Fills `f` from the packet. Not inlined (stack).
#[inline(never)]
pub(super) fn parse(ctx: &TcContext, f: &mut Flow) {
    f.kind = KIND_PASS;
    let Some(eth) = load::<u16>(ctx, 12) else {
        return;
    };
    let l4 = match u16::from_be(eth) {
        ETH_P_IP => ip4(ctx, ETH_HLEN, f),
        ETH_P_IPV6 => ip6(ctx, ETH_HLEN, f),
        _ => return,
    };
    let Some((l4, first)) = l4 else { return };
    f.kind = KIND_FLOW;
    f.outer_s = f.saddr;
    f.outer_d = f.daddr;
    if !first {
        // A later fragment carries no ports: judged as the protocol's
        // port-less flow (allowed only by rules without ports).
        return;
    }
    match f.proto {
        PROTO_TCP | PROTO_UDP | PROTO_SCTP => {
            if let Some(ports) = load::<[u16; 2]>(ctx, l4) {
                f.sport = BeU16(ports[0]);
                f.dport = BeU16(ports[1]);
            }
            if f.proto == PROTO_TCP {
                f.tcp_flags = load::<u8>(ctx, l4 + 13).unwrap_or(0);
            }
        }
        PROTO_ICMP | PROTO_ICMPV6 => icmp(ctx, l4, f),
        _ => {}
    }
}

/// ICMP: echo is a flow keyed by its identifier (request: source side,
/// reply: destination side, so a reply reverses its request); errors carry
/// the quoted packet's tuple; neighbour discovery always passes.
#[inline(always)]
fn icmp(ctx: &TcContext, l4: usize, f: &mut Flow) {
    let Some(hdr) = load::<[u8; 2]>(ctx, l4) else {
        return;
    };
    let ty = hdr[0];
    let id = load::<u16>(ctx, l4 + 4).unwrap_or(0);
    let v6 = f.proto == PROTO_ICMPV6;
    match (v6, ty) {
        (false, 8) | (true, 128) => f.sport = BeU16(id),
        (false, 0) | (true, 129) => f.dport = BeU16(id),
        (false, 3 | 4 | 5 | 11 | 12) | (true, 1..=4) => {
            let mut inner = Flow::default();
            let quoted = if v6 {
                ip6(ctx, l4 + 8, &mut inner)
            } else {
                ip4(ctx, l4 + 8, &mut inner)
            };
            if let Some((il4, _)) = quoted {
                if let Some(ports) = load::<[u16; 2]>(ctx, il4) {
                    inner.sport = BeU16(ports[0]);
                    inner.dport = BeU16(ports[1]);
                }
                f.kind = KIND_ICMP_ERR;
                f.saddr = inner.saddr;
                f.daddr = inner.daddr;
                f.sport = inner.sport;
                f.dport = inner.dport;
                f.proto = inner.proto;
            }
        }
        // Router and neighbour discovery, MLD: the link needs them.
        (true, 130..=137 | 143) => f.kind = KIND_PASS,
        _ => {}
    }
}

/// IPv4 header at `off`: addresses and protocol into `f`; the L4 offset
/// and whether this is the first (or only) fragment.
#[inline(always)]
fn ip4(ctx: &TcContext, off: usize, f: &mut Flow) -> Option<(usize, bool)> {
    let h = packet::ip4(ctx, off)?;
    f.proto = h.proto;
    f.saddr = h.saddr;
    f.daddr = h.daddr;
    Some((h.l4_off, h.frag != packet::FRAG_LATER))
}

/// IPv6 header at `off`, walking up to four extension headers.
#[inline(always)]
fn ip6(ctx: &TcContext, off: usize, f: &mut Flow) -> Option<(usize, bool)> {
    let h = packet::ip6(ctx, off)?;
    f.saddr = h.saddr;
    f.daddr = h.daddr;
    let mut next = h.next;
    let mut l4 = off + 40;
    let mut first = true;
    let mut i = 0;
    while i < 4 {
        match next {
            // Hop-by-hop, routing, destination options.
            0 | 43 | 60 => {
                let h = load::<[u8; 2]>(ctx, l4)?;
                next = h[0];
                l4 += (h[1] as usize + 1) * 8;
            }
            // Fragment header: behind a later fragment's lies payload,
            // not headers.
            44 => {
                let h = load::<[u8; 4]>(ctx, l4)?;
                next = h[0];
                first = (u16::from_be_bytes([h[2], h[3]]) >> 3) == 0;
                l4 += 8;
                if !first {
                    break;
                }
            }
            _ => break,
        }
        i += 1;
    }
    f.proto = next;
    Some((l4, first))
}
