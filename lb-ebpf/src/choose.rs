//! The decision TC and XDP share for a packet opening a flow to a frontend
//! reachable from outside: whether it is one (`is_external_frontend`),
//! which backend it gets (`choose`: loadBalancerSourceRanges,
//! externalTrafficPolicy: Local, sessionAffinity, Maglev or the flow
//! hash), and which of its outcomes both paths drop (`drop_reason`).
//! Whether a known flow's backend still takes a packet while draining is
//! here too (`drains`, `is_draining`). Making the flow's entries is
//! `flow::track`'s.

use aya_ebpf::maps::lpm_trie::Key;
use lb_common::{
    AFF_CLIENT, BACKEND_DRAINING, C_DROP_NO_LOCAL, C_DROP_SOURCE_RANGE, C_DROP_SPOOFED, NetAddr,
    PROTO_TCP, Reason, SCOPE_EXTERNAL, SCOPE_INTERNAL, SRC_RANGE_FRONT_BITS, SVC_FLAG_EXT_LOCAL,
    SVC_FLAG_EXTERNAL, SVC_FLAG_SOURCE_RANGES, ServiceKey, SrcRangeData, TCP_ACK, TCP_SYN,
};

use crate::{
    affinity, maglev,
    maps::{LB_BACKENDS_V1, LB_POL_EP_V1, LB_SERVICES_V1, LB_SRCRANGE_V1},
    packet::Pkt,
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
fn remember_client(p: &Pkt, fe: &lb_common::ServiceValue, slot: u32, backend_id: u32) -> i32 {
    affinity::remember(
        &affinity::key(p.saddr, fe.service_id, AFF_CLIENT),
        slot as u16,
        backend_id,
        fe.affinity_timeout,
    );
    0
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
/// From outside the node with the source address of one of its pods.
pub const SPOOFED: i32 = 6;

/// 1 when the packet is addressed to a frontend reachable from outside.
/// Not inlined (stack).
#[inline(never)]
pub fn is_external_frontend(p: &Pkt) -> u32 {
    let key = ServiceKey::frontend(p.daddr, p.dport, p.proto, SCOPE_INTERNAL);
    // SAFETY: only a flag is read, at once.
    unsafe { LB_SERVICES_V1.get(key) }.is_some_and(|fe| fe.flags & SVC_FLAG_EXTERNAL != 0) as u32
}

/// The backend a packet opening a flow to an external frontend gets —
/// the one decision TC and XDP share. `from_pod`: the packet left a pod
/// of this node (TC on its interface), whose address it may carry. Not
/// inlined (stack); writes `out`.
#[inline(never)]
pub fn choose(p: &Pkt, from_pod: u32, out: &mut Choice) -> i32 {
    let mut skey = ServiceKey::frontend(p.daddr, p.dport, p.proto, SCOPE_INTERNAL);
    // SAFETY: copied out at once.
    let Some(mut fe) = (unsafe { LB_SERVICES_V1.get(skey) }).copied() else {
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
        match unsafe { LB_SERVICES_V1.get(skey) }.copied() {
            Some(v) if v.count > 0 => fe = v,
            _ => return DROP_NO_LOCAL,
        }
    }
    if fe.count == 0 {
        return NO_ENDPOINTS;
    }
    let slot = pick_slot(p, &skey, &fe) as u16;
    // SAFETY: copied out at once.
    let Some(sv) = (unsafe { LB_SERVICES_V1.get(skey.with_slot(slot)) }).copied() else {
        return NO_BACKEND;
    };
    // SAFETY: copied out at once.
    let Some(b) = (unsafe { LB_BACKENDS_V1.get(sv.backend_id) }).copied() else {
        return NO_BACKEND;
    };
    if b.addr.is_v4() == p.v6 {
        return NO_BACKEND;
    }
    if fe.affinity_timeout > 0 {
        remember_client(p, &fe, slot as u32, sv.backend_id);
    }
    // From outside, with a source only a pod of this node may use:
    // spoofed, and it must not get the hairpin SNAT a pod would.
    if from_pod == 0 && is_local_pod(&p.saddr) != 0 {
        return SPOOFED;
    }
    out.backend = b;
    out.backend_id = sv.backend_id;
    CHOSEN
}

/// The reason TC and XDP alike drop a packet for, by `choose`'s verdict;
/// None for the verdicts each handles its own way (TC refuses or drops
/// what XDP leaves to it).
#[inline(always)]
pub fn drop_reason(verdict: i32) -> Option<Reason> {
    match verdict {
        DROP_NO_LOCAL => Some(C_DROP_NO_LOCAL),
        DROP_SOURCE_RANGE => Some(C_DROP_SOURCE_RANGE),
        SPOOFED => Some(C_DROP_SPOOFED),
        _ => None,
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
    unsafe { LB_BACKENDS_V1.get(id) }.is_some_and(|b| b.flags & BACKEND_DRAINING != 0)
}
