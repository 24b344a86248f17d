//! Generated frames (valid TCP, UDP, ICMP towards the seeded frontends
//! and pods) and their mutations.

use super::*;

/// xorshift64*: deterministic, no dependency.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub(super) fn pick<'a, T>(&mut self, from: &'a [T]) -> &'a T {
        &from[self.below(from.len() as u64) as usize]
    }
}

pub(super) const CLIENTS4: [[u8; 4]; 3] = [[10, 100, 0, 200], [10, 244, 1, 10], [192, 0, 2, 7]];
/// NodePorts (local and remote backend), a LoadBalancer IP with source
/// ranges, an externalIP, a pod and a ClusterIP (no packet-path frontend).
pub(super) const FRONTS4: [([u8; 4], u16); 6] = [
    ([10, 100, 0, 1], 30080),
    ([10, 100, 0, 1], 30081),
    ([10, 200, 0, 1], 80),
    ([10, 200, 1, 1], 53),
    ([10, 244, 2, 10], 8080),
    ([10, 96, 0, 10], 80),
];
pub(super) const CLIENTS6: [&str; 2] = ["fd00:100::200", "fd00:244:1::a"];
pub(super) const FRONTS6: [(&str, u16); 3] = [
    ("fd00:100::1", 30053),
    ("fd00:200::1", 80),
    ("fd00:244:1::b", 53),
];

pub(super) fn v6(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>().unwrap().octets()
}

/// A well-formed packet of one of the kinds the programs handle.
pub(super) fn valid(r: &mut Rng) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xc8], [2, 0, 0, 0, 0, 1]);
    // Half the client ports come from a few, so flows repeat and ICMP
    // errors can quote flows the maps hold.
    let sport = if r.below(2) == 0 {
        40000 + r.below(8) as u16
    } else {
        1024 + r.below(64000) as u16
    };
    let payload: Vec<u8> = (0..r.below(64)).map(|_| r.next() as u8).collect();
    let mut out = Vec::new();
    if r.below(3) > 0 {
        let src = *r.pick(&CLIENTS4);
        let (dst, dport) = *r.pick(&FRONTS4);
        let (src, dst, sport, dport) = if r.below(4) == 0 {
            (dst, src, dport, sport) // a reply
        } else {
            (src, dst, sport, dport)
        };
        let ip = eth.ipv4(src, dst, 64);
        match r.below(4) {
            0 | 1 => {
                let t = ip.tcp(sport, dport, r.next() as u32, 64000);
                let t = match r.below(5) {
                    0 => t.syn(),
                    1 => t.syn().ack(1),
                    2 => t.ack(1).fin(),
                    3 => t.rst(),
                    _ => t.ack(1).psh(),
                };
                t.write(&mut out, &payload).unwrap();
            }
            2 => ip.udp(sport, dport).write(&mut out, &payload).unwrap(),
            _ => {
                // An ICMP error quoting a packet of a flow the other way
                // (a reply, when this one goes to a frontend: a known
                // flow's, with a TCP quote and a repeated client port).
                let mut quoted = Vec::new();
                let q = PacketBuilder::ipv4(dst, src, 64);
                if r.below(2) == 0 {
                    q.tcp(dport, sport, 1, 64000)
                        .ack(1)
                        .write(&mut quoted, b"q")
                } else {
                    q.udp(dport, sport).write(&mut quoted, b"q")
                }
                .unwrap();
                quoted.truncate(28);
                ip.icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
                    etherparse::icmpv4::DestUnreachableHeader::Port,
                ))
                .write(&mut out, &quoted)
                .unwrap();
            }
        }
    } else {
        let src = v6(r.pick::<&str>(&CLIENTS6));
        let (dst, dport) = *r.pick(&FRONTS6);
        let ip = eth.ipv6(src, v6(dst), 64);
        if r.below(2) == 0 {
            ip.udp(sport, dport).write(&mut out, &payload).unwrap();
        } else {
            ip.tcp(sport, dport, r.next() as u32, 64000)
                .syn()
                .write(&mut out, &payload)
                .unwrap();
        }
    }
    out
}

