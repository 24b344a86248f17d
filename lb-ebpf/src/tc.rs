//! Packet-level translation at TC on the node's external devices, for
//! traffic no socket hook saw: NodePort, LoadBalancer IPs and externalIPs
//! from outside the node.
//!
//! ingress: replies of SNAT'd flows get their client back (destination);
//!          new and known flows to an external frontend are DNAT'd to a
//!          backend. Nothing here rewrites a source to a node address, so
//!          no packet goes up the stack as a martian.
//! egress:  flows to a backend on another node get this node's address as
//!          source (SNAT); replies get the frontend back as source.

use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use lb_common::{
    BACKEND_DRAINING, BeU16, C_CT_CREATE, C_CT_STALE_BACKEND, C_DROP_ICMP_RATE, C_DROP_NO_BACKEND,
    C_PASS_UNPARSED, C_TC_DNAT, C_TC_REVDNAT, C_TC_RSNAT, C_TC_SNAT, CT_F_PORT_KEYED, CT_FWD,
    CT_REV, CT_RSNAT, CT_SNAT, NetAddr, PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_SYN,
};

use crate::{
    choose::{self, CHOSEN, Choice, NO_ENDPOINTS, NOT_EXTERNAL, choose, drains},
    conntrack,
    flow::{CHECK_SNAT, RETRACK, retrack, snat_partners_missing, stale_flow, track, untracked},
    icmp,
    maps::{LB_BACKENDS_V1, count, drop},
    nat::{self, Side},
    packet::{self, Pkt},
};

/// `from_pod`: the program runs on a pod interface (the pod's egress),
/// not on an external device.
#[inline(always)]
pub fn ingress(ctx: &TcContext, from_pod: bool) -> i32 {
    // The port unreachable is built beside the translation, not under it:
    // its buffers and the parsed packet's frame never add up.
    match translate_ingress(ctx, from_pod as u32) {
        REFUSE_V4 => icmp::port_unreachable(ctx, false),
        REFUSE_V6 => icmp::port_unreachable(ctx, true),
        v => v,
    }
}

/// `translate_ingress`: answer with an ICMP(v6) port unreachable.
const REFUSE_V4: i32 = i32::MIN;
const REFUSE_V6: i32 = i32::MIN + 1;

#[inline(never)]
fn translate_ingress(ctx: &TcContext, from_pod: u32) -> i32 {
    match try_ingress(ctx, from_pod != 0) {
        Ok(v) => v,
        Err(_) => {
            count(lb_common::C_PASS_REWRITE_FAILED);
            TC_ACT_OK
        }
    }
}

/// The egress translation; ICMP errors and what no parser understands go
/// to `unparsed`, called beside this (not under it: frames never add up).
pub fn egress(ctx: &TcContext) -> i32 {
    match translate_egress(ctx) {
        UNPARSED => unparsed_egress(ctx),
        v => v,
    }
}

/// `translate_egress`: not a TCP or UDP packet it understands.
const UNPARSED: i32 = i32::MIN;

#[inline(never)]
fn unparsed_egress(ctx: &TcContext) -> i32 {
    if crate::icmp_nat::egress(ctx) == 0 {
        count(C_PASS_UNPARSED);
    }
    TC_ACT_OK
}

#[inline(never)]
fn translate_egress(ctx: &TcContext) -> i32 {
    let mut p = Pkt::default();
    if packet::parse_into(ctx, &mut p) != 0 {
        return UNPARSED;
    }
    let k = conntrack::key(&p, CT_SNAT);
    if let Some(v) = conntrack::lookup(&k) {
        conntrack::touch(&k, &v, p.tcp_flags);
        if rewrite_src(ctx, &mut p, v.addr, v.port).is_ok() {
            count(C_TC_SNAT);
        }
        return TC_ACT_OK;
    }
    let k = conntrack::key(&p, CT_REV);
    if let Some(v) = conntrack::lookup(&k) {
        // A reply: the flow is answered (for UDP too, so the sweep can
        // tell flows nobody answered from the rest).
        let flags = if p.proto == PROTO_UDP {
            TCP_ACK
        } else {
            p.tcp_flags
        };
        conntrack::touch(&k, &v, flags);
        if rewrite_src(ctx, &mut p, v.addr, v.port).is_ok() {
            count(C_TC_REVDNAT);
        }
    }
    TC_ACT_OK
}

#[inline(always)]
fn rewrite_src(ctx: &TcContext, p: &mut Pkt, addr: NetAddr, port: BeU16) -> Result<(), i64> {
    nat::set_addr(ctx, p, Side::Src, addr)?;
    nat::set_port(ctx, p, Side::Src, port)
}

fn try_ingress(ctx: &TcContext, from_pod: bool) -> Result<i32, i64> {
    let mut p = Pkt::default();
    if packet::parse_into(ctx, &mut p) != 0 {
        if crate::icmp_nat::ingress(ctx) == 0 {
            count(C_PASS_UNPARSED);
        }
        return Ok(TC_ACT_OK);
    }
    match known_flow(ctx, &mut p) {
        0 => {}
        RETRACK => {
            let t = retrack(&p);
            if t < 0 {
                return Ok(drop(untracked(t)));
            }
            // Fresh now: the known-flow path translates it.
            known_flow(ctx, &mut p);
            return Ok(TC_ACT_OK);
        }
        _ => return Ok(TC_ACT_OK),
    }
    match new_flow(&mut p, from_pod as u32) {
        TRACKED => {
            known_flow(ctx, &mut p);
            Ok(TC_ACT_OK)
        }
        REFUSE if !icmp::budget_allows() => Ok(drop(C_DROP_ICMP_RATE)),
        REFUSE if p.v6 => Ok(REFUSE_V6),
        REFUSE => Ok(REFUSE_V4),
        v => Ok(v),
    }
}

