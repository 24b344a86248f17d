//! Header rewrites with incremental checksum updates (RFC 1624 through the
//! kernel's csum helpers): addresses change the IPv4 header checksum and the
//! L4 pseudo-header; ports change the L4 checksum.

use aya_ebpf::programs::TcContext;
use lb_common::{BeU16, NetAddr, PROTO_UDP};

use crate::{
    csum::{self, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    packet::{FRAG_LATER, Pkt},
};

const IPV4_CSUM_OFF: usize = crate::packet::ETH_HLEN + 10;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Src,
    Dst,
}

#[inline(always)]
fn l4_flags(p: &Pkt) -> u64 {
    // A zero UDP checksum over IPv4 means "none": keep it zero.
    if p.proto == PROTO_UDP {
        BPF_F_MARK_MANGLED_0
    } else {
        0
    }
}

#[inline(always)]
fn l4_csum(ctx: &TcContext, p: &Pkt, from: u64, to: u64, flags: u64) -> Result<(), i64> {
    csum::l4_replace(ctx, p.csum_off(), from, to, flags, p.v6)
}

#[inline(always)]
pub fn set_addr(ctx: &TcContext, p: &mut Pkt, side: Side, new: NetAddr) -> Result<(), i64> {
    let (off, old) = match side {
        Side::Src => (p.saddr_off(), p.saddr),
        Side::Dst => (p.daddr_off(), p.daddr),
    };
    if old == new {
        return Ok(());
    }
    // A later fragment has no L4 header: the first one's checksum covers
    // the whole datagram and took the change.
    let l4 = p.frag != FRAG_LATER;
    if p.v6 {
        ctx.store(off, &new.0, 0)?;
        if l4 {
            let diff = csum::addr_diff(&old, &new);
            l4_csum(ctx, p, 0, diff, BPF_F_PSEUDO_HDR | l4_flags(p))?;
        }
    } else {
        let (o, n) = (old.v4_raw(), new.v4_raw());
        ctx.store(off, &n, 0)?;
        if l4 {
            l4_csum(
                ctx,
                p,
                o as u64,
                n as u64,
                BPF_F_PSEUDO_HDR | 4 | l4_flags(p),
            )?;
        }
        ctx.l3_csum_replace(IPV4_CSUM_OFF, o as u64, n as u64, 4)?;
    }
    match side {
        Side::Src => p.saddr = new,
        Side::Dst => p.daddr = new,
    }
    Ok(())
}

#[inline(always)]
pub fn set_port(ctx: &TcContext, p: &mut Pkt, side: Side, new: BeU16) -> Result<(), i64> {
    let (off, old) = match side {
        Side::Src => (p.l4_off, p.sport),
        Side::Dst => (p.l4_off + 2, p.dport),
    };
    if old == new {
        return Ok(());
    }
    // A later fragment carries no ports: only the tuple it is known by
    // changes.
    if p.frag != FRAG_LATER {
        ctx.store(off, &new.0, 0)?;
        l4_csum(ctx, p, old.0 as u64, new.0 as u64, 2 | l4_flags(p))?;
    }
    match side {
        Side::Src => p.sport = new,
        Side::Dst => p.dport = new,
    }
    Ok(())
}
