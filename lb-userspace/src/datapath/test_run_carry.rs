//! Conntrack across a carry (an agent restarted with a conntrack map of
//! another size): a flow the earlier agent's programs start after the
//! first copy is found by this agent's programs in the old map, at once.

use lb_common::{CT_FWD, CT_REV, CtKey, DEFAULT_CT_MAX, MAP_CT, TCP_ACK, TCP_SYN};

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
    super::migrate::finish(new.pin_dir(), &new.ebpf, carry);
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
