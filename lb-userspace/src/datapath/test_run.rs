//! The packet programs on crafted packets (BPF_PROG_TEST_RUN) with seeded
//! maps: verdicts, rewritten headers, checksums, conntrack entries, and
//! packets they must leave alone.

use std::{net::IpAddr, path::PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use etherparse::PacketBuilder;
use lb_common::{
    BACKEND_LOCAL, Backend, BeU16, CONFIG_HAS_IP4, CONFIG_HAS_IP6, CT_FWD, CT_REV, CT_RSNAT,
    CT_SNAT, Config, CtKey, CtValue, PROTO_TCP, PROTO_UDP, SCOPE_INTERNAL, SVC_FLAG_EXTERNAL,
    ServiceKey, ServiceValue,
};

use super::{OBJECT, TC_PROGRAMS};
use crate::compute::desired::net_addr;

pub(super) const TC_ACT_OK: u32 = 0;
const TC_ACT_REDIRECT: u32 = 7;
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

pub(super) fn ip(s: &str) -> lb_common::NetAddr {
    net_addr(s.parse::<IpAddr>().unwrap())
}

impl Bed {
    pub(super) fn new(tag: &str) -> Self {
        assert_eq!(
            crate::datapath::host::is_root(),
            true,
            "BPF_PROG_TEST_RUN needs root: run through `cargo xtask test`"
        );
        let dir = PathBuf::from(format!("/sys/fs/bpf/lbt{}-tr{tag}", std::process::id()));
        crate::datapath::host::ensure_pin_dir(&dir).expect("bpffs");
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&dir)
            .load(OBJECT)
            .expect("load");
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

pub(super) fn tcp4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, syn: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xc8], [2, 0, 0, 0, 0, 1])
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1000, 64000);
    let b = if syn { b.syn() } else { b.ack(1) };
    let mut v = Vec::new();
    b.write(&mut v, b"hello").unwrap();
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

pub(super) fn dst4(pkt: &[u8]) -> (String, u16) {
    let ihl = (pkt[14] & 0xf) as usize * 4;
    let a = &pkt[30..34];
    (
        format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3]),
        u16::from_be_bytes([pkt[14 + ihl + 2], pkt[14 + ihl + 3]]),
    )
}

pub(super) fn src4(pkt: &[u8]) -> (String, u16) {
    let ihl = (pkt[14] & 0xf) as usize * 4;
    let a = &pkt[26..30];
    (
        format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3]),
        u16::from_be_bytes([pkt[14 + ihl], pkt[14 + ihl + 1]]),
    )
}

#[test]
fn syn_to_a_node_port_is_dnated_with_valid_checksums_and_tracked() {
    let bed = Bed::with_node_port("syn");
    let syn = tcp4([10, 100, 0, 200], 40000, [10, 100, 0, 1], 30080, true);
    let (verdict, out) = bed.run("lb_tc_ingress", &syn);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(dst4(&out), ("10.244.1.10".into(), 8080));
    assert_eq!(
        src4(&out),
        ("10.100.0.200".into(), 40000),
        "a local backend sees the client"
    );
    assert_checksums(&out);
    let kinds: Vec<u8> = bed.ct().iter().map(|(k, _)| k.kind).collect();
    assert!(
        kinds.contains(&CT_FWD) && kinds.contains(&CT_REV) && !kinds.contains(&CT_SNAT),
        "{kinds:?}"
    );
    // the backend's reply leaves through egress as the frontend
    let reply = tcp4([10, 244, 1, 10], 8080, [10, 100, 0, 200], 40000, false);
    let (verdict, out) = bed.run("lb_tc_egress", &reply);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(src4(&out), ("10.100.0.1".into(), 30080));
    assert_checksums(&out);
    // a later packet of the flow reuses the entry
    let ack = tcp4([10, 100, 0, 200], 40000, [10, 100, 0, 1], 30080, false);
    assert_eq!(
        dst4(&bed.run("lb_tc_ingress", &ack).1),
        ("10.244.1.10".into(), 8080)
    );
}

