//! loadBalancerSourceRanges hold under every traffic policy, on TC and XDP.

use aya::maps::{
    HashMap,
    lpm_trie::{Key, LpmTrie},
};
use lb_common::{
    BACKEND_LOCAL, BeU16, PROTO_TCP, SCOPE_EXTERNAL, SCOPE_INTERNAL, SRC_RANGE_FRONT_BITS,
    SVC_FLAG_EXT_LOCAL, SVC_FLAG_EXTERNAL, SVC_FLAG_SOURCE_RANGES, ServiceKey, ServiceValue,
    SrcRangeData,
};

use super::test_run::{Bed, TC_ACT_OK, dst4, ip, tcp4};

const TC_ACT_SHOT: u32 = 2;
const XDP_DROP: u32 = 1;
const LB_IP: [u8; 4] = [10, 200, 0, 1];

/// LoadBalancer IP 10.200.0.1:80 with externalTrafficPolicy: Local (a local
/// endpoint in the external set, a remote one besides) and the source
/// range 192.0.2.0/24.
fn etp_local_bed(tag: &str) -> Bed {
    let mut bed = Bed::new(tag);
    bed.frontend(
        "10.200.0.1",
        80,
        PROTO_TCP,
        SVC_FLAG_EXTERNAL | SVC_FLAG_EXT_LOCAL | SVC_FLAG_SOURCE_RANGES,
        &[
            ("10.244.1.10", 8080, BACKEND_LOCAL),
            ("10.244.2.10", 8080, 0),
        ],
    );
    let front = ServiceKey::frontend(
        ip("10.200.0.1"),
        BeU16::from_host(80),
        PROTO_TCP,
        SCOPE_INTERNAL,
    );
    let mut svcs: HashMap<_, ServiceKey, ServiceValue> =
        HashMap::try_from(bed.ebpf.map_mut(lb_common::MAP_SERVICES).unwrap()).unwrap();
    let slot1 = svcs.get(&front.with_slot(1), 0).unwrap();
    let fe = svcs.get(&front, 0).unwrap();
    let ext = ServiceKey {
        scope: SCOPE_EXTERNAL,
        ..front
    };
    svcs.insert(ext.with_slot(1), slot1, 0).unwrap();
    // The node-local set's frontend carries no range flag of its own.
    let v = ServiceValue {
        count: 1,
        flags: SVC_FLAG_EXTERNAL,
        ..fe
    };
    svcs.insert(ext, v, 0).unwrap();
    let mut ranges: LpmTrie<_, SrcRangeData, u8> =
        LpmTrie::try_from(bed.ebpf.map_mut(lb_common::MAP_SRC_RANGES).unwrap()).unwrap();
    let data = SrcRangeData {
        front: ip("10.200.0.1"),
        port: BeU16::from_host(80),
        proto: PROTO_TCP,
        _pad: 0,
        client: ip("192.0.2.0"),
    };
    ranges
        .insert(&Key::new(SRC_RANGE_FRONT_BITS + 96 + 24, data), 1, 0)
        .unwrap();
    bed
}

#[test]
fn source_ranges_hold_under_external_traffic_policy_local_on_tc_and_xdp() {
    let bed = etp_local_bed("etprange");
    let outside = tcp4([198, 51, 100, 7], 40000, LB_IP, 80, true);
    let (verdict, _) = bed.run("lb_tc_ingress", &outside);
    assert_eq!(
        verdict, TC_ACT_SHOT,
        "a client outside the ranges is dropped"
    );
    let (verdict, _) = bed.run_xdp(&outside);
    assert_eq!(verdict, XDP_DROP, "XDP makes the same decision");
    assert!(bed.ct().is_empty(), "and tracks nothing");
    let inside = tcp4([192, 0, 2, 7], 40000, LB_IP, 80, true);
    let (verdict, out) = bed.run("lb_tc_ingress", &inside);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(
        dst4(&out),
        ("10.244.1.10".into(), 8080),
        "a client inside gets a node-local endpoint"
    );
}
