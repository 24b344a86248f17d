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
    AFF_CLIENT, BACKEND_DRAINING, BeU16, C_CT_CREATE, C_CT_STALE_BACKEND, C_DROP_ICMP_RATE,
    C_DROP_NO_BACKEND, C_DROP_NO_LOCAL, C_DROP_SNAT_EXHAUSTED, C_DROP_SOURCE_RANGE, C_DROP_SPOOFED,
    C_ICMP_UNREACH, C_PASS_UNPARSED, C_TC_DNAT, C_TC_REVDNAT, C_TC_RSNAT, C_TC_SNAT,
    CONFIG_HAS_IP4, CONFIG_HAS_IP6, CT_F_PORT_KEYED, CT_FWD, CT_REV, CT_RSNAT, CT_SNAT, NetAddr,
    PROTO_TCP, PROTO_UDP, SCOPE_EXTERNAL, SCOPE_INTERNAL, SRC_RANGE_FRONT_BITS, SVC_FLAG_EXT_LOCAL,
    SVC_FLAG_EXTERNAL, SVC_FLAG_SOURCE_RANGES, ServiceKey, SrcRangeData, TCP_ACK, TCP_SYN,
};

use aya_ebpf::maps::lpm_trie::Key;

use crate::{
    affinity, conntrack,
    flow::{CHECK_SNAT, RETRACK, retrack, snat_partners_missing, stale_flow, track},
    icmp, maglev,
    maps::{
        LB_BACKENDS_V1, LB_CONFIG_V1, LB_POL_EP_V1, LB_SERVICES_V1, LB_SRCRANGE_V1, count, drop,
    },
    nat::{self, Side},
    packet::{self, Pkt},
};

#[inline(always)]
fn mix(h: u32, v: u32) -> u32 {
    (h ^ v).wrapping_mul(0x0100_0193).rotate_left(13)
}

/// A hash of the client's 5-tuple to the frontend.
#[inline(always)]
pub(crate) fn flow_hash(p: &Pkt) -> u32 {
    let mut h = 0x811c_9dc5u32;
    let mut i = 0;
    while i < 4 {
        h = mix(h, p.saddr.0[i]);
        h = mix(h, p.daddr.0[i]);
        i += 1;
    }
    h = mix(h, ((p.sport.0 as u32) << 16) | p.dport.0 as u32);
    mix(h, p.proto as u32)
}

#[inline(always)]
pub fn node_addr(v6: bool) -> Option<NetAddr> {
    let c = LB_CONFIG_V1.get(0)?;
    match v6 {
        true if c.flags & CONFIG_HAS_IP6 != 0 => Some(c.node_ip6),
        false if c.flags & CONFIG_HAS_IP4 != 0 => Some(c.node_ip4),
        _ => None,
    }
}

