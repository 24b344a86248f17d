//! Which conntrack entries the agent removes: idle past their protocol's
//! timeout (short once a FIN or RST went through), or forward entries whose
//! backend is gone. Pure; the sweep in `kernel` applies it.

use std::collections::HashMap;

use lb_common::{Backend, CT_F_CLOSING, CT_F_ESTABLISHED, CT_FWD, CtKey, CtValue, PROTO_TCP};

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

/// `now` and `last_seen` are seconds of CLOCK_MONOTONIC.
pub fn expired(
    k: &CtKey,
    v: &CtValue,
    now: u32,
    backends: &HashMap<u32, Backend>,
    t: &Timeouts,
) -> bool {
    if k.kind == CT_FWD
        && !backends
            .get(&v.backend_id)
            .is_some_and(|b| b.addr == v.addr && b.port == v.port)
    {
        return true;
    }
    let idle = now.saturating_sub(v.last_seen);
    let limit = if k.proto != PROTO_TCP {
        t.other
    } else if v.flags & CT_F_CLOSING != 0 {
        t.tcp_closing
    } else if v.flags & CT_F_ESTABLISHED != 0 {
        t.tcp
    } else {
        t.tcp_syn
    };
    idle > limit
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
    use crate::compute::desired::net_addr;
    use lb_common::{BeU16, CT_REV, PROTO_UDP};

    #[test]
    fn timeouts_by_protocol_and_state_and_stale_backends() {
        let b = Backend {
            addr: net_addr("10.244.1.10".parse().unwrap()),
            port: BeU16::from_host(8080),
            proto: PROTO_TCP,
            flags: 0,
        };
        let backends = HashMap::from([(3u32, b)]);
        let t = Timeouts::default();
        let key = |proto, kind| CtKey {
            proto,
            kind,
            ..Default::default()
        };
        let val = |last_seen, flags, backend_id| CtValue {
            addr: b.addr,
            port: b.port,
            flags,
            backend_id,
            last_seen,
            ..Default::default()
        };
        let now = 100_000;
        // (key, value, expired?)
        let cases = [
            (
                key(PROTO_TCP, CT_FWD),
                val(now - 3600, CT_F_ESTABLISHED, 3),
                false,
            ),
            (
                key(PROTO_TCP, CT_FWD),
                val(now - 21601, CT_F_ESTABLISHED, 3),
                true,
            ),
            // only a SYN went through: the short timeout
            (key(PROTO_TCP, CT_FWD), val(now - 30, 0, 3), false),
            (key(PROTO_TCP, CT_FWD), val(now - 61, 0, 3), true),
            (
                key(PROTO_TCP, CT_FWD),
                val(now - 11, CT_F_CLOSING | CT_F_ESTABLISHED, 3),
                true,
            ),
            (key(PROTO_TCP, CT_FWD), val(now - 5, CT_F_CLOSING, 3), false),
            (key(PROTO_UDP, CT_FWD), val(now - 61, 0, 3), true),
            (key(PROTO_UDP, CT_REV), val(now - 30, 0, 0), false),
            // a forward entry whose backend is gone goes at once
            (key(PROTO_TCP, CT_FWD), val(now, 0, 9), true),
        ];
        for (i, (k, v, want)) in cases.iter().enumerate() {
            assert_eq!(expired(k, v, now, &backends, &t), *want, "case {i}");
        }
    }
}
