//! Conntrack consistency on crafted packets: a reused tuple starts fresh,
//! a forward hit restores the entries its replies need, SNAT ports are
//! claimed without ever taking another client's.

use aya::maps::{HashMap, PerCpuArray};
use etherparse::PacketBuilder;
use lb_common::{
    BACKEND_LOCAL, BeU16, CT_F_CLOSING, CT_F_ESTABLISHED, CT_FWD, CT_REV, CT_RSNAT, CT_SNAT, CtKey,
    CtValue, PROTO_TCP, SNAT_LOW_MAX, SNAT_LOW_MIN, SNAT_PORT_MAX, SNAT_PORT_MIN, is_snat_port,
};

use super::test_run::{Bed, TC_ACT_OK, assert_checksums, dst4, ip, src4, tcp4};

const TC_ACT_SHOT: u32 = 2;
const CLIENT: [u8; 4] = [10, 100, 0, 200];
const NODE: [u8; 4] = [10, 100, 0, 1];

fn tcp_flags(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, flags: &str) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xc8], [2, 0, 0, 0, 0, 1])
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1000, 64000);
    let b = match flags {
        "rst" => b.rst(),
        "synack" => b.syn().ack(1),
        _ => b.ack(1),
    };
    let mut v = Vec::new();
    b.write(&mut v, b"").unwrap();
    v
}

pub(super) fn counter(bed: &Bed, name: &str) -> u64 {
    let i = lb_common::COUNTER_NAMES
        .iter()
        .position(|n| *n == name)
        .unwrap();
    let m: PerCpuArray<_, u64> =
        PerCpuArray::try_from(bed.ebpf.map(lb_common::MAP_COUNTERS).unwrap()).unwrap();
    m.get(&(i as u32), 0).unwrap().iter().sum()
}

fn entry(bed: &Bed, kind: u8) -> Option<(CtKey, CtValue)> {
    bed.ct().into_iter().find(|(k, _)| k.kind == kind)
}

fn delete(bed: &mut Bed, k: &CtKey) {
    let mut m: HashMap<_, CtKey, CtValue> =
        HashMap::try_from(bed.ebpf.map_mut(lb_common::MAP_CT).unwrap()).unwrap();
    m.remove(k).unwrap();
}

/// A NodePort 10.100.0.1:30080 served by 10.244.2.10:8080 on another node.
fn remote_bed(tag: &str) -> Bed {
    let mut bed = Bed::new(tag);
    bed.service(
        "10.100.0.1",
        30080,
        PROTO_TCP,
        Some(("10.244.2.10", 8080, 0)),
    );
    bed
}

#[test]
fn a_new_connection_on_a_reused_tuple_starts_fresh() {
    let bed = Bed::with_node_port("reuse");
    let syn = tcp4(CLIENT, 40001, NODE, 30080, true);
    bed.run("lb_tc_ingress", &syn);
    bed.run(
        "lb_tc_ingress",
        &tcp_flags(CLIENT, 40001, NODE, 30080, "ack"),
    );
    bed.run(
        "lb_tc_ingress",
        &tcp_flags(CLIENT, 40001, NODE, 30080, "rst"),
    );
    let (_, v) = entry(&bed, CT_FWD).unwrap();
    assert!(v.flags & CT_F_CLOSING != 0, "the first connection ended");
    let restored = counter(&bed, "ct_restored");
    let (verdict, out) = bed.run("lb_tc_ingress", &syn);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(dst4(&out), ("10.244.1.10".into(), 8080));
    let (_, v) = entry(&bed, CT_FWD).unwrap();
    assert_eq!(
        v.flags & (CT_F_CLOSING | CT_F_ESTABLISHED),
        0,
        "the new connection does not inherit the old one's closing life"
    );
    assert_eq!(
        v.flags & BACKEND_LOCAL,
        BACKEND_LOCAL,
        "the backend's flags stay"
    );
    assert_eq!(counter(&bed, "ct_restored"), restored + 1);
    // A retransmitted SYN of a connection still opening changes nothing.
    bed.run("lb_tc_ingress", &syn);
    assert_eq!(counter(&bed, "ct_restored"), restored + 1);
}

