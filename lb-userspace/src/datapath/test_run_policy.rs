//! The NetworkPolicy programs of pod interfaces (`lb_pod_from`: the pod's
//! egress, `lb_pod_to`: its ingress) on crafted packets (BPF_PROG_TEST_RUN)
//! with seeded policy maps: verdicts, the policy conntrack, and the
//! per-endpoint counters each verdict moves.

use std::{
    net::{IpAddr, Ipv6Addr},
    path::PathBuf,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, PerCpuArray,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{ProgramError, SchedClassifier, TestRun as _, TestRunOptions},
};
use etherparse::{IpHeaders, IpNumber, PacketBuilder, PacketBuilderStep};
use lb_common::{
    BeU16, CONFIG_HAS_IP4, CONFIG_HAS_IP6, Config, DIR_EGRESS, DIR_INGRESS, EP_F_EGRESS_ISOLATED,
    EP_F_INGRESS_ISOLATED, ID_ANY, ID_FIRST_CIDR, ID_HOST, ID_WORLD, IpcacheData, NetAddr,
    POL_F_ANY_EGRESS, POL_F_ANY_INGRESS, POL_REASONS, POLICY_PREFIX_ANY_PROTO, POLICY_PREFIX_FULL,
    POLICY_PREFIX_PROTO, PROTO_SCTP, PROTO_TCP, PROTO_UDP, PolCidrData, PolCtKey, PolCtValue,
    PolEndpoint, PolReason, PolicyData, PolicyState,
};

use super::OBJECT;
use crate::compute::desired::net_addr;

const OK: u32 = 0;
const SHOT: u32 = 2;

/// TC ingress on the host side of the pod's veth: the pod's egress.
const FROM: &str = "lb_pod_from";
/// TC egress there: the pod's ingress.
const TO: &str = "lb_pod_to";

/// The pod under test: isolated both ways.
const EP: u32 = 7;
const POD_ID: u32 = 300;
/// Another pod of this node, isolated in neither direction.
const EP2: u32 = 9;
const POD2_ID: u32 = 301;
/// Peers of the cluster, by identity.
const PEER_ID: u32 = 400;
const OTHER_ID: u32 = 500;
const ISOLATED: u32 = EP_F_INGRESS_ISOLATED | EP_F_EGRESS_ISOLATED;
const ANY_BOTH: u32 = POL_F_ANY_INGRESS | POL_F_ANY_EGRESS;

const GRE: u8 = 47;

/// The counters `Bed::check` watches: these endpoints' (0 takes the
/// unknown-endpoint verdicts).
const WATCHED: [u32; 3] = [0, EP, EP2];

use PolReason::{AllowedEgress, AllowedIngress, DeniedEgress, DeniedIngress, UnknownEndpoint};