#[test]
fn remote_backend_gets_snat_and_its_reply_is_translated_back() {
    let mut bed = Bed::new("snat");
    bed.service(
        "10.100.0.1",
        30080,
        PROTO_TCP,
        Some(("10.244.2.10", 8080, 0)),
    );
    let syn = tcp4([10, 100, 0, 200], 40001, [10, 100, 0, 1], 30080, true);
    let (_, fwd) = bed.run("lb_tc_ingress", &syn);
    assert_eq!(dst4(&fwd), ("10.244.2.10".into(), 8080));
    // at egress the source becomes the node, at a port of the SNAT range
    let (_, out) = bed.run("lb_tc_egress", &fwd);
    let (node, port) = src4(&out);
    assert_eq!(node, "10.100.0.1");
    assert!(lb_common::is_snat_port(port), "{port}");
    assert_checksums(&out);
    // the reply comes back to the node and gets the client as destination...
    let reply = tcp4([10, 244, 2, 10], 8080, [10, 100, 0, 1], port, false);
    let (_, back) = bed.run("lb_tc_ingress", &reply);
    assert_eq!(dst4(&back), ("10.100.0.200".into(), 40001));
    assert_checksums(&back);
    // ...and the frontend as source on its way out
    let (_, out) = bed.run("lb_tc_egress", &back);
    assert_eq!(src4(&out), ("10.100.0.1".into(), 30080));
    assert_checksums(&out);
    let kinds: Vec<u8> = bed.ct().iter().map(|(k, _)| k.kind).collect();
    for k in [CT_FWD, CT_REV, CT_SNAT, CT_RSNAT] {
        assert!(kinds.contains(&k), "{kinds:?}");
    }
}

#[test]
fn udp_over_ipv6_is_translated_with_a_valid_checksum() {
    let mut bed = Bed::new("udp6");
    bed.service(
        "fd00:100::1",
        30053,
        PROTO_UDP,
        Some(("fd00:244:1::a", 5353, BACKEND_LOCAL)),
    );
    let q = udp6("fd00:100::200", 50000, "fd00:100::1", 30053);
    let (verdict, out) = bed.run("lb_tc_ingress", &q);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(
        &out[38..54],
        &"fd00:244:1::a"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets()
    );
    assert_eq!(u16::from_be_bytes([out[56], out[57]]), 5353);
    assert_checksums(&out);
}

#[test]
fn no_backend_answers_port_unreachable() {
    let mut bed = Bed::new("icmp");
    bed.service("10.100.0.1", 30080, PROTO_TCP, None);
    bed.service("fd00:100::1", 30053, PROTO_UDP, None);
    let syn = tcp4([10, 100, 0, 200], 40002, [10, 100, 0, 1], 30080, true);
    let (verdict, out) = bed.run("lb_tc_ingress", &syn);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(
        &out[0..6],
        &[2, 0, 0, 0, 0, 0xc8],
        "back to the sender's MAC"
    );
    assert_eq!(out[14 + 9], 1, "ICMP");
    assert_eq!((out[34], out[35]), (3, 3), "port unreachable");
    assert_eq!(&out[26..30], &[10, 100, 0, 1]);
    assert_eq!(&out[30..34], &[10, 100, 0, 200]);
    assert_eq!(&out[42..62], &syn[14..34], "quotes the offending header");
    assert_checksums(&out);
    // a non-SYN segment is dropped, not answered
    let ack = tcp4([10, 100, 0, 200], 40002, [10, 100, 0, 1], 30080, false);
    assert_eq!(bed.run("lb_tc_ingress", &ack).0, 2);
    let q = udp6("fd00:100::200", 50001, "fd00:100::1", 30053);
    let (verdict, out) = bed.run("lb_tc_ingress", &q);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out[20], 58, "ICMPv6");
    assert_eq!((out[54], out[55]), (1, 4), "port unreachable");
    assert_checksums(&out);
}

