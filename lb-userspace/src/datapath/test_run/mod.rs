//! The packet programs on crafted packets (BPF_PROG_TEST_RUN) with seeded
//! maps: verdicts, rewritten headers, checksums, conntrack entries, and
//! packets they must leave alone.
//!
//! Here: the test bed (`Bed`) and the packet helpers the other `test_run_*`
//! modules share (`read`: the fields of the frames put out); the tests sit
//! in one file per concern.

mod drops;
mod flows;
mod parser;
mod read;
mod translation;

pub(super) use read::{
    addrs, dst4, dst6, eth_dst, icmp4, icmp6, ip_payload, ipv4, ipv6, src4, src6,
};

use std::{net::IpAddr, path::PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, PerCpuArray},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use etherparse::PacketBuilder;
use lb_common::{
    BACKEND_LOCAL, Backend, BeU16, CONFIG_HAS_IP4, CONFIG_HAS_IP6, CT_FWD, CT_REV, CT_RSNAT,
    CT_SNAT, Config, CtKey, CtValue, PROTO_TCP, PROTO_UDP, SCOPE_INTERNAL, SVC_FLAG_EXTERNAL,
    ServiceKey, ServiceValue, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
};

use super::{OBJECT, TC_PROGRAMS};
use crate::compute::desired::net_addr;

pub(super) const TC_ACT_OK: u32 = 0;
pub(super) const TC_ACT_SHOT: u32 = 2;
pub(super) const TC_ACT_REDIRECT: u32 = 7;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

pub(super) struct Bed {
    pub(super) ebpf: Ebpf,
    dir: PathBuf,
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = super::reset(&self.dir);
    }
}

