//! Fragments and truncated packets.

use super::*;

#[test]
fn a_first_fragment_is_judged_by_its_ports_and_a_later_one_only_by_rules_without_ports() {
    for n in NETS {
        let mut bed = Bed::new("frag", n);
        // the peer: UDP/53 only; the other peer: all of UDP; the world:
        // any protocol
        bed.allow(EP, PEER_ID, DIR_INGRESS, PROTO_UDP, 53, POLICY_PREFIX_FULL);
        bed.allow(EP, OTHER_ID, DIR_INGRESS, PROTO_UDP, 0, POLICY_PREFIX_PROTO);
        bed.allow(EP, ID_WORLD, DIR_INGRESS, 0, 0, POLICY_PREFIX_ANY_PROTO);
        let whole = udp(n.peer, 5000, n.pod, 53);
        bed.check(
            TO,
            &fragment(&whole, 0, true),
            OK,
            Some((EP, AllowedIngress)),
            "the first fragment (offset 0, more) of an allowed flow",
        );
        assert!(
            bed.ct_entry(&ct_key(n.peer, 5000, n.pod, 53, PROTO_UDP, DIR_INGRESS, EP))
                .is_some(),
            "{}: the first fragment's ports tracked: {:?}",
            n.name,
            bed.pol_ct()
        );
        bed.check(
            TO,
            &fragment(&udp(n.peer, 5000, n.pod, 54), 0, true),
            SHOT,
            Some((EP, DeniedIngress)),
            "the first fragment of a flow to another port",
        );
        // Its payload starts with the allowed flow's ports: not to be read.
        bed.check(
            TO,
            &fragment(&whole, 185, false),
            SHOT,
            Some((EP, DeniedIngress)),
            "a later fragment under a one-port rule",
        );
        bed.check(
            TO,
            &fragment(&udp(n.other, 5000, n.pod, 53), 185, true),
            OK,
            Some((EP, AllowedIngress)),
            "a later fragment under an all-UDP rule",
        );
        assert!(
            bed.ct_entry(&ct_key(n.other, 0, n.pod, 0, PROTO_UDP, DIR_INGRESS, EP))
                .is_some(),
            "{}: a later fragment is tracked without ports: {:?}",
            n.name,
            bed.pol_ct()
        );
        bed.check(
            TO,
            &fragment(&udp(n.outside, 5000, n.pod, 53), 185, false),
            OK,
            Some((EP, AllowedIngress)),
            "a later fragment under an any-protocol rule",
        );
        // a fragment of TCP under the all-UDP rule: still not allowed
        bed.check(
            TO,
            &fragment(&syn(n.other, 5000, n.pod, 53), 185, false),
            SHOT,
            Some((EP, DeniedIngress)),
            "a later TCP fragment under an all-UDP rule",
        );
    }
}

/// A TCP SYN whose IP header claims more than the frame holds: IPv4 options
/// (IHL 15) or an IPv6 hop-by-hop header, cut where they begin.
fn long_header(src: &str, dst: &str) -> Vec<u8> {
    let mut v = syn(src, 40000, dst, 80);
    if v[14] >> 4 == 4 {
        v[14] = 0x4f;
        v.truncate(14 + 20 + 4);
    } else {
        v[14 + 6] = 0;
        v.truncate(14 + 40 + 1);
    }
    v
}

#[test]
fn truncated_packets_pass_or_drop_without_an_error() {
    for n in NETS {
        let mut bed = Bed::new("trunc", n);
        bed.allow(EP, PEER_ID, DIR_INGRESS, PROTO_UDP, 53, POLICY_PREFIX_FULL);
        let s = syn(n.pod, 40000, n.peer, 80);
        let packets = [
            ("TCP SYN in", syn(n.peer, 40000, n.pod, 80)),
            ("TCP SYN out", s.clone()),
            ("UDP in", udp(n.peer, 5000, n.pod, 53)),
            ("SCTP in", sctp(n.peer, 5000, n.pod, 80)),
            (
                "fragment in",
                fragment(&udp(n.peer, 5000, n.pod, 53), 0, true),
            ),
            (
                "later fragment in",
                fragment(&udp(n.peer, 5000, n.pod, 53), 185, false),
            ),
            ("ICMP error in", unreachable(n.other, n.pod, quote(&s))),
            (
                "ICMP error out",
                unreachable(n.pod, n.peer, quote(&syn(n.peer, 1, n.pod, 53))),
            ),
            ("echo out", echo_request(n.pod, n.peer, 5)),
            ("GRE in", gre(n.peer, n.pod)),
            (
                "an IP header longer than the frame",
                long_header(n.peer, n.pod),
            ),
        ];
        // The kernel's BPF_PROG_TEST_RUN refuses (EINVAL) a frame whose
        // IPv4 or IPv6 header is incomplete (6.18: below 14 + 20 or 14 + 40
        // bytes), so the program never sees those; from there on, every
        // cut must give a verdict. What it cuts: the L4 header, IPv6
        // extension and fragment headers, ICMP errors' quoted headers.
        let l3 = if is_v4(n.pod) { 14 + 20 } else { 14 + 40 };
        let mut judged = 0;
        for (what, pkt) in &packets {
            for len in 15..=pkt.len() {
                let cut = &pkt[..len];
                for prog in [FROM, TO] {
                    match bed.try_run(prog, cut) {
                        Ok(v) => {
                            assert!(
                                v == OK || v == SHOT,
                                "{}: {what} cut at {len} through {prog}: verdict {v}",
                                n.name
                            );
                            judged += 1;
                        }
                        Err(e) => assert!(
                            len < l3,
                            "{}: {what} cut at {len} (IP header whole) through {prog}: {e:?}",
                            n.name
                        ),
                    }
                }
            }
        }
        assert!(judged > 200, "{}: only {judged} cuts judged", n.name);
    }
}

/// A later IPv6 fragment's payload is data, not headers: when the fragment
/// header names an extension header (destination options, in the
/// fragmentable part of the first fragment), the later fragment must not be
/// judged by whatever protocol its payload bytes happen to name.
#[test]
fn a_later_ipv6_fragment_is_never_judged_by_its_payload_bytes() {
    let n = &V6;
    let mut bed = Bed::new("frag6x", n);
    // the peer may send any UDP, nothing else
    bed.allow(EP, PEER_ID, DIR_INGRESS, PROTO_UDP, 0, POLICY_PREFIX_PROTO);
    // A TCP flow's later fragment: fragment header -> destination options
    // (60); its payload starts with bytes that read as an extension header
    // naming UDP (17).
    let mut pkt = fragment(&syn(n.peer, 40000, n.pod, 80), 185, false);
    pkt[54] = 60;
    pkt[62] = PROTO_UDP;
    pkt[63] = 0;
    bed.check(
        TO,
        &pkt,
        SHOT,
        Some((EP, DeniedIngress)),
        "a later TCP fragment whose payload reads as a header naming UDP",
    );
}
