//! ICMP errors about translated flows, translated as their flows are, so
//! path MTU discovery ("fragmentation needed", "packet too big") and
//! unreachables work through NodePorts and LoadBalancer IPs.
//!
//! Ingress: an error a router sends to a frontend about one of its replies
//! (the quote: frontend -> client) goes to the flow's backend: the outer
//! destination and the quote's source become the backend's, and for an
//! SNAT'd flow the quote's destination becomes the node's address and the
//! flow's port, the tuple the backend knows. Egress: an error a local
//! backend sends to a client about one of its packets (the quote: client
//! -> backend) leaves from the frontend, quoting the frontend (one a
//! router on the way sends, this node when the pod's link has a smaller
//! MTU, keeps its source and quotes the frontend); so does one
//! a backend on another node sends this node about an SNAT'd flow's
//! packet (ingress gives it the client, egress the frontend).
//!
//! The quote's own L4 checksum is left as it was: it covers a payload the
//! quote does not carry, and no stack checks it. Every checksum that can
//! be checked (outer IPv4 header, ICMP/ICMPv6 with its pseudo-header,
//! quoted IPv4 header) stays right.

use aya_ebpf::programs::TcContext;
use lb_common::{
    BeU16, C_ICMP_ERR_TRANSLATED, CT_F_PORT_KEYED, CT_FWD, CT_REV, CT_RSNAT, NetAddr, PROTO_TCP,
    PROTO_UDP,
};

use crate::{
    conntrack,
    csum::{self, BPF_F_PSEUDO_HDR, addr_diff},
    maps::count,
    packet::{ETH_HLEN, FRAG_NONE, ip4},
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;

/// An ICMP(v6) error quoting a TCP or UDP packet, by offsets into the frame.
#[derive(Clone, Copy)]
struct Quote {
    v6: bool,
    /// The ICMP header (its checksum at +2).
    icmp: usize,
    /// The quoted IP header and its L4 header.
    inner: usize,
    inner_l4: usize,
    proto: u8,
    outer_saddr: NetAddr,
    outer_daddr: NetAddr,
    saddr: NetAddr,
    daddr: NetAddr,
    sport: BeU16,
    dport: BeU16,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Src,
    Dst,
}

/// IPv4 (options skipped), ICMP destination unreachable (fragmentation
/// needed among them), time exceeded or parameter problem; IPv6 without
/// extension headers, ICMPv6 destination unreachable, packet too big, time
/// exceeded or parameter problem. The quote: an IP header (IPv4 options
/// skipped, no IPv6 extension headers) and the first 8 bytes of TCP or
/// UDP.
#[inline(always)]
fn quote(ctx: &TcContext) -> Option<Quote> {
    let eth_proto = u16::from_be(ctx.load::<u16>(12).ok()?);
    let v6 = match eth_proto {
        ETH_P_IP => false,
        ETH_P_IPV6 => true,
        _ => return None,
    };
    let (icmp, outer_saddr, outer_daddr) = if v6 {
        if ctx.load::<u8>(ETH_HLEN).ok()? >> 4 != 6
            || ctx.load::<u8>(ETH_HLEN + 6).ok()? != PROTO_ICMPV6
        {
            return None;
        }
        let s: [u32; 4] = ctx.load(ETH_HLEN + 8).ok()?;
        let d: [u32; 4] = ctx.load(ETH_HLEN + 24).ok()?;
        (ETH_HLEN + 40, NetAddr(s), NetAddr(d))
    } else {
        let ip = ip4(ctx, ETH_HLEN)?;
        if ip.proto != PROTO_ICMP || ip.frag != FRAG_NONE {
            return None;
        }
        (ip.l4_off, ip.saddr, ip.daddr)
    };
    let ty: u8 = ctx.load(icmp).ok()?;
    let error = if v6 {
        (1..=4).contains(&ty)
    } else {
        ty == 3 || ty == 11 || ty == 12
    };
    if !error {
        return None;
    }
    let inner = icmp + 8;
    let (proto, saddr, daddr, inner_l4) = if v6 {
        if ctx.load::<u8>(inner).ok()? >> 4 != 6 {
            return None;
        }
        let proto: u8 = ctx.load(inner + 6).ok()?;
        let s: [u32; 4] = ctx.load(inner + 8).ok()?;
        let d: [u32; 4] = ctx.load(inner + 24).ok()?;
        (proto, NetAddr(s), NetAddr(d), inner + 40)
    } else {
        let ip = ip4(ctx, inner)?;
        (ip.proto, ip.saddr, ip.daddr, ip.l4_off)
    };
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return None;
    }
    let sport = BeU16(ctx.load::<u16>(inner_l4).ok()?);
    let dport = BeU16(ctx.load::<u16>(inner_l4 + 2).ok()?);
    Some(Quote {
        v6,
        icmp,
        inner,
        inner_l4,
        proto,
        outer_saddr,
        outer_daddr,
        saddr,
        daddr,
        sport,
        dport,
    })
}

/// The outer source or destination becomes `new`: the IPv4 header checksum
/// follows; ICMPv6's covers the address in its pseudo-header.
#[inline(always)]
fn set_outer(ctx: &TcContext, q: &Quote, side: Side, new: NetAddr) -> Result<(), i64> {
    let old = if side == Side::Src {
        q.outer_saddr
    } else {
        q.outer_daddr
    };
    if q.v6 {
        let off = ETH_HLEN + if side == Side::Src { 8 } else { 24 };
        ctx.store(off, &new.0, 0)?;
        let d = addr_diff(&old, &new);
        csum::l4_replace(ctx, q.icmp + 2, 0, d, BPF_F_PSEUDO_HDR, true)
    } else {
        let off = ETH_HLEN + if side == Side::Src { 12 } else { 16 };
        let (o, n) = (old.v4_raw(), new.v4_raw());
        ctx.store(off, &n, 0)?;
        ctx.l3_csum_replace(ETH_HLEN + 10, o as u64, n as u64, 4)
    }
}

