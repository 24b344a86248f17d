//! The NetworkPolicy programs of pod interfaces (`lb_pod_from`: the pod's
//! egress, `lb_pod_to`: its ingress) on crafted packets (BPF_PROG_TEST_RUN)
//! with seeded policy maps: verdicts, the policy conntrack, and the
//! per-endpoint counters each verdict moves.
//!
//! Here: the test bed (`Bed`: the programs loaded with fresh maps) and its
//! networks; `packets` builds the frames; the tests sit in one file per
//! concern.

mod carry;
mod entries;
mod fragments;
mod icmp;
mod packets;
mod spoofing;
mod verdicts;

use packets::*;

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

use super::{OBJECT, test_run::quote};
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
        assert!(
            crate::datapath::host::is_root(),
            "BPF_PROG_TEST_RUN needs root: run through `cargo xtask test`"
        );
        let dir = PathBuf::from(format!(
            "/sys/fs/bpf/lbt{}-pol{tag}-{}",
            std::process::id(),
            net.name
        ));
        crate::datapath::host::ensure_pin_dir(&dir).expect("bpffs");
        let ebpf = EbpfLoader::new()
            .default_map_pin_directory(&dir)
            .load(OBJECT)
            .expect("load");
        Self::programs_loaded(ebpf, dir, net)
    }

    /// A second bed on this one's pins, its policy conntrack map `size`
    /// slots: the earlier map carried into it (`migrate`) and looked up on
    /// a miss, filled first as an agent restarted with another size finds
    /// it, or not as a growth while running leaves it (`fill`). The carry
    /// is this bed's to finish.
    fn carrying_pol_ct(&self, size: u32, fill: bool) -> (Self, super::migrate::Carry) {
        let spec = super::map_specs(super::MapSizes {
            pol_ct: size,
            ..Default::default()
        })
        .into_iter()
        .find(|s| s.name == lb_common::MAP_POL_CT)
        .unwrap();
        let mut carry = super::migrate::prepare(&self.dir, &spec)
            .expect("prepare")
            .expect("a policy conntrack map of another size is carried");
        let ebpf = EbpfLoader::new()
            .default_map_pin_directory(&self.dir)
            .map_max_entries(lb_common::MAP_POL_CT, size)
            .load(OBJECT)
            .expect("load");
        if fill {
            super::migrate::fill(&self.dir, &carry).expect("fill");
        }
        super::migrate::bridge(&ebpf, &mut carry).expect("bridge");
        (
            Self::programs_loaded(ebpf, self.dir.clone(), self.net),
            carry,
        )
    }

    fn programs_loaded(mut ebpf: Ebpf, dir: PathBuf, net: &'static Net) -> Self {
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
