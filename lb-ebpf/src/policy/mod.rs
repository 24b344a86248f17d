//! NetworkPolicy at TC on the host side of pod interfaces. The packet
//! leaving the pod (TC ingress there) is the pod's egress, the packet
//! entering it (TC egress) its ingress. Service translation has happened
//! by then (socket hooks before the packet exists; the node's TC ingress
//! for traffic from outside), so the policy sees backend pods.
//!
//! A new flow costs at most five lookups, whatever the number of policies:
//! ipcache (peer -> identity), allow entry for that identity, for any peer,
//! CIDR set of the peer address, allow entry for that set. Allowed flows
//! are remembered in `LB_POL_CT_V1` (its own map, so NAT entries never
//! evict them) with the policy revision; a packet of a flow allowed under
//! an older revision is judged again, so revoked access ends.
//!
//! Here: the decision; `flow` reads the packet's flow tuple.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    maps::lpm_trie::Key,
    programs::TcContext,
};
use lb_common::{
    BeU16, DIR_EGRESS, DIR_INGRESS, EP_F_EGRESS_ISOLATED, EP_F_INGRESS_ISOLATED, ID_ANY, ID_HOST,
    ID_WORLD, IpcacheData, NetAddr, POL_CIDR_FIXED_BITS, POL_EP_ID_MAX, POL_F_ANY_EGRESS,
    POL_F_ANY_INGRESS, POL_REASONS, POLICY_PREFIX_FULL, PROTO_ICMP, PROTO_ICMPV6, PolCidrData,
    PolCtKey, PolCtValue, PolEndpoint, PolReason, PolicyData, PolicyState, TCP_FIN, TCP_RST,
};

use crate::{
    carried,
    conntrack::now_s,
    maps::{
        LB_IPCACHE_V1, LB_POL_CIDR_V1, LB_POL_COUNT_V1, LB_POL_CT_CARRIED, LB_POL_CT_V1,
        LB_POL_EP_V1, LB_POL_IF_V1, LB_POL_STATE_V1, LB_POLICY_V1,
    },
    tc,
};

mod flow;

pub use flow::Flow;
use flow::{KIND_FLOW, KIND_ICMP_ERR, KIND_PASS, parse};

/// The pod's egress: Service translation first (pods reaching LoadBalancer
/// IPs the packet path handles), then the policy on the translated packet.
pub fn from_pod(ctx: &TcContext) -> i32 {
    let v = tc::ingress(ctx, true);
    if v != TC_ACT_OK {
        return v;
    }
    enforce(ctx, DIR_EGRESS)
}

/// The pod's ingress: the policy on the real addresses, then the reverse
/// translation of replies.
pub fn to_pod(ctx: &TcContext) -> i32 {
    let v = enforce(ctx, DIR_INGRESS);
    if v != TC_ACT_OK {
        return v;
    }
    tc::egress(ctx)
}

#[inline(never)]
fn enforce(ctx: &TcContext, dir: u8) -> i32 {
    let mut f = Flow::default();
    parse(ctx, &mut f);
    if f.kind == KIND_PASS {
        return TC_ACT_OK;
    }
    check_icmp_error(&mut f, dir);
    let pod = if dir == DIR_EGRESS {
        f.outer_s
    } else {
        f.outer_d
    };
    let st = state();
    // SAFETY: copied out at once.
    let Some(ep) = (unsafe { LB_POL_EP_V1.get(pod) }).copied() else {
        // An address no pod has, from an interface whose pod is known.
        if dir == DIR_EGRESS && spoofed_unknown(ctx) != 0 {
            return TC_ACT_SHOT;
        }
        let any = if dir == DIR_INGRESS {
            POL_F_ANY_INGRESS
        } else {
            POL_F_ANY_EGRESS
        };
        if st.flags & any != 0 {
            return deny(0, PolReason::UnknownEndpoint);
        }
        return TC_ACT_OK;
    };
    // Another local pod's address, arriving on this interface.
    if dir == DIR_EGRESS && ep.ifindex != 0 && ep.ifindex != ifindex(ctx) {
        return deny(ep.ep_id, PolReason::SpoofedSource);
    }
    if f.kind == KIND_ICMP_ERR {
        return icmp_error(&ep, dir, &f);
    }
    match known(&ep, dir, &f, st.revision) {
        KNOWN => return TC_ACT_OK,
        REVOKED => {
            return deny(ep.ep_id, denied(dir));
        }
        _ => {}
    }
    if allowed(&ep, dir, &f) == 0 {
        return deny(ep.ep_id, denied(dir));
    }
    remember(&ep, dir, &f, st.revision);
    count(
        ep.ep_id,
        if dir == DIR_INGRESS {
            PolReason::AllowedIngress
        } else {
            PolReason::AllowedEgress
        },
    );
    TC_ACT_OK
}

