//! Flows: XDP, the flow state from TCP flags, Maglev tables.

use super::*;

#[test]
fn xdp_translates_flows_to_local_backends_drops_what_tc_drops_and_passes_the_rest() {
    let mut bed = Bed::with_node_ports("xdp");
    // A new flow to a local backend: XDP makes its entries and translates.
    let syn = tcp4([10, 100, 0, 200], 40010, [10, 100, 0, 1], 30080, true);
    let before = bed.counters();
    let (verdict, out) = bed.run_xdp(&syn);
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(dst4(&out), ("10.244.1.10".into(), 8080));
    assert_checksums(&out);
    assert_eq!(
        bed.moved(&before),
        [("ct_created", 1), ("xdp_dnat", 1), ("ct_entries_new", 2)]
    );
    let kinds: Vec<u8> = bed.ct().iter().map(|(k, _)| k.kind).collect();
    assert!(
        kinds.contains(&CT_FWD) && kinds.contains(&CT_REV),
        "{kinds:?}"
    );
    // ... and its next packets through the entry.
    let ack = tcp4([10, 100, 0, 200], 40010, [10, 100, 0, 1], 30080, false);
    let before = bed.counters();
    let (verdict, out) = bed.run_xdp(&ack);
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(dst4(&out), ("10.244.1.10".into(), 8080));
    assert_checksums(&out);
    assert_eq!(bed.moved(&before), [("xdp_dnat", 1)]);
    let q = udp6("fd00:100::200", 50010, "fd00:100::1", 30053);
    bed.run("lb_tc_ingress", &q);
    let (_, out) = bed.run_xdp(&q);
    assert_eq!(dst6(&out), ("fd00:244:1::a".into(), 5353));
    assert_checksums(&out);
    // a fragment passes untouched (its ports are TC's to remember)
    let mf = tcp4_fragment([10, 100, 0, 200], 40010, [10, 100, 0, 1], 30080, 0, true);
    let before = bed.counters();
    assert_eq!(bed.run_xdp(&mf), (XDP_PASS, mf.clone()));
    assert_eq!(bed.moved(&before), [("xdp_pass", 1)]);
    // A backend on another node needs SNAT at egress: TC's, untouched here.
    bed.service(
        "10.100.0.1",
        30081,
        PROTO_TCP,
        Some(("10.244.2.10", 8080, 0)),
    );
    let syn = tcp4([10, 100, 0, 200], 40011, [10, 100, 0, 1], 30081, true);
    let before = bed.counters();
    assert_eq!(bed.run_xdp(&syn), (XDP_PASS, syn.clone()));
    assert_eq!(bed.moved(&before), [("xdp_pass", 1)]);
    // externalTrafficPolicy: Local without a local endpoint: dropped here.
    let ext_local = SVC_FLAG_EXTERNAL | lb_common::SVC_FLAG_EXT_LOCAL;
    bed.frontend("10.100.0.1", 30082, PROTO_TCP, ext_local, &[]);
    let syn = tcp4([10, 100, 0, 200], 40012, [10, 100, 0, 1], 30082, true);
    let before = bed.counters();
    assert_eq!(bed.run_xdp(&syn).0, XDP_DROP);
    assert_eq!(bed.moved(&before), [("drop_no_local_backend", 1)]);
}

#[test]
fn tcp_flags_drive_the_flow_state_the_sweep_reads() {
    let bed = Bed::with_node_port("fin");
    let syn = tcp4([10, 100, 0, 200], 40020, [10, 100, 0, 1], 30080, true);
    bed.run("lb_tc_ingress", &syn);
    let closing = |bed: &Bed| {
        bed.ct()
            .iter()
            .find(|(k, _)| k.kind == CT_FWD)
            .map(|(_, v)| v.flags & lb_common::CT_F_CLOSING != 0)
            .unwrap()
    };
    let flags = |bed: &Bed, kind: u8| {
        bed.ct()
            .iter()
            .find(|(k, _)| k.kind == kind)
            .map(|(_, v)| v.flags)
            .unwrap()
    };
    assert!(!closing(&bed));
    let est = lb_common::CT_F_ESTABLISHED;
    assert_eq!(flags(&bed, CT_FWD) & est, 0, "a bare SYN: not established");
    bed.run("lb_tc_ingress", &syn);
    assert_eq!(flags(&bed, CT_FWD) & est, 0, "a retransmitted SYN neither");
    // The backend's SYN-ACK (egress, reverse entry), then the client's ACK.
    let synack = tcp4_flags(
        [10, 244, 1, 10],
        8080,
        [10, 100, 0, 200],
        40020,
        TCP_SYN | TCP_ACK,
    );
    bed.run("lb_tc_egress", &synack);
    assert_ne!(flags(&bed, CT_REV) & est, 0, "the backend answered");
    let ack = tcp4([10, 100, 0, 200], 40020, [10, 100, 0, 1], 30080, false);
    bed.run("lb_tc_ingress", &ack);
    assert_ne!(
        flags(&bed, CT_FWD) & est,
        0,
        "the client completed the handshake"
    );
    assert_ne!(
        flags(&bed, CT_FWD) & BACKEND_LOCAL,
        0,
        "the backend's locality bit stays"
    );
    let fin = tcp4_flags(
        [10, 100, 0, 200],
        40020,
        [10, 100, 0, 1],
        30080,
        TCP_FIN | TCP_ACK,
    );
    let before = bed.counters();
    let (_, out) = bed.run("lb_tc_ingress", &fin);
    assert_eq!(bed.moved(&before), [("tc_dnat", 1)]);
    assert_eq!(
        dst4(&out),
        ("10.244.1.10".into(), 8080),
        "a FIN is still translated"
    );
    assert!(closing(&bed));
}