/// The addresses of one family.
struct Net {
    name: &'static str,
    pod: &'static str,
    pod2: &'static str,
    peer: &'static str,
    other: &'static str,
    /// This node (ipcache: ID_HOST).
    host: &'static str,
    /// A pod address of this node the policy maps do not know.
    stray: &'static str,
    /// Outside the cluster (ipcache miss: ID_WORLD).
    outside: &'static str,
    /// An ipBlock, an `except` inside it, an address in each.
    block: (&'static str, u32),
    except: (&'static str, u32),
    in_block: &'static str,
    in_except: &'static str,
    /// The peers' pod network, as an ipBlock.
    peer_net: (&'static str, u32),
}

const V4: Net = Net {
    name: "IPv4",
    pod: "10.244.1.10",
    pod2: "10.244.1.11",
    peer: "10.244.2.20",
    other: "10.244.2.30",
    host: "10.100.0.1",
    stray: "10.244.1.99",
    outside: "8.8.8.8",
    block: ("192.168.0.0", 16),
    except: ("192.168.1.0", 24),
    in_block: "192.168.5.5",
    in_except: "192.168.1.5",
    peer_net: ("10.244.2.0", 24),
};

const V6: Net = Net {
    name: "IPv6",
    pod: "fd00:244:1::a",
    pod2: "fd00:244:1::b",
    peer: "fd00:244:2::14",
    other: "fd00:244:2::1e",
    host: "fd00:100::1",
    stray: "fd00:244:1::63",
    outside: "2001:4860::8888",
    block: ("2001:db8::", 32),
    except: ("2001:db8:1::", 48),
    in_block: "2001:db8:5::5",
    in_except: "2001:db8:1::5",
    peer_net: ("fd00:244:2::", 64),
};

const NETS: [&Net; 2] = [&V4, &V6];

fn parse(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ip(s: &str) -> NetAddr {
    net_addr(parse(s))
}

/// An LPM prefix over the 128 address bits (IPv4: mapped, 96 + length).
fn prefix(addr: &str, len: u32) -> (NetAddr, u32) {
    match parse(addr) {
        IpAddr::V4(_) => (ip(addr), 96 + len),
        IpAddr::V6(_) => (ip(addr), len),
    }
}

fn be(port: u16) -> BeU16 {
    BeU16::from_host(port)
}

struct Bed {
    ebpf: Ebpf,
    dir: PathBuf,
    net: &'static Net,
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = super::reset(&self.dir);
    }
}

impl Bed {
    /// The two pod programs with empty policy maps.
    fn bare(tag: &str, net: &'static Net) -> Self {
        assert_eq!(
            crate::datapath::host::is_root(),
            true,
            "BPF_PROG_TEST_RUN needs root: run through `cargo xtask test`"
        );
        let dir = PathBuf::from(format!(
            "/sys/fs/bpf/lbt{}-pol{tag}-{}",
            std::process::id(),
            net.name
        ));
        crate::datapath::host::ensure_pin_dir(&dir).expect("bpffs");
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&dir)
            .load(OBJECT)
            .expect("load");
        for name in [FROM, TO] {
            let p: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
            p.load().unwrap_or_else(|e| panic!("{name}: {e:?}"));
        }
        let mut cfg: Array<_, Config> =
            Array::try_from(ebpf.map_mut(lb_common::MAP_CONFIG).unwrap()).unwrap();
        cfg.set(
            0,
            Config {
                node_ip4: ip(V4.host),
                node_ip6: ip(V6.host),
                flags: CONFIG_HAS_IP4 | CONFIG_HAS_IP6,
                maglev_size: 0,
            },
            0,
        )
        .unwrap();
        Self { ebpf, dir, net }
    }

    /// The pod (isolated both ways, no allow entry yet), a second pod
    /// isolated in neither direction, the identities of the peers and of
    /// this node; revision 1, some policy isolating both directions.
    fn new(tag: &str, net: &'static Net) -> Self {
        let mut bed = Bed::bare(tag, net);
        bed.endpoint(net.pod, EP, POD_ID, ISOLATED);
        bed.endpoint(net.pod2, EP2, POD2_ID, 0);
        bed.identity(net.pod, POD_ID);
        bed.identity(net.pod2, POD2_ID);
        bed.identity(net.peer, PEER_ID);
        bed.identity(net.other, OTHER_ID);
        bed.identity(net.host, ID_HOST);
        bed.state(1, ANY_BOTH);
        bed
    }

    fn endpoint(&mut self, addr: &str, ep_id: u32, identity: u32, flags: u32) {
        let mut m: HashMap<_, NetAddr, PolEndpoint> =
            HashMap::try_from(self.ebpf.map_mut(lb_common::MAP_POL_EP).unwrap()).unwrap();
        let ep = PolEndpoint {
            ep_id,
            identity,
            flags,
            ifindex: 0,
        };
        m.insert(ip(addr), ep, 0).unwrap();
    }

    fn identity(&mut self, addr: &str, id: u32) {
        let mut m: LpmTrie<_, IpcacheData, u32> =
            LpmTrie::try_from(self.ebpf.map_mut(lb_common::MAP_IPCACHE).unwrap()).unwrap();
        m.insert(&Key::new(128, IpcacheData { addr: ip(addr) }), id, 0)
            .unwrap();
    }

    fn policy_key(
        ep_id: u32,
        identity: u32,
        dir: u8,
        proto: u8,
        port: u16,
        len: u32,
    ) -> Key<PolicyData> {
        Key::new(
            len,
            PolicyData {
                ep_id,
                identity,
                dir,
                proto,
                port: be(port),
            },
        )
    }

    fn entries(&mut self) -> LpmTrie<&mut aya::maps::MapData, PolicyData, u32> {
        LpmTrie::try_from(self.ebpf.map_mut(lb_common::MAP_POLICY).unwrap()).unwrap()
    }

    /// An allow entry: prefix 96 one port, 80 + n a block of 2^(16-n)
    /// ports from `port`, 80 the whole protocol, 72 any protocol.
    fn allow(&mut self, ep_id: u32, identity: u32, dir: u8, proto: u8, port: u16, len: u32) {
        let k = Self::policy_key(ep_id, identity, dir, proto, port, len);
        self.entries().insert(&k, 1, 0).unwrap();
    }

    fn revoke(&mut self, ep_id: u32, identity: u32, dir: u8, proto: u8, port: u16, len: u32) {
        let k = Self::policy_key(ep_id, identity, dir, proto, port, len);
        self.entries().remove(&k).unwrap();
    }

    fn cidr(&mut self, ep_id: u32, dir: u8, block: (&str, u32), set: u32) {
        let (addr, len) = prefix(block.0, block.1);
        let mut m: LpmTrie<_, PolCidrData, u32> =
            LpmTrie::try_from(self.ebpf.map_mut(lb_common::MAP_POL_CIDR).unwrap()).unwrap();
        let k = Key::new(
            lb_common::POL_CIDR_FIXED_BITS + len,
            PolCidrData {
                ep_id,
                dir,
                _pad: [0; 3],
                addr,
            },
        );
        m.insert(&k, set, 0).unwrap();
    }

    fn state(&mut self, revision: u32, flags: u32) {
        let mut m: Array<_, PolicyState> =
            Array::try_from(self.ebpf.map_mut(lb_common::MAP_POL_STATE).unwrap()).unwrap();
        m.set(0, PolicyState { revision, flags }, 0).unwrap();
    }

    /// The watched endpoints' counters, summed over CPUs.
    fn counts(&self) -> Vec<u64> {
        let m: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(lb_common::MAP_POL_COUNT).unwrap()).unwrap();
        let mut out = Vec::new();
        for ep in WATCHED {
            for r in 0..POL_REASONS {
                let v = m.get(&(ep * POL_REASONS + r), 0).unwrap();
                out.push(v.iter().sum());
            }
        }
        out
    }

    fn pol_ct(&self) -> Vec<(PolCtKey, PolCtValue)> {
        let m: HashMap<_, PolCtKey, PolCtValue> =
            HashMap::try_from(self.ebpf.map(lb_common::MAP_POL_CT).unwrap()).unwrap();
        m.iter().filter_map(Result::ok).collect()
    }

    fn try_run(&self, prog: &str, pkt: &[u8]) -> Result<u32, ProgramError> {
        let p: &SchedClassifier = self.ebpf.program(prog).unwrap().try_into().unwrap();
        let mut out = vec![0u8; 4096];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(pkt);
        opts.data_out = Some(&mut out);
        Ok(p.test_run(opts)?.return_value)
    }

    /// Runs `prog` on `pkt`; checks the verdict and that exactly the
    /// counter `count` (endpoint, reason) moved, by one (none for `None`).
    #[track_caller]
    fn check(
        &self,
        prog: &str,
        pkt: &[u8],
        want: u32,
        count: Option<(u32, PolReason)>,
        what: &str,
    ) {
        let before = self.counts();
        let verdict = self.try_run(prog, pkt).expect("test run");
        let what = format!("{}: {what} ({prog})", self.net.name);
        assert_eq!(verdict, want, "verdict of {what}");
        let after = self.counts();
        let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        let mut want_delta = vec![0u64; delta.len()];
        if let Some((ep, reason)) = count {
            let i = WATCHED.iter().position(|e| *e == ep).unwrap();
            want_delta[i * POL_REASONS as usize + reason as usize] = 1;
        }
        if delta != want_delta {
            // name the counters for the message
            let names = |d: &[u64]| -> Vec<String> {
                d.iter()
                    .enumerate()
                    .filter(|(_, v)| **v != 0)
                    .map(|(i, v)| {
                        let ep = WATCHED[i / POL_REASONS as usize];
                        let r = lb_common::POL_REASON_NAMES[i % POL_REASONS as usize];
                        format!("ep {ep} {r} +{v}")
                    })
                    .collect()
            };
            panic!(
                "counters of {what}: moved {:?}, expected {:?}",
                names(&delta),
                names(&want_delta)
            );
        }
    }

    /// The policy conntrack entry of a flow, if any.
    fn ct_entry(&self, want: &PolCtKey) -> Option<PolCtValue> {
        self.pol_ct()
            .into_iter()
            .find(|(k, _)| k == want)
            .map(|(_, v)| v)
    }
}

#[allow(clippy::too_many_arguments)]
fn ct_key(
    saddr: &str,
    sport: u16,
    daddr: &str,
    dport: u16,
    proto: u8,
    dir: u8,
    ep_id: u32,
) -> PolCtKey {
    PolCtKey {
        saddr: ip(saddr),
        daddr: ip(daddr),
        sport: be(sport),
        dport: be(dport),
        proto,
        dir,
        _pad: [0; 2],
        ep_id,
    }
}

// ---- packets ----

const MAC_POD: [u8; 6] = [2, 0, 0, 0, 0, 0x0a];
const MAC_HOST: [u8; 6] = [2, 0, 0, 0, 0, 1];

fn ip_step(src: &str, dst: &str) -> PacketBuilderStep<IpHeaders> {
    let eth = PacketBuilder::ethernet2(MAC_HOST, MAC_POD);
    match (parse(src), parse(dst)) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => panic!("{src} -> {dst}: mixed families"),
    }
}