/// Ends a carry as the agent's ticks do: the copy after the swap (on its
/// thread), then the old map's pin goes. Within 10 s.
pub(super) fn end_carry(pin_dir: &std::path::Path, ebpf: &Ebpf, carry: super::migrate::Carry) {
    let mut open = Some(carry);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while let Some(c) = open {
        assert!(std::time::Instant::now() < deadline, "the copy ends");
        open = super::migrate::finish(pin_dir, ebpf, c);
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

pub(super) fn ip(s: &str) -> lb_common::NetAddr {
    net_addr(s.parse::<IpAddr>().unwrap())
}

impl Bed {
    pub(super) fn new(tag: &str) -> Self {
        assert!(
            crate::datapath::host::is_root(),
            "BPF_PROG_TEST_RUN needs root: run through `cargo xtask test`"
        );
        let dir = PathBuf::from(format!("/sys/fs/bpf/lbt{}-tr{tag}", std::process::id()));
        crate::datapath::host::ensure_pin_dir(&dir).expect("bpffs");
        let ebpf = EbpfLoader::new()
            .default_map_pin_directory(&dir)
            .load(OBJECT)
            .expect("load");
        Self::programs_loaded(ebpf, dir)
    }

    /// A second object over this bed's pins, as a restarted agent with a
    /// conntrack map of `ct` entries loads it: the pinned conntrack map is
    /// carried (`migrate`: moved aside, copied, looked up on a miss) while
    /// this bed's programs still run on the old one. The carry is the
    /// caller's to finish.
    pub(super) fn carrying_ct(&self, ct: u32) -> (Bed, super::migrate::Carry) {
        self.carrying(
            lb_common::MAP_CT,
            super::MapSizes {
                ct,
                ..Default::default()
            },
        )
    }

    /// The same with `map` of the size `sizes` gives it (the other maps of
    /// their defaults).
    pub(super) fn carrying(
        &self,
        map: &str,
        sizes: super::MapSizes,
    ) -> (Bed, super::migrate::Carry) {
        let spec = super::map_specs(sizes)
            .into_iter()
            .find(|s| s.name == map)
            .unwrap();
        let mut carry = super::migrate::prepare(&self.dir, &spec)
            .expect("prepare")
            .unwrap_or_else(|| panic!("{map} of another size is carried"));
        let ebpf = EbpfLoader::new()
            .default_map_pin_directory(&self.dir)
            .map_max_entries(lb_common::MAP_CT, sizes.ct)
            .map_max_entries(lb_common::MAP_AFFINITY, sizes.affinity)
            .load(OBJECT)
            .expect("load");
        super::migrate::fill(&self.dir, &carry).expect("fill");
        super::migrate::bridge(&ebpf, &mut carry).expect("bridge");
        (Self::programs_loaded(ebpf, self.dir.clone()), carry)
    }

    pub(super) fn pin_dir(&self) -> &std::path::Path {
        &self.dir
    }

    fn programs_loaded(mut ebpf: Ebpf, dir: PathBuf) -> Self {
        for (name, _) in TC_PROGRAMS {
            let p: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
            p.load().unwrap_or_else(|e| panic!("{name}: {e:?}"));
        }
        let x: &mut Xdp = ebpf.program_mut("lb_xdp").unwrap().try_into().unwrap();
        x.load().unwrap_or_else(|e| panic!("lb_xdp: {e:?}"));
        let mut cfg: Array<_, Config> =
            Array::try_from(ebpf.map_mut(lb_common::MAP_CONFIG).unwrap()).unwrap();
        cfg.set(
            0,
            Config {
                node_ip4: ip("10.100.0.1"),
                node_ip6: ip("fd00:100::1"),
                flags: CONFIG_HAS_IP4 | CONFIG_HAS_IP6,
                maglev_size: 0,
            },
            0,
        )
        .unwrap();
        Self { ebpf, dir }
    }

    /// One external frontend with one backend (or none).
    pub(super) fn service(
        &mut self,
        front: &str,
        fport: u16,
        proto: u8,
        backend: Option<(&str, u16, u8)>,
    ) {
        self.frontend(front, fport, proto, SVC_FLAG_EXTERNAL, backend.as_slice());
    }

    /// A frontend with `flags` and `backends` (address, port, flags) in
    /// slots 1..; its service id is its port, distinct within a test.
    pub(super) fn frontend(
        &mut self,
        front: &str,
        fport: u16,
        proto: u8,
        flags: u8,
        backends: &[(&str, u16, u8)],
    ) {
        let key = ServiceKey::frontend(ip(front), BeU16::from_host(fport), proto, SCOPE_INTERNAL);
        let mut bes: HashMap<_, u32, Backend> =
            HashMap::try_from(self.ebpf.map_mut(lb_common::MAP_BACKENDS).unwrap()).unwrap();
        // distinct ids: a test may seed several services
        let first = 7 + bes.keys().count() as u32;
        for (i, (b, bport, bflags)) in backends.iter().enumerate() {
            let backend = Backend {
                addr: ip(b),
                port: BeU16::from_host(*bport),
                proto,
                flags: *bflags,
            };
            bes.insert(first + i as u32, backend, 0).unwrap();
        }
        let mut svcs: HashMap<_, ServiceKey, ServiceValue> =
            HashMap::try_from(self.ebpf.map_mut(lb_common::MAP_SERVICES).unwrap()).unwrap();
        for i in 0..backends.len() {
            let v = ServiceValue {
                backend_id: first + i as u32,
                ..Default::default()
            };
            svcs.insert(key.with_slot(i as u16 + 1), v, 0).unwrap();
        }
        let v = ServiceValue {
            count: backends.len() as u16,
            flags,
            service_id: fport as u32,
            ..Default::default()
        };
        svcs.insert(key, v, 0).unwrap();
    }

    /// A bed with a TCP NodePort 10.100.0.1:30080 served by a local backend.
    pub(super) fn with_node_port(tag: &str) -> Self {
        let mut bed = Bed::new(tag);
        bed.service(
            "10.100.0.1",
            30080,
            PROTO_TCP,
            Some(("10.244.1.10", 8080, BACKEND_LOCAL)),
        );
        bed
    }

    /// ... and a UDP one on IPv6, [fd00:100::1]:30053.
    pub(super) fn with_node_ports(tag: &str) -> Self {
        let mut bed = Bed::with_node_port(tag);
        bed.service(
            "fd00:100::1",
            30053,
            PROTO_UDP,
            Some(("fd00:244:1::a", 5353, BACKEND_LOCAL)),
        );
        bed
    }

    pub(super) fn run_xdp(&self, pkt: &[u8]) -> (u32, Vec<u8>) {
        let p: &Xdp = self.ebpf.program("lb_xdp").unwrap().try_into().unwrap();
        test_run(p, pkt)
    }

    pub(super) fn run(&self, prog: &str, pkt: &[u8]) -> (u32, Vec<u8>) {
        let p: &SchedClassifier = self.ebpf.program(prog).unwrap().try_into().unwrap();
        test_run(p, pkt)
    }

    /// Every datapath counter, summed over CPUs, in `COUNTER_NAMES` order.
    pub(super) fn counters(&self) -> Vec<u64> {
        let m: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(lb_common::MAP_COUNTERS).unwrap()).unwrap();
        (0..lb_common::COUNTERS)
            .map(|i| m.get(&i, 0).unwrap().iter().sum())
            .collect()
    }

    /// The counters that moved since `before` (from `counters`), by how
    /// much: a test of one outcome expects exactly its own counters here.
    pub(super) fn moved(&self, before: &[u64]) -> Vec<(&'static str, u64)> {
        lb_common::COUNTER_NAMES
            .iter()
            .zip(before.iter().zip(self.counters()))
            .filter(|(_, (b, a))| a != *b)
            .map(|(n, (b, a))| (*n, a - b))
            .collect()
    }

    pub(super) fn ct(&self) -> Vec<(CtKey, CtValue)> {
        let m: HashMap<_, CtKey, CtValue> =
            HashMap::try_from(self.ebpf.map(lb_common::MAP_CT).unwrap()).unwrap();
        m.iter().filter_map(Result::ok).collect()
    }
}

/// BPF_PROG_TEST_RUN on one packet: (verdict, packet out).
pub(super) fn test_run<P>(p: &P, pkt: &[u8]) -> (u32, Vec<u8>)
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = aya::programs::TestRunResult>,
{
    let mut out = vec![0u8; 2048];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(pkt);
    opts.data_out = Some(&mut out);
    let r = p.test_run(opts).expect("test run");
    out.truncate(r.data_size_out as usize);
    (r.return_value, out)
}

/// An IPv4 TCP segment with "hello": a bare SYN, or an ACK.
pub(super) fn tcp4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, syn: bool) -> Vec<u8> {
    let flags = if syn { TCP_SYN } else { TCP_ACK };
    tcp4_flags(src, sport, dst, dport, flags)
}

