//! One parser for TC and XDP: both understand the same packets (IPv4
//! options included) and refuse the same ones (a wrong IP version).

use super::*;

const CLIENT: [u8; 4] = [10, 100, 0, 200];
const NODE: [u8; 4] = [10, 100, 0, 1];

#[test]
fn xdp_translates_an_ipv4_packet_with_options_as_tc_does() {
    let bed = Bed::with_node_port("xdpopt");
    // TC, as before: DNAT'd, the flow tracked.
    let before = bed.counters();
    let (verdict, out) = bed.run(
        "lb_tc_ingress",
        &tcp4_with_options(CLIENT, 40100, NODE, 30080, true),
    );
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(dst4(&out), ("10.244.1.10".into(), 8080));
    assert_checksums(&out);
    assert_eq!(
        bed.moved(&before),
        [("tc_dnat", 1), ("ct_created", 1), ("ct_entries_new", 2)]
    );
    // XDP makes the same decision for a new flow...
    let before = bed.counters();
    let (verdict, out) = bed.run_xdp(&tcp4_with_options(CLIENT, 40101, NODE, 30080, true));
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(dst4(&out), ("10.244.1.10".into(), 8080), "XDP DNAT'd it");
    assert_eq!(src4(&out), ("10.100.0.200".into(), 40101));
    assert_eq!(
        &ipv4(&out).options[..],
        [0x94, 0x04, 0, 0],
        "the options stay"
    );
    assert_checksums(&out);
    assert_eq!(
        bed.moved(&before),
        [("ct_created", 1), ("xdp_dnat", 1), ("ct_entries_new", 2)]
    );
    // ... and for the flow's next segment, through its entry.
    let before = bed.counters();
    let (verdict, out) = bed.run_xdp(&tcp4_with_options(CLIENT, 40101, NODE, 30080, false));
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(dst4(&out), ("10.244.1.10".into(), 8080));
    assert_checksums(&out);
    assert_eq!(bed.moved(&before), [("xdp_dnat", 1)]);
}

#[test]
fn tc_and_xdp_pass_a_packet_with_a_wrong_ip_version_untouched() {
    let bed = Bed::with_node_ports("badver");
    let good6 = udp6("fd00:100::200", 50100, "fd00:100::1", 30053);
    // etherparse writes only valid headers: the version nibble is set here.
    let mut bad6 = udp6("fd00:100::200", 50101, "fd00:100::1", 30053);
    bad6[14] = 0x40 | (bad6[14] & 0x0f);
    let mut bad4 = tcp4(CLIENT, 40102, NODE, 30080, true);
    bad4[14] = 0x65;
    for (what, pkt) in [
        ("IPv6 header of version 4", bad6),
        ("IPv4 header of version 6", bad4),
    ] {
        let before = bed.counters();
        assert_eq!(
            bed.run_xdp(&pkt),
            (XDP_PASS, pkt.clone()),
            "{what}: untouched through XDP"
        );
        assert_eq!(bed.moved(&before), [("xdp_pass", 1)], "{what} at XDP");
        let before = bed.counters();
        assert_eq!(
            bed.run("lb_tc_ingress", &pkt),
            (TC_ACT_OK, pkt.clone()),
            "{what}: untouched through TC"
        );
        assert_eq!(bed.moved(&before), [("pass_unparsed", 1)], "{what} at TC");
    }
    assert!(bed.ct().is_empty(), "nothing tracked");
    // The frontend is there: the same datagram with version 6 is translated.
    let before = bed.counters();
    let (verdict, out) = bed.run_xdp(&good6);
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(dst6(&out), ("fd00:244:1::a".into(), 5353));
    assert_eq!(
        bed.moved(&before),
        [("ct_created", 1), ("xdp_dnat", 1), ("ct_entries_new", 2)]
    );
}
