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

use aya_ebpf::{bindings::TC_ACT_OK, bindings::TC_ACT_SHOT, programs::TcContext};
use lb_common::{
    BACKEND_LOCAL, BeU16, C_CT_CREATE, C_CT_STALE_BACKEND, C_DROP_NO_BACKEND, C_PASS_UNPARSED,
    C_TC_DNAT, C_TC_REVDNAT, C_TC_RSNAT, C_TC_SNAT, CONFIG_HAS_IP4, CONFIG_HAS_IP6, CT_FWD, CT_REV,
    CT_RSNAT, CT_SNAT, CtKey, NetAddr, SCOPE_INTERNAL, SVC_FLAG_EXTERNAL, ServiceKey,
};

use crate::{
    conntrack,
    maps::{LB_BACKENDS_V1, LB_CONFIG_V1, LB_SERVICES_V1, count},
    nat::{self, Side},
    packet::{self, Pkt},
};

#[inline(always)]
fn mix(h: u32, v: u32) -> u32 {
    (h ^ v).wrapping_mul(0x0100_0193).rotate_left(13)
}

/// A hash of the client's 5-tuple to the frontend.
#[inline(always)]
fn flow_hash(p: &Pkt) -> u32 {
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
fn node_addr(v6: bool) -> Option<NetAddr> {
    let c = LB_CONFIG_V1.get(0)?;
    match v6 {
        true if c.flags & CONFIG_HAS_IP6 != 0 => Some(c.node_ip6),
        false if c.flags & CONFIG_HAS_IP4 != 0 => Some(c.node_ip4),
        _ => None,
    }
}

pub fn ingress(ctx: &TcContext) -> i32 {
    match try_ingress(ctx) {
        Ok(v) => v,
        Err(_) => TC_ACT_OK,
    }
}

pub fn egress(ctx: &TcContext) -> i32 {
    let Some(mut p) = packet::parse(ctx) else {
        count(C_PASS_UNPARSED);
        return TC_ACT_OK;
    };
    let k = conntrack::key(&p, CT_SNAT);
    if let Some(v) = conntrack::lookup(&k) {
        conntrack::touch(&k, &v);
        if rewrite_src(ctx, &mut p, v.addr, v.port).is_ok() {
            count(C_TC_SNAT);
        }
        return TC_ACT_OK;
    }
    let k = conntrack::key(&p, CT_REV);
    if let Some(v) = conntrack::lookup(&k) {
        conntrack::touch(&k, &v);
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

fn try_ingress(ctx: &TcContext) -> Result<i32, i64> {
    let Some(mut p) = packet::parse(ctx) else {
        count(C_PASS_UNPARSED);
        return Ok(TC_ACT_OK);
    };
    let rk = conntrack::key(&p, CT_RSNAT);
    if let Some(v) = conntrack::lookup(&rk) {
        conntrack::touch(&rk, &v);
        if rewrite_dst(ctx, &mut p, v.addr, v.port).is_ok() {
            count(C_TC_RSNAT);
        }
        return Ok(TC_ACT_OK);
    }
    let fk = conntrack::key(&p, CT_FWD);
    if let Some(v) = conntrack::lookup(&fk) {
        // A hit whose backend is gone is a miss: reselect below.
        if backend_is(v.backend_id, &v.addr, v.port) {
            conntrack::touch(&fk, &v);
            if rewrite_dst(ctx, &mut p, v.addr, v.port).is_ok() {
                count(C_TC_DNAT);
            }
            return Ok(TC_ACT_OK);
        }
        count(C_CT_STALE_BACKEND);
    }
    let skey = ServiceKey::frontend(p.daddr, p.dport, p.proto, SCOPE_INTERNAL);
    // SAFETY: copied out at once.
    let Some(fe) = (unsafe { LB_SERVICES_V1.get(&skey) }).copied() else {
        return Ok(TC_ACT_OK);
    };
    if fe.flags & SVC_FLAG_EXTERNAL == 0 {
        return Ok(TC_ACT_OK);
    }
    if fe.count == 0 {
        count(C_DROP_NO_BACKEND);
        return Ok(TC_ACT_SHOT);
    }
    let slot = (flow_hash(&p) % fe.count as u32) as u16 + 1;
    // SAFETY: copied out at once.
    let Some(sv) = (unsafe { LB_SERVICES_V1.get(&skey.with_slot(slot)) }).copied() else {
        count(C_DROP_NO_BACKEND);
        return Ok(TC_ACT_SHOT);
    };
    // SAFETY: copied out at once.
    let Some(b) = (unsafe { LB_BACKENDS_V1.get(&sv.backend_id) }).copied() else {
        count(C_DROP_NO_BACKEND);
        return Ok(TC_ACT_SHOT);
    };
    if b.addr.is_v4() == p.v6 {
        return Ok(TC_ACT_SHOT);
    }
    let (client, cport, front, fport) = (p.saddr, p.sport, p.daddr, p.dport);
    if b.flags & BACKEND_LOCAL == 0 {
        // Another node's backend: replies must come back through here, so
        // the source becomes this node's address (at egress).
        let Some(node) = node_addr(p.v6) else {
            return Ok(TC_ACT_SHOT);
        };
        let sport = snat_port(&b.addr, b.port, node, client, cport, p.proto, flow_hash(&p));
        let snat = CtKey {
            saddr: client,
            daddr: b.addr,
            sport: cport,
            dport: b.port,
            proto: p.proto,
            kind: CT_SNAT,
            _pad: [0; 2],
        };
        let rsnat = CtKey {
            saddr: b.addr,
            daddr: node,
            sport: b.port,
            dport: sport,
            proto: p.proto,
            kind: CT_RSNAT,
            _pad: [0; 2],
        };
        conntrack::insert(&rsnat, &conntrack::value(client, cport, 0, 0));
        conntrack::insert(&snat, &conntrack::value(node, sport, 0, 0));
    }
    let rev = CtKey {
        saddr: b.addr,
        daddr: client,
        sport: b.port,
        dport: cport,
        proto: p.proto,
        kind: CT_REV,
        _pad: [0; 2],
    };
    conntrack::insert(&rev, &conntrack::value(front, fport, 0, 0));
    conntrack::insert(
        &fk,
        &conntrack::value(b.addr, b.port, sv.backend_id, b.flags),
    );
    count(C_CT_CREATE);
    if rewrite_dst(ctx, &mut p, b.addr, b.port).is_ok() {
        count(C_TC_DNAT);
    }
    Ok(TC_ACT_OK)
}

#[inline(always)]
fn backend_is(id: u32, addr: &NetAddr, port: BeU16) -> bool {
    // SAFETY: read at once, never held.
    match unsafe { LB_BACKENDS_V1.get(&id) } {
        Some(b) => b.addr == *addr && b.port == port,
        None => false,
    }
}

#[inline(always)]
fn rewrite_dst(ctx: &TcContext, p: &mut Pkt, addr: NetAddr, port: BeU16) -> Result<(), i64> {
    nat::set_addr(ctx, p, Side::Dst, addr)?;
    nat::set_port(ctx, p, Side::Dst, port)
}

/// The client's own port unless another client already holds it towards
/// this backend; then a few hashed tries in 32768..61000 (bounded).
#[inline(always)]
fn snat_port(
    baddr: &NetAddr,
    bport: BeU16,
    node: NetAddr,
    client: NetAddr,
    cport: BeU16,
    proto: u8,
    h: u32,
) -> BeU16 {
    let mut cand = cport;
    let mut i = 0u32;
    while i < 4 {
        let k = CtKey {
            saddr: *baddr,
            daddr: node,
            sport: bport,
            dport: cand,
            proto,
            kind: CT_RSNAT,
            _pad: [0; 2],
        };
        match conntrack::lookup(&k) {
            None => return cand,
            Some(v) if v.addr == client && v.port == cport => return cand,
            Some(_) => {}
        }
        cand = BeU16::from_host(32768 + (mix(h, i) % 28232) as u16);
        i += 1;
    }
    cand
}
