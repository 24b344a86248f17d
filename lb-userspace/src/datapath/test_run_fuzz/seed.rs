//! The seeded maps: frontends, backends, policy endpoints and entries.

use super::*;

pub(super) fn seed(bed: &mut Bed) {
    bed.service(
        "10.100.0.1",
        30080,
        PROTO_TCP,
        Some(("10.244.1.10", 8080, BACKEND_LOCAL)),
    );
    bed.service(
        "10.100.0.1",
        30081,
        PROTO_TCP,
        Some(("10.244.2.10", 8080, 0)),
    );
    bed.service(
        "fd00:100::1",
        30053,
        PROTO_UDP,
        Some(("fd00:244:1::a", 5353, BACKEND_LOCAL)),
    );
    bed.service("fd00:100::1", 30054, PROTO_UDP, None);
    // A LoadBalancer IP whose source ranges let one client in, an
    // externalIP (both families): the other frontend kinds.
    bed.frontend(
        "10.200.0.1",
        80,
        PROTO_TCP,
        SVC_FLAG_EXTERNAL | lb_common::SVC_FLAG_SOURCE_RANGES,
        &[("10.244.2.10", 8080, 0)],
    );
    {
        let mut r: LpmTrie<_, lb_common::SrcRangeData, u8> =
            LpmTrie::try_from(bed.ebpf.map_mut(lb_common::MAP_SRC_RANGES).unwrap()).unwrap();
        let d = lb_common::SrcRangeData {
            front: ip("10.200.0.1"),
            port: lb_common::BeU16::from_host(80),
            proto: PROTO_TCP,
            _pad: 0,
            client: ip("10.100.0.200"),
        };
        r.insert(&Key::new(lb_common::SRC_RANGE_FRONT_BITS + 128, d), 1, 0)
            .unwrap();
    }
    for proto in [PROTO_TCP, PROTO_UDP] {
        bed.frontend(
            "10.200.1.1",
            53,
            proto,
            SVC_FLAG_EXTERNAL,
            &[("10.244.1.10", 5353, BACKEND_LOCAL)],
        );
    }
    bed.frontend(
        "fd00:200::1",
        80,
        PROTO_TCP,
        SVC_FLAG_EXTERNAL,
        &[("fd00:244:1::a", 8080, BACKEND_LOCAL)],
    );
    bed.frontend(
        "fd00:200::1",
        80,
        PROTO_UDP,
        SVC_FLAG_EXTERNAL,
        &[("fd00:244:1::a", 8080, BACKEND_LOCAL)],
    );
    for name in ["lb_pod_from", "lb_pod_to"] {
        let p: &mut SchedClassifier = bed.ebpf.program_mut(name).unwrap().try_into().unwrap();
        p.load().unwrap_or_else(|e| panic!("{name}: {e:?}"));
    }
    let mut eps: HashMap<_, NetAddr, PolEndpoint> =
        HashMap::try_from(bed.ebpf.map_mut(lb_common::MAP_POL_EP).unwrap()).unwrap();
    for (a, id) in [("10.244.1.10", 1), ("fd00:244:1::a", 1), ("10.244.1.11", 2)] {
        let ep = PolEndpoint {
            ep_id: id,
            identity: 300 + id,
            flags: EP_F_INGRESS_ISOLATED | EP_F_EGRESS_ISOLATED,
            ifindex: 0,
        };
        eps.insert(ip(a), ep, 0).unwrap();
    }
    let mut ipc: LpmTrie<_, IpcacheData, u32> =
        LpmTrie::try_from(bed.ebpf.map_mut(lb_common::MAP_IPCACHE).unwrap()).unwrap();
    ipc.insert(
        &Key::new(
            128,
            IpcacheData {
                addr: ip("10.100.0.200"),
            },
        ),
        400,
        0,
    )
    .unwrap();
    let mut pol: LpmTrie<_, PolicyData, u32> =
        LpmTrie::try_from(bed.ebpf.map_mut(lb_common::MAP_POLICY).unwrap()).unwrap();
    for dir in [DIR_INGRESS, DIR_EGRESS] {
        let d = PolicyData {
            ep_id: 1,
            identity: 400,
            dir,
            proto: PROTO_TCP,
            port: lb_common::BeU16::from_host(8080),
        };
        pol.insert(&Key::new(96, d), 1, 0).unwrap();
    }
    let mut st: aya::maps::Array<_, PolicyState> =
        aya::maps::Array::try_from(bed.ebpf.map_mut(lb_common::MAP_POL_STATE).unwrap()).unwrap();
    st.set(
        0,
        PolicyState {
            revision: 1,
            flags: POL_F_ANY_INGRESS | POL_F_ANY_EGRESS,
        },
        0,
    )
    .unwrap();
}
