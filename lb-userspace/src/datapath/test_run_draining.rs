//! Draining on crafted packets: a flow whose backend left the usable set
//! but is still listed (the agent keeps it flagged `BACKEND_DRAINING`, in
//! no slot) keeps going to it while it is established TCP; a SYN or a UDP
//! datagram on its entry picks a usable backend; a backend gone from the
//! maps (gone from every slice) re-balances whatever the packet.

use aya::maps::HashMap;
use etherparse::PacketBuilder;
use lb_common::{
    BACKEND_DRAINING, BACKEND_LOCAL, Backend, BeU16, CT_FWD, PROTO_TCP, PROTO_UDP, SCOPE_INTERNAL,
    SVC_FLAG_EXTERNAL, ServiceKey, ServiceValue,
};

use super::test_run::{Bed, TC_ACT_OK, dst4, ip, tcp4};

const CLIENT: [u8; 4] = [10, 100, 0, 200];
const NODE: [u8; 4] = [10, 100, 0, 1];
const XDP_PASS: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

fn udp4(sport: u16, dport: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xc8], [2, 0, 0, 0, 0, 1])
        .ipv4(CLIENT, NODE, 64)
        .udp(sport, dport);
    let mut v = Vec::new();
    b.write(&mut v, b"query\n").unwrap();
    v
}

/// A frontend 10.100.0.1:`port` with the local backends 10.244.1.10 and
/// 10.244.1.11 at 8080.
fn two_backends(bed: &mut Bed, port: u16, proto: u8) {
    bed.frontend(
        "10.100.0.1",
        port,
        proto,
        SVC_FLAG_EXTERNAL,
        &[
            ("10.244.1.10", 8080, BACKEND_LOCAL),
            ("10.244.1.11", 8080, BACKEND_LOCAL),
        ],
    );
}

/// What the agent writes when the endpoint at `addr` leaves the usable
/// set of frontend `port`: the slots name only the others, then the
/// backend gets the draining flag (`gone`: it is deleted instead, as when
/// the endpoint left every slice).
fn leave(bed: &mut Bed, port: u16, proto: u8, addr: &str, gone: bool) {
    let key = ServiceKey::frontend(
        ip("10.100.0.1"),
        BeU16::from_host(port),
        proto,
        SCOPE_INTERNAL,
    );
    let bes: HashMap<_, u32, Backend> =
        HashMap::try_from(bed.ebpf.map(lb_common::MAP_BACKENDS).unwrap()).unwrap();
    let all: Vec<(u32, Backend)> = bes.iter().filter_map(Result::ok).collect();
    let (id, b) = *all
        .iter()
        .find(|(_, b)| b.addr == ip(addr) && b.proto == proto)
        .expect("the backend");
    let mut svcs: HashMap<_, ServiceKey, ServiceValue> =
        HashMap::try_from(bed.ebpf.map_mut(lb_common::MAP_SERVICES).unwrap()).unwrap();
    let fe = svcs.get(&key, 0).unwrap();
    let kept: Vec<ServiceValue> = (1..=fe.count)
        .map(|s| svcs.get(&key.with_slot(s), 0).unwrap())
        .filter(|v| v.backend_id != id)
        .collect();
    for (i, v) in kept.iter().enumerate() {
        svcs.insert(key.with_slot(i as u16 + 1), v, 0).unwrap();
    }
    let count = kept.len() as u16;
    svcs.insert(key, ServiceValue { count, ..fe }, 0).unwrap();
    for s in count + 1..=fe.count {
        svcs.remove(&key.with_slot(s)).unwrap();
    }
    let mut bes: HashMap<_, u32, Backend> =
        HashMap::try_from(bed.ebpf.map_mut(lb_common::MAP_BACKENDS).unwrap()).unwrap();
    if gone {
        bes.remove(&id).unwrap();
    } else {
        let v = Backend {
            flags: b.flags | BACKEND_DRAINING,
            ..b
        };
        bes.insert(id, v, 0).unwrap();
    }
}

fn tcp(sport: u16, dport: u16, syn: bool) -> Vec<u8> {
    tcp4(CLIENT, sport, NODE, dport, syn)
}

/// The other of the two backends.
fn other(addr: &str) -> String {
    if addr == "10.244.1.10" {
        "10.244.1.11".into()
    } else {
        "10.244.1.10".into()
    }
}

/// Opens a TCP flow (SYN, then the client's ACK) from `sport`; its backend.
fn open(bed: &Bed, sport: u16, dport: u16) -> String {
    let (verdict, out) = bed.run("lb_tc_ingress", &tcp(sport, dport, true));
    assert_eq!(verdict, TC_ACT_OK);
    let (first, _) = dst4(&out);
    let (_, out) = bed.run("lb_tc_ingress", &tcp(sport, dport, false));
    assert_eq!(dst4(&out).0, first);
    first
}