#[inline(always)]
fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: `skb` is the context pointer the kernel passed this program;
    // ifindex is a plain field of it.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// 1 (counted on that pod) when a packet leaving a pod with a source no
/// local pod has comes from an interface whose pod is known: spoofed. Not
/// inlined (stack).
#[inline(never)]
fn spoofed_unknown(ctx: &TcContext) -> u32 {
    // SAFETY: copied out at once.
    match unsafe { LB_POL_IF_V1.get(ifindex(ctx)) }.copied() {
        Some(ep_id) => {
            count(ep_id, PolReason::SpoofedSource);
            1
        }
        None => 0,
    }
}

/// An ICMP error's quoted packet went the other way through this
/// interface: it must be this pod's own, or the error is judged as what it
/// is, an ICMP packet. Not inlined (stack, and LLVM's BPF backend).
#[inline(never)]
fn check_icmp_error(f: &mut Flow, dir: u8) -> u32 {
    if f.kind != KIND_ICMP_ERR {
        return 0;
    }
    let (pod, quoted) = if dir == DIR_EGRESS {
        (&f.outer_s, &f.daddr)
    } else {
        (&f.outer_d, &f.saddr)
    };
    if pod.0 == quoted.0 {
        return 0;
    }
    f.kind = KIND_FLOW;
    f.proto = if f.outer_s.is_v4() {
        PROTO_ICMP
    } else {
        PROTO_ICMPV6
    };
    f.saddr = f.outer_s;
    f.daddr = f.outer_d;
    f.sport = BeU16(0);
    f.dport = BeU16(0);
    1
}

/// An ICMP error passes when it is about a flow this endpoint has (the
/// quoted packet crossed this interface the other way), or when the
/// direction is not isolated.
#[inline(never)]
fn icmp_error(ep: &PolEndpoint, dir: u8, f: &Flow) -> i32 {
    let other = opposite(dir);
    if ct_get(&ct_key(ep.ep_id, other, f)).is_some()
        || ct_get(&ct_key_rev(ep.ep_id, dir, f)).is_some()
    {
        return TC_ACT_OK;
    }
    if ep.flags & isolated_flag(dir) == 0 {
        return TC_ACT_OK;
    }
    deny(ep.ep_id, denied(dir))
}

const UNKNOWN: i32 = 0;
const KNOWN: i32 = 1;
const REVOKED: i32 = 2;

/// Whether the packet belongs to a flow this endpoint allowed: as its
/// opener (same direction, same tuple) or as a reply (the other direction,
/// reversed tuple). A flow allowed under an older revision is judged again
/// in the direction it was opened in.
#[inline(never)]
fn known(ep: &PolEndpoint, dir: u8, f: &Flow, revision: u32) -> i32 {
    let k = ct_key(ep.ep_id, dir, f);
    let (k, v) = match ct_get(&k) {
        Some(v) => (k, v),
        None => {
            let k = ct_key_rev(ep.ep_id, opposite(dir), f);
            match ct_get(&k) {
                Some(v) => (k, v),
                None => return UNKNOWN,
            }
        }
    };
    if v.revision != revision {
        let orig = Flow {
            saddr: k.saddr,
            daddr: k.daddr,
            sport: k.sport,
            dport: k.dport,
            proto: k.proto,
            kind: KIND_FLOW,
            tcp_flags: 0,
            outer_s: k.saddr,
            outer_d: k.daddr,
        };
        if allowed(ep, k.dir, &orig) == 0 {
            let _ = LB_POL_CT_V1.remove(k);
            return REVOKED;
        }
    }
    let now = now_s();
    if (v.revision != revision || v.last_seen != now || f.tcp_flags & (TCP_FIN | TCP_RST) != 0)
        && let Some(p) = LB_POL_CT_V1.get_ptr_mut(k)
    {
        // SAFETY: aligned stores into a live map value; a racing CPU
        // writes the same kinds of values.
        unsafe {
            (*p).revision = revision;
            (*p).last_seen = now;
            (*p).flags |= (f.tcp_flags & (TCP_FIN | TCP_RST)) as u32;
        }
    }
    KNOWN
}

#[inline(never)]
fn remember(ep: &PolEndpoint, dir: u8, f: &Flow, revision: u32) {
    let k = ct_key(ep.ep_id, dir, f);
    let v = PolCtValue {
        revision,
        last_seen: now_s(),
        flags: 0,
        _pad: 0,
    };
    // A full LRU evicts its oldest entry rather than failing.
    let _ = LB_POL_CT_V1.insert(k, v, 0);
}