/// A flood of SYNs to a Service without endpoints gets at most the node's
/// ICMP budget back (a burst of 50, then 1,000 a second); the rest are
/// dropped and counted.
#[test]
fn port_unreachables_are_rate_limited_per_node() {
    use super::test_run_conntrack::counter;
    let mut bed = Bed::new("icmprl");
    bed.service("10.100.0.1", 30080, PROTO_TCP, None);
    let (sent0, limited0) = (
        counter(&bed, "icmp_port_unreachable_sent"),
        counter(&bed, "drop_icmp_rate_limited"),
    );
    let started = std::time::Instant::now();
    let mut answered = 0u64;
    let mut dropped = 0u64;
    for i in 0..400u16 {
        let syn = tcp4([10, 100, 0, 200], 1024 + i, [10, 100, 0, 1], 30080, true);
        match bed.run("lb_tc_ingress", &syn).0 {
            TC_ACT_REDIRECT => answered += 1,
            2 => dropped += 1,
            v => panic!("verdict {v}"),
        }
    }
    let refill = started.elapsed().as_millis() as u64 + 1;
    assert!(answered >= 50, "the burst goes out: {answered}");
    assert!(
        answered <= 50 + refill,
        "{answered} answered in {refill} ms: more than the budget"
    );
    assert_eq!(answered + dropped, 400);
    assert!(dropped > 0, "a flood must be cut");
    assert_eq!(
        counter(&bed, "icmp_port_unreachable_sent") - sent0,
        answered
    );
    assert_eq!(counter(&bed, "drop_icmp_rate_limited") - limited0, dropped);
}

#[test]
fn packets_it_does_not_understand_pass_untouched() {
    let bed = Bed::with_node_ports("pass");
    let syn = tcp4([10, 100, 0, 200], 40003, [10, 100, 0, 1], 30080, true);
    // a later fragment whose first this hook never saw (first fragments
    // are translated: test_run_frag.rs), a truncated TCP header
    let mut later = syn.clone();
    later[14 + 7] = 8;
    let truncated = syn[..14 + 20 + 10].to_vec();
    // an IPv6 packet with a hop-by-hop extension header before UDP
    let mut hbh = udp6("fd00:100::200", 50002, "fd00:100::1", 30053);
    hbh[14 + 6] = 0;
    let plen = u16::from_be_bytes([hbh[18], hbh[19]]) + 8;
    hbh[18..20].copy_from_slice(&plen.to_be_bytes());
    hbh.splice(54..54, [17u8, 0, 1, 4, 0, 0, 0, 0]);
    // not IP at all
    let mut arp = syn.clone();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    // an ICMP error (destination unreachable) quoting a packet to the frontend
    let icmp_err = {
        let mut v = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xc8], [2, 0, 0, 0, 0, 1])
            .ipv4([10, 100, 0, 200], [10, 100, 0, 1], 64)
            .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::Port,
            ))
            .write(&mut v, &syn[14..14 + 28])
            .unwrap();
        v
    };
    for (what, pkt) in [
        ("later fragment", later),
        ("truncated", truncated),
        ("IPv6 extension header", hbh),
        ("ARP", arp),
        ("ICMP error", icmp_err),
    ] {
        for prog in ["lb_tc_ingress", "lb_tc_egress"] {
            let (verdict, out) = bed.run(prog, &pkt);
            assert_eq!(verdict, TC_ACT_OK, "{what} at {prog}");
            assert_eq!(out, pkt, "{what} must pass untouched through {prog}");
        }
        assert_eq!(
            bed.run_xdp(&pkt),
            (XDP_PASS, pkt.clone()),
            "{what} must pass untouched through XDP"
        );
    }
    assert!(bed.ct().is_empty(), "nothing tracked");
}