/// `from_pod`: the program runs on a pod interface (the pod's egress),
/// not on an external device.
pub fn ingress(ctx: &TcContext, from_pod: bool) -> i32 {
    match try_ingress(ctx, from_pod) {
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
            if retrack(&p) != 0 {
                return Ok(drop(C_DROP_SNAT_EXHAUSTED));
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
        REFUSE => {
            count(C_ICMP_UNREACH);
            Ok(icmp::port_unreachable(ctx, &p))
        }
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
    if let Some(v) = conntrack::lookup(&rk) {
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

/// 1 when the client is inside the frontend's loadBalancerSourceRanges.
/// Not inlined (stack).
#[inline(never)]
fn source_allowed(p: &Pkt) -> u32 {
    let key = Key::new(
        SRC_RANGE_FRONT_BITS + 128,
        SrcRangeData {
            front: p.daddr,
            port: p.dport,
            proto: p.proto,
            _pad: 0,
            client: p.saddr,
        },
    );
    LB_SRCRANGE_V1.get(&key).is_some() as u32
}

/// The slot a new flow takes: the client's remembered one under
/// sessionAffinity, else a hash of its 5-tuple. Not inlined (stack).
#[inline(never)]
fn pick_slot(p: &Pkt, skey: &ServiceKey, fe: &lb_common::ServiceValue) -> u32 {
    if fe.affinity_timeout > 0 {
        let aff = affinity::key(p.saddr, fe.service_id, AFF_CLIENT);
        if let Some(s) = affinity::lookup(&aff, skey, fe) {
            return s as u32;
        }
    }
    // A zero count never gets here; checked again so no division can trap.
    let n = fe.count as u32;
    if n == 0 {
        return 1;
    }
    let h = flow_hash(p);
    let s = maglev::slot(fe.service_id, h, n);
    if s != 0 {
        return s;
    }
    (h % n) + 1
}

#[inline(never)]
fn remember_client(p: &Pkt, service_id: u32, slot: u32, backend_id: u32) -> i32 {
    affinity::remember(
        &affinity::key(p.saddr, service_id, AFF_CLIENT),
        slot as u16,
        backend_id,
    );
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
    match choose(p, &mut c) {
        CHOSEN if from_pod == 0 && is_local_pod(&p.saddr) != 0 => {
            // From outside, with a source only a pod of this node may use:
            // spoofed, and it must not get the hairpin SNAT a pod would.
            return Ok(drop(C_DROP_SPOOFED));
        }
        CHOSEN => {}
        NOT_EXTERNAL => return Ok(TC_ACT_OK),
        DROP_NO_LOCAL => return Ok(drop(C_DROP_NO_LOCAL)),
        DROP_SOURCE_RANGE => return Ok(drop(C_DROP_SOURCE_RANGE)),
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
    if track(p, &c.backend, c.backend_id, 0) < 0 {
        return Ok(drop(C_DROP_SNAT_EXHAUSTED));
    }
    count(C_CT_CREATE);
    Ok(TRACKED)
}

/// What `choose` picked.
#[derive(Default)]
pub struct Choice {
    pub backend: lb_common::Backend,
    pub backend_id: u32,
}

/// 1 when `addr` is a pod of this node. Not inlined (stack).
#[inline(never)]
pub fn is_local_pod(addr: &NetAddr) -> u32 {
    // SAFETY: only presence is read.
    unsafe { LB_POL_EP_V1.get(addr) }.is_some() as u32
}

/// Verdicts of `choose`.
pub const CHOSEN: i32 = 0;
/// Not an external frontend: not ours to translate.
pub const NOT_EXTERNAL: i32 = 1;
/// externalTrafficPolicy: Local without an endpoint here: drop, not reject.
pub const DROP_NO_LOCAL: i32 = 2;
pub const DROP_SOURCE_RANGE: i32 = 3;
/// The Service has no endpoint at all: refuse.
pub const NO_ENDPOINTS: i32 = 4;
/// A slot or backend vanished mid-update, or the family does not match.
pub const NO_BACKEND: i32 = 5;

/// 1 when the packet is addressed to a frontend reachable from outside.
/// Not inlined (stack).
#[inline(never)]
pub fn is_external_frontend(p: &Pkt) -> u32 {
    let key = ServiceKey::frontend(p.daddr, p.dport, p.proto, SCOPE_INTERNAL);
    // SAFETY: only a flag is read, at once.
    unsafe { LB_SERVICES_V1.get(&key) }.is_some_and(|fe| fe.flags & SVC_FLAG_EXTERNAL != 0) as u32
}

/// The backend a packet opening a flow to an external frontend gets —
/// the one decision TC and XDP share. Not inlined (stack); writes `out`.
#[inline(never)]
pub fn choose(p: &Pkt, out: &mut Choice) -> i32 {
    let mut skey = ServiceKey::frontend(p.daddr, p.dport, p.proto, SCOPE_INTERNAL);
    // SAFETY: copied out at once.
    let Some(mut fe) = (unsafe { LB_SERVICES_V1.get(&skey) }).copied() else {
        return NOT_EXTERNAL;
    };
    if fe.flags & SVC_FLAG_EXTERNAL == 0 {
        return NOT_EXTERNAL;
    }
    // The ranges hold under every traffic policy: checked on the frontend
    // itself, before externalTrafficPolicy: Local picks its node-local set.
    if fe.flags & SVC_FLAG_SOURCE_RANGES != 0 && source_allowed(p) == 0 {
        return DROP_SOURCE_RANGE;
    }
    if fe.flags & SVC_FLAG_EXT_LOCAL != 0 {
        // This node's endpoints only, the client's address kept.
        skey.scope = SCOPE_EXTERNAL;
        // SAFETY: copied out at once.
        match unsafe { LB_SERVICES_V1.get(&skey) }.copied() {
            Some(v) if v.count > 0 => fe = v,
            _ => return DROP_NO_LOCAL,
        }
    }
    if fe.count == 0 {
        return NO_ENDPOINTS;
    }
    let slot = pick_slot(p, &skey, &fe) as u16;
    // SAFETY: copied out at once.
    let Some(sv) = (unsafe { LB_SERVICES_V1.get(&skey.with_slot(slot)) }).copied() else {
        return NO_BACKEND;
    };
    // SAFETY: copied out at once.
    let Some(b) = (unsafe { LB_BACKENDS_V1.get(&sv.backend_id) }).copied() else {
        return NO_BACKEND;
    };
    if b.addr.is_v4() == p.v6 {
        return NO_BACKEND;
    }
    if fe.affinity_timeout > 0 {
        remember_client(p, fe.service_id, slot as u32, sv.backend_id);
    }
    out.backend = b;
    out.backend_id = sv.backend_id;
    CHOSEN
}

/// The forward entry's backend still takes this packet: it exists with the
/// same address, and is usable, or draining (listed in an EndpointSlice,
/// in no slot) while the packet belongs to an established TCP flow. A
/// SYN (a new connection, on a reused tuple too) or a UDP datagram to a
/// draining backend is a miss: re-balanced, as kube-proxy's new flows are.
#[inline(always)]
fn backend_is(id: u32, addr: &NetAddr, port: BeU16, p: &Pkt) -> bool {
    // SAFETY: read at once, never held.
    match unsafe { LB_BACKENDS_V1.get(&id) } {
        Some(b) => {
            b.addr == *addr && b.port == port && (b.flags & BACKEND_DRAINING == 0 || drains(p))
        }
        None => false,
    }
}

/// A packet that may go on to a draining backend: TCP, anything but a
/// bare SYN.
#[inline(always)]
pub(crate) fn drains(p: &Pkt) -> bool {
    p.proto == PROTO_TCP && p.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN
}

#[inline(always)]
pub(crate) fn is_draining(id: u32) -> bool {
    // SAFETY: one byte read at once, never held.
    unsafe { LB_BACKENDS_V1.get(&id) }.is_some_and(|b| b.flags & BACKEND_DRAINING != 0)
}

#[inline(always)]
fn rewrite_dst(ctx: &TcContext, p: &mut Pkt, addr: NetAddr, port: BeU16) -> Result<(), i64> {
    nat::set_addr(ctx, p, Side::Dst, addr)?;
    nat::set_port(ctx, p, Side::Dst, port)
}