fn is_v4(addr: &str) -> bool {
    parse(addr).is_ipv4()
}

fn tcp(src: &str, sport: u16, dst: &str, dport: u16, syn: bool, ack: bool) -> Vec<u8> {
    let b = ip_step(src, dst).tcp(sport, dport, 1000, 64000);
    let b = if syn { b.syn() } else { b };
    let b = if ack { b.ack(1) } else { b };
    let mut v = Vec::new();
    b.write(&mut v, b"hello").unwrap();
    v
}

fn syn(src: &str, sport: u16, dst: &str, dport: u16) -> Vec<u8> {
    tcp(src, sport, dst, dport, true, false)
}

fn synack(src: &str, sport: u16, dst: &str, dport: u16) -> Vec<u8> {
    tcp(src, sport, dst, dport, true, true)
}

fn ack(src: &str, sport: u16, dst: &str, dport: u16) -> Vec<u8> {
    tcp(src, sport, dst, dport, false, true)
}

fn udp(src: &str, sport: u16, dst: &str, dport: u16) -> Vec<u8> {
    let mut v = Vec::new();
    ip_step(src, dst)
        .udp(sport, dport)
        .write(&mut v, &[0x5a; 32])
        .unwrap();
    v
}

/// An IP packet of any protocol, `payload` as its L4 bytes.
fn raw(src: &str, dst: &str, proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    ip_step(src, dst)
        .write(&mut v, IpNumber(proto), payload)
        .unwrap();
    v
}

/// SCTP: the 12-byte common header (ports first, verification tag,
/// checksum), then an INIT chunk's header.
fn sctp(src: &str, sport: u16, dst: &str, dport: u16) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&sport.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    l4.extend_from_slice(&[0; 8]);
    l4.extend_from_slice(&[1, 0, 0, 20]);
    l4.extend_from_slice(&[0; 16]);
    raw(src, dst, PROTO_SCTP, &l4)
}

/// GRE with a zero header (no options) carrying nothing in particular.
fn gre(src: &str, dst: &str) -> Vec<u8> {
    raw(src, dst, GRE, &[0, 0, 0x08, 0x00, 0x45, 0, 0, 20])
}

/// The part of an IP packet an ICMP error quotes: its IP header and the
/// first 8 bytes after it.
fn quote(pkt: &[u8]) -> &[u8] {
    let l3 = &pkt[14..];
    let len = if l3[0] >> 4 == 4 {
        (l3[0] & 0xf) as usize * 4 + 8
    } else {
        48
    };
    &l3[..len]
}

/// Destination (port) unreachable from `src` to `dst`, quoting `quoted`.
fn unreachable(src: &str, dst: &str, quoted: &[u8]) -> Vec<u8> {
    let b = ip_step(src, dst);
    let mut v = Vec::new();
    if is_v4(src) {
        b.icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ))
        .write(&mut v, quoted)
        .unwrap();
    } else {
        b.icmpv6(etherparse::Icmpv6Type::DestinationUnreachable(
            etherparse::icmpv6::DestUnreachableCode::Port,
        ))
        .write(&mut v, quoted)
        .unwrap();
    }
    v
}

fn echo(src: &str, dst: &str, id: u16, request: bool) -> Vec<u8> {
    let b = ip_step(src, dst);
    let mut v = Vec::new();
    match (is_v4(src), request) {
        (true, true) => b.icmpv4_echo_request(id, 1).write(&mut v, b"ping"),
        (true, false) => b.icmpv4_echo_reply(id, 1).write(&mut v, b"ping"),
        (false, true) => b.icmpv6_echo_request(id, 1).write(&mut v, b"ping"),
        (false, false) => b.icmpv6_echo_reply(id, 1).write(&mut v, b"ping"),
    }
    .unwrap();
    v
}

fn echo_request(src: &str, dst: &str, id: u16) -> Vec<u8> {
    echo(src, dst, id, true)
}

fn echo_reply(src: &str, dst: &str, id: u16) -> Vec<u8> {
    echo(src, dst, id, false)
}

/// ICMPv6 of type `ty` (code 0) with `body` after the first 8 bytes.
fn icmp6(src: &str, dst: &str, ty: u8, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    ip_step(src, dst)
        .icmpv6_raw(ty, 0, [0; 4])
        .write(&mut v, body)
        .unwrap();
    v
}

/// An ARP request from `spa` for `tpa`.
fn arp(spa: &str, tpa: &str) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(t)) = (parse(spa), parse(tpa)) else {
        panic!("ARP is IPv4");
    };
    let mut v = vec![0xff; 6];
    v.extend_from_slice(&MAC_POD);
    v.extend_from_slice(&[0x08, 0x06]);
    v.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    v.extend_from_slice(&MAC_POD);
    v.extend_from_slice(&s.octets());
    v.extend_from_slice(&[0; 6]);
    v.extend_from_slice(&t.octets());
    v
}