#[test]
fn xdp_translates_flows_to_local_backends_drops_what_tc_drops_and_passes_the_rest() {
    let mut bed = Bed::with_node_ports("xdp");
    // A new flow to a local backend: XDP makes its entries and translates.
    let syn = tcp4([10, 100, 0, 200], 40010, [10, 100, 0, 1], 30080, true);
    let (verdict, out) = bed.run_xdp(&syn);
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(dst4(&out), ("10.244.1.10".into(), 8080));
    assert_checksums(&out);
    let kinds: Vec<u8> = bed.ct().iter().map(|(k, _)| k.kind).collect();
    assert!(
        kinds.contains(&CT_FWD) && kinds.contains(&CT_REV),
        "{kinds:?}"
    );
    // ... and its next packets through the entry.
    let ack = tcp4([10, 100, 0, 200], 40010, [10, 100, 0, 1], 30080, false);
    let (verdict, out) = bed.run_xdp(&ack);
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(dst4(&out), ("10.244.1.10".into(), 8080));
    assert_checksums(&out);
    let q = udp6("fd00:100::200", 50010, "fd00:100::1", 30053);
    bed.run("lb_tc_ingress", &q);
    let (_, out) = bed.run_xdp(&q);
    assert_eq!(
        &out[38..54],
        &"fd00:244:1::a"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets()
    );
    assert_checksums(&out);
    // a fragment passes untouched
    let mut mf = ack.clone();
    mf[14 + 6] |= 0x20;
    assert_eq!(bed.run_xdp(&mf), (XDP_PASS, mf.clone()));
    // A backend on another node needs SNAT at egress: TC's, untouched here.
    bed.service(
        "10.100.0.1",
        30081,
        PROTO_TCP,
        Some(("10.244.2.10", 8080, 0)),
    );
    let syn = tcp4([10, 100, 0, 200], 40011, [10, 100, 0, 1], 30081, true);
    assert_eq!(bed.run_xdp(&syn), (XDP_PASS, syn.clone()));
    // externalTrafficPolicy: Local without a local endpoint: dropped here.
    let ext_local = SVC_FLAG_EXTERNAL | lb_common::SVC_FLAG_EXT_LOCAL;
    bed.frontend("10.100.0.1", 30082, PROTO_TCP, ext_local, &[]);
    let syn = tcp4([10, 100, 0, 200], 40012, [10, 100, 0, 1], 30082, true);
    assert_eq!(bed.run_xdp(&syn).0, XDP_DROP);
}

#[test]
fn tcp_flags_drive_the_flow_state_the_sweep_reads() {
    let bed = Bed::with_node_port("fin");
    let syn = tcp4([10, 100, 0, 200], 40020, [10, 100, 0, 1], 30080, true);
    bed.run("lb_tc_ingress", &syn);
    let closing = |bed: &Bed| {
        bed.ct()
            .iter()
            .find(|(k, _)| k.kind == CT_FWD)
            .map(|(_, v)| v.flags & lb_common::CT_F_CLOSING != 0)
            .unwrap()
    };
    let flags = |bed: &Bed, kind: u8| {
        bed.ct()
            .iter()
            .find(|(k, _)| k.kind == kind)
            .map(|(_, v)| v.flags)
            .unwrap()
    };
    assert!(!closing(&bed));
    let est = lb_common::CT_F_ESTABLISHED;
    assert_eq!(flags(&bed, CT_FWD) & est, 0, "a bare SYN: not established");
    bed.run("lb_tc_ingress", &syn);
    assert_eq!(flags(&bed, CT_FWD) & est, 0, "a retransmitted SYN neither");
    // The backend's SYN-ACK (egress, reverse entry), then the client's ACK.
    let mut synack = tcp4([10, 244, 1, 10], 8080, [10, 100, 0, 200], 40020, true);
    synack[14 + 20 + 13] |= 0x10;
    bed.run("lb_tc_egress", &synack);
    assert_ne!(flags(&bed, CT_REV) & est, 0, "the backend answered");
    let ack = tcp4([10, 100, 0, 200], 40020, [10, 100, 0, 1], 30080, false);
    bed.run("lb_tc_ingress", &ack);
    assert_ne!(
        flags(&bed, CT_FWD) & est,
        0,
        "the client completed the handshake"
    );
    assert_ne!(
        flags(&bed, CT_FWD) & BACKEND_LOCAL,
        0,
        "the backend's locality bit stays"
    );
    let mut fin = tcp4([10, 100, 0, 200], 40020, [10, 100, 0, 1], 30080, false);
    fin[14 + 20 + 13] |= 0x01; // FIN (checksum no longer matters: only flags are read)
    let (_, out) = bed.run("lb_tc_ingress", &fin);
    assert_eq!(
        dst4(&out),
        ("10.244.1.10".into(), 8080),
        "a FIN is still translated"
    );
    assert!(closing(&bed));
}

