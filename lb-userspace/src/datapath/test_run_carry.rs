//! Conntrack across a carry (an agent restarted with a conntrack map of
//! another size): a flow the earlier agent's programs start after the
//! first copy is found by this agent's programs in the old map, at once.

use lb_common::{
    CT_FWD, CT_REV, CT_RSNAT, CtKey, CtValue, DEFAULT_CT_MAX, MAP_CT, TCP_ACK, TCP_SYN,
};

use super::test_run::{Bed, dst4, src4, tcp4, tcp4_flags};

const CLIENT: [u8; 4] = [10, 100, 0, 200];
const NODE: [u8; 4] = [10, 100, 0, 1];
const BACKEND: [u8; 4] = [10, 244, 1, 10];

/// The bed's entries of the flow from the client's `port`, by kind.
fn kinds(bed: &Bed, port: u16) -> Vec<u8> {
    let port = lb_common::BeU16::from_host(port);
    let mut k: Vec<u8> = bed
        .ct()
        .iter()
        .filter(|(k, _): &&(CtKey, _)| k.sport == port || k.dport == port)
        .map(|(k, _)| k.kind)
        .collect();
    k.sort();
    k
}

#[test]
fn a_handshake_the_earlier_programs_began_completes_under_a_carried_conntrack_map() {
    let old = Bed::with_node_port("carry");
    let backend = ("10.244.1.10".to_string(), 8080);
    let node_port = ("10.100.0.1".to_string(), 30080);
    // A flow from before the restart: the first copy brings it.
    old.run("lb_tc_ingress", &tcp4(CLIENT, 40001, NODE, 30080, true));
    let (new, carry) = old.carrying_ct(2 * DEFAULT_CT_MAX);
    assert_eq!(kinds(&new, 40001), [CT_FWD, CT_REV], "copied at load");

    // The earlier programs still run: a SYN they translate after the copy
    // has entries in their (old) map only.
    let (_, out) = old.run("lb_tc_ingress", &tcp4(CLIENT, 40002, NODE, 30080, true));
    assert_eq!(dst4(&out), backend);
    assert_eq!(kinds(&new, 40002), Vec::<u8>::new());

    // Its SYN-ACK leaves through this agent's programs: translated back to
    // the NodePort from the old map's entry, which becomes this map's.
    let synack = tcp4_flags(BACKEND, 8080, CLIENT, 40002, TCP_SYN | TCP_ACK);
    let (_, out) = new.run("lb_tc_egress", &synack);
    assert_eq!(
        src4(&out),
        node_port,
        "the SYN-ACK answers from the NodePort"
    );
    let (_, out) = new.run("lb_tc_ingress", &tcp4(CLIENT, 40002, NODE, 30080, false));
    assert_eq!(dst4(&out), backend, "the client's ACK reaches the backend");
    assert_eq!(
        kinds(&new, 40002),
        [CT_FWD, CT_REV],
        "adopted by the new map"
    );

    // The carry ends: the second copy brings what is left, then the
    // programs stop looking in the old map.
    let (_, _) = old.run("lb_tc_ingress", &tcp4(CLIENT, 40003, NODE, 30080, true));
    super::test_run::end_carry(new.pin_dir(), &new.ebpf, carry);
    assert_eq!(kinds(&new, 40003), [CT_FWD, CT_REV], "the second copy");
    let (_, _) = old.run("lb_tc_ingress", &tcp4(CLIENT, 40004, NODE, 30080, true));
    let synack = tcp4_flags(BACKEND, 8080, CLIENT, 40004, TCP_SYN | TCP_ACK);
    let (_, out) = new.run("lb_tc_egress", &synack);
    assert_eq!(
        src4(&out),
        ("10.244.1.10".to_string(), 8080),
        "after the carry the old map is not looked at"
    );
    assert!(
        !new.pin_dir().join(format!("{MAP_CT}_PREVIOUS")).exists(),
        "the old pin is gone"
    );
}

/// The SNAT port a new flow from the client's `port` claimed in `bed`.
fn snat_port_of(bed: &Bed, port: u16) -> u16 {
    let client = super::test_run::ip("10.100.0.200");
    bed.ct()
        .iter()
        .find(|(k, v)| k.kind == CT_RSNAT && v.addr == client && v.port.to_host() == port)
        .map(|(k, _)| k.dport.to_host())
        .expect("an SNAT'd flow claims a port")
}

#[test]
fn a_port_the_earlier_programs_handed_out_during_a_carry_is_not_handed_out_again() {
    let remote = |bed: &mut Bed| {
        bed.service(
            "10.100.0.1",
            30080,
            lb_common::PROTO_TCP,
            Some(("10.244.2.10", 8080, 0)),
        )
    };
    let syn = tcp4(CLIENT, 40001, NODE, 30080, true);
    // Where this flow's probe for a port starts.
    let mut probe = Bed::new("snatprobe");
    remote(&mut probe);
    probe.run("lb_tc_ingress", &syn);
    let first = snat_port_of(&probe, 40001);

    let mut old = Bed::new("carrysnat");
    remote(&mut old);
    let (new, _carry) = old.carrying_ct(2 * DEFAULT_CT_MAX);
    // The earlier programs hand that port to another client after the
    // first copy: its reverse SNAT entry is in the old map only.
    let held = CtKey {
        saddr: super::test_run::ip("10.244.2.10"),
        daddr: super::test_run::ip("10.100.0.1"),
        sport: lb_common::BeU16::from_host(8080),
        dport: lb_common::BeU16::from_host(first),
        proto: lb_common::PROTO_TCP,
        kind: CT_RSNAT,
        _pad: [0; 2],
    };
    let other = CtValue {
        addr: super::test_run::ip("10.100.0.201"),
        port: lb_common::BeU16::from_host(50000),
        flags: lb_common::CT_F_PORT_KEYED,
        last_seen: crate::datapath::host::monotonic_s(),
        ..Default::default()
    };
    let mut m: aya::maps::HashMap<_, CtKey, CtValue> =
        aya::maps::HashMap::try_from(old.ebpf.map_mut(MAP_CT).unwrap()).unwrap();
    m.insert(held, other, 0).unwrap();

    let (verdict, _) = new.run("lb_tc_ingress", &syn);
    assert_eq!(verdict, super::test_run::TC_ACT_OK, "the flow goes through");
    assert_ne!(
        snat_port_of(&new, 40001),
        first,
        "the port the earlier programs hold for another client"
    );
    let theirs = new.ct().into_iter().find(|(k, _)| *k == held);
    assert_eq!(
        theirs.map(|(_, v)| v.addr),
        Some(other.addr),
        "their entry stays theirs"
    );
}
