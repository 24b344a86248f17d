//! A packet-path flow's conntrack entries, made together and checked
//! together: forward and reverse, and for an SNAT'd flow (a backend on
//! another node, a pod reaching itself, or a clash with another frontend's
//! tuple) the SNAT pair with a node port of its own (see `lb_common::CT_FWD`).
//! A forward hit whose partners are gone, or a reused tuple, makes them
//! again (`stale_flow`, `retrack`).

use lb_common::{
    BACKEND_LOCAL, BeU16, C_CT_RESTORED, C_DROP_NO_NODE_ADDR, C_DROP_SNAT_EXHAUSTED, CT_F_CLOSING,
    CT_F_ESTABLISHED, CT_FWD, CT_REV, CT_RSNAT, CT_SNAT, CtKey, NetAddr, PROTO_TCP, Reason,
    TCP_ACK, TCP_SYN,
};

use crate::{
    choose::{drains, flow_hash, is_draining},
    conntrack,
    maps::{count, node_addr},
    packet::Pkt,
};

/// A new connection on a reused tuple, or a flow that lost an entry (LRU
/// eviction): all its entries are made again, fresh, towards the backend
/// it had, so its replies find their way back (the caller then takes the
/// known-flow path again to DNAT). 0, or `track`'s failure (negative). Called from `try_ingress`, not from `known_flow`, and without the
/// rewrite, so the stack frames never add up past the verifier's limit.
#[inline(never)]
pub(crate) fn retrack(p: &Pkt) -> i32 {
    let fk = conntrack::key(p, CT_FWD);
    let Some(v) = conntrack::lookup(&fk) else {
        return 0;
    };
    let b = lb_common::Backend {
        addr: v.addr,
        port: v.port,
        proto: p.proto,
        flags: v.flags & !(CT_F_CLOSING | CT_F_ESTABLISHED),
    };
    // A flow SNAT'd for a clash stays SNAT'd: its backend knows it by the
    // node's tuple.
    let t = track(p, &b, v.backend_id, (v.snat_port.0 != 0) as u32);
    if t < 0 {
        return t;
    }
    count(C_CT_RESTORED);
    0
}

/// `known_flow`: the flow's entries must be made again (`retrack`).
pub(crate) const RETRACK: u32 = 2;

/// 1 when a forward hit (its entry `fk`) must make its flow's entries
/// again: a bare SYN on an entry whose connection got past its handshake
/// or closed (the tuple is reused: the new connection starts fresh), or a
/// partner entry the replies need is gone. Also 1 for a SYN or a UDP
/// datagram whose backend is draining, so that XDP passes it on: TC's
/// `backend_is` has already made that a miss (re-balanced) before asking.
/// Not inlined: its keys get a frame of their own. (It takes the key, not
/// the caller's copy of the value: LLVM's BPF backend fails on the latter.)
#[inline(never)]
pub fn stale_flow(p: &Pkt, fk: &CtKey) -> u32 {
    let Some(v) = conntrack::lookup(fk) else {
        return 0;
    };
    // A SYN or a datagram to a draining backend is TC's to re-balance
    // (XDP passes it on; TC's own check comes before this one).
    if !drains(p) && is_draining(v.backend_id) {
        return 1;
    }
    let syn = p.proto == PROTO_TCP && p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    if syn && v.flags & (CT_F_CLOSING | CT_F_ESTABLISHED) != 0 {
        return 1;
    }
    if v.snat_port.0 == 0 {
        if v.flags & BACKEND_LOCAL == 0 || v.addr == p.saddr {
            // An earlier agent's SNAT'd flow: made again in today's form
            // (it finds the SNAT port it held).
            return 1;
        }
        let rev = conntrack::tuple(v.addr, v.port, p.saddr, p.sport, p.proto, CT_REV);
        return conntrack::lookup(&rev).is_none() as u32;
    }
    CHECK_SNAT
}

/// `stale_flow`: an SNAT'd flow, whose partners `snat_partners_missing`
/// checks (called beside it, so the two frames never stack).
pub const CHECK_SNAT: u32 = 2;

