//! The XDP fast path on the external devices, making TC's decisions with
//! the conntrack they share: flows to a backend on this node — known ones,
//! and new ones, which get their entries here — are DNAT'd and passed up;
//! traffic TC would drop (externalTrafficPolicy: Local without a local
//! endpoint, loadBalancerSourceRanges) is dropped here. The rest (backends
//! on other nodes, which need SNAT at egress; replies; Services without
//! endpoints, answered with ICMP) passes untouched to TC.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    programs::XdpContext,
};
use lb_common::{
    BACKEND_LOCAL, BeU16, C_CT_CREATE, C_XDP_DNAT, C_XDP_PASS, CT_FWD, CT_RSNAT, NetAddr,
    PROTO_TCP, PROTO_UDP, TCP_FIN, TCP_RST,
};

use crate::{
    choose::{self, Choice},
    conntrack, csum,
    frame::xdp_ptr as ptr,
    maps::{LB_BACKENDS_V1, count, xdp_drop},
    packet::{self, Pkt},
};

/// Verdicts of `known_flow` and `open_flow`: XDP's own actions (pass on to
/// TC, drop), or DNAT to the backend they chose.
const PASS_ON: u32 = XDP_PASS;
const TRANSLATE: u32 = u32::MAX;

/// 1 when the packet is a reply of a flow SNAT'd towards another node's
/// backend. Not inlined: its key gets a frame of its own.
#[inline(never)]
fn is_snat_reply(p: &Pkt) -> u32 {
    (conntrack::may_be_snat_reply(p) && conntrack::lookup(&conntrack::key(p, CT_RSNAT)).is_some())
        as u32
}

/// A packet to an external frontend without a forward entry: a new flow
/// to a local backend gets its conntrack entries and `to`; drops TC would
/// make happen here.
/// Not inlined (stack).
#[inline(never)]
fn open_flow(p: &Pkt, to: &mut Choice) -> u32 {
    // A reply to an SNAT'd flow can carry a frontend's port (a node address
    // as externalIP, on a port SNAT hands out): TC's.
    if is_snat_reply(p) != 0 {
        return PASS_ON;
    }
    let verdict = choose::choose(p, 0, to);
    if let Some(r) = choose::drop_reason(verdict) {
        return xdp_drop(r);
    }
    if verdict != choose::CHOSEN || to.backend.flags & BACKEND_LOCAL == 0 {
        // A backend on another node (SNAT at egress), a Service without
        // endpoints (ICMP), a backend missing: TC's.
        return PASS_ON;
    }
    match crate::flow::track(p, &to.backend, to.backend_id, 0) {
        0 => {
            count(C_CT_CREATE);
            TRANSLATE
        }
        // SNAT'd (a clash with another frontend's flow): TC translates it
        // from its entries; or it could not be tracked: TC drops it, counted.
        _ => PASS_ON,
    }
}

const ETH: usize = packet::ETH_HLEN;

pub fn fast_path(ctx: &XdpContext) -> u32 {
    let mut p = Pkt::default();
    if parse(ctx, &mut p) != 0 {
        count(C_XDP_PASS);
        return XDP_PASS;
    }
    // Most packets on an external device are no Service's: one lookup says
    // so before conntrack's. A flow whose frontend went (or was never
    // external) goes on to TC, which still knows it.
    if choose::is_external_frontend(&p) == 0 {
        count(C_XDP_PASS);
        return XDP_PASS;
    }
    let mut to = Choice::default();
    let verdict = match known_flow(&p, &mut to) {
        PASS_ON if to.backend_id == NO_ENTRY => open_flow(&p, &mut to),
        v => v,
    };
    match verdict {
        TRANSLATE if dnat(ctx, &p, &to.backend.addr, to.backend.port.0 as u32) == 0 => {
            count(C_XDP_DNAT);
            XDP_PASS
        }
        XDP_DROP => XDP_DROP,
        _ => {
            count(C_XDP_PASS);
            XDP_PASS
        }
    }
}

/// `backend_id` of a `Choice` when the flow has no forward entry.
const NO_ENTRY: u32 = u32::MAX;

