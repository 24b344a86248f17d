//! ICMP errors about tracked flows, neighbour discovery and ARP.

use super::*;

#[test]
fn icmp_errors_about_a_flow_the_pod_has_cross_its_isolation_and_others_are_dropped() {
    for n in NETS {
        let mut bed = Bed::new("icmp", n);
        bed.allow(EP, PEER_ID, DIR_EGRESS, PROTO_TCP, 80, POLICY_PREFIX_FULL);
        bed.allow(EP, PEER_ID, DIR_INGRESS, PROTO_UDP, 53, POLICY_PREFIX_FULL);
        // The pod opens a flow; a router (another address) says the
        // peer is unreachable.
        let out = syn(n.pod, 40000, n.peer, 80);
        bed.check(FROM, &out, OK, Some((EP, AllowedEgress)), "the pod's SYN");
        bed.check(
            TO,
            &unreachable(n.other, n.pod, quote(&out)),
            OK,
            None,
            "an ICMP error quoting the pod's flow, ingress isolated",
        );
        bed.check(
            TO,
            &unreachable(n.peer, n.pod, &out[14..]),
            OK,
            None,
            "an ICMP error quoting the whole packet of the pod's flow",
        );
        // Cut right after the ports, so they end at the frame's last byte:
        // read through bpf_skb_load_bytes, not straight from the data.
        let ip_hdr = if out[12..14] == [0x86, 0xdd] { 40 } else { 20 };
        bed.check(
            TO,
            &unreachable(n.other, n.pod, &out[14..14 + ip_hdr + 4]),
            OK,
            None,
            "an ICMP error quoting the pod's flow up to its ports only",
        );
        let unknown = syn(n.pod, 40001, n.peer, 80);
        bed.check(
            TO,
            &unreachable(n.other, n.pod, quote(&unknown)),
            SHOT,
            Some((EP, DeniedIngress)),
            "an ICMP error quoting a flow the pod never opened",
        );
        // The other way: the pod refuses a flow it let in.
        let q = udp(n.peer, 5000, n.pod, 53);
        bed.check(TO, &q, OK, Some((EP, AllowedIngress)), "the peer's query");
        bed.check(
            FROM,
            &unreachable(n.pod, n.peer, quote(&q)),
            OK,
            None,
            "the pod's ICMP error about the query, egress isolated",
        );
        let q2 = udp(n.peer, 5001, n.pod, 53);
        bed.check(
            FROM,
            &unreachable(n.pod, n.peer, quote(&q2)),
            SHOT,
            Some((EP, DeniedEgress)),
            "the pod's ICMP error about a flow it never let in",
        );
        // The pod's answer to a flow it let in, bounced by a router.
        let answer = udp(n.pod, 53, n.peer, 5000);
        bed.check(FROM, &answer, OK, None, "the pod's answer to the query");
        bed.check(
            TO,
            &unreachable(n.other, n.pod, quote(&answer)),
            OK,
            None,
            "an ICMP error quoting the pod's answer to a flow it let in",
        );
        // Echo is a flow by identifier: a reply follows its request.
        bed.allow(EP, OTHER_ID, DIR_EGRESS, 0, 0, POLICY_PREFIX_ANY_PROTO);
        bed.check(
            FROM,
            &echo_request(n.pod, n.other, 77),
            OK,
            Some((EP, AllowedEgress)),
            "an echo request under an any-protocol rule",
        );
        bed.check(
            TO,
            &echo_reply(n.other, n.pod, 77),
            OK,
            None,
            "its echo reply",
        );
        bed.check(
            TO,
            &echo_reply(n.other, n.pod, 78),
            SHOT,
            Some((EP, DeniedIngress)),
            "an echo reply to no request",
        );
        bed.check(
            TO,
            &echo_request(n.other, n.pod, 79),
            SHOT,
            Some((EP, DeniedIngress)),
            "an echo request into the pod",
        );
    }
}