/// The quote's source or destination becomes `addr`:`port`. In IPv4 the
/// quoted header's checksum follows, and the two changes cancel out in the
/// ICMP checksum; IPv6 quotes carry no header checksum, so ICMPv6's takes
/// the address change. The port change goes into the ICMP checksum.
#[inline(always)]
fn set_quoted(
    ctx: &TcContext,
    q: &Quote,
    side: Side,
    addr: NetAddr,
    port: BeU16,
) -> Result<(), i64> {
    let (old, old_port) = if side == Side::Src {
        (q.saddr, q.sport)
    } else {
        (q.daddr, q.dport)
    };
    if q.v6 {
        let off = q.inner + if side == Side::Src { 8 } else { 24 };
        ctx.store(off, &addr.0, 0)?;
        ctx.l4_csum_replace(q.icmp + 2, 0, addr_diff(&old, &addr), 0)?;
    } else {
        let off = q.inner + if side == Side::Src { 12 } else { 16 };
        let (o, n) = (old.v4_raw(), addr.v4_raw());
        ctx.store(off, &n, 0)?;
        ctx.l3_csum_replace(q.inner + 10, o as u64, n as u64, 4)?;
    }
    let port_off = q.inner_l4 + if side == Side::Src { 0 } else { 2 };
    ctx.store(port_off, &port.0, 0)?;
    ctx.l4_csum_replace(q.icmp + 2, old_port.0 as u64, port.0 as u64, 2)
}

/// An error about one of a flow's replies, sent to its frontend: to the
/// backend. 1 when translated. Not inlined: its frame is its own.
#[inline(never)]
pub fn ingress(ctx: &TcContext) -> i32 {
    match try_ingress(ctx) {
        Ok(true) => {
            count(C_ICMP_ERR_TRANSLATED);
            1
        }
        _ => 0,
    }
}

#[inline(always)]
fn try_ingress(ctx: &TcContext) -> Result<bool, i64> {
    let Some(q) = quote(ctx) else {
        return Ok(false);
    };
    // The quote is a reply, frontend -> client: its flow's forward entry
    // is keyed the other way round.
    let fk = conntrack::tuple(q.daddr, q.dport, q.saddr, q.sport, q.proto, CT_FWD);
    let Some(v) = conntrack::lookup(&fk) else {
        return from_remote_backend(ctx, &q);
    };
    if q.outer_daddr != q.saddr {
        // Sent elsewhere than the frontend the quote names: not ours.
        return Ok(false);
    }
    set_outer(ctx, &q, Side::Dst, v.addr)?;
    set_quoted(ctx, &q, Side::Src, v.addr, v.port)?;
    if v.snat_port.0 != 0 {
        // The backend knows the flow as node:port -> backend.
        let Some(node) = crate::maps::node_addr(q.v6) else {
            return Ok(true);
        };
        set_quoted(ctx, &q, Side::Dst, node, v.snat_port)?;
    }
    Ok(true)
}

/// An error a backend on another node sends about a flow's packet (the
/// quote: node:SNAT port -> backend), to this node: to the client, quoting
/// the client's own port, and with the flow's SNAT port as the quote's
/// destination port until egress, where the flow's reverse entry (keyed by
/// that port) turns the rest into the frontend.
#[inline(always)]
fn from_remote_backend(ctx: &TcContext, q: &Quote) -> Result<bool, i64> {
    let rk = conntrack::tuple(q.daddr, q.dport, q.saddr, q.sport, q.proto, CT_RSNAT);
    let Some(v) = conntrack::lookup(&rk) else {
        return Ok(false);
    };
    if v.flags & CT_F_PORT_KEYED == 0 || q.outer_daddr != q.saddr {
        return Ok(false);
    }
    set_outer(ctx, q, Side::Dst, v.addr)?;
    set_quoted(ctx, q, Side::Src, v.addr, v.port)?;
    set_quoted(ctx, q, Side::Dst, q.daddr, q.sport)?;
    Ok(true)
}

/// An error a local backend sends a client about one of its packets: from
/// the frontend, quoting the frontend. 1 when translated. Not inlined.
#[inline(never)]
pub fn egress(ctx: &TcContext) -> i32 {
    match try_egress(ctx) {
        Ok(true) => {
            count(C_ICMP_ERR_TRANSLATED);
            1
        }
        _ => 0,
    }
}

#[inline(always)]
fn try_egress(ctx: &TcContext) -> Result<bool, i64> {
    let Some(q) = quote(ctx) else {
        return Ok(false);
    };
    // The quote is the client's packet after DNAT, client -> backend: the
    // flow's reverse entry is keyed the other way round.
    let rk = conntrack::tuple(q.daddr, q.dport, q.saddr, q.sport, q.proto, CT_REV);
    let Some(v) = conntrack::lookup(&rk) else {
        return Ok(false);
    };
    // From the backend itself: it leaves from the frontend. From a router
    // on the way (this node, when the pod's interface has a smaller MTU)
    // its source stays: a client takes an error from any router.
    if q.outer_saddr == q.daddr {
        set_outer(ctx, &q, Side::Src, v.addr)?;
    }
    set_quoted(ctx, &q, Side::Dst, v.addr, v.port)?;
    Ok(true)
}