#[test]
fn a_forward_hit_restores_the_entries_its_replies_need() {
    let mut bed = remote_bed("restore");
    let syn = tcp4(CLIENT, 40002, NODE, 30080, true);
    let (_, fwd) = bed.run("lb_tc_ingress", &syn);
    let (_, out) = bed.run("lb_tc_egress", &fwd);
    let (_, port) = src4(&out);
    // LRU eviction takes the reply-side entries while the forward one lives.
    for kind in [CT_REV, CT_RSNAT, CT_SNAT] {
        let (k, _) = entry(&bed, kind).unwrap();
        delete(&mut bed, &k);
    }
    let (verdict, fwd) = bed.run("lb_tc_ingress", &tcp4(CLIENT, 40002, NODE, 30080, true));
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(dst4(&fwd), ("10.244.2.10".into(), 8080));
    for kind in [CT_REV, CT_RSNAT, CT_SNAT] {
        assert!(
            entry(&bed, kind).is_some(),
            "kind {kind} restored: {:?}",
            bed.ct()
        );
    }
    // The SNAT keeps its port; the SYN-ACK finds its way back.
    let (_, out) = bed.run("lb_tc_egress", &fwd);
    assert_eq!(src4(&out), ("10.100.0.1".into(), port));
    let synack = tcp_flags([10, 244, 2, 10], 8080, NODE, port, "synack");
    let (_, back) = bed.run("lb_tc_ingress", &synack);
    assert_eq!(dst4(&back), ("10.100.0.200".into(), 40002));
    let (_, out) = bed.run("lb_tc_egress", &back);
    assert_eq!(
        src4(&out),
        ("10.100.0.1".into(), 30080),
        "the reply leaves as the frontend"
    );
}

#[test]
fn two_clients_on_the_same_port_get_their_own_snat_ports_and_replies() {
    let bed = remote_bed("twoclients");
    let mut ports = vec![];
    for c in [[10, 100, 0, 200], [10, 100, 0, 201]] {
        let (_, fwd) = bed.run("lb_tc_ingress", &tcp4(c, 40003, NODE, 30080, true));
        let (_, out) = bed.run("lb_tc_egress", &fwd);
        let (_, port) = src4(&out);
        assert!(is_snat_port(port), "{port}");
        ports.push((c, port));
    }
    assert_ne!(ports[0].1, ports[1].1);
    for (c, port) in ports {
        let (_, back) = bed.run(
            "lb_tc_ingress",
            &tcp_flags([10, 244, 2, 10], 8080, NODE, port, "synack"),
        );
        assert_eq!(
            dst4(&back),
            (format!("{}.{}.{}.{}", c[0], c[1], c[2], c[3]), 40003)
        );
    }
}

#[test]
fn no_free_snat_port_drops_the_new_flow_counted_and_takes_nobody_elses() {
    let mut bed = remote_bed("exhaust");
    // Every port of the range is held towards this backend by other clients.
    {
        let mut m: HashMap<_, CtKey, CtValue> =
            HashMap::try_from(bed.ebpf.map_mut(lb_common::MAP_CT).unwrap()).unwrap();
        for port in (SNAT_LOW_MIN..=SNAT_LOW_MAX).chain(SNAT_PORT_MIN..=SNAT_PORT_MAX) {
            let k = CtKey {
                saddr: ip("10.244.2.10"),
                daddr: ip("10.100.0.1"),
                sport: BeU16::from_host(8080),
                dport: BeU16::from_host(port),
                proto: PROTO_TCP,
                kind: CT_RSNAT,
                _pad: [0; 2],
            };
            let v = CtValue {
                addr: ip("10.100.0.99"),
                port: BeU16::from_host(port),
                ..Default::default()
            };
            m.insert(k, v, 0).unwrap();
        }
    }
    let before = bed.counters();
    let (verdict, _) = bed.run("lb_tc_ingress", &tcp4(CLIENT, 40004, NODE, 30080, true));
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(bed.moved(&before), [("drop_snat_ports_exhausted", 1)]);
    let theirs = bed
        .ct()
        .into_iter()
        .filter(|(k, v)| k.kind == CT_RSNAT && v.addr == ip("10.100.0.99"))
        .count();
    let all =
        (SNAT_LOW_MAX - SNAT_LOW_MIN) as usize + 1 + (SNAT_PORT_MAX - SNAT_PORT_MIN) as usize + 1;
    assert_eq!(theirs, all, "no entry was overwritten");
}

