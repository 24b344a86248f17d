//! Service lookup and backend choice: one hash lookup for the frontend, one
//! for the chosen slot, one for the backend. Never a loop over backends.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use lb_common::{
    AFF_NETNS, Backend, BeU16, NetAddr, PROTO_TCP, SCOPE_INTERNAL, SVC_FLAG_ADDR_ONLY,
    SVC_FLAG_INT_LOCAL, SVC_FLAG_SOURCE_RANGES, ServiceKey, ServiceValue,
};

use crate::{
    affinity,
    maps::{LB_BACKENDS_V1, LB_SERVICES_V1},
};

pub enum Lookup {
    /// Not a service address: leave the socket alone.
    NotService,
    /// A service address with no usable backend, or a port no service has.
    Refuse,
    /// internalTrafficPolicy: Local and no endpoint on this node (other
    /// nodes have some): dropped, as kube-proxy drops, not refused.
    Drop,
    Backend {
        backend: Backend,
        frontend: ServiceValue,
    },
}

/// How a connection picks its slot: TCP at random per connection; UDP from
/// the socket cookie, so every datagram of one socket goes to one backend.
#[inline(always)]
fn pick(count: u16, proto: u8, cookie: u64) -> u16 {
    let r = if proto == PROTO_TCP {
        // SAFETY: helper without arguments or memory access.
        unsafe { bpf_get_prandom_u32() }
    } else {
        // Cookies are sequential: mix them so consecutive sockets spread.
        let h = cookie.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (h >> 32) as u32
    };
    (r % count as u32) as u16 + 1
}

#[inline(always)]
pub fn lookup(
    addr: NetAddr,
    port: BeU16,
    proto: u8,
    cookie: u64,
    netns: impl Fn() -> u64,
) -> Lookup {
    let key = ServiceKey::frontend(addr, port, proto, SCOPE_INTERNAL);
    // SAFETY: the agent writes whole values with a map update; the value is
    // copied out at once and never held across another helper call.
    let Some(fe) = (unsafe { LB_SERVICES_V1.get(key) }).copied() else {
        // SAFETY: as above.
        return match unsafe { LB_SERVICES_V1.get(ServiceKey::addr_only(addr)) } {
            Some(v) if v.flags & SVC_FLAG_ADDR_ONLY != 0 => Lookup::Refuse,
            _ => Lookup::NotService,
        };
    };
    if fe.flags & SVC_FLAG_SOURCE_RANGES != 0 {
        // loadBalancerSourceRanges judge the client's address, which a
        // socket does not have yet at connect: the packet path (TC on pod
        // interfaces and external devices) translates and filters these.
        return Lookup::NotService;
    }
    if fe.count == 0 {
        return if fe.flags & SVC_FLAG_INT_LOCAL != 0 {
            Lookup::Drop
        } else {
            Lookup::Refuse
        };
    }
    // Only a Service with ClientIP affinity pays for the netns cookie.
    let aff = (fe.affinity_timeout > 0).then(|| {
        let n = netns();
        affinity::key(
            NetAddr([n as u32, (n >> 32) as u32, 0, 0]),
            fe.service_id,
            AFF_NETNS,
        )
    });
    let remembered = aff.as_ref().and_then(|a| affinity::lookup(a, &key, &fe));
    let slot = remembered.unwrap_or_else(|| pick(fe.count, proto, cookie));
    // SAFETY: as above.
    let Some(slot_value) = (unsafe { LB_SERVICES_V1.get(key.with_slot(slot)) }) else {
        // The agent writes slots before the count that covers them, so this
        // is a race with a removal: nothing usable right now.
        return Lookup::Refuse;
    };
    let backend_id = slot_value.backend_id;
    if let Some(a) = &aff {
        affinity::remember(a, slot, backend_id, fe.affinity_timeout);
    }
    // SAFETY: as above.
    match unsafe { LB_BACKENDS_V1.get(backend_id) } {
        Some(b) => Lookup::Backend {
            backend: *b,
            frontend: fe,
        },
        None => Lookup::Refuse,
    }
}