/// A packet of a known flow to a backend on this node: TRANSLATE with its
/// backend in `to`. PASS_ON for everything TC must see (backends on other
/// nodes, a gone backend, a FIN or RST to mark), with `to.backend_id` set
/// to NO_ENTRY when there is no forward entry at all. Not inlined (stack).
#[inline(never)]
fn known_flow(p: &Pkt, to: &mut Choice) -> u32 {
    let k = conntrack::key(p, CT_FWD);
    let Some(v) = conntrack::lookup(&k) else {
        to.backend_id = NO_ENTRY;
        return PASS_ON;
    };
    if v.flags & BACKEND_LOCAL == 0 || v.snat_port.0 != 0 {
        return PASS_ON;
    }
    // A backend gone is a miss: TC reselects.
    // SAFETY: copied out at once.
    let Some(b) = unsafe { LB_BACKENDS_V1.get(v.backend_id) }.copied() else {
        return PASS_ON;
    };
    if b.addr != v.addr || b.port != v.port || b.addr.is_v4() == p.v6 {
        return PASS_ON;
    }
    // A FIN or RST goes on to TC, which marks the entry closing; so does
    // a flow TC must make afresh (a reused tuple, a lost partner entry).
    if p.tcp_flags & (TCP_FIN | TCP_RST) != 0 || crate::flow::stale_flow(p, &k) != 0 {
        return PASS_ON;
    }
    conntrack::touch(&k, &v, p.tcp_flags);
    to.backend = b;
    to.backend_id = v.backend_id;
    TRANSLATE
}

/// The tuple of a TCP/UDP packet, as TC's parser reads it; non-zero for
/// anything it does not understand, and for fragments: their ports are
/// TC's to remember. Not inlined: the parser's temporaries stay out of
/// `fast_path`'s frame (the frame reads the packet bounds itself: see
/// `frame::bounds`).
#[inline(never)]
fn parse(ctx: &XdpContext, out: &mut Pkt) -> i32 {
    if packet::parse_headers(ctx, out) != 0 || out.frag != packet::FRAG_NONE {
        return 1;
    }
    0
}

/// Rewrites the destination to `addr`:`port` (network order in the low 16
/// bits) with incremental checksums. Not inlined: its temporaries stay
/// out of the frame under which the flow lookups run.
#[inline(never)]
fn dnat(ctx: &XdpContext, p: &Pkt, addr: &NetAddr, port: u32) -> i32 {
    match try_dnat(ctx, p, addr, BeU16(port as u16)) {
        Some(()) => 0,
        None => 1,
    }
}

#[inline(always)]
fn try_dnat(ctx: &XdpContext, p: &Pkt, to_addr: &NetAddr, to_port: BeU16) -> Option<()> {
    let (v6, proto, l4, daddr) = (p.v6, p.proto, p.l4_off, p.daddr);
    let csum_off = if proto == PROTO_TCP { l4 + 16 } else { l4 + 6 };
    let csum_p = ptr::<u16>(ctx, csum_off)?;
    let dport_p = ptr::<u16>(ctx, l4 + 2)?;
    let dport = p.dport;
    // SAFETY: bounds-checked by `ptr` against data_end.
    let old_csum = unsafe { *csum_p };
    let udp_no_csum = proto == PROTO_UDP && !v6 && old_csum == 0;
    let mut sum = (!old_csum) as u64;
    if v6 {
        let dp = ptr::<[u32; 4]>(ctx, ETH + 24)?;
        sum = csum::add(sum, daddr.0[0], to_addr.0[0]);
        sum = csum::add(sum, daddr.0[1], to_addr.0[1]);
        sum = csum::add(sum, daddr.0[2], to_addr.0[2]);
        sum = csum::add(sum, daddr.0[3], to_addr.0[3]);
        // SAFETY: bounds-checked by `ptr` against data_end.
        unsafe { *dp = to_addr.0 };
    } else {
        let dp = ptr::<u32>(ctx, ETH + 16)?;
        let ip_csum_p = ptr::<u16>(ctx, ETH + 10)?;
        // SAFETY: bounds-checked by `ptr` against data_end.
        unsafe {
            let ip = csum::add((!*ip_csum_p) as u64, daddr.v4_raw(), to_addr.v4_raw());
            *ip_csum_p = csum::fold(ip);
        }
        sum = csum::add(sum, daddr.v4_raw(), to_addr.v4_raw());
        // SAFETY: as above.
        unsafe { *dp = to_addr.v4_raw() };
    }
    sum = csum::add16(sum, dport.0, to_port.0);
    let csum = csum::fold(sum);
    // SAFETY: both pointers bounds-checked by `ptr` against data_end.
    unsafe {
        *dport_p = to_port.0;
        if !udp_no_csum {
            // A UDP checksum that computes to zero is sent as all ones.
            *csum_p = if csum == 0 && proto == PROTO_UDP {
                0xffff
            } else {
                csum
            };
        }
    }
    Some(())
}
