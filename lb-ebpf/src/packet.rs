//! Bounds-checked parsing of Ethernet + IPv4/IPv6 + TCP/UDP into a tuple.
//! Fragments are understood: a first fragment carries its ports, and
//! leaves them (by addresses, protocol and fragment id) for the later ones,
//! which carry none (`frag`). What it does not understand (other
//! protocols, other IPv6 extension headers, truncated headers, a later
//! fragment whose first one this hook never saw) yields None, and the
//! caller passes the packet untouched.

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
    /// The TCP header's flags byte (0 for UDP, and for a later fragment).
    pub tcp_flags: u8,
    /// `FRAG_NONE`, `FRAG_FIRST` or `FRAG_LATER` (no L4 header: its ports
    /// came from the first fragment).
    pub frag: u8,
    /// The fragment id (IPv4's 16 bits, IPv6's 32).
    pub frag_id: u32,
}

pub const FRAG_NONE: u8 = 0;
pub const FRAG_FIRST: u8 = 1;
pub const FRAG_LATER: u8 = 2;
const NEXT_FRAGMENT: u8 = 44;

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
            match out.frag {
                FRAG_FIRST => crate::frag::remember(out),
                FRAG_LATER => crate::frag::ports(out),
                _ => 0,
            }
        }
        None => -1,
    }
}

#[inline(always)]
fn parse(ctx: &TcContext) -> Option<Pkt> {
    let eth_proto = u16::from_be(ctx.load::<u16>(12).ok()?);
    let (v6, proto, saddr, daddr, l4_off, frag, frag_id) = match eth_proto {
        ETH_P_IP => {
            let vihl: u8 = ctx.load(ETH_HLEN).ok()?;
            let ihl = (vihl & 0x0f) as usize * 4;
            if vihl >> 4 != 4 || ihl < 20 {
                return None;
            }
            let f = u16::from_be(ctx.load::<u16>(ETH_HLEN + 6).ok()?);
            let frag = match (f & 0x1fff, f & 0x2000) {
                (0, 0) => FRAG_NONE,
                (0, _) => FRAG_FIRST,
                _ => FRAG_LATER,
            };
            let id = u16::from_be(ctx.load::<u16>(ETH_HLEN + 4).ok()?) as u32;
            let proto: u8 = ctx.load(ETH_HLEN + 9).ok()?;
            let s: u32 = ctx.load(ETH_HLEN + 12).ok()?;
            let d: u32 = ctx.load(ETH_HLEN + 16).ok()?;
            (
                false,
                proto,
                NetAddr::from_v4_raw(s),
                NetAddr::from_v4_raw(d),
                ETH_HLEN + ihl,
                frag,
                id,
            )
        }
        ETH_P_IPV6 => {
            let vtc: u8 = ctx.load(ETH_HLEN).ok()?;
            if vtc >> 4 != 6 {
                return None;
            }
            let next: u8 = ctx.load(ETH_HLEN + 6).ok()?;
            let s: [u32; 4] = ctx.load(ETH_HLEN + 8).ok()?;
            let d: [u32; 4] = ctx.load(ETH_HLEN + 24).ok()?;
            if next == NEXT_FRAGMENT {
                // The fragment header: next header, offset and M flag, id.
                let fh = ETH_HLEN + 40;
                let next: u8 = ctx.load(fh).ok()?;
                let f = u16::from_be(ctx.load::<u16>(fh + 2).ok()?);
                let id = u32::from_be(ctx.load::<u32>(fh + 4).ok()?);
                let frag = match (f & 0xfff8, f & 1) {
                    (0, 0) => FRAG_NONE,
                    (0, _) => FRAG_FIRST,
                    _ => FRAG_LATER,
                };
                (true, next, NetAddr(s), NetAddr(d), fh + 8, frag, id)
            } else {
                (
                    true,
                    next,
                    NetAddr(s),
                    NetAddr(d),
                    ETH_HLEN + 40,
                    FRAG_NONE,
                    0,
                )
            }
        }
        _ => return None,
    };
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return None;
    }
    let ip_end = if v6 {
        ETH_HLEN + 40 + u16::from_be(ctx.load::<u16>(ETH_HLEN + 4).ok()?) as usize
    } else {
        ETH_HLEN + u16::from_be(ctx.load::<u16>(ETH_HLEN + 2).ok()?) as usize
    };
    if frag == FRAG_LATER {
        if ip_end < l4_off || (ctx.len() as usize) < ip_end {
            return None;
        }
        return Some(Pkt {
            v6,
            proto,
            saddr,
            daddr,
            sport: BeU16(0),
            dport: BeU16(0),
            l4_off,
            tcp_flags: 0,
            frag,
            frag_id,
        });
    }
    let hdr_len = if proto == PROTO_TCP { 20 } else { 8 };
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
        frag,
        frag_id,
    })
}
