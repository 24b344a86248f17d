//! Verdicts by protocol and port, and the policy conntrack.

use super::*;

#[test]
fn an_allowed_syn_into_a_pod_passes_and_is_tracked_its_reply_passes_statefully_and_a_denied_syn_is_dropped()
 {
    for n in NETS {
        let mut bed = Bed::new("syn", n);
        bed.allow(EP, PEER_ID, DIR_INGRESS, PROTO_TCP, 80, POLICY_PREFIX_FULL);
        bed.check(
            TO,
            &syn(n.peer, 40000, n.pod, 80),
            OK,
            Some((EP, AllowedIngress)),
            "a SYN the rule allows",
        );
        let k = ct_key(n.peer, 40000, n.pod, 80, PROTO_TCP, DIR_INGRESS, EP);
        let v = bed
            .ct_entry(&k)
            .unwrap_or_else(|| panic!("{}: no policy conntrack entry: {:?}", n.name, bed.pol_ct()));
        assert_eq!(v.revision, 1, "{}: allowed under revision 1", n.name);
        assert_eq!(bed.pol_ct().len(), 1, "{}: one entry", n.name);
        bed.check(
            FROM,
            &synack(n.pod, 80, n.peer, 40000),
            OK,
            None,
            "the reply, egress isolated with no rule",
        );
        bed.check(
            TO,
            &ack(n.peer, 40000, n.pod, 80),
            OK,
            None,
            "the next packet in",
        );
        bed.check(
            TO,
            &syn(n.other, 40001, n.pod, 80),
            SHOT,
            Some((EP, DeniedIngress)),
            "a SYN from a peer no rule names",
        );
        bed.check(
            TO,
            &syn(n.outside, 40001, n.pod, 80),
            SHOT,
            Some((EP, DeniedIngress)),
            "a SYN from the world",
        );
        bed.check(
            TO,
            &syn(n.peer, 40002, n.pod, 81),
            SHOT,
            Some((EP, DeniedIngress)),
            "a SYN to another port",
        );
        bed.check(
            TO,
            &udp(n.peer, 40003, n.pod, 80),
            SHOT,
            Some((EP, DeniedIngress)),
            "UDP to the TCP rule's port",
        );
        bed.check(
            FROM,
            &synack(n.pod, 80, n.other, 40001),
            SHOT,
            Some((EP, DeniedEgress)),
            "a reply to the denied SYN (no entry was made for it)",
        );
        bed.check(
            FROM,
            &syn(n.pod, 40004, n.peer, 80),
            SHOT,
            Some((EP, DeniedEgress)),
            "a new flow out, egress isolated with no rule",
        );
        assert_eq!(
            bed.pol_ct().len(),
            1,
            "{}: denied flows leave no entry",
            n.name
        );
        // An entry for any peer (identity 0) takes every peer, the world's too.
        bed.allow(EP, ID_ANY, DIR_INGRESS, PROTO_TCP, 8080, POLICY_PREFIX_FULL);
        bed.check(
            TO,
            &syn(n.other, 40005, n.pod, 8080),
            OK,
            Some((EP, AllowedIngress)),
            "a SYN to a port open to any peer",
        );
        bed.check(
            TO,
            &syn(n.outside, 40006, n.pod, 8080),
            OK,
            Some((EP, AllowedIngress)),
            "the world to a port open to any peer",
        );
        // A pod no policy isolates takes anything, counted as allowed.
        bed.check(
            TO,
            &syn(n.other, 40007, n.pod2, 22),
            OK,
            Some((EP2, AllowedIngress)),
            "a SYN into a pod without isolation",
        );
        bed.check(
            FROM,
            &syn(n.pod2, 40008, n.outside, 443),
            OK,
            Some((EP2, AllowedEgress)),
            "a SYN out of a pod without isolation",
        );
    }
}

#[test]
fn sctp_is_matched_by_its_own_protocol_and_port_never_as_tcp_or_udp() {
    for n in NETS {
        let mut bed = Bed::new("sctp", n);
        bed.allow(EP, PEER_ID, DIR_INGRESS, PROTO_SCTP, 80, POLICY_PREFIX_FULL);
        bed.allow(EP, PEER_ID, DIR_INGRESS, PROTO_TCP, 90, POLICY_PREFIX_FULL);
        bed.check(
            TO,
            &sctp(n.peer, 5000, n.pod, 80),
            OK,
            Some((EP, AllowedIngress)),
            "SCTP/80 under an SCTP/80 rule",
        );
        assert!(
            bed.ct_entry(&ct_key(
                n.peer,
                5000,
                n.pod,
                80,
                PROTO_SCTP,
                DIR_INGRESS,
                EP
            ))
            .is_some(),
            "{}: SCTP tracked with its ports: {:?}",
            n.name,
            bed.pol_ct()
        );
        bed.check(
            FROM,
            &sctp(n.pod, 80, n.peer, 5000),
            OK,
            None,
            "the SCTP reply",
        );
        bed.check(
            TO,
            &syn(n.peer, 5001, n.pod, 80),
            SHOT,
            Some((EP, DeniedIngress)),
            "TCP/80 under an SCTP/80 rule",
        );
        bed.check(
            TO,
            &udp(n.peer, 5002, n.pod, 80),
            SHOT,
            Some((EP, DeniedIngress)),
            "UDP/80 under an SCTP/80 rule",
        );
        bed.check(
            TO,
            &sctp(n.peer, 5003, n.pod, 81),
            SHOT,
            Some((EP, DeniedIngress)),
            "SCTP/81 under an SCTP/80 rule",
        );
        bed.check(
            TO,
            &sctp(n.peer, 5004, n.pod, 90),
            SHOT,
            Some((EP, DeniedIngress)),
            "SCTP/90 under a TCP/90 rule",
        );
        bed.check(
            TO,
            &syn(n.peer, 5005, n.pod, 90),
            OK,
            Some((EP, AllowedIngress)),
            "TCP/90 under a TCP/90 rule",
        );
        // The whole protocol (prefix 80): any SCTP port, still not TCP.
        bed.allow(
            EP,
            OTHER_ID,
            DIR_INGRESS,
            PROTO_SCTP,
            0,
            POLICY_PREFIX_PROTO,
        );
        bed.check(
            TO,
            &sctp(n.other, 5006, n.pod, 3868),
            OK,
            Some((EP, AllowedIngress)),
            "SCTP/3868 under an all-SCTP rule",
        );
        bed.check(
            TO,
            &syn(n.other, 5007, n.pod, 3868),
            SHOT,
            Some((EP, DeniedIngress)),
            "TCP/3868 under an all-SCTP rule",
        );
    }
}

