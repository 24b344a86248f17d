//! Conntrack idle timeouts, and which policy conntrack and affinity
//! entries go. (The packet path's flows are judged in `ct_sweep`.) Pure;
//! the sweep in `datapath` applies it.

use lb_common::PROTO_TCP;

/// Idle timeouts in seconds (Cilium's defaults).
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// An established TCP flow, idle.
    pub tcp: u32,
    /// A TCP flow that never got past its SYN (an unanswered SYN, a scan).
    pub tcp_syn: u32,
    /// After a FIN or RST.
    pub tcp_closing: u32,
    /// UDP.
    pub other: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp: 21600,
            tcp_syn: 60,
            tcp_closing: 10,
            other: 60,
        }
    }
}

/// A policy conntrack entry idle past its protocol's timeout (short once a
/// FIN or RST went through: the kernel keeps those TCP flag bits).
pub fn policy_expired(
    k: &lb_common::PolCtKey,
    v: &lb_common::PolCtValue,
    now: u32,
    t: &Timeouts,
) -> bool {
    let idle = now.saturating_sub(v.last_seen);
    let limit = if k.proto != PROTO_TCP {
        t.other
    } else if v.flags & 0x05 != 0 {
        t.tcp_closing
    } else {
        t.tcp
    };
    idle > limit
}

/// A client's affinity entry whose Service's `timeoutSeconds` passed since
/// its last connection: the programs pick a backend anew for it anyway.
/// An entry of programs that did not record the timeout lives the longest
/// the API allows.
pub fn affinity_expired(v: &lb_common::AffinityValue, now: u32) -> bool {
    let limit = match v.timeout_s {
        0 => lb_common::AFFINITY_TIMEOUT_MAX,
        t => t,
    };
    now.saturating_sub(v.last_used_s) > limit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_entries_expire_by_protocol_and_closing_flags() {
        let t = Timeouts::default();
        let k = |proto| lb_common::PolCtKey {
            proto,
            ..Default::default()
        };
        let v = |last_seen, flags| lb_common::PolCtValue {
            last_seen,
            flags,
            ..Default::default()
        };
        let now = 100_000;
        assert!(!policy_expired(&k(PROTO_TCP), &v(now - 3600, 0), now, &t));
        assert!(policy_expired(&k(PROTO_TCP), &v(now - 21601, 0), now, &t));
        assert!(policy_expired(&k(PROTO_TCP), &v(now - 11, 0x01), now, &t));
        assert!(!policy_expired(&k(PROTO_TCP), &v(now - 5, 0x04), now, &t));
        assert!(policy_expired(&k(17), &v(now - 61, 0), now, &t));
        assert!(!policy_expired(&k(17), &v(now - 59, 0), now, &t));
    }

    #[test]
    fn affinity_entries_expire_after_their_services_timeout_or_a_day_without_one() {
        let v = |last_used_s, timeout_s| lb_common::AffinityValue {
            last_used_s,
            timeout_s,
            ..Default::default()
        };
        let now = 100_000;
        assert!(!affinity_expired(&v(now - 10800, 10800), now));
        assert!(affinity_expired(&v(now - 10801, 10800), now));
        assert!(affinity_expired(&v(now - 61, 60), now));
        assert!(!affinity_expired(&v(now - 86400, 0), now));
        assert!(affinity_expired(&v(now - 86401, 0), now));
        assert!(!affinity_expired(&v(now + 5, 60), now), "a clock ahead");
    }
}