/// An IPv4 TCP segment with "hello" and `flags` (`lb_common::TCP_*`).
pub(super) fn tcp4_flags(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, flags: u8) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xc8], [2, 0, 0, 0, 0, 1])
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1000, 64000);
    if flags & TCP_SYN != 0 {
        b = b.syn();
    }
    if flags & TCP_ACK != 0 {
        b = b.ack(1);
    }
    if flags & TCP_FIN != 0 {
        b = b.fin();
    }
    if flags & TCP_RST != 0 {
        b = b.rst();
    }
    let mut v = Vec::new();
    b.write(&mut v, b"hello").unwrap();
    v
}

/// An ACK segment as an IPv4 fragment: `offset` in 8-byte units, `more`
/// the more-fragments flag.
pub(super) fn tcp4_fragment(
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    offset: u16,
    more: bool,
) -> Vec<u8> {
    let mut ip = etherparse::Ipv4Header::new(0, 64, etherparse::IpNumber::TCP, src, dst).unwrap();
    ip.dont_fragment = false;
    ip.more_fragments = more;
    ip.fragment_offset = etherparse::IpFragOffset::try_new(offset).unwrap();
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xc8], [2, 0, 0, 0, 0, 1])
        .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
        .tcp(sport, dport, 1000, 64000)
        .ack(1);
    let mut v = Vec::new();
    b.write(&mut v, b"hello").unwrap();
    v
}

/// What an ICMP error quotes of an Ethernet frame: its IP header, IPv4
/// options included, and the 8 bytes after it (RFC 792, RFC 4443's
/// minimum).
pub(in crate::datapath) fn quote(pkt: &[u8]) -> &[u8] {
    let l3 = &pkt[14..];
    let header = match etherparse::Ipv4HeaderSlice::from_slice(l3) {
        Ok(h) => h.slice().len(),
        Err(_) => etherparse::Ipv6Header::LEN,
    };
    &l3[..header + 8]
}

