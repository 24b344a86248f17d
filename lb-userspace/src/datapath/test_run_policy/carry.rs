//! The policy conntrack across a carry (an agent restarted, or grown, with
//! a policy conntrack map of another size): a flow the earlier agent's
//! programs allowed after the first copy is known to this agent's at once.

use super::*;

use lb_common::DEFAULT_POL_CT_MAX;

#[test]
fn a_reply_to_a_flow_the_earlier_programs_allowed_during_a_carry_passes_at_once() {
    for n in NETS {
        let mut old = Bed::new("carry", n);
        old.allow(EP, PEER_ID, DIR_EGRESS, PROTO_TCP, 80, POLICY_PREFIX_FULL);
        let out = |port| ct_key(n.pod, port, n.peer, 80, PROTO_TCP, DIR_EGRESS, EP);
        old.check(
            FROM,
            &syn(n.pod, 40000, n.peer, 80),
            OK,
            Some((EP, AllowedEgress)),
            "a flow out from before the restart",
        );
        let (new, carry) = old.carrying_pol_ct(2 * DEFAULT_POL_CT_MAX);
        assert!(
            new.ct_entry(&out(40000)).is_some(),
            "{}: copied at load",
            n.name
        );

        // The earlier programs still run: a flow they allow after the
        // copy has its entry in their (old) map only.
        old.check(
            FROM,
            &syn(n.pod, 40001, n.peer, 80),
            OK,
            Some((EP, AllowedEgress)),
            "a flow out the earlier programs allow after the copy",
        );
        assert!(
            new.ct_entry(&out(40001)).is_none(),
            "{}: not copied",
            n.name
        );
        // Its reply comes in through this agent's programs (the pod is
        // isolated for ingress with no rule): known from the old entry,
        // which becomes this map's.
        new.check(
            TO,
            &synack(n.peer, 80, n.pod, 40001),
            OK,
            None,
            "the reply to a flow the earlier programs allowed during the carry",
        );
        assert!(
            new.ct_entry(&out(40001)).is_some(),
            "{}: adopted by the new map",
            n.name
        );
        new.check(
            TO,
            &synack(n.peer, 80, n.pod, 40009),
            SHOT,
            Some((EP, DeniedIngress)),
            "a reply to a flow no one allowed",
        );

        // The carry ends: the second copy brings what is left, then the
        // programs stop looking in the old map.
        old.check(
            FROM,
            &syn(n.pod, 40002, n.peer, 80),
            OK,
            Some((EP, AllowedEgress)),
            "a flow out just before the carry ends",
        );
        super::super::test_run::end_carry(&new.dir, &new.ebpf, carry);
        assert!(
            new.ct_entry(&out(40002)).is_some(),
            "{}: the second copy",
            n.name
        );
        old.check(
            FROM,
            &syn(n.pod, 40003, n.peer, 80),
            OK,
            Some((EP, AllowedEgress)),
            "a flow out after the carry ended",
        );
        new.check(
            TO,
            &synack(n.peer, 80, n.pod, 40003),
            SHOT,
            Some((EP, DeniedIngress)),
            "after the carry the old map is not looked at",
        );
    }
}