#[test]
fn a_packet_from_outside_claiming_a_local_pod_address_is_dropped_not_hairpinned() {
    let mut bed = Bed::with_node_port("spoof");
    {
        let mut eps: HashMap<_, lb_common::NetAddr, lb_common::PolEndpoint> =
            HashMap::try_from(bed.ebpf.map_mut(lb_common::MAP_POL_EP).unwrap()).unwrap();
        let ep = lb_common::PolEndpoint {
            ep_id: 1,
            identity: 300,
            ..Default::default()
        };
        eps.insert(ip("10.244.1.10"), ep, 0).unwrap();
    }
    let spoofed = tcp4([10, 244, 1, 10], 40005, NODE, 30080, true);
    let before = bed.counters();
    let (verdict, _) = bed.run("lb_tc_ingress", &spoofed);
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(bed.moved(&before), [("drop_spoofed_pod_source", 1)]);
    let before = bed.counters();
    let (verdict, _) = bed.run_xdp(&spoofed);
    assert_eq!(verdict, 1, "XDP_DROP");
    assert_eq!(bed.moved(&before), [("drop_spoofed_pod_source", 1)]);
    assert!(
        bed.ct().is_empty(),
        "no hairpin SNAT entries: {:?}",
        bed.ct()
    );
    // (The pod itself, from its own interface, still gets the hairpin: the
    // lab's held NodePort test.)
}

const LB_IP: [u8; 4] = [192, 0, 2, 10];

/// One client port towards two frontends of one backend (a NodePort and a
/// LoadBalancer IP): each flow's replies come back from its own frontend,
/// and each flow's packets reach the backend on a tuple of their own.
/// Returns the tuples (source address, port) the backend saw.
fn two_frontends_one_client_port(bed: &Bed, backend: [u8; 4], local: bool) -> Vec<(String, u16)> {
    let mut seen = vec![];
    for (front, fport) in [(NODE, 30080), (LB_IP, 80)] {
        let (verdict, fwd) = bed.run("lb_tc_ingress", &tcp4(CLIENT, 40005, front, fport, true));
        assert_eq!(verdict, TC_ACT_OK);
        let (_, out) = bed.run("lb_tc_egress", &fwd);
        let b = format!(
            "{}.{}.{}.{}",
            backend[0], backend[1], backend[2], backend[3]
        );
        assert_eq!(dst4(&out), (b, 8080));
        assert_checksums(&out);
        seen.push(src4(&out));
    }
    assert_ne!(
        seen[0], seen[1],
        "the backend saw one tuple for two connections"
    );
    for ((front, fport), (to, port)) in [(NODE, 30080), (LB_IP, 80)].into_iter().zip(&seen) {
        let to: std::net::Ipv4Addr = to.parse().unwrap();
        let reply = tcp_flags(backend, 8080, to.octets(), *port, "synack");
        // A reply to the node (SNAT'd) is translated back at ingress first;
        // a local backend's reply to the client goes straight to egress.
        let reply = if to.octets() == NODE {
            bed.run("lb_tc_ingress", &reply).1
        } else {
            assert!(local);
            reply
        };
        let (_, out) = bed.run("lb_tc_egress", &reply);
        assert_eq!(dst4(&out), ("10.100.0.200".into(), 40005));
        let f = format!("{}.{}.{}.{}", front[0], front[1], front[2], front[3]);
        assert_eq!(
            src4(&out),
            (f, fport),
            "a reply must come from its own flow's frontend"
        );
        assert_checksums(&out);
    }
    seen
}