/// 1 when an SNAT'd flow lost its reverse, SNAT or reverse SNAT entry
/// (the last only counts while it names this flow's client). Not inlined:
/// its keys get a frame of their own.
#[inline(never)]
pub(crate) fn snat_partners_missing(
    p: &Pkt,
    backend: NetAddr,
    bport: BeU16,
    snat_port: u32,
) -> u32 {
    let sp = BeU16(snat_port as u16);
    let Some(node) = node_addr(p.v6) else {
        return 1;
    };
    // One key variable for the three lookups: one stack slot.
    let mut k = conntrack::tuple(backend, sp, p.saddr, p.sport, p.proto, CT_REV);
    if conntrack::lookup(&k).is_none() {
        return 1;
    }
    k = conntrack::tuple(p.saddr, sp, backend, bport, p.proto, CT_SNAT);
    if conntrack::lookup(&k).is_none() {
        return 1;
    }
    k = conntrack::tuple(backend, bport, node, sp, p.proto, CT_RSNAT);
    match conntrack::lookup(&k) {
        Some(r) if r.addr == p.saddr && r.port == p.sport => 0,
        _ => 1,
    }
}

/// Creates a new flow's conntrack entries: forward and reverse, and the
/// SNAT pair when the backend is on another node, is the client itself,
/// or would see the same tuple from another frontend's flow (or when
/// `force_snat`). Returns the SNAT port (raw, network order) when the flow
/// is SNAT'd, 0 when not, `NO_SNAT_PORT` or `NO_NODE_ADDR` when it cannot
/// be. Not inlined (stack).
#[inline(never)]
pub fn track(p: &Pkt, b: &lb_common::Backend, backend_id: u32, force_snat: u32) -> i32 {
    let (client, cport) = (p.saddr, p.sport);
    // A pod picked as the backend of its own connection (hairpin on a pod
    // interface) would answer itself inside its namespace: it must see
    // another source, so it is SNAT'd as a remote backend's flow is.
    let snat = force_snat != 0
        || b.flags & BACKEND_LOCAL == 0
        || b.addr == client
        || tuple_taken(p, b.addr, b.port) != 0;
    // One key variable for every entry: one stack slot, not five.
    let mut k = conntrack::tuple(b.addr, b.port, client, cport, p.proto, CT_REV);
    if !snat {
        conntrack::put(&k, &p.daddr, p.dport.0 as u32, 0, 0);
        k = conntrack::key(p, CT_FWD);
        conntrack::put(&k, &b.addr, b.port.0 as u32, backend_id, b.flags as u32);
        return 0;
    }
    // Replies must come back through here, so the source becomes this
    // node's address (at egress).
    let Some(node) = node_addr(p.v6) else {
        return NO_NODE_ADDR;
    };
    k = conntrack::tuple(b.addr, b.port, node, cport, p.proto, CT_RSNAT);
    match snat_port(&mut k, &client, cport.0 as u32, flow_hash(p)) {
        0 => count(lb_common::C_CT_ENTRY_NEW),
        SNAT_PORT_HELD => {}
        _ => return NO_SNAT_PORT,
    }
    let sport = k.dport;
    k = conntrack::tuple(client, sport, b.addr, b.port, p.proto, CT_SNAT);
    conntrack::put(&k, &node, sport.0 as u32, 0, 0);
    k = conntrack::tuple(b.addr, sport, client, cport, p.proto, CT_REV);
    conntrack::put(&k, &p.daddr, p.dport.0 as u32, 0, 0);
    k = conntrack::key(p, CT_FWD);
    let flags_snat = b.flags as u32 | ((sport.0 as u32) << 16);
    conntrack::put(&k, &b.addr, b.port.0 as u32, backend_id, flags_snat);
    sport.0 as i32
}

/// `track`: no SNAT port towards the backend was free.
pub const NO_SNAT_PORT: i32 = -1;
/// `track`: the flow needs SNAT, and this node has no address of its family.
pub const NO_NODE_ADDR: i32 = -2;

