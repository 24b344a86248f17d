//! Entries coming and going, unknown interfaces, the pod itself and its
//! node, ipBlock CIDR sets.

use super::*;

#[test]
fn revoking_an_allow_entry_ends_an_established_flow_in_either_direction() {
    // (who opened the flow, the side whose next packet is judged again)
    let cases = [
        (DIR_INGRESS, TO),
        (DIR_INGRESS, FROM),
        (DIR_EGRESS, FROM),
        (DIR_EGRESS, TO),
    ];
    for n in NETS {
        for (i, (opened, next)) in cases.into_iter().enumerate() {
            let mut bed = Bed::new(&format!("rev{i}"), n);
            // the pod's side (address, port) and the peer's
            let (pod, peer) = ((n.pod, 80), (n.peer, 40000));
            let (first, reply, opener_prog, reply_prog) = if opened == DIR_INGRESS {
                (
                    syn(peer.0, peer.1, pod.0, pod.1),
                    synack(pod.0, pod.1, peer.0, peer.1),
                    TO,
                    FROM,
                )
            } else {
                (
                    syn(pod.0, pod.1, peer.0, peer.1),
                    synack(peer.0, peer.1, pod.0, pod.1),
                    FROM,
                    TO,
                )
            };
            let port = if opened == DIR_INGRESS { pod.1 } else { peer.1 };
            let (allowed, denied) = if opened == DIR_INGRESS {
                (AllowedIngress, DeniedIngress)
            } else {
                (AllowedEgress, DeniedEgress)
            };
            let entry = (EP, PEER_ID, opened, PROTO_TCP, port, POLICY_PREFIX_FULL);
            bed.allow(entry.0, entry.1, entry.2, entry.3, entry.4, entry.5);
            bed.check(opener_prog, &first, OK, Some((EP, allowed)), "the SYN");
            bed.check(reply_prog, &reply, OK, None, "the SYN-ACK");
            // the packet of the judged side, in the flow's terms
            let next_pkt = if next == TO {
                ack(peer.0, peer.1, pod.0, pod.1)
            } else {
                ack(pod.0, pod.1, peer.0, peer.1)
            };
            // A new revision that keeps the entry: the flow goes on, its
            // entry now carries the new revision.
            bed.state(2, ANY_BOTH);
            bed.check(
                next,
                &next_pkt,
                OK,
                None,
                "a packet after a bump that keeps the rule",
            );
            let ct = bed.pol_ct();
            assert_eq!(ct.len(), 1, "{}: {ct:?}", n.name);
            assert_eq!(ct[0].1.revision, 2, "{}: {ct:?}", n.name);
            // Deleted, not yet announced: the entry still carries the flow.
            bed.revoke(entry.0, entry.1, entry.2, entry.3, entry.4, entry.5);
            bed.check(
                next,
                &next_pkt,
                OK,
                None,
                "a packet after the delete, before the bump",
            );
            bed.state(3, ANY_BOTH);
            let reason = if next == TO {
                DeniedIngress
            } else {
                DeniedEgress
            };
            bed.check(
                next,
                &next_pkt,
                SHOT,
                Some((EP, reason)),
                &format!("the next packet after the revocation (opened {opened})"),
            );
            assert!(
                bed.pol_ct().is_empty(),
                "{}: the revoked flow's entry is gone: {:?}",
                n.name,
                bed.pol_ct()
            );
            // ... and so are both directions now
            bed.check(
                opener_prog,
                &first,
                SHOT,
                Some((EP, denied)),
                "the opener's retransmitted SYN",
            );
        }
    }
}

