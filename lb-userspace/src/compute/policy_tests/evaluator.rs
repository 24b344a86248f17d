//! The evaluator itself.

use super::*;

#[test]
fn evaluator_key_layout_is_the_structs_memory_layout() {
    use std::mem::offset_of;
    assert_eq!(offset_of!(PolicyData, ep_id), 0);
    assert_eq!(offset_of!(PolicyData, identity), 4);
    assert_eq!(offset_of!(PolicyData, dir), 8);
    assert_eq!(offset_of!(PolicyData, proto), 9);
    assert_eq!(offset_of!(PolicyData, port), 10);
    assert_eq!(offset_of!(PolCidrData, ep_id), 0);
    assert_eq!(offset_of!(PolCidrData, dir), 4);
    assert_eq!(offset_of!(PolCidrData, addr), 8);
    // Ports are big-endian in memory: a prefix over them is a port block.
    let b = policy_bytes(&PolicyData {
        port: BeU16::from_host(0x1234),
        ..Default::default()
    });
    assert_eq!(&b[10..], &[0x12, 0x34]);
    assert!(prefix_eq(&[0b1010_0000], &[0b1011_1111], 3));
    assert!(!prefix_eq(&[0b1010_0000], &[0b1011_1111], 4));
    assert!(tail_is_zero(&[0xff, 0x80], 9) && !tail_is_zero(&[0xff, 0xc0], 9));
}

#[test]
fn port_blocks_cover_exactly_their_range_under_lpm() {
    for (start, end) in [
        (1, 65535),
        (8000, 8007),
        (1000, 2000),
        (80, 80),
        (32768, 65535),
        (1023, 1025),
        (65535, 65535),
    ] {
        let mut m = PolicyMaps::default();
        for (port, bits) in port_blocks(start, end) {
            let e = PolicyData {
                ep_id: 1,
                identity: ID_ANY,
                dir: DIR_INGRESS,
                proto: TCP,
                port: BeU16::from_host(port),
            };
            m.entries.insert((e, POLICY_PREFIX_PROTO + bits));
        }
        let key = |p: u16| PolicyData {
            ep_id: 1,
            identity: ID_ANY,
            dir: DIR_INGRESS,
            proto: TCP,
            port: BeU16::from_host(p),
        };
        for p in 0..=u16::MAX {
            let k = policy_bytes(&key(p));
            let hit = m
                .entries
                .iter()
                .any(|(e, len)| prefix_eq(&policy_bytes(e), &k, *len));
            assert_eq!(hit, (start..=end).contains(&p), "{start}-{end}: port {p}");
        }
    }
}