/// An ICMP error entering (leaving) a pod's interface is judged by the pod
/// that sent (received) the quoted packet, so it must be this pod: the
/// quoted flow of another pod (even one the other pod has) is no reason to
/// let it through an isolated pod's interface.
#[test]
fn an_icmp_error_quoting_another_pods_flow_does_not_cross_an_isolated_pod() {
    let mut wrong = Vec::new();
    for n in NETS {
        let mut bed = Bed::new("icmpx", n);
        // pod2: isolated in neither direction, the quoted flow unknown
        let q = syn(n.pod2, 40000, n.peer, 80);
        let e = unreachable(n.other, n.pod, quote(&q));
        let v = bed.try_run(TO, &e).unwrap();
        if v != SHOT {
            wrong.push(format!(
                "{}: into the isolated pod, quoting pod2's packet (pod2 not isolated): {v}",
                n.name
            ));
        }
        let q = syn(n.peer, 40001, n.pod2, 80);
        let e = unreachable(n.pod, n.peer, quote(&q));
        let v = bed.try_run(FROM, &e).unwrap();
        if v != SHOT {
            wrong.push(format!(
                "{}: out of the isolated pod, quoting a packet to pod2 (pod2 not isolated): {v}",
                n.name
            ));
        }
        // pod2 isolated with a flow of its own, allowed out
        bed.endpoint(n.pod2, EP2, POD2_ID, ISOLATED);
        bed.allow(EP2, PEER_ID, DIR_EGRESS, PROTO_TCP, 80, POLICY_PREFIX_FULL);
        let q = syn(n.pod2, 40002, n.peer, 80);
        bed.check(
            FROM,
            &q,
            OK,
            Some((EP2, AllowedEgress)),
            "pod2's SYN on its own interface",
        );
        let e = unreachable(n.other, n.pod, quote(&q));
        let v = bed.try_run(TO, &e).unwrap();
        if v != SHOT {
            wrong.push(format!(
                "{}: into the isolated pod, quoting pod2's allowed flow: {v}",
                n.name
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "ICMP errors passing an isolated pod's interface on another pod's account:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn neighbour_discovery_and_arp_always_pass() {
    let n = &V6;
    let bed = Bed::new("nd", n);
    let pod: Ipv6Addr = n.pod.parse().unwrap();
    let peer: Ipv6Addr = n.peer.parse().unwrap();
    let snm = "ff02::1:ff00:a";
    let cases: [(&str, Vec<u8>, &str); 8] = [
        (
            "a neighbour solicitation for the pod",
            icmp6("fe80::1", snm, 135, &pod.octets()),
            TO,
        ),
        (
            "a neighbour solicitation by the pod",
            icmp6(n.pod, "ff02::1:ff00:14", 135, &peer.octets()),
            FROM,
        ),
        (
            "a neighbour advertisement by the pod",
            icmp6(n.pod, n.peer, 136, &pod.octets()),
            FROM,
        ),
        (
            "a neighbour advertisement to the pod",
            icmp6(n.peer, n.pod, 136, &peer.octets()),
            TO,
        ),
        (
            "a router solicitation",
            icmp6("fe80::a", "ff02::2", 133, &[]),
            FROM,
        ),
        (
            "a router advertisement",
            icmp6("fe80::1", "ff02::1", 134, &[0; 8]),
            TO,
        ),
        (
            "an MLDv2 report",
            icmp6("fe80::a", "ff02::16", 143, &[0; 4]),
            FROM,
        ),
        ("an ARP request", arp(V4.peer, V4.pod), TO),
    ];
    for (what, pkt, prog) in &cases {
        bed.check(prog, pkt, OK, None, what);
    }
    bed.check(
        FROM,
        &arp(V4.pod, V4.peer),
        OK,
        None,
        "the pod's ARP request",
    );
    // other ICMPv6 is judged
    bed.check(
        TO,
        &echo_request(n.peer, n.pod, 1),
        SHOT,
        Some((EP, DeniedIngress)),
        "an ICMPv6 echo request",
    );
}
