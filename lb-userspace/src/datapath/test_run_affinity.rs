//! sessionAffinity across a carry (an agent restarted, or grown, with an
//! affinity map of another size): a client the earlier agent's programs
//! remembered after the first copy keeps its backend under this agent's.

use aya::maps::HashMap;
use lb_common::{
    AFF_CLIENT, AffinityKey, AffinityValue, BACKEND_LOCAL, BeU16, DEFAULT_AFFINITY_MAX,
    MAP_AFFINITY, MAP_SERVICES, PROTO_TCP, SCOPE_INTERNAL, SVC_FLAG_EXTERNAL, ServiceKey,
    ServiceValue,
};

use super::test_run::{Bed, dst4, ip, tcp4};

const CLIENT: [u8; 4] = [10, 100, 0, 200];
const NODE: [u8; 4] = [10, 100, 0, 1];
const BACKENDS: [(&str, u16, u8); 4] = [
    ("10.244.1.10", 8080, BACKEND_LOCAL),
    ("10.244.1.11", 8080, BACKEND_LOCAL),
    ("10.244.1.12", 8080, BACKEND_LOCAL),
    ("10.244.1.13", 8080, BACKEND_LOCAL),
];

/// A NodePort 10.100.0.1:30080 of four local backends, with ClientIP
/// affinity of `timeout` seconds (0: none).
fn node_port(tag: &str, timeout: u32) -> Bed {
    let mut bed = Bed::new(tag);
    bed.frontend("10.100.0.1", 30080, PROTO_TCP, SVC_FLAG_EXTERNAL, &BACKENDS);
    let key = ServiceKey::frontend(
        ip("10.100.0.1"),
        BeU16::from_host(30080),
        PROTO_TCP,
        SCOPE_INTERNAL,
    );
    let mut svcs: HashMap<_, ServiceKey, ServiceValue> =
        HashMap::try_from(bed.ebpf.map_mut(MAP_SERVICES).unwrap()).unwrap();
    let v = ServiceValue {
        affinity_timeout: timeout,
        ..svcs.get(&key, 0).unwrap()
    };
    svcs.insert(key, v, 0).unwrap();
    bed
}

/// The backend the SYN from the client's `port` goes to.
fn backend_of(bed: &Bed, port: u16) -> String {
    let (_, out) = bed.run("lb_tc_ingress", &tcp4(CLIENT, port, NODE, 30080, true));
    dst4(&out).0
}

fn remembered(bed: &Bed) -> Option<AffinityValue> {
    let m: HashMap<_, AffinityKey, AffinityValue> =
        HashMap::try_from(bed.ebpf.map(MAP_AFFINITY).unwrap()).unwrap();
    let key = AffinityKey {
        client: ip("10.100.0.200"),
        service_id: 30080,
        kind: AFF_CLIENT,
    };
    m.get(&key, 0).ok()
}

#[test]
fn a_client_the_earlier_programs_remembered_during_a_carry_keeps_its_backend() {
    let old = node_port("affcarry", 60);
    let (new, carry) = old.carrying(
        MAP_AFFINITY,
        super::MapSizes {
            affinity: 2 * DEFAULT_AFFINITY_MAX,
            ..Default::default()
        },
    );
    // After the first copy the earlier programs see the client's first
    // connection: it is remembered in their (old) map only, with the
    // Service's timeout for the sweep.
    let chosen = backend_of(&old, 40001);
    let v = remembered(&old).expect("the earlier programs remember the client");
    assert_eq!(v.timeout_s, 60, "the Service's timeout is kept with it");
    assert!(remembered(&new).is_none(), "not copied");
    // Ports whose hash alone picks another backend (same Service, no
    // affinity).
    let probe = node_port("affprobe", 0);
    let others: Vec<u16> = (40002..40100)
        .filter(|p| backend_of(&probe, *p) != chosen)
        .take(3)
        .collect();
    assert_eq!(others.len(), 3, "the hash spreads over four backends");
    drop(probe);
    for p in &others {
        assert_eq!(
            backend_of(&new, *p),
            chosen,
            "a later connection (port {p}) under this agent's programs keeps the backend"
        );
    }
    assert_eq!(
        remembered(&new).map(|v| v.backend_id),
        Some(v.backend_id),
        "adopted by the new map"
    );
    super::test_run::end_carry(new.pin_dir(), &new.ebpf, carry);
    assert_eq!(backend_of(&new, 40200), chosen, "after the carry");
}
