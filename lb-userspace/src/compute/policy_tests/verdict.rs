//! The kernel's verdict over the maps (lb-ebpf/src/policy.rs, `allowed`).

use super::*;

/// `PolicyData` as it lies in memory (repr(C): ep_id, identity, dir,
/// proto, port big-endian).
pub(super) fn policy_bytes(d: &PolicyData) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0..4].copy_from_slice(&d.ep_id.to_ne_bytes());
    b[4..8].copy_from_slice(&d.identity.to_ne_bytes());
    b[8] = d.dir;
    b[9] = d.proto;
    b[10..12].copy_from_slice(&d.port.0.to_ne_bytes());
    b
}

/// `PolCidrData` as it lies in memory (ep_id, dir, 3 pad bytes, address).
pub(super) fn cidr_bytes(d: &PolCidrData) -> [u8; 24] {
    let mut b = [0u8; 24];
    b[0..4].copy_from_slice(&d.ep_id.to_ne_bytes());
    b[4] = d.dir;
    b[5..8].copy_from_slice(&d._pad);
    b[8..24].copy_from_slice(&d.addr.octets());
    b
}

/// The first `bits` bits of `a` and `b` are equal (bits in memory order,
/// most significant first in each byte: what an LPM trie compares).
pub(super) fn prefix_eq(a: &[u8], b: &[u8], bits: u32) -> bool {
    assert!(bits as usize <= a.len() * 8 && a.len() == b.len());
    let full = (bits / 8) as usize;
    if a[..full] != b[..full] {
        return false;
    }
    let rem = bits % 8;
    rem == 0 || (a[full] ^ b[full]) >> (8 - rem) == 0
}

/// Every bit after the first `bits` is zero (a canonical LPM key).
pub(super) fn tail_is_zero(a: &[u8], bits: u32) -> bool {
    let mut masked = a.to_vec();
    for (i, byte) in masked.iter_mut().enumerate() {
        let start = i as u32 * 8;
        if start >= bits {
            *byte = 0;
        } else if start + 8 > bits {
            *byte &= 0xffu8 << (8 - (bits - start));
        }
    }
    masked == a
}

/// The value of the longest prefix among `entries` that matches `key`.
pub(super) fn lpm<K: AsRef<[u8]>, V: Copy>(
    entries: impl Iterator<Item = (K, u32, V)>,
    key: &[u8],
) -> Option<V> {
    entries
        .filter(|(k, len, _)| prefix_eq(k.as_ref(), key, *len))
        .max_by_key(|(_, len, _)| *len)
        .map(|(_, _, v)| v)
}

/// What `lb-ebpf/src/policy.rs::allowed` answers for a new flow of the
/// local endpoint `pod` with `peer` in `dir`, destination port `port`.
pub(super) fn allowed(
    m: &PolicyMaps,
    pod: IpAddr,
    dir: Dir,
    peer: IpAddr,
    proto: u8,
    port: u16,
) -> bool {
    let (own, peer) = (net_addr(pod), net_addr(peer));
    let ep: PolEndpoint = *m
        .endpoints
        .get(&own)
        .unwrap_or_else(|| panic!("{pod} is not an endpoint of {NODE}"));
    let (d, isolated) = match dir {
        Ingress => (DIR_INGRESS, EP_F_INGRESS_ISOLATED),
        Egress => (DIR_EGRESS, EP_F_EGRESS_ISOLATED),
    };
    if ep.flags & isolated == 0 {
        return true;
    }
    if own == peer {
        return true;
    }
    let id = lpm(
        m.ipcache
            .iter()
            .map(|((a, len), id)| (a.octets(), *len, *id)),
        &peer.octets(),
    )
    .unwrap_or(ID_WORLD);
    if d == DIR_INGRESS && id == ID_HOST {
        return true;
    }
    let entry = |identity: u32| {
        let key = policy_bytes(&PolicyData {
            ep_id: ep.ep_id,
            identity,
            dir: d,
            proto,
            port: BeU16::from_host(port),
        });
        m.entries
            .iter()
            .any(|(e, len)| *len <= POLICY_PREFIX_FULL && prefix_eq(&policy_bytes(e), &key, *len))
    };
    if entry(id) || entry(ID_ANY) {
        return true;
    }
    let key = cidr_bytes(&PolCidrData {
        ep_id: ep.ep_id,
        dir: d,
        _pad: [0; 3],
        addr: peer,
    });
    let set = lpm(
        m.cidrs
            .iter()
            .map(|((k, len), v)| (cidr_bytes(k), *len, *v)),
        &key,
    )
    .unwrap_or(0);
    set != 0 && entry(set)
}

/// What the kernel needs of the maps beyond the verdicts: canonical LPM
/// keys, prefix lengths it knows, endpoint ids in range, entries only for
/// endpoints that exist.
pub(super) fn assert_well_formed(m: &PolicyMaps) {
    for ((a, len), id) in &m.ipcache {
        assert!(
            *len <= 128 && tail_is_zero(&a.octets(), *len),
            "ipcache {a:?}/{len}"
        );
        assert!(*id == ID_HOST || (ID_FIRST_LABELS..ID_FIRST_CIDR).contains(id));
    }
    let ep_ids: std::collections::BTreeSet<u32> = m.endpoints.values().map(|e| e.ep_id).collect();
    for ep in m.endpoints.values() {
        assert!(ep.ep_id >= 1 && ep.ep_id < POL_EP_ID_MAX, "{ep:?}");
        assert_eq!(
            ep.flags & !(EP_F_INGRESS_ISOLATED | EP_F_EGRESS_ISOLATED),
            0
        );
    }
    for (e, len) in &m.entries {
        assert!(
            *len == POLICY_PREFIX_ANY_PROTO
                || (POLICY_PREFIX_PROTO..=POLICY_PREFIX_FULL).contains(len),
            "entry {e:?}/{len}"
        );
        assert!(tail_is_zero(&policy_bytes(e), *len), "entry {e:?}/{len}");
        assert!(e.dir == DIR_INGRESS || e.dir == DIR_EGRESS);
        assert!(ep_ids.contains(&e.ep_id), "entry of no endpoint {e:?}");
    }
    for ((k, len), set) in &m.cidrs {
        assert!((POL_CIDR_FIXED_BITS..=POL_CIDR_FIXED_BITS + 128).contains(len));
        assert!(tail_is_zero(&cidr_bytes(k), *len), "cidr {k:?}/{len}");
        assert!(
            *set == 0 || *set >= ID_FIRST_CIDR,
            "cidr {k:?}/{len} -> {set}"
        );
        assert!(ep_ids.contains(&k.ep_id), "cidr of no endpoint {k:?}");
    }
}