#[test]
fn one_client_port_to_two_frontends_of_a_remote_backend_keeps_two_flows() {
    let mut bed = remote_bed("twofronts");
    bed.service("192.0.2.10", 80, PROTO_TCP, Some(("10.244.2.10", 8080, 0)));
    let seen = two_frontends_one_client_port(&bed, [10, 244, 2, 10], false);
    assert!(
        seen.iter()
            .all(|(a, p)| a == "10.100.0.1" && is_snat_port(*p)),
        "{seen:?}"
    );
}

#[test]
fn one_client_port_to_two_frontends_of_a_local_backend_snats_the_second() {
    let mut bed = Bed::with_node_port("twofrontsl");
    bed.service(
        "192.0.2.10",
        80,
        PROTO_TCP,
        Some(("10.244.1.10", 8080, BACKEND_LOCAL)),
    );
    let seen = two_frontends_one_client_port(&bed, [10, 244, 1, 10], true);
    assert_eq!(
        seen[0],
        ("10.100.0.200".into(), 40005),
        "the first flow keeps its client"
    );
    assert_eq!(seen[1].0, "10.100.0.1", "the second is SNAT'd: {seen:?}");
    // Both flows go on: a data packet of each reaches the backend on its tuple.
    for ((front, fport), want) in [(NODE, 30080), (LB_IP, 80)].into_iter().zip(&seen) {
        let (_, fwd) = bed.run(
            "lb_tc_ingress",
            &tcp_flags(CLIENT, 40005, front, fport, "ack"),
        );
        let (_, out) = bed.run("lb_tc_egress", &fwd);
        assert_eq!(&src4(&out), want);
    }
}

/// A flow that closed (its client sent an RST) leaves its tuple free: the
/// same client port towards another frontend of the local backend keeps
/// its client, as netfilter lets a new SYN take a closing connection's
/// tuple (a lab client's ports come round between frontends).
#[test]
fn a_closed_flows_client_port_to_another_frontend_keeps_its_client() {
    let mut bed = Bed::with_node_port("closedtuple");
    bed.service(
        "192.0.2.10",
        80,
        PROTO_TCP,
        Some(("10.244.1.10", 8080, BACKEND_LOCAL)),
    );
    let (_, fwd) = bed.run("lb_tc_ingress", &tcp4(CLIENT, 40006, NODE, 30080, true));
    assert_eq!(bed.run("lb_tc_egress", &fwd).1.len(), fwd.len());
    bed.run(
        "lb_tc_ingress",
        &tcp_flags(CLIENT, 40006, NODE, 30080, "rst"),
    );
    let (_, fwd) = bed.run("lb_tc_ingress", &tcp4(CLIENT, 40006, LB_IP, 80, true));
    let (_, out) = bed.run("lb_tc_egress", &fwd);
    assert_eq!(dst4(&out), ("10.244.1.10".into(), 8080));
    assert_eq!(
        src4(&out),
        ("10.100.0.200".into(), 40006),
        "the closed flow's tuple is taken again, not SNAT'd"
    );
}

/// The datapath counts entries made under new keys, not replacements: with
/// the sweep's counts the agent tells what the LRU evicted.
#[test]
fn new_conntrack_entries_are_counted_and_replacements_are_not() {
    let bed = Bed::with_node_port("ctnew");
    let new = |bed: &Bed| counter(bed, "ct_entries_new");
    let before = new(&bed);
    bed.run("lb_tc_ingress", &tcp4(CLIENT, 40030, NODE, 30080, true));
    assert_eq!(new(&bed) - before, 2, "forward and reverse");
    bed.run(
        "lb_tc_ingress",
        &tcp_flags(CLIENT, 40030, NODE, 30080, "ack"),
    );
    bed.run("lb_tc_ingress", &tcp4(CLIENT, 40030, NODE, 30080, true));
    assert_eq!(
        new(&bed) - before,
        2,
        "a new connection on the tuple replaces its entries"
    );
    let remote = remote_bed("ctnew2");
    let before = new(&remote);
    remote.run("lb_tc_ingress", &tcp4(CLIENT, 40031, NODE, 30080, true));
    assert_eq!(new(&remote) - before, 4, "and the SNAT pair");
}