/// A TCP segment whose IPv4 header carries a Router Alert option (24 bytes
/// of header, not 20).
pub(super) fn tcp4_with_options(
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    syn: bool,
) -> Vec<u8> {
    let mut ip = etherparse::Ipv4Header::new(0, 64, etherparse::IpNumber::TCP, src, dst).unwrap();
    ip.options = [0x94, 0x04, 0, 0].into();
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xc8], [2, 0, 0, 0, 0, 1])
        .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
        .tcp(sport, dport, 1000, 64000);
    let b = if syn { b.syn() } else { b.ack(1) };
    let mut v = Vec::new();
    b.write(&mut v, b"hello").unwrap();
    assert_eq!(v[14] & 0x0f, 6, "a 24-byte header");
    v
}

pub(super) fn udp6(src: &str, sport: u16, dst: &str, dport: u16) -> Vec<u8> {
    let s: std::net::Ipv6Addr = src.parse().unwrap();
    let d: std::net::Ipv6Addr = dst.parse().unwrap();
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xc8], [2, 0, 0, 0, 0, 1])
        .ipv6(s.octets(), d.octets(), 64)
        .udp(sport, dport);
    let mut v = Vec::new();
    b.write(&mut v, b"query\n").unwrap();
    v
}

/// As `udp6`, behind an (empty) hop-by-hop options header.
pub(super) fn udp6_hop_by_hop(src: &str, sport: u16, dst: &str, dport: u16) -> Vec<u8> {
    let s: std::net::Ipv6Addr = src.parse().unwrap();
    let d: std::net::Ipv6Addr = dst.parse().unwrap();
    let ip = etherparse::Ipv6Header {
        hop_limit: 64,
        source: s.octets(),
        destination: d.octets(),
        ..Default::default()
    };
    let exts = etherparse::Ipv6Extensions {
        hop_by_hop_options: Some(
            // PadN over the header's six bytes of options.
            etherparse::Ipv6RawExtHeader::new_raw(etherparse::IpNumber::UDP, &[1, 4, 0, 0, 0, 0])
                .unwrap(),
        ),
        ..Default::default()
    };
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xc8], [2, 0, 0, 0, 0, 1])
        .ip(etherparse::IpHeaders::Ipv6(ip, exts))
        .udp(sport, dport);
    let mut v = Vec::new();
    b.write(&mut v, b"query\n").unwrap();
    v
}

/// The ones'-complement sum of 16-bit words.
fn sum(data: &[u8], mut acc: u32) -> u32 {
    for c in data.chunks(2) {
        acc += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

/// Checks the IPv4/IPv6 header and L4 checksums of an Ethernet frame.
pub(super) fn assert_checksums(pkt: &[u8]) {
    let l3 = &pkt[14..];
    let (pseudo, l4, proto) = if l3[0] >> 4 == 4 {
        let ihl = (l3[0] & 0xf) as usize * 4;
        assert_eq!(sum(&l3[..ihl], 0), 0xffff, "IPv4 header checksum");
        let len = u16::from_be_bytes([l3[2], l3[3]]) as usize - ihl;
        let mut p = l3[12..20].to_vec();
        p.extend_from_slice(&[0, l3[9]]);
        p.extend_from_slice(&(len as u16).to_be_bytes());
        (p, &l3[ihl..ihl + len], l3[9])
    } else {
        let len = u16::from_be_bytes([l3[4], l3[5]]) as usize;
        let mut p = l3[8..40].to_vec();
        p.extend_from_slice(&(len as u32).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, l3[6]]);
        (p, &l3[40..40 + len], l3[6])
    };
    if proto == 1 || proto == 58 {
        // ICMP has no pseudo-header over IPv4
        let s = if proto == 1 {
            sum(l4, 0)
        } else {
            sum(l4, sum(&pseudo, 0))
        };
        assert_eq!(s, 0xffff, "ICMP checksum");
        return;
    }
    assert_eq!(
        sum(l4, sum(&pseudo, 0)),
        0xffff,
        "L4 checksum (proto {proto})"
    );
}