#[test]
fn new_flows_follow_the_maglev_table_and_fall_back_without_one() {
    use aya::maps::{HashOfMaps, MapData};
    let mut bed = Bed::new("maglev");
    let local = BACKEND_LOCAL;
    bed.frontend(
        "10.100.0.1",
        30080,
        PROTO_TCP,
        SVC_FLAG_EXTERNAL,
        &[("10.244.1.10", 8080, local), ("10.244.1.11", 8080, local)],
    );
    {
        let mut cfg: Array<_, Config> =
            Array::try_from(bed.ebpf.map_mut(lb_common::MAP_CONFIG).unwrap()).unwrap();
        let mut c = cfg.get(&0, 0).unwrap();
        c.maglev_size = 7;
        cfg.set(0, c, 0).unwrap();
    }
    let backends_of_new_flows =
        |bed: &Bed, first_port: u16| -> std::collections::BTreeSet<String> {
            (0..24)
                .map(|i| {
                    let syn = tcp4(
                        [10, 100, 0, 200],
                        first_port + i,
                        [10, 100, 0, 1],
                        30080,
                        true,
                    );
                    let (verdict, out) = bed.run("lb_tc_ingress", &syn);
                    assert_eq!(verdict, TC_ACT_OK);
                    assert_checksums(&out);
                    dst4(&out).0
                })
                .collect()
        };
    // No table: the 5-tuple hash spreads flows over both slots.
    assert_eq!(backends_of_new_flows(&bed, 41000).len(), 2);
    // A table naming slot 2 everywhere: every new flow goes there.
    {
        let mut outer: HashOfMaps<_, u32, MapData> =
            HashOfMaps::try_from(bed.ebpf.map_mut(lb_common::MAP_MAGLEV).unwrap()).unwrap();
        let table = super::writer::maglev_table(&[2; 7]).expect("table");
        outer.insert(30080, &table, 0).expect("table swapped in");
    }
    assert_eq!(
        backends_of_new_flows(&bed, 42000),
        ["10.244.1.11".to_string()].into()
    );
    // Entries outside the frontend's slots (a table mid-update) fall back.
    {
        let mut outer: HashOfMaps<_, u32, MapData> =
            HashOfMaps::try_from(bed.ebpf.map_mut(lb_common::MAP_MAGLEV).unwrap()).unwrap();
        let table = super::writer::maglev_table(&[9; 7]).expect("table");
        outer.insert(30080, &table, 0).expect("table swapped in");
    }
    assert_eq!(backends_of_new_flows(&bed, 43000).len(), 2);
}

