//! Maglev lookup: the frontend's table, built by the agent from backend
//! addresses, so every node maps a flow to the same backend.

use crate::maps::{LB_CONFIG_V1, LB_MAGLEV_V2};

/// The slot Maglev picks for a flow hash, or 0 when the frontend has no
/// table or the entry is outside its `n` slots (mid-update: the caller
/// falls back to hashing over the slots). Not inlined (stack).
#[inline(never)]
pub fn slot(service_id: u32, hash: u32, n: u32) -> u32 {
    let Some(cfg) = LB_CONFIG_V1.get(0) else {
        return 0;
    };
    let m = cfg.maglev_size;
    if m == 0 {
        return 0;
    }
    let idx = hash % m;
    // SAFETY: the outer map is only ever updated by replacing whole inner
    // maps (never removed and reused while a lookup can hold it: the
    // kernel keeps an inner map alive for the program's RCU section), and
    // the u32 entry is copied out at once.
    match unsafe { LB_MAGLEV_V2.get_value(&service_id, &idx) } {
        Some(s) if *s >= 1 && *s <= n => *s,
        _ => 0,
    }
}
