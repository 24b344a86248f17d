//! Generated and mutated packets through every packet program (TC, XDP,
//! the pod programs) on seeded maps, each checked against invariants: the
//! program never fails; its verdict is one it may give; a packet it
//! rewrites and passes still has valid IP and L4 checksums when it came
//! with valid ones, and differs from its input only in addresses, ports
//! and checksums; junk (what is not an IP packet of a known kind, or is
//! cut short) creates no conntrack entry. `LB_FUZZ_PACKETS` sets the
//! count (default 100,000; `cargo xtask fuzz --packets N`), `LB_FUZZ_SEED`
//! the seed.

use aya::{
    maps::{
        HashMap,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{SchedClassifier, Xdp},
};
use etherparse::PacketBuilder;
use lb_common::{
    BACKEND_LOCAL, CtKey, CtValue, DIR_EGRESS, DIR_INGRESS, EP_F_EGRESS_ISOLATED,
    EP_F_INGRESS_ISOLATED, IpcacheData, NetAddr, POL_F_ANY_EGRESS, POL_F_ANY_INGRESS, PROTO_TCP,
    PROTO_UDP, PolEndpoint, PolicyData, PolicyState, SVC_FLAG_EXTERNAL,
};

use super::test_run::{Bed, ip, test_run};

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<'a, T>(&mut self, from: &'a [T]) -> &'a T {
        &from[self.below(from.len() as u64) as usize]
    }
}

const CLIENTS4: [[u8; 4]; 3] = [[10, 100, 0, 200], [10, 244, 1, 10], [192, 0, 2, 7]];
/// NodePorts (local and remote backend), a LoadBalancer IP with source
/// ranges, an externalIP, a pod and a ClusterIP (no packet-path frontend).
const FRONTS4: [([u8; 4], u16); 6] = [
    ([10, 100, 0, 1], 30080),
    ([10, 100, 0, 1], 30081),
    ([10, 200, 0, 1], 80),
    ([10, 200, 1, 1], 53),
    ([10, 244, 2, 10], 8080),
    ([10, 96, 0, 10], 80),
];
const CLIENTS6: [&str; 2] = ["fd00:100::200", "fd00:244:1::a"];
const FRONTS6: [(&str, u16); 3] = [
    ("fd00:100::1", 30053),
    ("fd00:200::1", 80),
    ("fd00:244:1::b", 53),
];

fn v6(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>().unwrap().octets()
}

/// A well-formed packet of one of the kinds the programs handle.
fn valid(r: &mut Rng) -> Vec<u8> {
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
        let src = v6(*r.pick::<&str>(&CLIENTS6));
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
fn mutate(r: &mut Rng, pkt: &mut Vec<u8>) -> bool {
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
fn fix_checksums(pkt: &mut [u8]) {
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

/// Whether the IPv4 header and TCP/UDP checksums of a frame are valid
/// (None: not a frame these are defined for).
fn checksums_ok(pkt: &[u8]) -> Option<bool> {
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
fn only_translated(a: &[u8], b: &[u8]) -> bool {
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

fn ct_len(bed: &Bed) -> usize {
    bed.ct().len()
}

fn seed(bed: &mut Bed) {
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

const TC_PROGS: [&str; 4] = ["lb_tc_ingress", "lb_tc_egress", "lb_pod_from", "lb_pod_to"];

#[test]
fn generated_and_mutated_packets_keep_every_invariant() {
    let n: u64 = std::env::var("LB_FUZZ_PACKETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let seed0: u64 = std::env::var("LB_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_1b_f00d);
    let mut bed = Bed::new("fuzz");
    seed(&mut bed);
    let mut r = Rng(seed0);
    let (mut rewritten, mut dropped, mut junk_runs) = (0u64, 0u64, 0u64);
    for i in 0..n {
        let mut pkt = valid(&mut r);
        let junk = mutate(&mut r, &mut pkt);
        if !junk && r.below(4) > 0 {
            fix_checksums(&mut pkt);
        }
        let valid_in = checksums_ok(&pkt) == Some(true);
        let before = if junk { ct_len(&bed) } else { 0 };
        for prog in TC_PROGS {
            let p: &SchedClassifier = bed.ebpf.program(prog).unwrap().try_into().unwrap();
            let Some((verdict, out)) = try_run(p, &pkt) else {
                continue;
            };
            assert!(
                matches!(verdict, 0 | 2 | 7),
                "packet {i} (seed {seed0}): {prog} gave verdict {verdict}: {pkt:02x?}"
            );
            if verdict == 2 {
                dropped += 1;
            }
            if verdict == 0 && out != pkt {
                rewritten += 1;
                assert!(
                    only_translated(&pkt, &out),
                    "packet {i} (seed {seed0}): {prog} changed more than a translation:\n in  {pkt:02x?}\n out {out:02x?}"
                );
                if valid_in {
                    assert_eq!(
                        checksums_ok(&out),
                        Some(true),
                        "packet {i} (seed {seed0}): {prog} broke a checksum:\n in  {pkt:02x?}\n out {out:02x?}"
                    );
                }
            }
        }
        let x: &Xdp = bed.ebpf.program("lb_xdp").unwrap().try_into().unwrap();
        if let Some((verdict, out)) = try_run(x, &pkt) {
            assert!(
                matches!(verdict, 1..=3),
                "packet {i}: XDP verdict {verdict}"
            );
            if verdict == 2 && out != pkt && valid_in {
                assert!(only_translated(&pkt, &out), "packet {i}: XDP changed more");
                assert_eq!(checksums_ok(&out), Some(true), "packet {i}: XDP checksum");
            }
        }
        if junk {
            junk_runs += 1;
            assert_eq!(
                ct_len(&bed),
                before,
                "packet {i} (seed {seed0}): junk created conntrack entries: {pkt:02x?}"
            );
        }
        // Keep the LRU from filling with valid flows (fresh state now and then).
        if i % 5000 == 4999 {
            clear_ct(&mut bed);
        }
    }
    let icmp = super::test_run_conntrack::counter(&bed, "icmp_error_translated");
    eprintln!(
        "{n} packets: {rewritten} rewritten ({icmp} ICMP errors), {dropped} drops, {junk_runs} junk"
    );
    assert!(
        rewritten > 0 && dropped > 0 && junk_runs > 0 && icmp > 0,
        "the generator reaches every path"
    );
}

/// BPF_PROG_TEST_RUN of `pkt`; None where the kernel's harness itself
/// refuses the frame (shorter than an Ethernet and IP header: EINVAL).
fn try_run<P>(p: &P, pkt: &[u8]) -> Option<(u32, Vec<u8>)>
where
    P: for<'a> aya::programs::TestRun<
            Opts<'a> = aya::programs::TestRunOptions<'a>,
            Result = aya::programs::TestRunResult,
        >,
{
    let short = pkt.len() < 14 + 40;
    if short {
        let mut out = vec![0u8; 2048];
        let mut opts = aya::programs::TestRunOptions::new();
        opts.data_in = Some(pkt);
        opts.data_out = Some(&mut out);
        return match p.test_run(opts) {
            Ok(r) => {
                out.truncate(r.data_size_out as usize);
                Some((r.return_value, out))
            }
            Err(_) => None,
        };
    }
    Some(test_run(p, pkt))
}

fn clear_ct(bed: &mut Bed) {
    let mut m: HashMap<_, CtKey, CtValue> =
        HashMap::try_from(bed.ebpf.map_mut(lb_common::MAP_CT).unwrap()).unwrap();
    let keys: Vec<CtKey> = m.keys().filter_map(Result::ok).collect();
    for k in keys {
        let _ = m.remove(&k);
    }
}