/// Why a packet counts as junk (it must create no conntrack entry).
pub(super) fn mutate(r: &mut Rng, pkt: &mut Vec<u8>) -> bool {
    match r.below(8) {
        // Cut short anywhere inside the headers.
        0 => {
            let n = 14 + r.below(40) as usize;
            // Junk only if something was cut (a short valid packet stays one).
            let cut = n < pkt.len();
            pkt.truncate(n.min(pkt.len()));
            cut
        }
        // Random bytes of a random length.
        1 => {
            let n = 14 + r.below(120) as usize;
            *pkt = (0..n).map(|_| r.next() as u8).collect();
            true
        }
        // A wrong IP total length or payload length (kept as the kernel's
        // problem: the packet still parses).
        2 => {
            if pkt.len() > 20 {
                let i = if pkt[12] == 0x08 { 16 } else { 18 };
                pkt[i] = r.next() as u8;
            }
            false
        }
        // IPv4 options (the header grows; what follows is reinterpreted).
        3 => {
            if pkt[12] == 0x08 && pkt.len() > 14 {
                pkt[14] = 0x40 | (5 + r.below(11) as u8);
            }
            false
        }
        // A fragment (offset and MF set at random).
        4 => {
            if pkt[12] == 0x08 && pkt.len() > 21 {
                pkt[20] = (r.next() as u8) & 0x3f;
                pkt[21] = r.next() as u8;
            }
            false
        }
        // An IPv6 extension header as the next header.
        5 => {
            if pkt[12] == 0x86 && pkt.len() > 20 {
                pkt[20] = *r.pick(&[0u8, 43, 44, 60, 59]);
            }
            false
        }
        // Random TCP flags.
        6 => {
            if pkt.len() > 47 && pkt[23] == PROTO_TCP {
                pkt[47] = r.next() as u8;
            }
            false
        }
        // Untouched.
        _ => false,
    }
}

/// Makes the IPv4 header checksum and the TCP/UDP checksum right again
/// after a mutation (where the lengths allow), so the odd packet is still
/// a well-formed one.
pub(super) fn fix_checksums(pkt: &mut [u8]) {
    let sum = |data: &[u8], mut acc: u32| {
        for c in data.chunks(2) {
            acc += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
        }
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc
    };
    if pkt.len() < 54 {
        return;
    }
    let (l4, end, proto, pseudo) = if pkt[12..14] == [0x08, 0x00] {
        let ihl = (pkt[14] & 0xf) as usize * 4;
        let total = u16::from_be_bytes([pkt[16], pkt[17]]) as usize;
        if ihl < 20 || 14 + ihl > pkt.len() {
            return;
        }
        pkt[24] = 0;
        pkt[25] = 0;
        let c = !(sum(&pkt[14..14 + ihl], 0) as u16);
        pkt[24..26].copy_from_slice(&c.to_be_bytes());
        let frag = u16::from_be_bytes([pkt[20], pkt[21]]) & 0x3fff;
        if frag != 0 || total < ihl || 14 + total > pkt.len() {
            return;
        }
        let mut p = pkt[26..34].to_vec();
        p.extend_from_slice(&[0, pkt[23]]);
        p.extend_from_slice(&((total - ihl) as u16).to_be_bytes());
        (14 + ihl, 14 + total, pkt[23], p)
    } else if pkt[12..14] == [0x86, 0xdd] {
        let len = u16::from_be_bytes([pkt[18], pkt[19]]) as usize;
        if 54 + len > pkt.len() {
            return;
        }
        let mut p = pkt[22..54].to_vec();
        p.extend_from_slice(&(len as u32).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, pkt[20]]);
        (54, 54 + len, pkt[20], p)
    } else {
        return;
    };
    let off = match proto {
        PROTO_TCP if end >= l4 + 20 => l4 + 16,
        PROTO_UDP if end >= l4 + 8 => l4 + 6,
        _ => return,
    };
    pkt[off] = 0;
    pkt[off + 1] = 0;
    let mut c = !(sum(&pkt[l4..end], sum(&pseudo, 0)) as u16);
    if proto == PROTO_UDP && c == 0 {
        c = 0xffff;
    }
    pkt[off..off + 2].copy_from_slice(&c.to_be_bytes());
}