#[test]
fn udp_is_allowed_inside_a_port_range_entry_and_denied_just_outside() {
    for n in NETS {
        let mut bed = Bed::new("range", n);
        // ingress 8000-8007 from the peer: 2^3 ports, prefix 80 + 13
        bed.allow(EP, PEER_ID, DIR_INGRESS, PROTO_UDP, 8000, 93);
        // egress 1024-2047 to the peer: 2^10 ports, prefix 80 + 6
        bed.allow(EP, PEER_ID, DIR_EGRESS, PROTO_UDP, 1024, 86);
        for port in [8000, 8003, 8007] {
            bed.check(
                TO,
                &udp(n.peer, 5353, n.pod, port),
                OK,
                Some((EP, AllowedIngress)),
                &format!("UDP/{port} inside 8000-8007"),
            );
        }
        for port in [7999, 8008] {
            bed.check(
                TO,
                &udp(n.peer, 5353, n.pod, port),
                SHOT,
                Some((EP, DeniedIngress)),
                &format!("UDP/{port} outside 8000-8007"),
            );
        }
        bed.check(
            TO,
            &syn(n.peer, 5353, n.pod, 8001),
            SHOT,
            Some((EP, DeniedIngress)),
            "TCP/8001 under a UDP range",
        );
        for port in [1024, 1500, 2047] {
            bed.check(
                FROM,
                &udp(n.pod, 40000, n.peer, port),
                OK,
                Some((EP, AllowedEgress)),
                &format!("UDP/{port} out inside 1024-2047"),
            );
        }
        for port in [1023, 2048] {
            bed.check(
                FROM,
                &udp(n.pod, 40000, n.peer, port),
                SHOT,
                Some((EP, DeniedEgress)),
                &format!("UDP/{port} out outside 1024-2047"),
            );
        }
        bed.check(
            FROM,
            &udp(n.pod, 40000, n.other, 1500),
            SHOT,
            Some((EP, DeniedEgress)),
            "UDP/1500 to a peer the range does not name",
        );
    }
}

#[test]
fn an_unknown_protocol_is_allowed_only_by_an_any_protocol_entry() {
    for n in NETS {
        let mut bed = Bed::new("gre", n);
        bed.allow(EP, PEER_ID, DIR_INGRESS, PROTO_TCP, 0, POLICY_PREFIX_PROTO);
        bed.allow(EP, PEER_ID, DIR_INGRESS, PROTO_UDP, 0, POLICY_PREFIX_PROTO);
        bed.check(
            TO,
            &gre(n.peer, n.pod),
            SHOT,
            Some((EP, DeniedIngress)),
            "GRE with only all-TCP and all-UDP rules",
        );
        bed.allow(EP, PEER_ID, DIR_INGRESS, 0, 0, POLICY_PREFIX_ANY_PROTO);
        bed.check(
            TO,
            &gre(n.peer, n.pod),
            OK,
            Some((EP, AllowedIngress)),
            "GRE under an any-protocol rule",
        );
        bed.check(
            FROM,
            &gre(n.pod, n.peer),
            OK,
            None,
            "GRE back: the reverse of the tracked flow",
        );
        bed.check(
            TO,
            &gre(n.other, n.pod),
            SHOT,
            Some((EP, DeniedIngress)),
            "GRE from a peer the any-protocol rule does not name",
        );
        bed.check(
            FROM,
            &gre(n.pod, n.other),
            SHOT,
            Some((EP, DeniedEgress)),
            "GRE out, egress isolated with no rule",
        );
        bed.allow(EP, OTHER_ID, DIR_EGRESS, 0, 0, POLICY_PREFIX_ANY_PROTO);
        bed.check(
            FROM,
            &gre(n.pod, n.other),
            OK,
            Some((EP, AllowedEgress)),
            "GRE out under an any-protocol egress rule",
        );
        // any protocol includes the port protocols, on any port
        bed.check(
            TO,
            &sctp(n.peer, 1, n.pod, 9),
            OK,
            Some((EP, AllowedIngress)),
            "SCTP under an any-protocol rule",
        );
    }
}