/// On a device that delivers CHECKSUM_COMPLETE, a translated packet keeps
/// skb->csum equal to its data's sum (the kernel's test run checks it and
/// fails with EBADMSG otherwise: a "hw csum failure" on a real device),
/// IPv6 included, in both directions.
#[test]
fn translation_keeps_a_complete_checksum_right_on_ipv6_and_ipv4() {
    use std::os::fd::AsFd as _;
    const BPF_F_TEST_SKB_CHECKSUM_COMPLETE: u32 = 1 << 2;
    let bed = Bed::with_node_ports("csumc");
    let run = |prog: &str, pkt: &[u8]| {
        let p: &SchedClassifier = bed.ebpf.program(prog).unwrap().try_into().unwrap();
        super::sys::prog_test_run(
            p.fd().unwrap().as_fd(),
            pkt,
            BPF_F_TEST_SKB_CHECKSUM_COMPLETE,
        )
        .unwrap_or_else(|e| panic!("{prog}: skb->csum no longer matches the packet: {e}"))
    };
    let (verdict, out) = run(
        "lb_tc_ingress",
        &udp6("fd00:100::200", 50020, "fd00:100::1", 30053),
    );
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(&out[38..54], &ip("fd00:244:1::a").octets(), "translated");
    assert_checksums(&out);
    let (_, out) = run(
        "lb_tc_egress",
        &udp6("fd00:244:1::a", 5353, "fd00:100::200", 50020),
    );
    assert_eq!(
        &out[22..38],
        &ip("fd00:100::1").octets(),
        "reverse translated"
    );
    assert_checksums(&out);
    let (_, out) = run(
        "lb_tc_ingress",
        &tcp4([10, 100, 0, 200], 40020, [10, 100, 0, 1], 30080, true),
    );
    assert_eq!(dst4(&out), ("10.244.1.10".into(), 8080));
    assert_checksums(&out);
}

/// Every drop is counted once, under its own reason: an answered SYN to a
/// Service without endpoints is not also a drop, a bare ACK there is one,
/// and a slot naming no backend entry has a reason of its own.
#[test]
fn each_drop_is_counted_once_under_its_own_reason() {
    use super::test_run_conntrack::counter;
    let mut bed = Bed::new("reasons");
    bed.service("10.100.0.1", 30080, PROTO_TCP, None);
    bed.service(
        "10.100.0.1",
        30081,
        PROTO_TCP,
        Some(("10.244.1.10", 8080, BACKEND_LOCAL)),
    );
    // The second frontend's backend entry goes (a write in flight).
    let mut bes: HashMap<_, u32, Backend> =
        HashMap::try_from(bed.ebpf.map_mut(lb_common::MAP_BACKENDS).unwrap()).unwrap();
    let ids: Vec<u32> = bes.keys().filter_map(Result::ok).collect();
    for id in ids {
        bes.remove(&id).unwrap();
    }
    let names = lb_common::COUNTER_NAMES;
    let snapshot = |bed: &Bed| names.map(|n| counter(bed, n));
    let delta = |before: &[u64], after: &[u64]| -> Vec<(&str, u64)> {
        names
            .iter()
            .zip(before.iter().zip(after))
            .filter(|(_, (b, a))| a != b)
            .map(|(n, (b, a))| (*n, a - b))
            .collect()
    };
    let c = [10, 100, 0, 200];
    let n = [10, 100, 0, 1];
    let b0 = snapshot(&bed);
    assert_eq!(
        bed.run("lb_tc_ingress", &tcp4(c, 40040, n, 30080, true)).0,
        TC_ACT_REDIRECT
    );
    let b1 = snapshot(&bed);
    assert_eq!(delta(&b0, &b1), [("icmp_port_unreachable_sent", 1)]);
    assert_eq!(
        bed.run("lb_tc_ingress", &tcp4(c, 40041, n, 30080, false)).0,
        2
    );
    let b2 = snapshot(&bed);
    assert_eq!(delta(&b1, &b2), [("drop_no_backend", 1)]);
    assert_eq!(
        bed.run("lb_tc_ingress", &tcp4(c, 40042, n, 30081, true)).0,
        2
    );
    let b3 = snapshot(&bed);
    assert_eq!(delta(&b2, &b3), [("drop_backend_missing", 1)]);
}