/// Replies of SNAT'd flows get their client back; known flows their
/// backend. 0 when the packet belongs to no known flow (or its backend
/// is gone: a miss, never a drop). Each step of the ingress path is its own
/// function so their stack frames never add up past the verifier's limit.
#[inline(never)]
fn known_flow(ctx: &TcContext, p: &mut Pkt) -> u32 {
    let rk = conntrack::key(p, CT_RSNAT);
    if conntrack::may_be_snat_reply(p)
        && let Some(v) = conntrack::lookup(&rk)
    {
        conntrack::touch(&rk, &v, p.tcp_flags);
        let snat_port = p.dport;
        if rewrite_dst(ctx, p, v.addr, v.port).is_ok() {
            count(C_TC_RSNAT);
            // The flow's own port as source until egress, where it keys
            // the flow's reverse entry.
            if v.flags & CT_F_PORT_KEYED != 0 {
                let _ = nat::set_port(ctx, p, Side::Src, snat_port);
            }
        }
        return 1;
    }
    let fk = conntrack::key(p, CT_FWD);
    if let Some(v) = conntrack::lookup(&fk) {
        if backend_is(v.backend_id, &v.addr, v.port, p) {
            // Sibling calls, not nested: their frames never add up.
            let stale = match stale_flow(p, &fk) {
                CHECK_SNAT => snat_partners_missing(p, v.addr, v.port, v.snat_port.0 as u32),
                s => s,
            };
            if stale != 0 {
                return RETRACK;
            }
            conntrack::touch(&fk, &v, p.tcp_flags);
            if rewrite_dst(ctx, p, v.addr, v.port).is_ok() {
                count(C_TC_DNAT);
                // An SNAT'd flow carries its own port to egress, where it
                // keys the flow's SNAT entry.
                if v.snat_port.0 != 0 {
                    let _ = nat::set_port(ctx, p, Side::Src, v.snat_port);
                }
            }
            return 1;
        }
        count(C_CT_STALE_BACKEND);
    }
    0
}

/// Verdict of `new_flow`: answer with ICMP port unreachable.
const REFUSE: i32 = -1;
/// Verdict of `new_flow`: the flow's entries are made; the known-flow path
/// translates the packet (in the caller's frame, not under this one's).
const TRACKED: i32 = -2;

/// A packet to a frontend with no conntrack entry: pick a backend, create
/// the entries, DNAT. Not inlined, so its keys get a stack frame of their
/// own, apart from the ICMP builder's.
#[inline(never)]
fn new_flow(p: &mut Pkt, from_pod: u32) -> i32 {
    // Non-inlined functions return plain integers: a Result would come back
    // through a pointer into the caller's stack, which the verifier refuses.
    match try_new_flow(p, from_pod) {
        Ok(v) => v,
        Err(_) => TC_ACT_OK,
    }
}

#[inline(always)]
fn try_new_flow(p: &mut Pkt, from_pod: u32) -> Result<i32, i64> {
    // Flows start at a datagram's first fragment, never at a later one.
    if p.frag == crate::packet::FRAG_LATER {
        return Ok(TC_ACT_OK);
    }
    let mut c = Choice::default();
    let verdict = choose(p, from_pod, &mut c);
    if let Some(r) = choose::drop_reason(verdict) {
        return Ok(drop(r));
    }
    match verdict {
        CHOSEN => {}
        NOT_EXTERNAL => return Ok(TC_ACT_OK),
        NO_ENDPOINTS => {
            // Refuse what opens a flow (a TCP SYN, any UDP datagram) at once.
            let syn = p.proto == PROTO_TCP && p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
            if syn || p.proto == PROTO_UDP {
                return Ok(REFUSE);
            }
            return Ok(drop(C_DROP_NO_BACKEND));
        }
        _ => return Ok(drop(lb_common::C_DROP_BACKEND_MISSING)),
    }
    let t = track(p, &c.backend, c.backend_id, 0);
    if t < 0 {
        return Ok(drop(untracked(t)));
    }
    count(C_CT_CREATE);
    Ok(TRACKED)
}

/// The forward entry's backend still takes this packet: it exists with the
/// same address, and is usable, or draining (listed in an EndpointSlice,
/// in no slot) while the packet belongs to an established TCP flow. A
/// SYN (a new connection, on a reused tuple too) or a UDP datagram to a
/// draining backend is a miss: re-balanced, as kube-proxy's new flows are.
#[inline(always)]
fn backend_is(id: u32, addr: &NetAddr, port: BeU16, p: &Pkt) -> bool {
    // SAFETY: read at once, never held.
    match unsafe { LB_BACKENDS_V1.get(id) } {
        Some(b) => {
            b.addr == *addr && b.port == port && (b.flags & BACKEND_DRAINING == 0 || drains(p))
        }
        None => false,
    }
}

#[inline(always)]
fn rewrite_dst(ctx: &TcContext, p: &mut Pkt, addr: NetAddr, port: BeU16) -> Result<(), i64> {
    nat::set_addr(ctx, p, Side::Dst, addr)?;
    nat::set_port(ctx, p, Side::Dst, port)
}
