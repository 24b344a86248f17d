//! Bounds-checked parsing of Ethernet + IPv4/IPv6 + TCP/UDP into a tuple.
//! What it does not understand (fragments, other protocols, IPv6 extension
//! headers, truncated headers) yields None, and the caller passes the
//! packet untouched.

use aya_ebpf::programs::TcContext;
use lb_common::{BeU16, NetAddr, PROTO_TCP, PROTO_UDP};

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

#[derive(Clone, Copy, Default)]
pub struct Pkt {
    pub v6: bool,
    pub proto: u8,
    pub saddr: NetAddr,
    pub daddr: NetAddr,
    pub sport: BeU16,
    pub dport: BeU16,
    pub l4_off: usize,
    /// The TCP header's flags byte (0 for UDP).
    pub tcp_flags: u8,
}

impl Pkt {
    pub fn saddr_off(&self) -> usize {
        if self.v6 { ETH_HLEN + 8 } else { ETH_HLEN + 12 }
    }
    pub fn daddr_off(&self) -> usize {
        if self.v6 {
            ETH_HLEN + 24
        } else {
            ETH_HLEN + 16
        }
    }
    pub fn csum_off(&self) -> usize {
        if self.proto == PROTO_TCP {
            self.l4_off + 16
        } else {
            self.l4_off + 6
        }
    }
}

/// Parses into `out`; 0 when the packet is understood. Not inlined: the
/// parser's temporaries stay out of the callers' stack frames (the verifier
/// allows 512 bytes over a whole call chain).
#[inline(never)]
pub fn parse_into(ctx: &TcContext, out: &mut Pkt) -> i32 {
    match parse(ctx) {
        Some(p) => {
            *out = p;
            0
        }
        None => -1,
    }
}

#[inline(always)]
fn parse(ctx: &TcContext) -> Option<Pkt> {
    let eth_proto = u16::from_be(ctx.load::<u16>(12).ok()?);
    let (v6, proto, saddr, daddr, l4_off) = match eth_proto {
        ETH_P_IP => {
            let vihl: u8 = ctx.load(ETH_HLEN).ok()?;
            let ihl = (vihl & 0x0f) as usize * 4;
            if vihl >> 4 != 4 || ihl < 20 {
                return None;
            }
            // Any fragment (MF set or an offset) passes untouched: later
            // fragments carry no ports to translate.
            let frag = u16::from_be(ctx.load::<u16>(ETH_HLEN + 6).ok()?);
            if frag & 0x3fff != 0 {
                return None;
            }
            let proto: u8 = ctx.load(ETH_HLEN + 9).ok()?;
            let s: u32 = ctx.load(ETH_HLEN + 12).ok()?;
            let d: u32 = ctx.load(ETH_HLEN + 16).ok()?;
            (
                false,
                proto,
                NetAddr::from_v4_raw(s),
                NetAddr::from_v4_raw(d),
                ETH_HLEN + ihl,
            )
        }
        ETH_P_IPV6 => {
            let vtc: u8 = ctx.load(ETH_HLEN).ok()?;
            if vtc >> 4 != 6 {
                return None;
            }
            // Extension headers are not parsed: only TCP/UDP right after the
            // fixed header is translated.
            let next: u8 = ctx.load(ETH_HLEN + 6).ok()?;
            let s: [u32; 4] = ctx.load(ETH_HLEN + 8).ok()?;
            let d: [u32; 4] = ctx.load(ETH_HLEN + 24).ok()?;
            (true, next, NetAddr(s), NetAddr(d), ETH_HLEN + 40)
        }
        _ => return None,
    };
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return None;
    }
    // The whole L4 header must be there, and the IP length must agree with
    // the frame (a packet that lies about its length, or is cut short,
    // passes untouched: the stack drops it, and it gets no state here).
    let hdr_len = if proto == PROTO_TCP { 20 } else { 8 };
    let ip_end = if v6 {
        l4_off + u16::from_be(ctx.load::<u16>(ETH_HLEN + 4).ok()?) as usize
    } else {
        ETH_HLEN + u16::from_be(ctx.load::<u16>(ETH_HLEN + 2).ok()?) as usize
    };
    if ip_end < l4_off + hdr_len || (ctx.len() as usize) < ip_end {
        return None;
    }
    let sport = BeU16(ctx.load::<u16>(l4_off).ok()?);
    let dport = BeU16(ctx.load::<u16>(l4_off + 2).ok()?);
    let tcp_flags = if proto == PROTO_TCP {
        ctx.load::<u8>(l4_off + 13).ok()?
    } else {
        0
    };
    Some(Pkt {
        v6,
        proto,
        saddr,
        daddr,
        sport,
        dport,
        l4_off,
        tcp_flags,
    })
}
