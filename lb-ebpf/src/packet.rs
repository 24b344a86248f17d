//! Bounds-checked parsing of Ethernet + IPv4/IPv6 + TCP/UDP into a tuple,
//! the one parser of TC and XDP (over `Frame`), so both paths understand
//! the same packets: IPv4 options are skipped by the header length, a
//! wrong IP version is refused. Fragments are understood: a first
//! fragment carries its ports, and at TC leaves them (by addresses,
//! protocol and fragment id) for the later ones, which carry none
//! (`frag`). What it does not understand (other protocols, other IPv6
//! extension headers, truncated headers, a later fragment whose first one
//! this hook never saw) yields non-zero, and the caller passes the packet
//! untouched. The IP header readers (`ip4`, `ip6`) serve the policy's
//! parser too.

use aya_ebpf::programs::TcContext;
use lb_common::{BeU16, NetAddr, PROTO_TCP, PROTO_UDP};

use crate::frame::Frame;

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;

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
pub const NEXT_FRAGMENT: u8 = 44;

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

/// Parses a TC packet into `out`, fragments included; 0 when the packet
/// is understood. Not inlined: the parser's temporaries stay out of the
/// callers' stack frames (the verifier allows 512 bytes over a whole call
/// chain).
#[inline(never)]
pub fn parse_into(ctx: &TcContext, out: &mut Pkt) -> i32 {
    if parse(ctx, out).is_none() {
        return -1;
    }
    match out.frag {
        FRAG_FIRST => crate::frag::remember(out),
        FRAG_LATER => crate::frag::ports(out),
        _ => 0,
    }
}

/// Parses into `out` without looking at fragments' ports: 0 when the
/// packet is understood (`out.frag` says whether it is a fragment). XDP's
/// entry: it leaves fragments to TC, which remembers their ports.
#[inline(always)]
pub fn parse_headers<C: Frame>(ctx: &C, out: &mut Pkt) -> i32 {
    match parse(ctx, out) {
        Some(()) => 0,
        None => -1,
    }
}

/// An IPv4 header's fields the parsers read.
#[derive(Clone, Copy)]
pub struct Ip4 {
    pub proto: u8,
    pub saddr: NetAddr,
    pub daddr: NetAddr,
    /// Where its payload starts (past any options).
    pub l4_off: usize,
    /// `FRAG_NONE`, `FRAG_FIRST` or `FRAG_LATER`.
    pub frag: u8,
}

/// The IPv4 header at `off`: None unless its version is 4 and its length
/// at least 20 bytes. Options are skipped, not refused.
#[inline(always)]
pub fn ip4<C: Frame>(ctx: &C, off: usize) -> Option<Ip4> {
    let vihl: u8 = ctx.load(off)?;
    let ihl = (vihl & 0x0f) as usize * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return None;
    }
    let f = u16::from_be(ctx.load::<u16>(off + 6)?);
    let frag = match (f & 0x1fff, f & 0x2000) {
        (0, 0) => FRAG_NONE,
        (0, _) => FRAG_FIRST,
        _ => FRAG_LATER,
    };
    let proto: u8 = ctx.load(off + 9)?;
    let s: u32 = ctx.load(off + 12)?;
    let d: u32 = ctx.load(off + 16)?;
    Some(Ip4 {
        proto,
        saddr: NetAddr::from_v4_raw(s),
        daddr: NetAddr::from_v4_raw(d),
        l4_off: off + ihl,
        frag,
    })
}

/// An IPv6 fixed header's fields the parsers read.
#[derive(Clone, Copy)]
pub struct Ip6 {
    pub next: u8,
    pub saddr: NetAddr,
    pub daddr: NetAddr,
}

/// The IPv6 fixed header at `off` (40 bytes; extension headers are the
/// caller's): None unless its version is 6.
#[inline(always)]
pub fn ip6<C: Frame>(ctx: &C, off: usize) -> Option<Ip6> {
    let vtc: u8 = ctx.load(off)?;
    if vtc >> 4 != 6 {
        return None;
    }
    let next: u8 = ctx.load(off + 6)?;
    let s: [u32; 4] = ctx.load(off + 8)?;
    let d: [u32; 4] = ctx.load(off + 24)?;
    Some(Ip6 {
        next,
        saddr: NetAddr(s),
        daddr: NetAddr(d),
    })
}

/// Fills `out`, field by field (no second copy of a `Pkt` on the stack
/// of XDP, which inlines this); on None `out` holds part of a packet.
#[inline(always)]
fn parse<C: Frame>(ctx: &C, out: &mut Pkt) -> Option<()> {
    let eth_proto = u16::from_be(ctx.load::<u16>(12)?);
    let (v6, proto, l4_off, frag) = match eth_proto {
        ETH_P_IP => {
            let h = ip4(ctx, ETH_HLEN)?;
            out.frag_id = u16::from_be(ctx.load::<u16>(ETH_HLEN + 4)?) as u32;
            out.saddr = h.saddr;
            out.daddr = h.daddr;
            (false, h.proto, h.l4_off, h.frag)
        }
        ETH_P_IPV6 => {
            let h = ip6(ctx, ETH_HLEN)?;
            out.saddr = h.saddr;
            out.daddr = h.daddr;
            if h.next == NEXT_FRAGMENT {
                // The fragment header: next header, offset and M flag, id.
                let fh = ETH_HLEN + 40;
                let next: u8 = ctx.load(fh)?;
                let f = u16::from_be(ctx.load::<u16>(fh + 2)?);
                out.frag_id = u32::from_be(ctx.load::<u32>(fh + 4)?);
                let frag = match (f & 0xfff8, f & 1) {
                    (0, 0) => FRAG_NONE,
                    (0, _) => FRAG_FIRST,
                    _ => FRAG_LATER,
                };
                (true, next, fh + 8, frag)
            } else {
                out.frag_id = 0;
                (true, h.next, ETH_HLEN + 40, FRAG_NONE)
            }
        }
        _ => return None,
    };
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return None;
    }
    let ip_end = if v6 {
        ETH_HLEN + 40 + u16::from_be(ctx.load::<u16>(ETH_HLEN + 4)?) as usize
    } else {
        ETH_HLEN + u16::from_be(ctx.load::<u16>(ETH_HLEN + 2)?) as usize
    };
    out.v6 = v6;
    out.proto = proto;
    out.l4_off = l4_off;
    out.frag = frag;
    if frag == FRAG_LATER {
        if ip_end < l4_off || !ctx.holds(ip_end) {
            return None;
        }
        out.sport = BeU16(0);
        out.dport = BeU16(0);
        out.tcp_flags = 0;
        return Some(());
    }
    let hdr_len = if proto == PROTO_TCP { 20 } else { 8 };
    if ip_end < l4_off + hdr_len || !ctx.holds(ip_end) {
        return None;
    }
    out.sport = BeU16(ctx.load::<u16>(l4_off)?);
    out.dport = BeU16(ctx.load::<u16>(l4_off + 2)?);
    out.tcp_flags = if proto == PROTO_TCP {
        ctx.load::<u8>(l4_off + 13)?
    } else {
        0
    };
    Some(())
}
