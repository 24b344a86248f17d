//! sessionAffinity: ClientIP. A client keeps its backend until
//! `timeoutSeconds` pass without a new connection; a remembered backend no
//! longer in its slot is a miss (reselect), never a drop.

use lb_common::{AffinityKey, AffinityValue, NetAddr, ServiceKey, ServiceValue};

use crate::{
    carried,
    conntrack::now_s,
    maps::{LB_AFFINITY_CARRIED, LB_AFFINITY_V1, LB_SERVICES_V1},
};

/// The remembered slot for `client`, if still valid.
#[inline(always)]
pub fn lookup(key: &AffinityKey, front: &ServiceKey, fe: &ServiceValue) -> Option<u16> {
    let v = get(key).or_else(|| {
        if !(carried::open(&LB_AFFINITY_CARRIED) && adopt_carried(key)) {
            return None;
        }
        get(key)
    })?;
    if now_s().wrapping_sub(v.last_used_s) > fe.affinity_timeout || v.slot == 0 || v.slot > fe.count
    {
        return None;
    }
    // SAFETY: copied out at once.
    let slot = unsafe { LB_SERVICES_V1.get(front.with_slot(v.slot)) }.copied()?;
    (slot.backend_id == v.backend_id).then_some(v.slot)
}

#[inline(always)]
fn get(key: &AffinityKey) -> Option<AffinityValue> {
    // SAFETY: copied out at once.
    unsafe { LB_AFFINITY_V1.get(key) }.copied()
}

/// On a miss while the agent carries an affinity map (`carried`): a client
/// the earlier agent's programs remembered since the agent's first copy
/// keeps its backend. Not inlined: a miss during a carry is the rare path.
#[inline(never)]
fn adopt_carried(key: &AffinityKey) -> bool {
    carried::adopt!(LB_AFFINITY_CARRIED, LB_AFFINITY_V1, key)
}

/// Remembers the client's backend, with the Service's timeout (the agent's
/// sweep removes the entry once that passed).
#[inline(always)]
pub fn remember(key: &AffinityKey, slot: u16, backend_id: u32, timeout_s: u32) {
    let v = AffinityValue {
        backend_id,
        slot,
        _pad: 0,
        last_used_s: now_s(),
        timeout_s,
    };
    let _ = LB_AFFINITY_V1.insert(key, v, 0);
}

#[inline(always)]
pub fn key(client: NetAddr, service_id: u32, kind: u32) -> AffinityKey {
    AffinityKey {
        client,
        service_id,
        kind,
    }
}
