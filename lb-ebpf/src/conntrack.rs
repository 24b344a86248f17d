//! Conntrack entries of packet-level flows (see lb_common::CtKey). Lookups
//! copy values out; `touch` refreshes the last-seen time at most once a
//! second so a busy flow does not write its entry on every packet.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use lb_common::{
    BeU16, C_CT_ENTRY_NEW, CT_F_CLOSING, CT_F_ESTABLISHED, CT_F_PORT_KEYED, CtKey, CtValue,
    NetAddr, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
};

use crate::{
    carried,
    maps::{LB_CT_CARRIED, LB_CT_V1, count},
    packet::Pkt,
};

#[inline(always)]
pub fn now_s() -> u32 {
    // SAFETY: helper without arguments.
    (unsafe { bpf_ktime_get_coarse_ns() } / 1_000_000_000) as u32
}

#[inline(always)]
pub fn key(p: &Pkt, kind: u8) -> CtKey {
    CtKey {
        saddr: p.saddr,
        daddr: p.daddr,
        sport: p.sport,
        dport: p.dport,
        proto: p.proto,
        kind,
        _pad: [0; 2],
    }
}

/// Whether `p` can be a reply of a flow SNAT'd towards another node: its
/// destination port is one SNAT hands out. Every other packet is spared
/// the reverse SNAT lookup (NodePorts, 80 and 443 among them).
#[inline(always)]
pub fn may_be_snat_reply(p: &Pkt) -> bool {
    lb_common::is_snat_port(p.dport.to_host())
}

/// The entry of kind `kind` for a packet from `saddr:sport` to
/// `daddr:dport` (the tuple as that direction's packets carry it).
#[inline(always)]
pub fn tuple(
    saddr: NetAddr,
    sport: BeU16,
    daddr: NetAddr,
    dport: BeU16,
    proto: u8,
    kind: u8,
) -> CtKey {
    CtKey {
        saddr,
        daddr,
        sport,
        dport,
        proto,
        kind,
        _pad: [0; 2],
    }
}

#[inline(always)]
pub fn lookup(k: &CtKey) -> Option<CtValue> {
    // SAFETY: the value is copied out at once.
    if let Some(v) = unsafe { LB_CT_V1.get(k) } {
        return Some(*v);
    }
    if !adopt_carried(k) {
        return None;
    }
    // SAFETY: as above.
    unsafe { LB_CT_V1.get(k) }.copied()
}

/// On a miss while the agent carries a conntrack map (`carried`): the
/// entry the earlier agent's programs made since the agent's first copy
/// becomes this map's, so a handshake that began under the earlier
/// programs completes under these. True when there was one.
#[inline(always)]
pub fn adopt_carried(k: &CtKey) -> bool {
    carried::open(&LB_CT_CARRIED) && take_over(k)
}

/// Not inlined: a miss during a carry is the rare path.
#[inline(never)]
fn take_over(k: &CtKey) -> bool {
    carried::adopt!(LB_CT_CARRIED, LB_CT_V1, k)
}

/// Refreshes the last-seen time (at most once a second) and marks the
/// entry closing on a TCP FIN or RST, so the agent's GC can drop it soon.
#[inline(always)]
/// Records a packet of the flow: its time, and from TCP flags (0 for UDP)
/// whether the flow is closing (FIN, RST) or past its handshake (anything
/// but a bare SYN). Writes only when something changes.
pub fn touch(k: &CtKey, v: &CtValue, tcp_flags: u8) {
    let now = now_s();
    let mut set = 0u8;
    if tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        set |= CT_F_CLOSING;
    }
    if tcp_flags != 0 && tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
        set |= CT_F_ESTABLISHED;
    }
    let set = set & !v.flags;
    if (v.last_seen != now || set != 0)
        && let Some(p) = LB_CT_V1.get_ptr_mut(k)
    {
        // SAFETY: aligned stores into a live map value; a racing CPU
        // writes the same kinds of values (a time, the same bits).
        unsafe {
            (*p).last_seen = now;
            (*p).flags |= set;
        }
    }
}

/// Creates or replaces an entry. `flags_snat`: the flags in the low byte,
/// the SNAT port (raw, network order) in the high 16 bits. Not inlined:
/// the value is built in this frame, not in the caller's (arguments are
/// integers: at most five).
#[inline(never)]
pub fn put(k: &CtKey, addr: &NetAddr, port: u32, backend_id: u32, flags_snat: u32) -> i32 {
    let v = CtValue {
        addr: *addr,
        port: BeU16(port as u16),
        flags: flags_snat as u8,
        _pad: 0,
        backend_id,
        last_seen: now_s(),
        snat_port: BeU16((flags_snat >> 16) as u16),
        _pad2: 0,
    };
    // A full LRU evicts its oldest entry rather than failing. A new key is
    // counted (the agent tells evictions from it); a taken one replaced.
    // SAFETY: only whether there is a value is read.
    let fresh = unsafe { LB_CT_V1.get(k) }.is_none();
    match LB_CT_V1.insert(k, v, 0) {
        Ok(()) => {
            if fresh {
                count(C_CT_ENTRY_NEW);
            }
            0
        }
        Err(e) => e,
    }
}

/// Creates a reverse SNAT entry only where none exists (BPF_NOEXIST): 0
/// when it was created, non-zero when the key is taken. Not inlined (stack).
#[inline(never)]
pub fn put_new(k: &CtKey, addr: &NetAddr, port: u32) -> i32 {
    const BPF_NOEXIST: u64 = 1;
    let v = CtValue {
        addr: *addr,
        port: BeU16(port as u16),
        flags: CT_F_PORT_KEYED,
        _pad: 0,
        backend_id: 0,
        last_seen: now_s(),
        snat_port: BeU16(0),
        _pad2: 0,
    };
    // Counted by the caller (its frame, not this one's).
    match LB_CT_V1.insert(k, v, BPF_NOEXIST) {
        Ok(()) => 0,
        Err(e) => e,
    }
}