#[test]
fn an_interface_whose_pod_is_unknown_drops_only_the_directions_some_policy_isolates() {
    for n in NETS {
        let mut bed = Bed::new("unknown", n);
        let into = syn(n.peer, 40000, n.stray, 80);
        let out = syn(n.stray, 40001, n.peer, 80);
        for (flags, in_v, out_v) in [
            (0, OK, OK),
            (POL_F_ANY_INGRESS, SHOT, OK),
            (POL_F_ANY_EGRESS, OK, SHOT),
            (ANY_BOTH, SHOT, SHOT),
        ] {
            bed.state(1, flags);
            let counted = |v: u32| (v == SHOT).then_some((0, UnknownEndpoint));
            bed.check(
                TO,
                &into,
                in_v,
                counted(in_v),
                &format!("into an unknown pod, state flags {flags}"),
            );
            bed.check(
                FROM,
                &out,
                out_v,
                counted(out_v),
                &format!("out of an unknown pod, state flags {flags}"),
            );
        }
        assert!(bed.pol_ct().is_empty(), "{}: nothing tracked", n.name);
    }
}

#[test]
fn a_pod_reaches_itself_and_its_node_reaches_it_without_any_entry() {
    for n in NETS {
        let bed = Bed::new("self", n);
        bed.check(
            FROM,
            &syn(n.pod, 40000, n.pod, 8080),
            OK,
            Some((EP, AllowedEgress)),
            "the pod to its own address, out",
        );
        bed.check(
            TO,
            &syn(n.pod, 40001, n.pod, 8080),
            OK,
            Some((EP, AllowedIngress)),
            "the pod to its own address, in",
        );
        bed.check(
            TO,
            &syn(n.host, 40002, n.pod, 8080),
            OK,
            Some((EP, AllowedIngress)),
            "the node (ID_HOST) to the pod",
        );
        bed.check(
            TO,
            &udp(n.host, 40003, n.pod, 9),
            OK,
            Some((EP, AllowedIngress)),
            "the node's UDP to the pod",
        );
        // The node's exception is for ingress only.
        bed.check(
            FROM,
            &syn(n.pod, 40004, n.host, 10250),
            SHOT,
            Some((EP, DeniedEgress)),
            "the pod to its node, egress isolated with no rule",
        );
    }
}

#[test]
fn ip_block_peers_match_through_cidr_sets_with_excepts_carved_out() {
    for n in NETS {
        let mut bed = Bed::new("cidr", n);
        let set = ID_FIRST_CIDR;
        bed.cidr(EP, DIR_EGRESS, n.block, set);
        bed.cidr(EP, DIR_EGRESS, n.except, 0);
        bed.allow(EP, set, DIR_EGRESS, PROTO_TCP, 443, POLICY_PREFIX_FULL);
        bed.check(
            FROM,
            &syn(n.pod, 40000, n.in_block, 443),
            OK,
            Some((EP, AllowedEgress)),
            "to the ipBlock",
        );
        bed.check(
            FROM,
            &syn(n.pod, 40001, n.in_except, 443),
            SHOT,
            Some((EP, DeniedEgress)),
            "to the ipBlock's except",
        );
        bed.check(
            FROM,
            &syn(n.pod, 40002, n.outside, 443),
            SHOT,
            Some((EP, DeniedEgress)),
            "outside the ipBlock",
        );
        bed.check(
            FROM,
            &syn(n.pod, 40003, n.in_block, 80),
            SHOT,
            Some((EP, DeniedEgress)),
            "to the ipBlock on another port",
        );
        bed.check(
            TO,
            &syn(n.in_block, 40004, n.pod, 443),
            SHOT,
            Some((EP, DeniedIngress)),
            "from the ipBlock: the set is for egress",
        );
        // An ipBlock over pod addresses: it matches whatever their identity.
        bed.cidr(EP, DIR_INGRESS, n.peer_net, set + 1);
        bed.allow(EP, set + 1, DIR_INGRESS, PROTO_TCP, 22, POLICY_PREFIX_FULL);
        for from in [n.peer, n.other] {
            bed.check(
                TO,
                &syn(from, 40005, n.pod, 22),
                OK,
                Some((EP, AllowedIngress)),
                &format!("from {from} in the pods' ipBlock"),
            );
        }
        bed.check(
            TO,
            &syn(n.host, 40006, n.pod, 23),
            OK,
            Some((EP, AllowedIngress)),
            "the node, outside every block",
        );
        bed.check(
            TO,
            &syn(n.outside, 40007, n.pod, 22),
            SHOT,
            Some((EP, DeniedIngress)),
            "the world, outside the pods' ipBlock",
        );
    }
}