/// The reason a flow `track` failed for is dropped under.
#[inline(always)]
pub fn untracked(t: i32) -> Reason {
    if t == NO_NODE_ADDR {
        C_DROP_NO_NODE_ADDR
    } else {
        C_DROP_SNAT_EXHAUSTED
    }
}

/// 1 when another frontend's flow from this client port already reaches
/// `backend:bport` unchanged: the backend would see one tuple for two
/// connections. Not inlined (stack).
#[inline(never)]
fn tuple_taken(p: &Pkt, backend: NetAddr, bport: BeU16) -> u32 {
    let mut k = conntrack::tuple(backend, bport, p.saddr, p.sport, p.proto, CT_REV);
    let Some(r) = conntrack::lookup(&k) else {
        return 0;
    };
    if r.addr == p.daddr && r.port == p.dport {
        return 0;
    }
    // The other flow is over (a FIN or RST seen, or its forward entry
    // gone): a new connection may take its tuple, as netfilter lets a new
    // SYN take a closing connection's.
    k = conntrack::tuple(p.saddr, p.sport, r.addr, r.port, p.proto, CT_FWD);
    match conntrack::lookup(&k) {
        Some(f) => (f.flags & CT_F_CLOSING == 0 && r.flags & CT_F_CLOSING == 0) as u32,
        None => 0,
    }
}

/// Claims a node port for a flow SNAT'd towards `k.saddr:k.sport` (an
/// RSNAT key): its reverse entry (port -> client) is inserted only where
/// none exists (BPF_NOEXIST, so two CPUs can never hand one port to two
/// clients). Ports come from the SNAT ranges (outside the node's
/// ephemeral range and the NodePort range, so no socket of the node holds
/// the same tuple), probed linearly from a point hashed from the flow, so
/// a client port that comes round again finds the port it held. Sets
/// `k.dport`; 0 when it claimed a new port, SNAT_PORT_HELD when the client held it, 1 when every try was taken (the caller drops,
/// counted). Not inlined: its key copy lives in its own stack frame.
#[inline(never)]
fn snat_port(k: &mut CtKey, client: &NetAddr, cport: u32, h: u32) -> u32 {
    let start = fmix(h) % SNAT_PORTS;
    let mut i = 0u32;
    while i < SNAT_TRIES {
        k.dport = BeU16::from_host(snat_port_at((start + i) % SNAT_PORTS) as u16);
        // While a conntrack map is carried, the earlier agent's programs
        // may have handed this port out after the copy: their entry comes
        // over first, so the claim below finds the port taken.
        conntrack::adopt_carried(k);
        if conntrack::put_new(k, client, cport) == 0 {
            return 0;
        }
        match conntrack::lookup(k) {
            Some(v) if v.addr == *client && v.port.0 as u32 == cport => return SNAT_PORT_HELD,
            _ => {}
        }
        i += 1;
    }
    1
}

/// `snat_port`: the flow's client already held the port (its entry stays).
const SNAT_PORT_HELD: u32 = 2;

/// The `n`th port of the SNAT ranges.
#[inline(always)]
fn snat_port_at(n: u32) -> u32 {
    let low = lb_common::SNAT_LOW_MAX as u32 - lb_common::SNAT_LOW_MIN as u32 + 1;
    if n < low {
        lb_common::SNAT_LOW_MIN as u32 + n
    } else {
        lb_common::SNAT_PORT_MIN as u32 + (n - low)
    }
}

/// A full-avalanche 32-bit mix (murmur3's finalizer): nearby flows start
/// their probes far apart.
#[inline(always)]
fn fmix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

const SNAT_TRIES: u32 = 32;

const SNAT_PORTS: u32 = (lb_common::SNAT_LOW_MAX as u32 - lb_common::SNAT_LOW_MIN as u32 + 1)
    + (lb_common::SNAT_PORT_MAX as u32 - lb_common::SNAT_PORT_MIN as u32 + 1);