#[test]
fn new_flows_follow_the_maglev_table_and_fall_back_without_one() {
    use aya::maps::{HashOfMaps, MapData};
    let mut bed = Bed::new("maglev");
    let local = BACKEND_LOCAL;
    bed.frontend(
        "10.100.0.1",
        30080,
        PROTO_TCP,
        SVC_FLAG_EXTERNAL,
        &[("10.244.1.10", 8080, local), ("10.244.1.11", 8080, local)],
    );
    {
        let mut cfg: Array<_, Config> =
            Array::try_from(bed.ebpf.map_mut(lb_common::MAP_CONFIG).unwrap()).unwrap();
        let mut c = cfg.get(&0, 0).unwrap();
        c.maglev_size = 7;
        cfg.set(0, c, 0).unwrap();
    }
    let backends_of_new_flows =
        |bed: &Bed, first_port: u16| -> std::collections::BTreeSet<String> {
            (0..24)
                .map(|i| {
                    let syn = tcp4(
                        [10, 100, 0, 200],
                        first_port + i,
                        [10, 100, 0, 1],
                        30080,
                        true,
                    );
                    let (verdict, out) = bed.run("lb_tc_ingress", &syn);
                    assert_eq!(verdict, TC_ACT_OK);
                    assert_checksums(&out);
                    dst4(&out).0
                })
                .collect()
        };
    // No table: the 5-tuple hash spreads flows over both slots.
    assert_eq!(backends_of_new_flows(&bed, 41000).len(), 2);
    // A table naming slot 2 everywhere: every new flow goes there.
    {
        let mut outer: HashOfMaps<_, u32, MapData> =
            HashOfMaps::try_from(bed.ebpf.map_mut(lb_common::MAP_MAGLEV).unwrap()).unwrap();
        let table = crate::datapath::writer::maglev_table(&[2; 7]).expect("table");
        outer.insert(30080, &table, 0).expect("table swapped in");
    }
    assert_eq!(
        backends_of_new_flows(&bed, 42000),
        ["10.244.1.11".to_string()].into()
    );
    // The same table rewritten in place (no swap): new flows follow it.
    {
        let outer: HashOfMaps<_, u32, MapData> =
            HashOfMaps::try_from(bed.ebpf.map(lb_common::MAP_MAGLEV).unwrap()).unwrap();
        let id = outer.get(&30080, 0).unwrap().info().unwrap().id();
        crate::datapath::writer::rewrite_maglev_table(id, &[1; 7]).expect("rewritten");
        assert!(
            crate::datapath::writer::rewrite_maglev_table(id, &[1; 8]).is_err(),
            "a table of another size is refused"
        );
    }
    assert_eq!(
        backends_of_new_flows(&bed, 42500),
        ["10.244.1.10".to_string()].into()
    );
    // Entries outside the frontend's slots (a table mid-update) fall back.
    {
        let mut outer: HashOfMaps<_, u32, MapData> =
            HashOfMaps::try_from(bed.ebpf.map_mut(lb_common::MAP_MAGLEV).unwrap()).unwrap();
        let table = crate::datapath::writer::maglev_table(&[9; 7]).expect("table");
        outer.insert(30080, &table, 0).expect("table swapped in");
    }
    assert_eq!(backends_of_new_flows(&bed, 43000).len(), 2);
}

#[test]
fn xdp_asks_the_services_map_first_and_leaves_a_gone_frontends_flows_to_tc() {
    let mut bed = Bed::with_node_port("xdp-first");
    let syn = tcp4([10, 100, 0, 200], 40030, [10, 100, 0, 1], 30080, true);
    assert_eq!(dst4(&bed.run_xdp(&syn).1), ("10.244.1.10".into(), 8080));
    // The frontend goes; the flow's entries stay until the sweep.
    let key = ServiceKey::frontend(
        ip("10.100.0.1"),
        BeU16::from_host(30080),
        PROTO_TCP,
        SCOPE_INTERNAL,
    );
    let mut svcs: HashMap<_, ServiceKey, ServiceValue> =
        HashMap::try_from(bed.ebpf.map_mut(lb_common::MAP_SERVICES).unwrap()).unwrap();
    svcs.remove(&key).unwrap();
    // XDP's one lookup says "no Service": untouched, on to TC ...
    let ack = tcp4([10, 100, 0, 200], 40030, [10, 100, 0, 1], 30080, false);
    let before = bed.counters();
    assert_eq!(bed.run_xdp(&ack), (XDP_PASS, ack.clone()));
    assert_eq!(bed.moved(&before), [("xdp_pass", 1)]);
    // ... whose conntrack still carries the flow to its backend.
    let (_, out) = bed.run("lb_tc_ingress", &ack);
    assert_eq!(dst4(&out), ("10.244.1.10".into(), 8080));
    assert_checksums(&out);
}
