//! Translation: DNAT, SNAT to remote backends, IPv6, checksums.

use super::*;

#[test]
fn syn_to_a_node_port_is_dnated_with_valid_checksums_and_tracked() {
    let bed = Bed::with_node_port("syn");
    let syn = tcp4([10, 100, 0, 200], 40000, [10, 100, 0, 1], 30080, true);
    let before = bed.counters();
    let (verdict, out) = bed.run("lb_tc_ingress", &syn);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(
        bed.moved(&before),
        [("tc_dnat", 1), ("ct_created", 1), ("ct_entries_new", 2)]
    );
    assert_eq!(dst4(&out), ("10.244.1.10".into(), 8080));
    assert_eq!(
        src4(&out),
        ("10.100.0.200".into(), 40000),
        "a local backend sees the client"
    );
    assert_checksums(&out);
    let kinds: Vec<u8> = bed.ct().iter().map(|(k, _)| k.kind).collect();
    assert!(
        kinds.contains(&CT_FWD) && kinds.contains(&CT_REV) && !kinds.contains(&CT_SNAT),
        "{kinds:?}"
    );
    // the backend's reply leaves through egress as the frontend
    let reply = tcp4([10, 244, 1, 10], 8080, [10, 100, 0, 200], 40000, false);
    let before = bed.counters();
    let (verdict, out) = bed.run("lb_tc_egress", &reply);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(bed.moved(&before), [("tc_reverse_dnat", 1)]);
    assert_eq!(src4(&out), ("10.100.0.1".into(), 30080));
    assert_checksums(&out);
    // a later packet of the flow reuses the entry
    let ack = tcp4([10, 100, 0, 200], 40000, [10, 100, 0, 1], 30080, false);
    let before = bed.counters();
    assert_eq!(
        dst4(&bed.run("lb_tc_ingress", &ack).1),
        ("10.244.1.10".into(), 8080)
    );
    assert_eq!(bed.moved(&before), [("tc_dnat", 1)]);
}

#[test]
fn remote_backend_gets_snat_and_its_reply_is_translated_back() {
    let mut bed = Bed::new("snat");
    bed.service(
        "10.100.0.1",
        30080,
        PROTO_TCP,
        Some(("10.244.2.10", 8080, 0)),
    );
    let syn = tcp4([10, 100, 0, 200], 40001, [10, 100, 0, 1], 30080, true);
    let before = bed.counters();
    let (_, fwd) = bed.run("lb_tc_ingress", &syn);
    assert_eq!(dst4(&fwd), ("10.244.2.10".into(), 8080));
    assert_eq!(
        bed.moved(&before),
        [("tc_dnat", 1), ("ct_created", 1), ("ct_entries_new", 4)],
        "four entries: forward, reverse, SNAT, reverse SNAT"
    );
    // at egress the source becomes the node, at a port of the SNAT range
    let before = bed.counters();
    let (_, out) = bed.run("lb_tc_egress", &fwd);
    assert_eq!(bed.moved(&before), [("tc_snat", 1)]);
    let (node, port) = src4(&out);
    assert_eq!(node, "10.100.0.1");
    assert!(lb_common::is_snat_port(port), "{port}");
    assert_checksums(&out);
    // the reply comes back to the node and gets the client as destination...
    let reply = tcp4([10, 244, 2, 10], 8080, [10, 100, 0, 1], port, false);
    let before = bed.counters();
    let (_, back) = bed.run("lb_tc_ingress", &reply);
    assert_eq!(bed.moved(&before), [("tc_reverse_snat", 1)]);
    assert_eq!(dst4(&back), ("10.100.0.200".into(), 40001));
    assert_checksums(&back);
    // ...and the frontend as source on its way out
    let before = bed.counters();
    let (_, out) = bed.run("lb_tc_egress", &back);
    assert_eq!(bed.moved(&before), [("tc_reverse_dnat", 1)]);
    assert_eq!(src4(&out), ("10.100.0.1".into(), 30080));
    assert_checksums(&out);
    let kinds: Vec<u8> = bed.ct().iter().map(|(k, _)| k.kind).collect();
    for k in [CT_FWD, CT_REV, CT_SNAT, CT_RSNAT] {
        assert!(kinds.contains(&k), "{kinds:?}");
    }
}

#[test]
fn udp_over_ipv6_is_translated_with_a_valid_checksum() {
    let mut bed = Bed::new("udp6");
    bed.service(
        "fd00:100::1",
        30053,
        PROTO_UDP,
        Some(("fd00:244:1::a", 5353, BACKEND_LOCAL)),
    );
    let q = udp6("fd00:100::200", 50000, "fd00:100::1", 30053);
    let (verdict, out) = bed.run("lb_tc_ingress", &q);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(dst6(&out), ("fd00:244:1::a".into(), 5353));
    assert_checksums(&out);
}

/// On a device that delivers CHECKSUM_COMPLETE, a translated packet keeps
/// skb->csum equal to its data's sum (the kernel's test run checks it and
/// fails with EBADMSG otherwise: a "hw csum failure" on a real device),
/// IPv6 included, in both directions.
#[test]
fn translation_keeps_a_complete_checksum_right_on_ipv6_and_ipv4() {
    use std::os::fd::AsFd as _;
    const BPF_F_TEST_SKB_CHECKSUM_COMPLETE: u32 = 1 << 2;
    let bed = Bed::with_node_ports("csumc");
    let run = |prog: &str, pkt: &[u8]| {
        let p: &SchedClassifier = bed.ebpf.program(prog).unwrap().try_into().unwrap();
        crate::datapath::sys::prog_test_run(
            p.fd().unwrap().as_fd(),
            pkt,
            BPF_F_TEST_SKB_CHECKSUM_COMPLETE,
        )
        .unwrap_or_else(|e| panic!("{prog}: skb->csum no longer matches the packet: {e}"))
    };
    let (verdict, out) = run(
        "lb_tc_ingress",
        &udp6("fd00:100::200", 50020, "fd00:100::1", 30053),
    );
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(dst6(&out), ("fd00:244:1::a".into(), 5353), "translated");
    assert_checksums(&out);
    let (_, out) = run(
        "lb_tc_egress",
        &udp6("fd00:244:1::a", 5353, "fd00:100::200", 50020),
    );
    assert_eq!(
        src6(&out),
        ("fd00:100::1".into(), 30053),
        "reverse translated"
    );
    assert_checksums(&out);
    let (_, out) = run(
        "lb_tc_ingress",
        &tcp4([10, 100, 0, 200], 40020, [10, 100, 0, 1], 30080, true),
    );
    assert_eq!(dst4(&out), ("10.244.1.10".into(), 8080));
    assert_checksums(&out);
}
