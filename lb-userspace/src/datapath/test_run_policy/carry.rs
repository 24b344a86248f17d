//! The policy conntrack across a carry (an agent restarted, or grown, with
//! a policy conntrack map of another size): a flow the earlier agent's
//! programs allowed is known to this agent's at once, and judged again
//! when the policy changed since.

use super::*;

use lb_common::DEFAULT_POL_CT_MAX;

/// The pod's flow out to the peer's port 80 from `port`.
fn out(n: &Net, port: u16) -> PolCtKey {
    ct_key(n.pod, port, n.peer, 80, PROTO_TCP, DIR_EGRESS, EP)
}

/// A flow out the earlier programs allow (port 80 to the peer).
fn allowed_out(old: &Bed, port: u16, what: &str) {
    old.check(
        FROM,
        &syn(old.net.pod, port, old.net.peer, 80),
        OK,
        Some((EP, AllowedEgress)),
        what,
    );
}

#[test]
fn a_reply_to_a_flow_the_earlier_programs_allowed_during_a_carry_passes_at_once() {
    // A restart fills the new map first; a growth while running does not.
    for (n, fill) in NETS.into_iter().flat_map(|n| [(n, true), (n, false)]) {
        let what = |w: &str| format!("{w} (first copy: {fill})");
        let mut old = Bed::new(if fill { "carry" } else { "grow" }, n);
        old.allow(EP, PEER_ID, DIR_EGRESS, PROTO_TCP, 80, POLICY_PREFIX_FULL);
        allowed_out(&old, 40000, "a flow out from before the carry");
        let (new, carry) = old.carrying_pol_ct(2 * DEFAULT_POL_CT_MAX, fill);
        assert_eq!(
            new.ct_entry(&out(n, 40000)).is_some(),
            fill,
            "{}",
            what("copied at load")
        );

        // The earlier programs still run: a flow they allow after the
        // copy has its entry in their (old) map only.
        allowed_out(
            &old,
            40001,
            "a flow out the earlier programs allow after the copy",
        );
        assert!(
            new.ct_entry(&out(n, 40001)).is_none(),
            "{}",
            what("not copied")
        );
        // The replies come in through this agent's programs (the pod is
        // isolated for ingress with no rule): known from the old entries,
        // which become this map's.
        for port in [40000, 40001] {
            new.check(
                TO,
                &synack(n.peer, 80, n.pod, port),
                OK,
                None,
                &what("the reply to a flow the earlier programs allowed"),
            );
            assert!(new.ct_entry(&out(n, port)).is_some(), "{}", what("adopted"));
        }
        new.check(
            TO,
            &synack(n.peer, 80, n.pod, 40009),
            SHOT,
            Some((EP, DeniedIngress)),
            &what("a reply to a flow no one allowed"),
        );

        // The carry ends: the second copy brings what is left, then the
        // programs stop looking in the old map.
        allowed_out(&old, 40002, "a flow out just before the carry ends");
        super::super::test_run::end_carry(&new.dir, &new.ebpf, carry);
        assert!(
            new.ct_entry(&out(n, 40002)).is_some(),
            "{}",
            what("the second copy")
        );
        allowed_out(&old, 40003, "a flow out after the carry ended");
        new.check(
            TO,
            &synack(n.peer, 80, n.pod, 40003),
            SHOT,
            Some((EP, DeniedIngress)),
            &what("after the carry the old map is not looked at"),
        );
    }
}

#[test]
fn a_flow_the_earlier_programs_allowed_is_judged_again_after_the_policy_changed() {
    for n in NETS {
        let mut old = Bed::new("carryrev", n);
        old.allow(EP, PEER_ID, DIR_EGRESS, PROTO_TCP, 80, POLICY_PREFIX_FULL);
        let (mut new, _carry) = old.carrying_pol_ct(2 * DEFAULT_POL_CT_MAX, false);
        allowed_out(&old, 40005, "a flow out under revision 1");
        // The rule goes (revision 2) before the reply comes back through
        // this agent's programs: the old entry, adopted, is of revision 1.
        new.revoke(EP, PEER_ID, DIR_EGRESS, PROTO_TCP, 80, POLICY_PREFIX_FULL);
        new.state(2, ANY_BOTH);
        new.check(
            TO,
            &synack(n.peer, 80, n.pod, 40005),
            SHOT,
            Some((EP, DeniedIngress)),
            "the reply to a flow whose rule is gone",
        );
        new.check(
            FROM,
            &ack(n.pod, 40005, n.peer, 80),
            SHOT,
            Some((EP, DeniedEgress)),
            "the flow's next packet out",
        );
    }
}