/// 1 when a policy of `ep` allows the flow in `dir` (or `dir` is not isolated).
#[inline(never)]
fn allowed(ep: &PolEndpoint, dir: u8, f: &Flow) -> u32 {
    if ep.flags & isolated_flag(dir) == 0 {
        return 1;
    }
    let (own, peer) = if dir == DIR_INGRESS {
        (f.daddr, f.saddr)
    } else {
        (f.saddr, f.daddr)
    };
    // A pod reaching itself (through its own Service) is always allowed.
    if own == peer {
        return 1;
    }
    let id = identity_of(&peer);
    // The pod's own node (kubelet probes, host-network processes) always
    // reaches it.
    if dir == DIR_INGRESS && id == ID_HOST {
        return 1;
    }
    if entry(ep.ep_id, id, dir, f.proto, f.dport) != 0
        || entry(ep.ep_id, ID_ANY, dir, f.proto, f.dport) != 0
    {
        return 1;
    }
    let cidr = cidr_set(ep.ep_id, dir, &peer);
    if cidr != 0 && entry(ep.ep_id, cidr, dir, f.proto, f.dport) != 0 {
        return 1;
    }
    0
}

#[inline(never)]
fn identity_of(addr: &NetAddr) -> u32 {
    let k = Key::new(128, IpcacheData { addr: *addr });
    LB_IPCACHE_V1.get(&k).copied().unwrap_or(ID_WORLD)
}

#[inline(never)]
fn entry(ep_id: u32, identity: u32, dir: u8, proto: u8, port: BeU16) -> u32 {
    let k = Key::new(
        POLICY_PREFIX_FULL,
        PolicyData {
            ep_id,
            identity,
            dir,
            proto,
            port,
        },
    );
    LB_POLICY_V1.get(&k).is_some() as u32
}

#[inline(never)]
fn cidr_set(ep_id: u32, dir: u8, addr: &NetAddr) -> u32 {
    let k = Key::new(
        POL_CIDR_FIXED_BITS + 128,
        PolCidrData {
            ep_id,
            dir,
            _pad: [0; 3],
            addr: *addr,
        },
    );
    LB_POL_CIDR_V1.get(&k).copied().unwrap_or(0)
}

#[inline(always)]
fn state() -> PolicyState {
    LB_POL_STATE_V1.get(0).copied().unwrap_or_default()
}

#[inline(always)]
fn ct_get(k: &PolCtKey) -> Option<PolCtValue> {
    // SAFETY: copied out at once.
    if let Some(v) = unsafe { LB_POL_CT_V1.get(k) } {
        return Some(*v);
    }
    if !(carried::open(&LB_POL_CT_CARRIED) && adopt_carried(k)) {
        return None;
    }
    // SAFETY: as above.
    unsafe { LB_POL_CT_V1.get(k) }.copied()
}

/// On a miss while the agent carries a policy conntrack map (`carried`):
/// a reply to a flow the earlier agent's programs allowed since the
/// agent's first copy is known at once. Not inlined: a miss during a carry
/// is the rare path.
#[inline(never)]
fn adopt_carried(k: &PolCtKey) -> bool {
    carried::adopt!(LB_POL_CT_CARRIED, LB_POL_CT_V1, k)
}

#[inline(always)]
fn ct_key(ep_id: u32, dir: u8, f: &Flow) -> PolCtKey {
    PolCtKey {
        saddr: f.saddr,
        daddr: f.daddr,
        sport: f.sport,
        dport: f.dport,
        proto: f.proto,
        dir,
        _pad: [0; 2],
        ep_id,
    }
}

#[inline(always)]
fn ct_key_rev(ep_id: u32, dir: u8, f: &Flow) -> PolCtKey {
    PolCtKey {
        saddr: f.daddr,
        daddr: f.saddr,
        sport: f.dport,
        dport: f.sport,
        proto: f.proto,
        dir,
        _pad: [0; 2],
        ep_id,
    }
}

#[inline(always)]
fn opposite(dir: u8) -> u8 {
    if dir == DIR_INGRESS {
        DIR_EGRESS
    } else {
        DIR_INGRESS
    }
}

#[inline(always)]
fn isolated_flag(dir: u8) -> u32 {
    if dir == DIR_INGRESS {
        EP_F_INGRESS_ISOLATED
    } else {
        EP_F_EGRESS_ISOLATED
    }
}

#[inline(always)]
fn denied(dir: u8) -> PolReason {
    if dir == DIR_INGRESS {
        PolReason::DeniedIngress
    } else {
        PolReason::DeniedEgress
    }
}

/// Every policy drop goes through here (or through `spoofed_unknown`,
/// which counts on the interface's pod): counted on its endpoint.
#[inline(always)]
fn deny(ep_id: u32, reason: PolReason) -> i32 {
    count(ep_id, reason);
    TC_ACT_SHOT
}

#[inline(always)]
fn count(ep_id: u32, reason: PolReason) {
    if ep_id >= POL_EP_ID_MAX {
        return;
    }
    if let Some(p) = LB_POL_COUNT_V1.get_ptr_mut(ep_id * POL_REASONS + reason as u32) {
        // SAFETY: a per-CPU slot: no other CPU writes it; the pointer is
        // valid for this program run.
        unsafe { *p += 1 };
    }
}
