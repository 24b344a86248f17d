//! The invariants a program's output must keep: valid checksums, and
//! only the bytes a translation may change changed.

use super::*;

/// Whether the IPv4 header and TCP/UDP checksums of a frame are valid
/// (None: not a frame these are defined for).
pub(super) fn checksums_ok(pkt: &[u8]) -> Option<bool> {
    let sum = |data: &[u8], mut acc: u32| {
        for c in data.chunks(2) {
            acc += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
        }
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc
    };
    let l3 = pkt.get(14..)?;
    match (pkt.get(12..14)?, l3.first()? >> 4) {
        ([0x08, 0x00], 4) => {
            let ihl = (l3[0] & 0xf) as usize * 4;
            let total = u16::from_be_bytes([*l3.get(2)?, *l3.get(3)?]) as usize;
            if ihl < 20 || total < ihl || l3.len() < total {
                return None;
            }
            if sum(&l3[..ihl], 0) != 0xffff {
                return Some(false);
            }
            let frag = u16::from_be_bytes([l3[6], l3[7]]) & 0x3fff;
            let proto = l3[9];
            if frag == 0 && proto == 1 {
                // ICMP over its whole message; a quoted IPv4 header too.
                let icmp = &l3[ihl..total];
                let quoted_ok = match icmp.get(8..28) {
                    Some(h) if h[0] == 0x45 => sum(h, 0) == 0xffff,
                    _ => true,
                };
                return Some(sum(icmp, 0) == 0xffff && quoted_ok);
            }
            if frag != 0 || (proto != PROTO_TCP && proto != PROTO_UDP) {
                return Some(true);
            }
            let l4 = &l3[ihl..total];
            if proto == PROTO_UDP && l4.get(6..8) == Some(&[0, 0]) {
                return Some(true);
            }
            let mut pseudo = l3[12..20].to_vec();
            pseudo.extend_from_slice(&[0, proto]);
            pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            Some(sum(l4, sum(&pseudo, 0)) == 0xffff)
        }
        ([0x86, 0xdd], 6) => {
            let len = u16::from_be_bytes([*l3.get(4)?, *l3.get(5)?]) as usize;
            let proto = *l3.get(6)?;
            if l3.len() < 40 + len || (proto != PROTO_TCP && proto != PROTO_UDP) {
                return None;
            }
            let l4 = &l3[40..40 + len];
            let mut pseudo = l3[8..40].to_vec();
            pseudo.extend_from_slice(&(len as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, proto]);
            Some(sum(l4, sum(&pseudo, 0)) == 0xffff)
        }
        _ => None,
    }
}

/// The byte ranges a translation may change: MACs (XDP_TX swaps them),
/// addresses, the IPv4 checksum, ports and the L4 checksum.
pub(super) fn only_translated(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let v4 = a.get(12..14) == Some(&[0x08, 0x00]);
    let (ihl, proto) = if v4 {
        ((a[14] & 0xf) as usize * 4, a[23])
    } else {
        (40, a[20])
    };
    let l4 = 14 + ihl;
    let csum = if proto == PROTO_TCP { l4 + 16 } else { l4 + 6 };
    // An ICMP error translated: its checksum, and in its quote the IPv4
    // header checksum, the addresses and the ports.
    let icmp = (v4 && proto == 1) || (!v4 && proto == 58);
    let q = l4 + 8;
    let quoted = |i: usize| {
        icmp && ((l4 + 2..l4 + 4).contains(&i)
            || (v4 && (q + 10..q + 20).contains(&i))
            || (v4 && (q + 20..q + 24).contains(&i))
            || (!v4 && (q + 8..q + 40).contains(&i))
            || (!v4 && (q + 40..q + 44).contains(&i)))
    };
    let may = |i: usize| {
        i < 12
            || (v4 && (24..26).contains(&i))
            || (v4 && (26..34).contains(&i))
            || (!v4 && (22..54).contains(&i))
            || (!icmp && (l4..l4 + 4).contains(&i))
            || (!icmp && (csum..csum + 2).contains(&i))
            || quoted(i)
    };
    a.iter()
        .zip(b)
        .enumerate()
        .all(|(i, (x, y))| x == y || may(i))
}