#[test]
fn an_established_flow_drains_to_its_backend_while_new_ones_and_syns_rebalance() {
    let mut bed = Bed::new("drain");
    two_backends(&mut bed, 30080, PROTO_TCP);
    let first = open(&bed, 40001, 30080);
    leave(&mut bed, 30080, PROTO_TCP, &first, false);
    // The established flow keeps its backend, through TC and XDP alike.
    for _ in 0..3 {
        let (verdict, out) = bed.run("lb_tc_ingress", &tcp(40001, 30080, false));
        assert_eq!(verdict, TC_ACT_OK);
        assert_eq!(dst4(&out), (first.clone(), 8080), "the held flow drains");
        let (verdict, out) = bed.run_xdp(&tcp(40001, 30080, false));
        assert_eq!(verdict, XDP_PASS);
        assert_eq!(dst4(&out), (first.clone(), 8080), "XDP keeps it too");
    }
    // New flows go to the usable backend only.
    for sport in 41000..41016 {
        let (_, out) = bed.run("lb_tc_ingress", &tcp(sport, 30080, true));
        assert_eq!(dst4(&out).0, other(&first), "new flow from {sport}");
    }
    // A SYN on the draining flow's tuple (the client reusing its port)
    // opens a new connection: it re-balances. XDP leaves it to TC.
    let syn = tcp(40001, 30080, true);
    assert_eq!(bed.run_xdp(&syn), (XDP_PASS, syn.clone()));
    let (verdict, out) = bed.run("lb_tc_ingress", &syn);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(dst4(&out).0, other(&first));
    let fwd = bed
        .ct()
        .into_iter()
        .find(|(k, _)| k.kind == CT_FWD && k.sport == BeU16::from_host(40001))
        .unwrap();
    assert_eq!(
        crate::compute::desired::ip_of(&fwd.1.addr).to_string(),
        other(&first),
        "the tuple's entry follows the new connection"
    );
}

#[test]
fn a_flow_still_opening_drains_on_its_ack_and_a_draining_only_service_refuses_new_flows() {
    let mut bed = Bed::new("drainsyn");
    two_backends(&mut bed, 30081, PROTO_TCP);
    // Only the SYN went through; the backend leaves before the client's
    // ACK: the handshake completes with the backend that answered it.
    let (_, out) = bed.run("lb_tc_ingress", &tcp(40002, 30081, true));
    let first = dst4(&out).0;
    leave(&mut bed, 30081, PROTO_TCP, &first, false);
    let (_, out) = bed.run("lb_tc_ingress", &tcp(40002, 30081, false));
    assert_eq!(dst4(&out).0, first);
    // The other one leaves too: no usable backend, the flow still drains,
    // and a new connection is refused at once.
    leave(&mut bed, 30081, PROTO_TCP, &other(&first), false);
    let (verdict, out) = bed.run("lb_tc_ingress", &tcp(40002, 30081, false));
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(dst4(&out).0, first);
    let (verdict, _) = bed.run("lb_tc_ingress", &tcp(40003, 30081, true));
    assert_eq!(verdict, TC_ACT_REDIRECT, "ICMP port unreachable");
}

#[test]
fn udp_and_flows_whose_endpoint_left_every_slice_rebalance() {
    let mut bed = Bed::new("drainudp");
    two_backends(&mut bed, 30053, PROTO_UDP);
    let q = udp4(50000, 30053);
    let (_, out) = bed.run("lb_tc_ingress", &q);
    let first = dst4(&out).0;
    leave(&mut bed, 30053, PROTO_UDP, &first, false);
    // XDP leaves the datagram to TC, which picks the usable backend.
    assert_eq!(bed.run_xdp(&q), (XDP_PASS, q.clone()));
    let (verdict, out) = bed.run("lb_tc_ingress", &q);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(dst4(&out).0, other(&first), "UDP moves on");
    let (_, out) = bed.run("lb_tc_ingress", &q);
    assert_eq!(dst4(&out).0, other(&first), "and stays");

    // TCP whose endpoint is gone from every slice (its backend deleted):
    // even an established flow re-balances.
    two_backends(&mut bed, 30082, PROTO_TCP);
    let first = open(&bed, 40004, 30082);
    leave(&mut bed, 30082, PROTO_TCP, &first, true);
    let (_, out) = bed.run("lb_tc_ingress", &tcp(40004, 30082, false));
    assert_eq!(dst4(&out).0, other(&first));
}