/// The IPv4 header checksum, recomputed after an edit.
fn fix_ip4_checksum(pkt: &mut [u8]) {
    let ihl = (pkt[14] & 0xf) as usize * 4;
    pkt[24] = 0;
    pkt[25] = 0;
    let mut acc: u32 = 0;
    for c in pkt[14..14 + ihl].chunks(2) {
        acc += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    pkt[24..26].copy_from_slice(&(!(acc as u16)).to_be_bytes());
}

/// `pkt` as a fragment at `offset` (8-byte units), more to come or not.
/// IPv4: the header's fields; IPv6: a fragment extension header. The L4
/// bytes stay as they were: a later fragment whose payload happens to look
/// like the ports of an allowed flow must not be read as such.
fn fragment(pkt: &[u8], offset: u16, more: bool) -> Vec<u8> {
    let mut v = pkt.to_vec();
    if v[14] >> 4 == 4 {
        let word = (more as u16) << 13 | offset;
        v[20..22].copy_from_slice(&word.to_be_bytes());
        fix_ip4_checksum(&mut v);
        return v;
    }
    let next = v[14 + 6];
    v[14 + 6] = 44;
    let plen = u16::from_be_bytes([v[18], v[19]]) + 8;
    v[18..20].copy_from_slice(&plen.to_be_bytes());
    let word = (offset << 3) | more as u16;
    let w = word.to_be_bytes();
    v.splice(54..54, [next, 0, w[0], w[1], 0, 0, 0x12, 0x34]);
    v
}

// ---- tests ----

#[test]
fn an_allowed_syn_into_a_pod_passes_and_is_tracked_its_reply_passes_statefully_and_a_denied_syn_is_dropped()
 {
    for n in NETS {
        let mut bed = Bed::new("syn", n);
        bed.allow(EP, PEER_ID, DIR_INGRESS, PROTO_TCP, 80, POLICY_PREFIX_FULL);
        bed.check(
            TO,
            &syn(n.peer, 40000, n.pod, 80),
            OK,
            Some((EP, AllowedIngress)),
            "a SYN the rule allows",
        );
        let k = ct_key(n.peer, 40000, n.pod, 80, PROTO_TCP, DIR_INGRESS, EP);
        let v = bed
            .ct_entry(&k)
            .unwrap_or_else(|| panic!("{}: no policy conntrack entry: {:?}", n.name, bed.pol_ct()));
        assert_eq!(v.revision, 1, "{}: allowed under revision 1", n.name);
        assert_eq!(bed.pol_ct().len(), 1, "{}: one entry", n.name);
        bed.check(
            FROM,
            &synack(n.pod, 80, n.peer, 40000),
            OK,
            None,
            "the reply, egress isolated with no rule",
        );
        bed.check(
            TO,
            &ack(n.peer, 40000, n.pod, 80),
            OK,
            None,
            "the next packet in",
        );
        bed.check(
            TO,
            &syn(n.other, 40001, n.pod, 80),
            SHOT,
            Some((EP, DeniedIngress)),
            "a SYN from a peer no rule names",
        );
        bed.check(
            TO,
            &syn(n.outside, 40001, n.pod, 80),
            SHOT,
            Some((EP, DeniedIngress)),
            "a SYN from the world",
        );
        bed.check(
            TO,
            &syn(n.peer, 40002, n.pod, 81),
            SHOT,
            Some((EP, DeniedIngress)),
            "a SYN to another port",
        );
        bed.check(
            TO,
            &udp(n.peer, 40003, n.pod, 80),
            SHOT,
            Some((EP, DeniedIngress)),
            "UDP to the TCP rule's port",
        );
        bed.check(
            FROM,
            &synack(n.pod, 80, n.other, 40001),
            SHOT,
            Some((EP, DeniedEgress)),
            "a reply to the denied SYN (no entry was made for it)",
        );
        bed.check(
            FROM,
            &syn(n.pod, 40004, n.peer, 80),
            SHOT,
            Some((EP, DeniedEgress)),
            "a new flow out, egress isolated with no rule",
        );
        assert_eq!(
            bed.pol_ct().len(),
            1,
            "{}: denied flows leave no entry",
            n.name
        );
        // An entry for any peer (identity 0) takes every peer, the world's too.
        bed.allow(EP, ID_ANY, DIR_INGRESS, PROTO_TCP, 8080, POLICY_PREFIX_FULL);
        bed.check(
            TO,
            &syn(n.other, 40005, n.pod, 8080),
            OK,
            Some((EP, AllowedIngress)),
            "a SYN to a port open to any peer",
        );
        bed.check(
            TO,
            &syn(n.outside, 40006, n.pod, 8080),
            OK,
            Some((EP, AllowedIngress)),
            "the world to a port open to any peer",
        );
        // A pod no policy isolates takes anything, counted as allowed.
        bed.check(
            TO,
            &syn(n.other, 40007, n.pod2, 22),
            OK,
            Some((EP2, AllowedIngress)),
            "a SYN into a pod without isolation",
        );
        bed.check(
            FROM,
            &syn(n.pod2, 40008, n.outside, 443),
            OK,
            Some((EP2, AllowedEgress)),
            "a SYN out of a pod without isolation",
        );
    }
}

#[test]
fn sctp_is_matched_by_its_own_protocol_and_port_never_as_tcp_or_udp() {
    for n in NETS {
        let mut bed = Bed::new("sctp", n);
        bed.allow(EP, PEER_ID, DIR_INGRESS, PROTO_SCTP, 80, POLICY_PREFIX_FULL);
        bed.allow(EP, PEER_ID, DIR_INGRESS, PROTO_TCP, 90, POLICY_PREFIX_FULL);
        bed.check(
            TO,
            &sctp(n.peer, 5000, n.pod, 80),
            OK,
            Some((EP, AllowedIngress)),
            "SCTP/80 under an SCTP/80 rule",
        );
        assert!(
            bed.ct_entry(&ct_key(
                n.peer,
                5000,
                n.pod,
                80,
                PROTO_SCTP,
                DIR_INGRESS,
                EP
            ))
            .is_some(),
            "{}: SCTP tracked with its ports: {:?}",
            n.name,
            bed.pol_ct()
        );
        bed.check(
            FROM,
            &sctp(n.pod, 80, n.peer, 5000),
            OK,
            None,
            "the SCTP reply",
        );
        bed.check(
            TO,
            &syn(n.peer, 5001, n.pod, 80),
            SHOT,
            Some((EP, DeniedIngress)),
            "TCP/80 under an SCTP/80 rule",
        );
        bed.check(
            TO,
            &udp(n.peer, 5002, n.pod, 80),
            SHOT,
            Some((EP, DeniedIngress)),
            "UDP/80 under an SCTP/80 rule",
        );
        bed.check(
            TO,
            &sctp(n.peer, 5003, n.pod, 81),
            SHOT,
            Some((EP, DeniedIngress)),
            "SCTP/81 under an SCTP/80 rule",
        );
        bed.check(
            TO,
            &sctp(n.peer, 5004, n.pod, 90),
            SHOT,
            Some((EP, DeniedIngress)),
            "SCTP/90 under a TCP/90 rule",
        );
        bed.check(
            TO,
            &syn(n.peer, 5005, n.pod, 90),
            OK,
            Some((EP, AllowedIngress)),
            "TCP/90 under a TCP/90 rule",
        );
        // The whole protocol (prefix 80): any SCTP port, still not TCP.
        bed.allow(
            EP,
            OTHER_ID,
            DIR_INGRESS,
            PROTO_SCTP,
            0,
            POLICY_PREFIX_PROTO,
        );
        bed.check(
            TO,
            &sctp(n.other, 5006, n.pod, 3868),
            OK,
            Some((EP, AllowedIngress)),
            "SCTP/3868 under an all-SCTP rule",
        );
        bed.check(
            TO,
            &syn(n.other, 5007, n.pod, 3868),
            SHOT,
            Some((EP, DeniedIngress)),
            "TCP/3868 under an all-SCTP rule",
        );
    }
}

#[test]
fn udp_is_allowed_inside_a_port_range_entry_and_denied_just_outside() {
    for n in NETS {
        let mut bed = Bed::new("range", n);
        // ingress 8000-8007 from the peer: 2^3 ports, prefix 80 + 13
        bed.allow(EP, PEER_ID, DIR_INGRESS, PROTO_UDP, 8000, 93);
        // egress 1024-2047 to the peer: 2^10 ports, prefix 80 + 6
        bed.allow(EP, PEER_ID, DIR_EGRESS, PROTO_UDP, 1024, 86);
        for port in [8000, 8003, 8007] {
            bed.check(
                TO,
                &udp(n.peer, 5353, n.pod, port),
                OK,
                Some((EP, AllowedIngress)),
                &format!("UDP/{port} inside 8000-8007"),
            );
        }
        for port in [7999, 8008] {
            bed.check(
                TO,
                &udp(n.peer, 5353, n.pod, port),
                SHOT,
                Some((EP, DeniedIngress)),
                &format!("UDP/{port} outside 8000-8007"),
            );
        }
        bed.check(
            TO,
            &syn(n.peer, 5353, n.pod, 8001),
            SHOT,
            Some((EP, DeniedIngress)),
            "TCP/8001 under a UDP range",
        );
        for port in [1024, 1500, 2047] {
            bed.check(
                FROM,
                &udp(n.pod, 40000, n.peer, port),
                OK,
                Some((EP, AllowedEgress)),
                &format!("UDP/{port} out inside 1024-2047"),
            );
        }
        for port in [1023, 2048] {
            bed.check(
                FROM,
                &udp(n.pod, 40000, n.peer, port),
                SHOT,
                Some((EP, DeniedEgress)),
                &format!("UDP/{port} out outside 1024-2047"),
            );
        }
        bed.check(
            FROM,
            &udp(n.pod, 40000, n.other, 1500),
            SHOT,
            Some((EP, DeniedEgress)),
            "UDP/1500 to a peer the range does not name",
        );
    }
}

#[test]
fn an_unknown_protocol_is_allowed_only_by_an_any_protocol_entry() {
    for n in NETS {
        let mut bed = Bed::new("gre", n);
        bed.allow(EP, PEER_ID, DIR_INGRESS, PROTO_TCP, 0, POLICY_PREFIX_PROTO);
        bed.allow(EP, PEER_ID, DIR_INGRESS, PROTO_UDP, 0, POLICY_PREFIX_PROTO);
        bed.check(
            TO,
            &gre(n.peer, n.pod),
            SHOT,
            Some((EP, DeniedIngress)),
            "GRE with only all-TCP and all-UDP rules",
        );
        bed.allow(EP, PEER_ID, DIR_INGRESS, 0, 0, POLICY_PREFIX_ANY_PROTO);
        bed.check(
            TO,
            &gre(n.peer, n.pod),
            OK,
            Some((EP, AllowedIngress)),
            "GRE under an any-protocol rule",
        );
        bed.check(
            FROM,
            &gre(n.pod, n.peer),
            OK,
            None,
            "GRE back: the reverse of the tracked flow",
        );
        bed.check(
            TO,
            &gre(n.other, n.pod),
            SHOT,
            Some((EP, DeniedIngress)),
            "GRE from a peer the any-protocol rule does not name",
        );
        bed.check(
            FROM,
            &gre(n.pod, n.other),
            SHOT,
            Some((EP, DeniedEgress)),
            "GRE out, egress isolated with no rule",
        );
        bed.allow(EP, OTHER_ID, DIR_EGRESS, 0, 0, POLICY_PREFIX_ANY_PROTO);
        bed.check(
            FROM,
            &gre(n.pod, n.other),
            OK,
            Some((EP, AllowedEgress)),
            "GRE out under an any-protocol egress rule",
        );
        // any protocol includes the port protocols, on any port
        bed.check(
            TO,
            &sctp(n.peer, 1, n.pod, 9),
            OK,
            Some((EP, AllowedIngress)),
            "SCTP under an any-protocol rule",
        );
    }
}

#[test]
fn a_first_fragment_is_judged_by_its_ports_and_a_later_one_only_by_rules_without_ports() {
    for n in NETS {
        let mut bed = Bed::new("frag", n);
        // the peer: UDP/53 only; the other peer: all of UDP; the world:
        // any protocol
        bed.allow(EP, PEER_ID, DIR_INGRESS, PROTO_UDP, 53, POLICY_PREFIX_FULL);
        bed.allow(EP, OTHER_ID, DIR_INGRESS, PROTO_UDP, 0, POLICY_PREFIX_PROTO);
        bed.allow(EP, ID_WORLD, DIR_INGRESS, 0, 0, POLICY_PREFIX_ANY_PROTO);
        let whole = udp(n.peer, 5000, n.pod, 53);
        bed.check(
            TO,
            &fragment(&whole, 0, true),
            OK,
            Some((EP, AllowedIngress)),
            "the first fragment (offset 0, more) of an allowed flow",
        );
        assert!(
            bed.ct_entry(&ct_key(n.peer, 5000, n.pod, 53, PROTO_UDP, DIR_INGRESS, EP))
                .is_some(),
            "{}: the first fragment's ports tracked: {:?}",
            n.name,
            bed.pol_ct()
        );
        bed.check(
            TO,
            &fragment(&udp(n.peer, 5000, n.pod, 54), 0, true),
            SHOT,
            Some((EP, DeniedIngress)),
            "the first fragment of a flow to another port",
        );
        // Its payload starts with the allowed flow's ports: not to be read.
        bed.check(
            TO,
            &fragment(&whole, 185, false),
            SHOT,
            Some((EP, DeniedIngress)),
            "a later fragment under a one-port rule",
        );
        bed.check(
            TO,
            &fragment(&udp(n.other, 5000, n.pod, 53), 185, true),
            OK,
            Some((EP, AllowedIngress)),
            "a later fragment under an all-UDP rule",
        );
        assert!(
            bed.ct_entry(&ct_key(n.other, 0, n.pod, 0, PROTO_UDP, DIR_INGRESS, EP))
                .is_some(),
            "{}: a later fragment is tracked without ports: {:?}",
            n.name,
            bed.pol_ct()
        );
        bed.check(
            TO,
            &fragment(&udp(n.outside, 5000, n.pod, 53), 185, false),
            OK,
            Some((EP, AllowedIngress)),
            "a later fragment under an any-protocol rule",
        );
        // a fragment of TCP under the all-UDP rule: still not allowed
        bed.check(
            TO,
            &fragment(&syn(n.other, 5000, n.pod, 53), 185, false),
            SHOT,
            Some((EP, DeniedIngress)),
            "a later TCP fragment under an all-UDP rule",
        );
    }
}

#[test]
fn icmp_errors_about_a_flow_the_pod_has_cross_its_isolation_and_others_are_dropped() {
    for n in NETS {
        let mut bed = Bed::new("icmp", n);
        bed.allow(EP, PEER_ID, DIR_EGRESS, PROTO_TCP, 80, POLICY_PREFIX_FULL);
        bed.allow(EP, PEER_ID, DIR_INGRESS, PROTO_UDP, 53, POLICY_PREFIX_FULL);
        // The pod opens a flow; a router (another address) says the
        // peer is unreachable.
        let out = syn(n.pod, 40000, n.peer, 80);
        bed.check(FROM, &out, OK, Some((EP, AllowedEgress)), "the pod's SYN");
        bed.check(
            TO,
            &unreachable(n.other, n.pod, quote(&out)),
            OK,
            None,
            "an ICMP error quoting the pod's flow, ingress isolated",
        );
        bed.check(
            TO,
            &unreachable(n.peer, n.pod, &out[14..]),
            OK,
            None,
            "an ICMP error quoting the whole packet of the pod's flow",
        );
        let unknown = syn(n.pod, 40001, n.peer, 80);
        bed.check(
            TO,
            &unreachable(n.other, n.pod, quote(&unknown)),
            SHOT,
            Some((EP, DeniedIngress)),
            "an ICMP error quoting a flow the pod never opened",
        );
        // The other way: the pod refuses a flow it let in.
        let q = udp(n.peer, 5000, n.pod, 53);
        bed.check(TO, &q, OK, Some((EP, AllowedIngress)), "the peer's query");
        bed.check(
            FROM,
            &unreachable(n.pod, n.peer, quote(&q)),
            OK,
            None,
            "the pod's ICMP error about the query, egress isolated",
        );
        let q2 = udp(n.peer, 5001, n.pod, 53);
        bed.check(
            FROM,
            &unreachable(n.pod, n.peer, quote(&q2)),
            SHOT,
            Some((EP, DeniedEgress)),
            "the pod's ICMP error about a flow it never let in",
        );
        // The pod's answer to a flow it let in, bounced by a router.
        let answer = udp(n.pod, 53, n.peer, 5000);
        bed.check(FROM, &answer, OK, None, "the pod's answer to the query");
        bed.check(
            TO,
            &unreachable(n.other, n.pod, quote(&answer)),
            OK,
            None,
            "an ICMP error quoting the pod's answer to a flow it let in",
        );
        // Echo is a flow by identifier: a reply follows its request.
        bed.allow(EP, OTHER_ID, DIR_EGRESS, 0, 0, POLICY_PREFIX_ANY_PROTO);
        bed.check(
            FROM,
            &echo_request(n.pod, n.other, 77),
            OK,
            Some((EP, AllowedEgress)),
            "an echo request under an any-protocol rule",
        );
        bed.check(
            TO,
            &echo_reply(n.other, n.pod, 77),
            OK,
            None,
            "its echo reply",
        );
        bed.check(
            TO,
            &echo_reply(n.other, n.pod, 78),
            SHOT,
            Some((EP, DeniedIngress)),
            "an echo reply to no request",
        );
        bed.check(
            TO,
            &echo_request(n.other, n.pod, 79),
            SHOT,
            Some((EP, DeniedIngress)),
            "an echo request into the pod",
        );
    }
}

/// An ICMP error entering (leaving) a pod's interface is judged by the pod
/// that sent (received) the quoted packet, so it must be this pod: the
/// quoted flow of another pod (even one the other pod has) is no reason to
/// let it through an isolated pod's interface.
#[test]
fn an_icmp_error_quoting_another_pods_flow_does_not_cross_an_isolated_pod() {
    let mut wrong = Vec::new();
    for n in NETS {
        let mut bed = Bed::new("icmpx", n);
        // pod2: isolated in neither direction, the quoted flow unknown
        let q = syn(n.pod2, 40000, n.peer, 80);
        let e = unreachable(n.other, n.pod, quote(&q));
        let v = bed.try_run(TO, &e).unwrap();
        if v != SHOT {
            wrong.push(format!(
                "{}: into the isolated pod, quoting pod2's packet (pod2 not isolated): {v}",
                n.name
            ));
        }
        let q = syn(n.peer, 40001, n.pod2, 80);
        let e = unreachable(n.pod, n.peer, quote(&q));
        let v = bed.try_run(FROM, &e).unwrap();
        if v != SHOT {
            wrong.push(format!(
                "{}: out of the isolated pod, quoting a packet to pod2 (pod2 not isolated): {v}",
                n.name
            ));
        }
        // pod2 isolated with a flow of its own, allowed out
        bed.endpoint(n.pod2, EP2, POD2_ID, ISOLATED);
        bed.allow(EP2, PEER_ID, DIR_EGRESS, PROTO_TCP, 80, POLICY_PREFIX_FULL);
        let q = syn(n.pod2, 40002, n.peer, 80);
        bed.check(
            FROM,
            &q,
            OK,
            Some((EP2, AllowedEgress)),
            "pod2's SYN on its own interface",
        );
        let e = unreachable(n.other, n.pod, quote(&q));
        let v = bed.try_run(TO, &e).unwrap();
        if v != SHOT {
            wrong.push(format!(
                "{}: into the isolated pod, quoting pod2's allowed flow: {v}",
                n.name
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "ICMP errors passing an isolated pod's interface on another pod's account:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn neighbour_discovery_and_arp_always_pass() {
    let n = &V6;
    let bed = Bed::new("nd", n);
    let pod: Ipv6Addr = n.pod.parse().unwrap();
    let peer: Ipv6Addr = n.peer.parse().unwrap();
    let snm = "ff02::1:ff00:a";
    let cases: [(&str, Vec<u8>, &str); 8] = [
        (
            "a neighbour solicitation for the pod",
            icmp6("fe80::1", snm, 135, &pod.octets()),
            TO,
        ),
        (
            "a neighbour solicitation by the pod",
            icmp6(n.pod, "ff02::1:ff00:14", 135, &peer.octets()),
            FROM,
        ),
        (
            "a neighbour advertisement by the pod",
            icmp6(n.pod, n.peer, 136, &pod.octets()),
            FROM,
        ),
        (
            "a neighbour advertisement to the pod",
            icmp6(n.peer, n.pod, 136, &peer.octets()),
            TO,
        ),
        (
            "a router solicitation",
            icmp6("fe80::a", "ff02::2", 133, &[]),
            FROM,
        ),
        (
            "a router advertisement",
            icmp6("fe80::1", "ff02::1", 134, &[0; 8]),
            TO,
        ),
        (
            "an MLDv2 report",
            icmp6("fe80::a", "ff02::16", 143, &[0; 4]),
            FROM,
        ),
        ("an ARP request", arp(V4.peer, V4.pod), TO),
    ];
    for (what, pkt, prog) in &cases {
        bed.check(prog, pkt, OK, None, what);
    }
    bed.check(
        FROM,
        &arp(V4.pod, V4.peer),
        OK,
        None,
        "the pod's ARP request",
    );
    // other ICMPv6 is judged
    bed.check(
        TO,
        &echo_request(n.peer, n.pod, 1),
        SHOT,
        Some((EP, DeniedIngress)),
        "an ICMPv6 echo request",
    );
}

#[test]
fn revoking_an_allow_entry_ends_an_established_flow_in_either_direction() {
    // (who opened the flow, the side whose next packet is judged again)
    let cases = [
        (DIR_INGRESS, TO),
        (DIR_INGRESS, FROM),
        (DIR_EGRESS, FROM),
        (DIR_EGRESS, TO),
    ];
    for n in NETS {
        for (i, (opened, next)) in cases.into_iter().enumerate() {
            let mut bed = Bed::new(&format!("rev{i}"), n);
            // the pod's side (address, port) and the peer's
            let (pod, peer) = ((n.pod, 80), (n.peer, 40000));
            let (first, reply, opener_prog, reply_prog) = if opened == DIR_INGRESS {
                (
                    syn(peer.0, peer.1, pod.0, pod.1),
                    synack(pod.0, pod.1, peer.0, peer.1),
                    TO,
                    FROM,
                )
            } else {
                (
                    syn(pod.0, pod.1, peer.0, peer.1),
                    synack(peer.0, peer.1, pod.0, pod.1),
                    FROM,
                    TO,
                )
            };
            let port = if opened == DIR_INGRESS { pod.1 } else { peer.1 };
            let (allowed, denied) = if opened == DIR_INGRESS {
                (AllowedIngress, DeniedIngress)
            } else {
                (AllowedEgress, DeniedEgress)
            };
            let entry = (EP, PEER_ID, opened, PROTO_TCP, port, POLICY_PREFIX_FULL);
            bed.allow(entry.0, entry.1, entry.2, entry.3, entry.4, entry.5);
            bed.check(opener_prog, &first, OK, Some((EP, allowed)), "the SYN");
            bed.check(reply_prog, &reply, OK, None, "the SYN-ACK");
            // the packet of the judged side, in the flow's terms
            let next_pkt = if next == TO {
                ack(peer.0, peer.1, pod.0, pod.1)
            } else {
                ack(pod.0, pod.1, peer.0, peer.1)
            };
            // A new revision that keeps the entry: the flow goes on, its
            // entry now carries the new revision.
            bed.state(2, ANY_BOTH);
            bed.check(
                next,
                &next_pkt,
                OK,
                None,
                "a packet after a bump that keeps the rule",
            );
            let ct = bed.pol_ct();
            assert_eq!(ct.len(), 1, "{}: {ct:?}", n.name);
            assert_eq!(ct[0].1.revision, 2, "{}: {ct:?}", n.name);
            // Deleted, not yet announced: the entry still carries the flow.
            bed.revoke(entry.0, entry.1, entry.2, entry.3, entry.4, entry.5);
            bed.check(
                next,
                &next_pkt,
                OK,
                None,
                "a packet after the delete, before the bump",
            );
            bed.state(3, ANY_BOTH);
            let reason = if next == TO {
                DeniedIngress
            } else {
                DeniedEgress
            };
            bed.check(
                next,
                &next_pkt,
                SHOT,
                Some((EP, reason)),
                &format!("the next packet after the revocation (opened {opened})"),
            );
            assert!(
                bed.pol_ct().is_empty(),
                "{}: the revoked flow's entry is gone: {:?}",
                n.name,
                bed.pol_ct()
            );
            // ... and so are both directions now
            bed.check(
                opener_prog,
                &first,
                SHOT,
                Some((EP, denied)),
                "the opener's retransmitted SYN",
            );
        }
    }
}

#[test]
fn an_interface_whose_pod_is_unknown_drops_only_the_directions_some_policy_isolates() {
    for n in NETS {
        let mut bed = Bed::new("unknown", n);
        let into = syn(n.peer, 40000, n.stray, 80);
        let out = syn(n.stray, 40001, n.peer, 80);
        for (flags, in_v, out_v) in [
            (0, OK, OK),
            (POL_F_ANY_INGRESS, SHOT, OK),
            (POL_F_ANY_EGRESS, OK, SHOT),
            (ANY_BOTH, SHOT, SHOT),
        ] {
            bed.state(1, flags);
            let counted = |v: u32| (v == SHOT).then_some((0, UnknownEndpoint));
            bed.check(
                TO,
                &into,
                in_v,
                counted(in_v),
                &format!("into an unknown pod, state flags {flags}"),
            );
            bed.check(
                FROM,
                &out,
                out_v,
                counted(out_v),
                &format!("out of an unknown pod, state flags {flags}"),
            );
        }
        assert!(bed.pol_ct().is_empty(), "{}: nothing tracked", n.name);
    }
}

#[test]
fn a_pod_reaches_itself_and_its_node_reaches_it_without_any_entry() {
    for n in NETS {
        let bed = Bed::new("self", n);
        bed.check(
            FROM,
            &syn(n.pod, 40000, n.pod, 8080),
            OK,
            Some((EP, AllowedEgress)),
            "the pod to its own address, out",
        );
        bed.check(
            TO,
            &syn(n.pod, 40001, n.pod, 8080),
            OK,
            Some((EP, AllowedIngress)),
            "the pod to its own address, in",
        );
        bed.check(
            TO,
            &syn(n.host, 40002, n.pod, 8080),
            OK,
            Some((EP, AllowedIngress)),
            "the node (ID_HOST) to the pod",
        );
        bed.check(
            TO,
            &udp(n.host, 40003, n.pod, 9),
            OK,
            Some((EP, AllowedIngress)),
            "the node's UDP to the pod",
        );
        // The node's exception is for ingress only.
        bed.check(
            FROM,
            &syn(n.pod, 40004, n.host, 10250),
            SHOT,
            Some((EP, DeniedEgress)),
            "the pod to its node, egress isolated with no rule",
        );
    }
}

#[test]
fn ip_block_peers_match_through_cidr_sets_with_excepts_carved_out() {
    for n in NETS {
        let mut bed = Bed::new("cidr", n);
        let set = ID_FIRST_CIDR;
        bed.cidr(EP, DIR_EGRESS, n.block, set);
        bed.cidr(EP, DIR_EGRESS, n.except, 0);
        bed.allow(EP, set, DIR_EGRESS, PROTO_TCP, 443, POLICY_PREFIX_FULL);
        bed.check(
            FROM,
            &syn(n.pod, 40000, n.in_block, 443),
            OK,
            Some((EP, AllowedEgress)),
            "to the ipBlock",
        );
        bed.check(
            FROM,
            &syn(n.pod, 40001, n.in_except, 443),
            SHOT,
            Some((EP, DeniedEgress)),
            "to the ipBlock's except",
        );
        bed.check(
            FROM,
            &syn(n.pod, 40002, n.outside, 443),
            SHOT,
            Some((EP, DeniedEgress)),
            "outside the ipBlock",
        );
        bed.check(
            FROM,
            &syn(n.pod, 40003, n.in_block, 80),
            SHOT,
            Some((EP, DeniedEgress)),
            "to the ipBlock on another port",
        );
        bed.check(
            TO,
            &syn(n.in_block, 40004, n.pod, 443),
            SHOT,
            Some((EP, DeniedIngress)),
            "from the ipBlock: the set is for egress",
        );
        // An ipBlock over pod addresses: it matches whatever their identity.
        bed.cidr(EP, DIR_INGRESS, n.peer_net, set + 1);
        bed.allow(EP, set + 1, DIR_INGRESS, PROTO_TCP, 22, POLICY_PREFIX_FULL);
        for from in [n.peer, n.other] {
            bed.check(
                TO,
                &syn(from, 40005, n.pod, 22),
                OK,
                Some((EP, AllowedIngress)),
                &format!("from {from} in the pods' ipBlock"),
            );
        }
        bed.check(
            TO,
            &syn(n.host, 40006, n.pod, 23),
            OK,
            Some((EP, AllowedIngress)),
            "the node, outside every block",
        );
        bed.check(
            TO,
            &syn(n.outside, 40007, n.pod, 22),
            SHOT,
            Some((EP, DeniedIngress)),
            "the world, outside the pods' ipBlock",
        );
    }
}

/// A TCP SYN whose IP header claims more than the frame holds: IPv4 options
/// (IHL 15) or an IPv6 hop-by-hop header, cut where they begin.
fn long_header(src: &str, dst: &str) -> Vec<u8> {
    let mut v = syn(src, 40000, dst, 80);
    if v[14] >> 4 == 4 {
        v[14] = 0x4f;
        v.truncate(14 + 20 + 4);
    } else {
        v[14 + 6] = 0;
        v.truncate(14 + 40 + 1);
    }
    v
}

#[test]
fn truncated_packets_pass_or_drop_without_an_error() {
    for n in NETS {
        let mut bed = Bed::new("trunc", n);
        bed.allow(EP, PEER_ID, DIR_INGRESS, PROTO_UDP, 53, POLICY_PREFIX_FULL);
        let s = syn(n.pod, 40000, n.peer, 80);
        let packets = [
            ("TCP SYN in", syn(n.peer, 40000, n.pod, 80)),
            ("TCP SYN out", s.clone()),
            ("UDP in", udp(n.peer, 5000, n.pod, 53)),
            ("SCTP in", sctp(n.peer, 5000, n.pod, 80)),
            (
                "fragment in",
                fragment(&udp(n.peer, 5000, n.pod, 53), 0, true),
            ),
            (
                "later fragment in",
                fragment(&udp(n.peer, 5000, n.pod, 53), 185, false),
            ),
            ("ICMP error in", unreachable(n.other, n.pod, quote(&s))),
            (
                "ICMP error out",
                unreachable(n.pod, n.peer, quote(&syn(n.peer, 1, n.pod, 53))),
            ),
            ("echo out", echo_request(n.pod, n.peer, 5)),
            ("GRE in", gre(n.peer, n.pod)),
            (
                "an IP header longer than the frame",
                long_header(n.peer, n.pod),
            ),
        ];
        // The kernel's BPF_PROG_TEST_RUN refuses (EINVAL) a frame whose
        // IPv4 or IPv6 header is incomplete (6.18: below 14 + 20 or 14 + 40
        // bytes), so the program never sees those; from there on, every
        // cut must give a verdict. What it cuts: the L4 header, IPv6
        // extension and fragment headers, ICMP errors' quoted headers.
        let l3 = if is_v4(n.pod) { 14 + 20 } else { 14 + 40 };
        let mut judged = 0;
        for (what, pkt) in &packets {
            for len in 15..=pkt.len() {
                let cut = &pkt[..len];
                for prog in [FROM, TO] {
                    match bed.try_run(prog, cut) {
                        Ok(v) => {
                            assert!(
                                v == OK || v == SHOT,
                                "{}: {what} cut at {len} through {prog}: verdict {v}",
                                n.name
                            );
                            judged += 1;
                        }
                        Err(e) => assert!(
                            len < l3,
                            "{}: {what} cut at {len} (IP header whole) through {prog}: {e:?}",
                            n.name
                        ),
                    }
                }
            }
        }
        assert!(judged > 200, "{}: only {judged} cuts judged", n.name);
    }
}

/// A later IPv6 fragment's payload is data, not headers: when the fragment
/// header names an extension header (destination options, in the
/// fragmentable part of the first fragment), the later fragment must not be
/// judged by whatever protocol its payload bytes happen to name.
#[test]
fn a_later_ipv6_fragment_is_never_judged_by_its_payload_bytes() {
    let n = &V6;
    let mut bed = Bed::new("frag6x", n);
    // the peer may send any UDP, nothing else
    bed.allow(EP, PEER_ID, DIR_INGRESS, PROTO_UDP, 0, POLICY_PREFIX_PROTO);
    // A TCP flow's later fragment: fragment header -> destination options
    // (60); its payload starts with bytes that read as an extension header
    // naming UDP (17).
    let mut pkt = fragment(&syn(n.peer, 40000, n.pod, 80), 185, false);
    pkt[54] = 60;
    pkt[62] = PROTO_UDP;
    pkt[63] = 0;
    bed.check(
        TO,
        &pkt,
        SHOT,
        Some((EP, DeniedIngress)),
        "a later TCP fragment whose payload reads as a header naming UDP",
    );
}

impl Bed {
    fn endpoint_on(&mut self, addr: &str, ep_id: u32, identity: u32, flags: u32, ifindex: u32) {
        let mut m: HashMap<_, NetAddr, PolEndpoint> =
            HashMap::try_from(self.ebpf.map_mut(lb_common::MAP_POL_EP).unwrap()).unwrap();
        let ep = PolEndpoint {
            ep_id,
            identity,
            flags,
            ifindex,
        };
        m.insert(ip(addr), ep, 0).unwrap();
    }

    fn pod_interface(&mut self, ifindex: u32, ep_id: u32) {
        let mut m: HashMap<_, u32, u32> =
            HashMap::try_from(self.ebpf.map_mut(lb_common::MAP_POL_IF).unwrap()).unwrap();
        m.insert(ifindex, ep_id, 0).unwrap();
    }
}

/// BPF_PROG_TEST_RUN hands TC programs a packet on the loopback device.
const TEST_IFINDEX: u32 = 1;

#[test]
fn a_pod_sending_with_another_pods_or_an_unknown_source_is_dropped_as_spoofed() {
    use PolReason::SpoofedSource;
    for net in NETS {
        let mut bed = Bed::new("spoof", net);
        // pod2 (open) on this very interface: its own address passes.
        bed.endpoint_on(net.pod2, EP2, POD2_ID, 0, TEST_IFINDEX);
        bed.pod_interface(TEST_IFINDEX, EP2);
        bed.check(
            FROM,
            &syn(net.pod2, 40000, net.peer, 80),
            OK,
            Some((EP2, AllowedEgress)),
            "a pod with its own address",
        );
        // The isolated pod's address, from pod2's interface: spoofed.
        bed.endpoint_on(net.pod, EP, POD_ID, ISOLATED, TEST_IFINDEX + 41);
        bed.check(
            FROM,
            &syn(net.pod, 40001, net.peer, 80),
            SHOT,
            Some((EP, SpoofedSource)),
            "another local pod's address",
        );
        // An address no pod has, from a known pod's interface: spoofed.
        bed.check(
            FROM,
            &syn(net.stray, 40002, net.peer, 80),
            SHOT,
            Some((EP2, SpoofedSource)),
            "an unknown address from a known pod's interface",
        );
        // Replies into the pod are not its egress: never judged as spoofed.
        bed.check(
            TO,
            &synack(net.peer, 80, net.pod2, 40000),
            OK,
            None,
            "a reply into pod2",
        );
    }
}
