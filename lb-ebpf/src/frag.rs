//! Fragments of a datagram: the first carries the L4 header, the later ones
//! only addresses, protocol and the fragment id. Each hook remembers the
//! ports of every first fragment it parses, by the tuple it saw it with,
//! so the later fragments of the same datagram (same addresses at the same
//! hook) get the same translation. A later fragment whose first one the
//! hook never saw (it came first, or its entry was evicted) is not
//! understood and passes as it is.

use lb_common::{FragKey, FragPorts};

use crate::{maps::LB_FRAG, packet::Pkt};

#[inline(always)]
fn key(p: &Pkt) -> FragKey {
    FragKey {
        saddr: p.saddr,
        daddr: p.daddr,
        id: p.frag_id,
        proto: p.proto,
        _pad: [0; 3],
    }
}

/// A first fragment's ports, for its later fragments. Not inlined (stack).
#[inline(never)]
pub fn remember(p: &Pkt) -> i32 {
    let v = FragPorts {
        sport: p.sport,
        dport: p.dport,
    };
    // A full LRU evicts the oldest datagram's entry: its later fragments
    // then pass untranslated, as before there were any.
    let _ = LB_FRAG.insert(key(p), v, 0);
    0
}

/// A later fragment's ports, from its first fragment; non-zero when
/// unknown. Not inlined (stack).
#[inline(never)]
pub fn ports(p: &mut Pkt) -> i32 {
    // SAFETY: copied out at once.
    match unsafe { LB_FRAG.get(key(p)) }.copied() {
        Some(v) => {
            p.sport = v.sport;
            p.dport = v.dport;
            0
        }
        None => -1,
    }
}
