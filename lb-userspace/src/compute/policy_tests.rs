//! Table-driven tests of the NetworkPolicy stage (`compute::policy`).
//!
//! Clusters are built from YAML the way the agent reads them; the computed
//! maps are then judged by `allowed`, which does the kernel's lookups
//! (lb-ebpf/src/policy.rs, `allowed`) over the map contents, longest prefix
//! matches included, bit by bit over the keys' memory layout.

use std::net::IpAddr;

use lb_common::{
    BeU16, DIR_EGRESS, DIR_INGRESS, EP_F_EGRESS_ISOLATED, EP_F_INGRESS_ISOLATED, ID_ANY,
    ID_FIRST_CIDR, ID_FIRST_LABELS, ID_HOST, ID_WORLD, POL_CIDR_FIXED_BITS, POL_EP_ID_MAX,
    POL_F_ANY_EGRESS, POL_F_ANY_INGRESS, POLICY_PREFIX_ANY_PROTO, POLICY_PREFIX_FULL,
    POLICY_PREFIX_PROTO, PROTO_ICMP, PROTO_SCTP, PROTO_TCP, PROTO_UDP, PolCidrData, PolEndpoint,
    PolicyData,
};

use crate::{
    compute::{
        desired::net_addr,
        identity::Identities,
        policy::{Computed, EpIds, PolicyMaps, Report, compute, port_blocks},
    },
    model::snapshot::{Change, ObjRef, Snapshot},
    source::manifest::parse_documents,
};

const NODE: &str = "node-1";
const NODE_IP: &str = "192.168.0.1";
const NODE_IP6: &str = "fd00:ff::1";
/// Another node's address: not this node, so not the host identity.
const OTHER_NODE_IP: &str = "192.168.0.2";
/// An address of this node's interfaces that its Node object does not list.
const HOST_IF: &str = "10.244.1.1";

const TCP: u8 = PROTO_TCP;
const UDP: u8 = PROTO_UDP;
const SCTP: u8 = PROTO_SCTP;
const ICMP: u8 = PROTO_ICMP;
const GRE: u8 = 47;

const ALLOW: bool = true;
const DENY: bool = false;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    Ingress,
    Egress,
}
use Dir::*;

// ---------------------------------------------------------------------------
// The kernel's verdict over the maps.

/// `PolicyData` as it lies in memory (repr(C): ep_id, identity, dir,
/// proto, port big-endian).
fn policy_bytes(d: &PolicyData) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0..4].copy_from_slice(&d.ep_id.to_ne_bytes());
    b[4..8].copy_from_slice(&d.identity.to_ne_bytes());
    b[8] = d.dir;
    b[9] = d.proto;
    b[10..12].copy_from_slice(&d.port.0.to_ne_bytes());
    b
}

/// `PolCidrData` as it lies in memory (ep_id, dir, 3 pad bytes, address).
fn cidr_bytes(d: &PolCidrData) -> [u8; 24] {
    let mut b = [0u8; 24];
    b[0..4].copy_from_slice(&d.ep_id.to_ne_bytes());
    b[4] = d.dir;
    b[5..8].copy_from_slice(&d._pad);
    b[8..24].copy_from_slice(&d.addr.octets());
    b
}

/// The first `bits` bits of `a` and `b` are equal (bits in memory order,
/// most significant first in each byte: what an LPM trie compares).
fn prefix_eq(a: &[u8], b: &[u8], bits: u32) -> bool {
    assert!(bits as usize <= a.len() * 8 && a.len() == b.len());
    let full = (bits / 8) as usize;
    if a[..full] != b[..full] {
        return false;
    }
    let rem = bits % 8;
    rem == 0 || (a[full] ^ b[full]) >> (8 - rem) == 0
}

/// Every bit after the first `bits` is zero (a canonical LPM key).
fn tail_is_zero(a: &[u8], bits: u32) -> bool {
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
fn lpm<K: AsRef<[u8]>, V: Copy>(
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
fn allowed(m: &PolicyMaps, pod: IpAddr, dir: Dir, peer: IpAddr, proto: u8, port: u16) -> bool {
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
fn assert_well_formed(m: &PolicyMaps) {
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

// ---------------------------------------------------------------------------
// Clusters from YAML.

fn split_key(key: &str) -> (&str, &str) {
    key.split_once('/')
        .unwrap_or_else(|| panic!("`{key}` is not namespace/name"))
}

fn items(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// `app=a,tier=fe` as a YAML flow mapping.
fn labels(l: &str) -> String {
    let kv: Vec<String> = items(l)
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("labels are k=v");
            format!("\"{k}\": \"{v}\"")
        })
        .collect();
    format!("{{{}}}", kv.join(", "))
}

/// A pod. `ips`: `10.0.1.1,fd00:1::1`; `ports`: named container ports,
/// `http=8080,dns=53/UDP`.
fn pod_yaml(node: &str, key: &str, l: &str, ips: &str, ports: &str, host_net: bool) -> String {
    let (ns, name) = split_key(key);
    let ips: Vec<String> = items(ips).map(|ip| format!("{{ip: \"{ip}\"}}")).collect();
    let ports: Vec<String> = items(ports)
        .map(|p| {
            let (name, rest) = p.split_once('=').expect("ports are name=number[/PROTO]");
            let (num, proto) = rest.split_once('/').unwrap_or((rest, "TCP"));
            format!("{{name: \"{name}\", containerPort: {num}, protocol: {proto}}}")
        })
        .collect();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: \"{name}\", namespace: \"{ns}\", labels: {}}}\n\
         spec: {{nodeName: {node}, hostNetwork: {host_net}, containers: [{{name: c, ports: [{}]}}]}}\n\
         status: {{phase: Running, podIPs: [{}]}}\n---\n",
        labels(l),
        ports.join(", "),
        ips.join(", ")
    )
}

/// A pod on this node.
fn pod(key: &str, l: &str, ips: &str) -> String {
    pod_yaml(NODE, key, l, ips, "", false)
}

/// A pod on this node with named container ports.
fn pod_ports(key: &str, l: &str, ips: &str, ports: &str) -> String {
    pod_yaml(NODE, key, l, ips, ports, false)
}

/// A pod on another node.
fn remote_pod(key: &str, l: &str, ips: &str) -> String {
    pod_yaml("node-2", key, l, ips, "", false)
}

fn namespace(name: &str, l: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: \"{name}\", labels: {}}}\n---\n",
        labels(l)
    )
}

/// A NetworkPolicy; `spec` is YAML (flow style reads best).
fn netpol(key: &str, spec: &str) -> String {
    let (ns, name) = split_key(key);
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: \"{name}\", namespace: \"{ns}\"}}\nspec: {spec}\n---\n"
    )
}

fn node_yaml() -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: {NODE}}}\nstatus: {{addresses: [\
         {{type: InternalIP, address: \"{NODE_IP}\"}}, {{type: InternalIP, address: \"{NODE_IP6}\"}}, \
         {{type: Hostname, address: {NODE}}}]}}\n---\n"
    )
}

/// The policy stage of `node-1` with its state across recomputes.
struct Cluster {
    snap: Snapshot,
    host_addrs: Vec<IpAddr>,
    ids: Identities,
    ep_ids: EpIds,
    maps: PolicyMaps,
    report: Report,
    errors: Vec<String>,
}

/// `node-1` (addresses `NODE_IP`, `NODE_IP6`, interface `HOST_IF`) with
/// `docs` applied, computed.
fn cluster(docs: &[String]) -> Cluster {
    let mut c = Cluster {
        snap: Snapshot::for_node(Some(NODE.into())),
        host_addrs: vec![HOST_IF.parse().unwrap()],
        ids: Identities::default(),
        ep_ids: EpIds::default(),
        maps: PolicyMaps::default(),
        report: Report::default(),
        errors: vec![],
    };
    c.apply(&node_yaml());
    c.apply(&docs.concat());
    c.recompute();
    c
}

impl Cluster {
    fn apply(&mut self, yaml: &str) {
        for o in parse_documents(yaml).unwrap() {
            let o = o.unwrap_or_else(|e| panic!("{e}\n{yaml}"));
            self.snap
                .apply(&Change::Upsert(o))
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }

    fn delete(&mut self, kind: &str, key: &str) {
        let (ns, name) = split_key(key);
        self.snap
            .apply(&Change::Delete {
                kind: kind.into(),
                key: ObjRef::new(ns, name),
            })
            .unwrap();
    }

    fn recompute(&mut self) {
        let Computed {
            maps,
            report,
            errors,
        } = compute(
            &self.snap,
            &self.host_addrs,
            &mut self.ids,
            &mut self.ep_ids,
        );
        assert_well_formed(&maps);
        self.maps = maps;
        self.report = report;
        self.errors = errors;
        assert!(self.errors.is_empty(), "{:?}", self.errors);
    }

    /// The addresses of a pod key, or the address itself.
    fn ips(&self, who: &str) -> Vec<IpAddr> {
        if let Ok(ip) = who.parse() {
            return vec![ip];
        }
        let (ns, name) = split_key(who);
        self.snap
            .pods
            .get(&ObjRef::new(ns, name))
            .unwrap_or_else(|| panic!("no pod {who}"))
            .ips
            .clone()
    }

    fn addr(&self, who: &str, v6: bool) -> IpAddr {
        self.ips(who)
            .into_iter()
            .find(|i| i.is_ipv6() == v6)
            .unwrap_or_else(|| panic!("{who} has no IPv{} address", if v6 { 6 } else { 4 }))
    }

    fn ep(&self, pod: &str) -> PolEndpoint {
        let ip = self.ips(pod)[0];
        *self
            .maps
            .endpoints
            .get(&net_addr(ip))
            .unwrap_or_else(|| panic!("{pod} is not an endpoint"))
    }

    fn identity(&self, pod: &str) -> u32 {
        let ip = self.ips(pod)[0];
        self.maps.ipcache[&(net_addr(ip), 128)]
    }

    fn isolation(&self, pod: &str) -> (bool, bool) {
        let f = self.ep(pod).flags;
        (
            f & EP_F_INGRESS_ISOLATED != 0,
            f & EP_F_EGRESS_ISOLATED != 0,
        )
    }

    fn entries_of(&self, pod: &str) -> usize {
        let id = self.ep(pod).ep_id;
        self.maps
            .entries
            .iter()
            .filter(|(e, _)| e.ep_id == id)
            .count()
            + self
                .maps
                .cidrs
                .keys()
                .filter(|(k, _)| k.ep_id == id)
                .count()
    }
}

/// The verdict for a new flow of local pod `pod` with `peer` (a pod key
/// or an address). The family is the one of whichever side is an address,
/// else IPv4.
fn allows(c: &Cluster, pod: &str, dir: Dir, peer: &str, proto: u8, port: u16) -> bool {
    let v6 = [peer, pod]
        .iter()
        .find_map(|w| w.parse::<IpAddr>().ok())
        .is_some_and(|ip| ip.is_ipv6());
    allowed(&c.maps, c.addr(pod, v6), dir, c.addr(peer, v6), proto, port)
}

/// The same over both pods' IPv6 addresses.
fn allows6(c: &Cluster, pod: &str, dir: Dir, peer: &str, proto: u8, port: u16) -> bool {
    allowed(
        &c.maps,
        c.addr(pod, true),
        dir,
        c.addr(peer, true),
        proto,
        port,
    )
}

type Case<'a> = (&'a str, Dir, &'a str, u8, u16, bool);

/// Every case at once; a failure lists each wrong verdict.
#[track_caller]
fn check(c: &Cluster, cases: &[Case]) {
    check_with(c, cases, allows)
}

#[track_caller]
fn check6(c: &Cluster, cases: &[Case]) {
    check_with(c, cases, allows6)
}

#[track_caller]
fn check_with(c: &Cluster, cases: &[Case], f: fn(&Cluster, &str, Dir, &str, u8, u16) -> bool) {
    let bad: Vec<String> = cases
        .iter()
        .filter(|(pod, dir, peer, proto, port, want)| f(c, pod, *dir, peer, *proto, *port) != *want)
        .map(|(pod, dir, peer, proto, port, want)| {
            format!(
                "  {pod} {dir:?} {peer} proto {proto} port {port}: expected {}",
                if *want { "ALLOW" } else { "DENY" }
            )
        })
        .collect();
    assert!(
        bad.is_empty(),
        "wrong verdicts:\n{}\nreport: {}",
        bad.join("\n"),
        serde_json::to_string_pretty(&c.report).unwrap()
    );
}

// ---------------------------------------------------------------------------
// The evaluator itself.

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

// ---------------------------------------------------------------------------
// Isolation: which pods, which directions.

#[test]
fn without_policies_every_pod_is_open_and_no_flag_is_set() {
    let c = cluster(&[
        pod("x/a", "app=a", "10.0.1.1"),
        pod("x/b", "app=b", "10.0.1.2"),
    ]);
    assert_eq!(c.maps.flags, 0);
    assert_eq!(c.isolation("x/a"), (false, false));
    assert!(c.maps.entries.is_empty() && c.maps.cidrs.is_empty());
    check(
        &c,
        &[
            ("x/a", Ingress, "x/b", TCP, 80, ALLOW),
            ("x/a", Ingress, "8.8.8.8", UDP, 53, ALLOW),
            ("x/a", Egress, "8.8.8.8", TCP, 443, ALLOW),
        ],
    );
}

#[test]
fn a_pod_no_policy_selects_is_open_both_ways() {
    let c = cluster(&[
        pod("x/a", "app=a", "10.0.1.1"),
        pod("x/b", "app=b", "10.0.1.2"),
        // Same labels as x/a, other namespace: a policy of x never selects it.
        pod("y/a", "app=a", "10.0.1.3"),
        netpol(
            "x/deny-a",
            "{podSelector: {matchLabels: {app: a}}, policyTypes: [Ingress, Egress]}",
        ),
    ]);
    assert_eq!(c.isolation("x/a"), (true, true));
    assert_eq!(c.isolation("x/b"), (false, false));
    assert_eq!(c.isolation("y/a"), (false, false));
    check(
        &c,
        &[
            ("x/a", Ingress, "x/b", TCP, 80, DENY),
            ("x/a", Egress, "x/b", TCP, 80, DENY),
            ("x/b", Ingress, "x/a", TCP, 80, ALLOW),
            ("x/b", Egress, "x/a", TCP, 80, ALLOW),
            ("x/b", Ingress, "8.8.8.8", TCP, 80, ALLOW),
            ("x/b", Egress, "8.8.8.8", UDP, 53, ALLOW),
            ("y/a", Ingress, "x/b", TCP, 80, ALLOW),
            ("y/a", Egress, "8.8.8.8", TCP, 80, ALLOW),
        ],
    );
}

#[test]
fn policy_types_default_to_ingress_and_add_egress_only_with_egress_rules() {
    // spec, (ingress isolated, egress isolated), (x/b reaches x/a, x/a reaches x/b)
    let rows: &[(&str, (bool, bool), (bool, bool))] = &[
        (
            "{podSelector: {matchLabels: {app: a}}}",
            (true, false),
            (DENY, ALLOW),
        ),
        (
            "{podSelector: {matchLabels: {app: a}}, ingress: [{}]}",
            (true, false),
            (ALLOW, ALLOW),
        ),
        (
            "{podSelector: {matchLabels: {app: a}}, egress: [{to: [{podSelector: {matchLabels: {app: nobody}}}]}]}",
            (true, true),
            (DENY, DENY),
        ),
        (
            "{podSelector: {matchLabels: {app: a}}, egress: [{}]}",
            (true, true),
            (DENY, ALLOW),
        ),
        // An empty egress list is no egress rule: Ingress only.
        (
            "{podSelector: {matchLabels: {app: a}}, egress: []}",
            (true, false),
            (DENY, ALLOW),
        ),
        (
            "{podSelector: {matchLabels: {app: a}}, policyTypes: [Egress]}",
            (false, true),
            (ALLOW, DENY),
        ),
        // Ingress rules of a policy whose types leave Ingress out do nothing.
        (
            "{podSelector: {matchLabels: {app: a}}, policyTypes: [Egress], ingress: [{from: [{podSelector: {matchLabels: {app: nobody}}}]}]}",
            (false, true),
            (ALLOW, DENY),
        ),
        (
            "{podSelector: {matchLabels: {app: a}}, policyTypes: [Ingress], egress: [{to: [{podSelector: {matchLabels: {app: nobody}}}]}]}",
            (true, false),
            (DENY, ALLOW),
        ),
        (
            "{podSelector: {matchLabels: {app: a}}, policyTypes: [Ingress, Egress]}",
            (true, true),
            (DENY, DENY),
        ),
        (
            "{podSelector: {matchLabels: {app: a}}, policyTypes: [Egress], egress: [{}]}",
            (false, true),
            (ALLOW, ALLOW),
        ),
    ];
    let mut bad = vec![];
    for (spec, isolation, (inbound, outbound)) in rows {
        let c = cluster(&[
            pod("x/a", "app=a", "10.0.1.1,fd00:1::1"),
            pod("x/b", "app=b", "10.0.1.2,fd00:1::2"),
            netpol("x/p", spec),
        ]);
        let got = (
            c.isolation("x/a"),
            allows(&c, "x/a", Ingress, "x/b", TCP, 80),
            allows(&c, "x/a", Egress, "x/b", TCP, 80),
            allows6(&c, "x/a", Ingress, "x/b", TCP, 80),
            allows6(&c, "x/a", Egress, "x/b", TCP, 80),
            c.isolation("x/b"),
        );
        let want = (
            *isolation,
            *inbound,
            *outbound,
            *inbound,
            *outbound,
            (false, false),
        );
        if got != want {
            bad.push(format!("{spec}:\n    got {got:?}\n   want {want:?}"));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// Kubernetes defaults an empty `policyTypes` like a missing one
/// (`SetDefaults_NetworkPolicy`: `len(PolicyTypes) == 0`), so
/// `policyTypes: []` isolates for Ingress.
#[test]
fn an_empty_policy_types_list_defaults_like_a_missing_one() {
    let c = cluster(&[
        pod("x/a", "app=a", "10.0.1.1"),
        pod("x/b", "app=b", "10.0.1.2"),
        netpol(
            "x/p",
            "{podSelector: {matchLabels: {app: a}}, policyTypes: []}",
        ),
        netpol(
            "x/q",
            "{podSelector: {matchLabels: {app: b}}, policyTypes: [], egress: [{to: [{podSelector: {matchLabels: {app: nobody}}}]}]}",
        ),
    ]);
    assert_eq!(c.isolation("x/a"), (true, false));
    assert_eq!(c.isolation("x/b"), (true, true));
    check(
        &c,
        &[
            ("x/a", Ingress, "8.8.8.8", TCP, 80, DENY),
            ("x/b", Egress, "8.8.8.8", TCP, 80, DENY),
        ],
    );
}

#[test]
fn default_deny_ingress_closes_every_inbound_peer_and_leaves_egress_open() {
    let c = cluster(&[
        pod("x/a", "app=a", "10.0.1.1,fd00:1::1"),
        pod("x/b", "app=b", "10.0.1.2,fd00:1::2"),
        remote_pod("y/r", "app=r", "10.0.2.1,fd00:2::1"),
        netpol("x/deny", "{podSelector: {}}"),
    ]);
    check(
        &c,
        &[
            ("x/a", Ingress, "x/b", TCP, 80, DENY),
            ("x/a", Ingress, "y/r", UDP, 53, DENY),
            ("x/a", Ingress, "8.8.8.8", ICMP, 0, DENY),
            ("x/a", Ingress, "2001:db8::1", TCP, 443, DENY),
            ("x/a", Egress, "x/b", TCP, 80, ALLOW),
            ("x/a", Egress, "8.8.8.8", UDP, 53, ALLOW),
            ("x/a", Egress, "2001:db8::1", TCP, 443, ALLOW),
        ],
    );
    check6(&c, &[("x/a", Ingress, "x/b", TCP, 80, DENY)]);
    assert_eq!(c.entries_of("x/a"), 0);
}

#[test]
fn default_deny_egress_closes_every_outbound_peer_and_leaves_ingress_open() {
    let c = cluster(&[
        pod("x/a", "app=a", "10.0.1.1,fd00:1::1"),
        pod("x/b", "app=b", "10.0.1.2,fd00:1::2"),
        netpol("x/deny", "{podSelector: {}, policyTypes: [Egress]}"),
    ]);
    check(
        &c,
        &[
            ("x/a", Egress, "x/b", TCP, 80, DENY),
            ("x/a", Egress, "8.8.8.8", UDP, 53, DENY),
            ("x/a", Egress, "2001:db8::1", TCP, 443, DENY),
            // Egress has no host exemption.
            ("x/a", Egress, NODE_IP, TCP, 10250, DENY),
            ("x/a", Ingress, "x/b", TCP, 80, ALLOW),
            ("x/a", Ingress, "8.8.8.8", TCP, 80, ALLOW),
        ],
    );
    check6(&c, &[("x/a", Egress, "x/b", TCP, 80, DENY)]);
}

#[test]
fn a_pod_always_reaches_itself() {
    let c = cluster(&[
        pod("x/a", "app=a", "10.0.1.1,fd00:1::1"),
        netpol(
            "x/deny",
            "{podSelector: {}, policyTypes: [Ingress, Egress]}",
        ),
    ]);
    check(
        &c,
        &[
            ("x/a", Ingress, "x/a", TCP, 80, ALLOW),
            ("x/a", Egress, "x/a", TCP, 80, ALLOW),
        ],
    );
    check6(&c, &[("x/a", Egress, "x/a", UDP, 53, ALLOW)]);
}

#[test]
fn two_policies_allow_the_union_of_their_rules() {
    let c = cluster(&[
        pod("x/a", "app=a", "10.0.1.1"),
        pod("x/b", "app=b", "10.0.1.2"),
        pod("x/c", "app=c", "10.0.1.3"),
        netpol(
            "x/from-b",
            "{podSelector: {matchLabels: {app: a}}, ingress: [{from: [{podSelector: {matchLabels: {app: b}}}], ports: [{port: 80}]}]}",
        ),
        netpol(
            "x/from-c",
            "{podSelector: {matchLabels: {app: a}}, ingress: [{from: [{podSelector: {matchLabels: {app: c}}}], ports: [{port: 443}]}]}",
        ),
        // A deny-all next to them takes nothing away.
        netpol("x/deny", "{podSelector: {}}"),
    ]);
    check(
        &c,
        &[
            ("x/a", Ingress, "x/b", TCP, 80, ALLOW),
            ("x/a", Ingress, "x/b", TCP, 443, DENY),
            ("x/a", Ingress, "x/c", TCP, 443, ALLOW),
            ("x/a", Ingress, "x/c", TCP, 80, DENY),
            ("x/b", Ingress, "x/c", TCP, 80, DENY),
            ("x/b", Ingress, "x/a", TCP, 443, DENY),
        ],
    );
    // The report names the rules an allow came from.
    let a = c.report.endpoints.iter().find(|e| e.pod == "x/a").unwrap();
    let from: Vec<&str> = a
        .allows
        .iter()
        .flat_map(|x| x.from.iter().map(String::as_str))
        .collect();
    assert!(from.contains(&"x/from-b ingress[0]") && from.contains(&"x/from-c ingress[0]"));
}

// ---------------------------------------------------------------------------
// Peers.

#[test]
fn a_pod_selector_peer_matches_pods_of_the_policy_namespace_only() {
    let c = cluster(&[
        pod("x/a", "app=a", "10.0.1.1,fd00:1::1"),
        pod("x/b", "app=b", "10.0.1.2,fd00:1::2"),
        pod("y/b", "app=b", "10.0.1.12,fd00:1::12"),
        pod("y/a", "app=a", "10.0.1.11"),
        remote_pod("x/r", "app=b", "10.0.2.1,fd00:2::1"),
        netpol(
            "x/p",
            "{podSelector: {matchLabels: {app: a}}, ingress: [{from: [{podSelector: {matchLabels: {app: b}}}]}]}",
        ),
    ]);
    check(
        &c,
        &[
            ("x/a", Ingress, "x/b", TCP, 80, ALLOW),
            ("x/a", Ingress, "x/r", TCP, 80, ALLOW),
            ("x/a", Ingress, "y/b", TCP, 80, DENY),
            ("x/a", Ingress, "10.9.9.9", TCP, 80, DENY),
            // The policy of x does not isolate y/a.
            ("y/a", Ingress, "10.9.9.9", TCP, 80, ALLOW),
        ],
    );
    check6(
        &c,
        &[
            ("x/a", Ingress, "x/b", TCP, 80, ALLOW),
            ("x/a", Ingress, "x/r", TCP, 80, ALLOW),
            ("x/a", Ingress, "y/b", TCP, 80, DENY),
        ],
    );
}

#[test]
fn a_namespace_selector_peer_matches_every_pod_of_matching_namespaces() {
    let c = cluster(&[
        namespace("blue", "team=blue"),
        namespace("red", "team=red"),
        pod("x/a", "app=a", "10.0.1.1"),
        pod("x/g", "app=g", "10.0.1.2"),
        pod("blue/c", "app=c", "10.0.1.3"),
        remote_pod("blue/d", "app=d", "10.0.2.4"),
        pod("red/e", "app=e", "10.0.1.5"),
        // No Namespace object: its name label is still known.
        pod("plain/f", "app=f", "10.0.1.6"),
        netpol(
            "x/blue",
            "{podSelector: {matchLabels: {app: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}}], ports: [{port: 80}]}]}",
        ),
        netpol(
            "x/plain",
            "{podSelector: {matchLabels: {app: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {\"kubernetes.io/metadata.name\": plain}}}], ports: [{port: 81}]}]}",
        ),
    ]);
    check(
        &c,
        &[
            ("x/a", Ingress, "blue/c", TCP, 80, ALLOW),
            ("x/a", Ingress, "blue/d", TCP, 80, ALLOW),
            ("x/a", Ingress, "red/e", TCP, 80, DENY),
            ("x/a", Ingress, "x/g", TCP, 80, DENY),
            ("x/a", Ingress, "plain/f", TCP, 80, DENY),
            ("x/a", Ingress, "plain/f", TCP, 81, ALLOW),
            ("x/a", Ingress, "blue/c", TCP, 81, DENY),
            ("x/a", Ingress, "10.9.9.9", TCP, 80, DENY),
        ],
    );
}

#[test]
fn namespace_labels_changing_changes_who_a_namespace_selector_admits() {
    let mut c = cluster(&[
        namespace("other", "team=red"),
        pod("x/a", "app=a", "10.0.1.1"),
        pod("other/c", "app=c", "10.0.1.3"),
        netpol(
            "x/blue",
            "{podSelector: {matchLabels: {app: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}}]}]}",
        ),
    ]);
    let before = c.identity("other/c");
    check(&c, &[("x/a", Ingress, "other/c", TCP, 80, DENY)]);
    c.apply(&namespace("other", "team=blue"));
    c.recompute();
    check(&c, &[("x/a", Ingress, "other/c", TCP, 80, ALLOW)]);
    // Namespace labels are part of the identity.
    assert_ne!(c.identity("other/c"), before);
}

#[test]
fn pod_and_namespace_selector_in_one_peer_must_both_match() {
    let c = cluster(&[
        namespace("blue", "team=blue"),
        namespace("red", "team=red"),
        pod("x/a", "app=a", "10.0.1.1"),
        pod("x/db", "app=db", "10.0.1.2"),
        pod("blue/db", "app=db", "10.0.1.3"),
        pod("blue/web", "app=web", "10.0.1.4"),
        pod("red/db", "app=db", "10.0.1.5"),
        netpol(
            "x/and",
            "{podSelector: {matchLabels: {app: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}, podSelector: {matchLabels: {app: db}}}]}]}",
        ),
    ]);
    check(
        &c,
        &[
            ("x/a", Ingress, "blue/db", TCP, 5432, ALLOW),
            ("x/a", Ingress, "blue/web", TCP, 5432, DENY),
            ("x/a", Ingress, "red/db", TCP, 5432, DENY),
            ("x/a", Ingress, "x/db", TCP, 5432, DENY),
        ],
    );
}

#[test]
fn pod_and_namespace_selectors_in_separate_peers_each_admit() {
    let c = cluster(&[
        namespace("blue", "team=blue"),
        namespace("red", "team=red"),
        pod("x/a", "app=a", "10.0.1.1"),
        pod("x/db", "app=db", "10.0.1.2"),
        pod("blue/db", "app=db", "10.0.1.3"),
        pod("blue/web", "app=web", "10.0.1.4"),
        pod("red/db", "app=db", "10.0.1.5"),
        pod("x/web", "app=web", "10.0.1.6"),
        netpol(
            "x/or",
            "{podSelector: {matchLabels: {app: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}}, {podSelector: {matchLabels: {app: db}}}]}]}",
        ),
    ]);
    check(
        &c,
        &[
            ("x/a", Ingress, "blue/db", TCP, 5432, ALLOW),
            ("x/a", Ingress, "blue/web", TCP, 5432, ALLOW),
            ("x/a", Ingress, "x/db", TCP, 5432, ALLOW),
            // The podSelector alone stays in the policy's namespace.
            ("x/a", Ingress, "red/db", TCP, 5432, DENY),
            ("x/a", Ingress, "x/web", TCP, 5432, DENY),
        ],
    );
}

#[test]
fn empty_selectors_in_a_peer_mean_every_pod_of_their_scope() {
    let docs = |from: &str| {
        vec![
            pod("x/a", "app=a", "10.0.1.1,fd00:1::1"),
            pod("x/b", "app=b", "10.0.1.2,fd00:1::2"),
            pod("y2/c", "app=c", "10.0.1.3,fd00:1::3"),
            remote_pod("y2/d", "", "10.0.2.4"),
            netpol(
                "x/p",
                &format!(
                    "{{podSelector: {{matchLabels: {{app: a}}}}, ingress: [{{from: [{from}]}}]}}"
                ),
            ),
        ]
    };
    // from, (x/b, y2/c, y2/d, world)
    let rows: &[(&str, [bool; 4])] = &[
        ("{podSelector: {}}", [ALLOW, DENY, DENY, DENY]),
        ("{namespaceSelector: {}}", [ALLOW, ALLOW, ALLOW, DENY]),
        (
            "{namespaceSelector: {}, podSelector: {}}",
            [ALLOW, ALLOW, ALLOW, DENY],
        ),
        (
            "{namespaceSelector: {}, podSelector: {matchLabels: {app: c}}}",
            [DENY, ALLOW, DENY, DENY],
        ),
    ];
    for (from, [b, c2, d, world]) in rows {
        let c = cluster(&docs(from));
        let ctx = format!("from {from}");
        let got = [
            allows(&c, "x/a", Ingress, "x/b", TCP, 80),
            allows(&c, "x/a", Ingress, "y2/c", TCP, 80),
            allows(&c, "x/a", Ingress, "y2/d", TCP, 80),
            allows(&c, "x/a", Ingress, "10.9.9.9", TCP, 80),
        ];
        assert_eq!(got, [*b, *c2, *d, *world], "{ctx}");
        assert_eq!(
            allows6(&c, "x/a", Ingress, "y2/c", TCP, 80),
            *c2,
            "{ctx} (IPv6)"
        );
        assert!(!allows(&c, "x/a", Ingress, "2001:db8::1", TCP, 80), "{ctx}");
    }
}

#[test]
fn match_expressions_select_pods_and_peers() {
    // Pods: x/a {app: a, tier: fe}, x/b {app: b, tier: be}, x/c {app: c}.
    // expression, the pods it matches among a, b, c
    let rows: &[(&str, [bool; 3])] = &[
        (
            "[{key: tier, operator: In, values: [fe]}]",
            [true, false, false],
        ),
        (
            "[{key: tier, operator: In, values: [fe, be]}]",
            [true, true, false],
        ),
        // NotIn matches pods without the key too.
        (
            "[{key: tier, operator: NotIn, values: [fe]}]",
            [false, true, true],
        ),
        ("[{key: tier, operator: Exists}]", [true, true, false]),
        (
            "[{key: tier, operator: DoesNotExist}]",
            [false, false, true],
        ),
        (
            "[{key: tier, operator: Exists}, {key: app, operator: NotIn, values: [a]}]",
            [false, true, false],
        ),
        (
            "[{key: app, operator: In, values: [zzz]}]",
            [false, false, false],
        ),
    ];
    let pods = || {
        vec![
            pod("x/a", "app=a,tier=fe", "10.0.1.1"),
            pod("x/b", "app=b,tier=be", "10.0.1.2"),
            pod("x/c", "app=c", "10.0.1.3"),
            pod("x/t", "role=target", "10.0.1.4"),
        ]
    };
    let mut bad = vec![];
    for (exprs, want) in rows {
        // As the policy's podSelector: which pods it isolates.
        let mut docs = pods();
        docs.push(netpol(
            "x/p",
            &format!("{{podSelector: {{matchExpressions: {exprs}}}}}"),
        ));
        let c = cluster(&docs);
        let got = ["x/a", "x/b", "x/c"].map(|p| c.isolation(p).0);
        if got != *want {
            bad.push(format!(
                "podSelector {exprs}: isolated {got:?}, want {want:?}"
            ));
        }
        // As a peer: which pods reach x/t.
        let mut docs = pods();
        docs.push(netpol(
            "x/p",
            &format!(
                "{{podSelector: {{matchLabels: {{role: target}}}}, ingress: [{{from: [{{podSelector: {{matchExpressions: {exprs}}}}}]}}]}}"
            ),
        ));
        let c = cluster(&docs);
        let got = ["x/a", "x/b", "x/c"].map(|p| allows(&c, "x/t", Ingress, p, TCP, 80));
        if got != *want {
            bad.push(format!("peer {exprs}: admitted {got:?}, want {want:?}"));
        }
    }
    // matchLabels and matchExpressions together: both hold.
    let mut docs = pods();
    docs.push(netpol(
        "x/p",
        "{podSelector: {matchLabels: {role: target}}, ingress: [{from: [{podSelector: {matchLabels: {app: a}, matchExpressions: [{key: tier, operator: DoesNotExist}]}}]}]}",
    ));
    let c = cluster(&docs);
    if allows(&c, "x/t", Ingress, "x/a", TCP, 80) {
        bad.push("matchLabels app=a with tier DoesNotExist admitted x/a".into());
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

// ---------------------------------------------------------------------------
// ipBlock.

#[test]
fn an_ip_block_except_carves_out_exactly_that_pod() {
    let c = cluster(&[
        pod("x/a", "app=a", "10.0.1.1,fd00:1::1"),
        pod("y/b", "app=b", "10.0.1.2"),
        pod("y/c", "app=c", "10.0.1.3"),
        remote_pod("y/r", "app=c", "10.0.2.5"),
        netpol(
            "x/p",
            "{podSelector: {matchLabels: {app: a}}, policyTypes: [Ingress, Egress], \
             ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.1.3/32]}}]}], \
             egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.1.3/32]}}]}]}",
        ),
    ]);
    check(
        &c,
        &[
            ("x/a", Ingress, "y/b", TCP, 80, ALLOW),
            ("x/a", Ingress, "y/c", TCP, 80, DENY),
            // Same labels as y/c, other address: the block is by address.
            ("x/a", Ingress, "y/r", TCP, 80, ALLOW),
            ("x/a", Ingress, "10.200.0.1", UDP, 53, ALLOW),
            ("x/a", Ingress, "11.0.0.1", TCP, 80, DENY),
            ("x/a", Ingress, "9.255.255.255", TCP, 80, DENY),
            ("x/a", Ingress, "fd00::1", TCP, 80, DENY),
            ("x/a", Egress, "y/b", TCP, 80, ALLOW),
            ("x/a", Egress, "y/c", TCP, 80, DENY),
            ("x/a", Egress, "10.255.255.255", TCP, 80, ALLOW),
            ("x/a", Egress, "11.0.0.1", TCP, 80, DENY),
        ],
    );
}

#[test]
fn an_except_can_be_readmitted_by_another_block_on_its_own_ports() {
    let c = cluster(&[
        pod("x/a", "app=a", "10.0.1.1"),
        pod("y/b", "app=b", "10.0.1.2"),
        pod("y/c", "app=c", "10.0.1.3"),
        netpol(
            "x/p",
            "{podSelector: {matchLabels: {app: a}}, ingress: [\
             {from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.1.0/24]}}], ports: [{port: 80}]}, \
             {from: [{ipBlock: {cidr: 10.0.1.3/32}}], ports: [{port: 8080}]}]}",
        ),
    ]);
    check(
        &c,
        &[
            ("x/a", Ingress, "10.0.2.1", TCP, 80, ALLOW),
            ("x/a", Ingress, "10.0.2.1", TCP, 8080, DENY),
            ("x/a", Ingress, "y/b", TCP, 80, DENY),
            ("x/a", Ingress, "y/b", TCP, 8080, DENY),
            ("x/a", Ingress, "y/c", TCP, 8080, ALLOW),
            ("x/a", Ingress, "y/c", TCP, 80, DENY),
        ],
    );
}

#[test]
fn overlapping_ip_blocks_keep_the_shorter_blocks_ports() {
    let c = cluster(&[
        pod("x/a", "app=a", "10.0.1.1"),
        netpol(
            "x/wide",
            "{podSelector: {matchLabels: {app: a}}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}}], ports: [{port: 80}]}]}",
        ),
        // Another policy, a longer block inside, with an except of its own.
        netpol(
            "x/narrow",
            "{podSelector: {matchLabels: {app: a}}, ingress: [\
             {from: [{ipBlock: {cidr: 10.1.0.0/16}}], ports: [{port: 443}]}, \
             {from: [{ipBlock: {cidr: 10.1.1.0/24, except: [10.1.1.128/25]}}], ports: [{port: 8080}]}]}",
        ),
    ]);
    check(
        &c,
        &[
            ("x/a", Ingress, "10.1.2.3", TCP, 80, ALLOW),
            ("x/a", Ingress, "10.1.2.3", TCP, 443, ALLOW),
            ("x/a", Ingress, "10.1.2.3", TCP, 8080, DENY),
            ("x/a", Ingress, "10.1.2.3", TCP, 22, DENY),
            ("x/a", Ingress, "10.2.0.1", TCP, 80, ALLOW),
            ("x/a", Ingress, "10.2.0.1", TCP, 443, DENY),
            ("x/a", Ingress, "10.1.1.5", TCP, 80, ALLOW),
            ("x/a", Ingress, "10.1.1.5", TCP, 443, ALLOW),
            ("x/a", Ingress, "10.1.1.5", TCP, 8080, ALLOW),
            // Carved out of the /24 only: the /16 and /8 still hold.
            ("x/a", Ingress, "10.1.1.200", TCP, 80, ALLOW),
            ("x/a", Ingress, "10.1.1.200", TCP, 443, ALLOW),
            ("x/a", Ingress, "10.1.1.200", TCP, 8080, DENY),
            ("x/a", Ingress, "11.0.0.1", TCP, 80, DENY),
        ],
    );
}

#[test]
fn an_ipv6_catch_all_block_does_not_admit_ipv4_peers_nor_the_reverse() {
    let c = cluster(&[
        pod("x/a", "app=a", "10.0.1.1,fd00:1::1"),
        pod("x/b", "app=b", "10.0.1.2,fd00:1::2"),
        pod("x/c", "app=c", "10.0.1.3,fd00:1::3"),
        netpol(
            "x/v6",
            "{podSelector: {matchLabels: {app: a}}, ingress: [{from: [{ipBlock: {cidr: \"::/0\"}}], ports: [{port: 80}]}]}",
        ),
        netpol(
            "x/v4",
            "{podSelector: {matchLabels: {app: a}}, ingress: [{from: [{ipBlock: {cidr: 0.0.0.0/0}}], ports: [{port: 443}]}]}",
        ),
        netpol(
            "x/v6-except",
            "{podSelector: {matchLabels: {app: a}}, ingress: [{from: [{ipBlock: {cidr: \"fd00:1::/64\", except: [\"fd00:1::2/128\"]}}], ports: [{port: 8080}]}]}",
        ),
    ]);
    check(
        &c,
        &[
            ("x/a", Ingress, "2001:db8::1", TCP, 80, ALLOW),
            ("x/a", Ingress, "10.9.9.9", TCP, 80, DENY),
            ("x/a", Ingress, "::ffff:10.9.9.9", TCP, 80, DENY),
            ("x/a", Ingress, "x/b", TCP, 80, DENY),
            ("x/a", Ingress, "10.9.9.9", TCP, 443, ALLOW),
            ("x/a", Ingress, "2001:db8::1", TCP, 443, DENY),
            ("x/a", Ingress, "fd00:1::3", TCP, 8080, ALLOW),
            ("x/a", Ingress, "fd00:1::2", TCP, 8080, DENY),
            ("x/a", Ingress, "fd00:2::2", TCP, 8080, DENY),
        ],
    );
    check6(
        &c,
        &[
            ("x/a", Ingress, "x/b", TCP, 80, ALLOW),
            ("x/a", Ingress, "x/b", TCP, 443, DENY),
            ("x/a", Ingress, "x/b", TCP, 8080, DENY),
            ("x/a", Ingress, "x/c", TCP, 8080, ALLOW),
        ],
    );
}

// ---------------------------------------------------------------------------
// Ports and protocols.

#[test]
fn a_named_port_on_ingress_is_the_destination_pods_own() {
    let c = cluster(&[
        pod_ports("x/a", "app=web", "10.0.1.1", "http=8080,dns=53/UDP"),
        pod_ports("x/a2", "app=web", "10.0.1.2", "http=9090"),
        pod_ports("x/u", "app=web", "10.0.1.3", "metrics=9100"),
        pod("x/cli", "app=cli", "10.0.1.4"),
        netpol(
            "x/p",
            "{podSelector: {matchLabels: {app: web}}, ingress: [\
             {from: [{podSelector: {matchLabels: {app: cli}}}], ports: [{port: http}]}, \
             {from: [{podSelector: {matchLabels: {app: cli}}}], ports: [{port: dns, protocol: UDP}]}, \
             {from: [{ipBlock: {cidr: 192.0.2.0/24}}], ports: [{port: http}]}, \
             {ports: [{port: metrics}]}]}",
        ),
    ]);
    check(
        &c,
        &[
            ("x/a", Ingress, "x/cli", TCP, 8080, ALLOW),
            ("x/a", Ingress, "x/cli", TCP, 9090, DENY),
            ("x/a2", Ingress, "x/cli", TCP, 9090, ALLOW),
            ("x/a2", Ingress, "x/cli", TCP, 8080, DENY),
            ("x/u", Ingress, "x/cli", TCP, 8080, DENY),
            ("x/u", Ingress, "x/cli", TCP, 9090, DENY),
            ("x/a", Ingress, "x/cli", UDP, 53, ALLOW),
            ("x/a", Ingress, "x/cli", TCP, 53, DENY),
            ("x/a2", Ingress, "x/cli", UDP, 53, DENY),
            ("x/a", Ingress, "192.0.2.7", TCP, 8080, ALLOW),
            ("x/a2", Ingress, "192.0.2.7", TCP, 9090, ALLOW),
            ("x/a2", Ingress, "192.0.2.7", TCP, 8080, DENY),
            ("x/u", Ingress, "8.8.8.8", TCP, 9100, ALLOW),
            ("x/a", Ingress, "8.8.8.8", TCP, 9100, DENY),
        ],
    );
}

#[test]
fn a_named_port_on_egress_is_the_peer_pods_own() {
    let c = cluster(&[
        pod("x/cli", "app=cli", "10.0.1.1"),
        pod_ports("x/s1", "app=srv", "10.0.1.2", "http=8080"),
        pod_yaml("node-2", "y2/s2", "app=srv", "10.0.2.3", "http=9090", false),
        pod_ports("x/s3", "app=other", "10.0.1.4", "http=7070"),
        netpol(
            "x/to-srv",
            "{podSelector: {matchLabels: {app: cli}}, egress: [\
             {to: [{namespaceSelector: {}, podSelector: {matchLabels: {app: srv}}}], ports: [{port: http}]}]}",
        ),
    ]);
    check(
        &c,
        &[
            ("x/cli", Egress, "x/s1", TCP, 8080, ALLOW),
            ("x/cli", Egress, "x/s1", TCP, 9090, DENY),
            ("x/cli", Egress, "y2/s2", TCP, 9090, ALLOW),
            ("x/cli", Egress, "y2/s2", TCP, 8080, DENY),
            ("x/cli", Egress, "x/s3", TCP, 7070, DENY),
            ("x/cli", Egress, "8.8.8.8", TCP, 8080, DENY),
        ],
    );

    // No peers: the named port of whichever pod is reached; numeric ports
    // of the same rule reach anything.
    let c = cluster(&[
        pod("x/cli", "app=cli", "10.0.1.1"),
        pod_ports("x/s1", "app=srv", "10.0.1.2", "http=8080"),
        pod_yaml("node-2", "y2/s2", "app=srv", "10.0.2.3", "http=9090", false),
        pod_ports("x/s3", "app=other", "10.0.1.4", "http=7070"),
        netpol(
            "x/any-http",
            "{podSelector: {matchLabels: {app: cli}}, egress: [{ports: [{port: http}, {port: 53, protocol: UDP}]}]}",
        ),
    ]);
    check(
        &c,
        &[
            ("x/cli", Egress, "x/s1", TCP, 8080, ALLOW),
            ("x/cli", Egress, "y2/s2", TCP, 9090, ALLOW),
            ("x/cli", Egress, "x/s3", TCP, 7070, ALLOW),
            ("x/cli", Egress, "x/s3", TCP, 8080, DENY),
            ("x/cli", Egress, "8.8.8.8", TCP, 8080, DENY),
            ("x/cli", Egress, "8.8.8.8", UDP, 53, ALLOW),
            ("x/cli", Egress, "x/s1", UDP, 53, ALLOW),
        ],
    );

    // An ipBlock: the named port of the pods inside it (not excepted);
    // numeric ports for every address of the block.
    let c = cluster(&[
        pod("x/cli", "app=cli", "10.0.1.1"),
        pod_ports("x/s1", "app=srv", "10.0.1.2", "http=8080"),
        pod_yaml("node-2", "y2/s2", "app=srv", "10.0.2.3", "http=9090", false),
        pod_ports("z/s5", "app=out", "172.16.0.5", "http=5050"),
        netpol(
            "x/block",
            "{podSelector: {matchLabels: {app: cli}}, egress: [\
             {to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.2.3/32]}}], ports: [{port: http}, {port: 443}]}]}",
        ),
    ]);
    check(
        &c,
        &[
            ("x/cli", Egress, "x/s1", TCP, 8080, ALLOW),
            ("x/cli", Egress, "x/s1", TCP, 443, ALLOW),
            ("x/cli", Egress, "y2/s2", TCP, 9090, DENY),
            ("x/cli", Egress, "y2/s2", TCP, 443, DENY),
            ("x/cli", Egress, "z/s5", TCP, 5050, DENY),
            ("x/cli", Egress, "10.9.9.9", TCP, 443, ALLOW),
            ("x/cli", Egress, "10.9.9.9", TCP, 8080, DENY),
        ],
    );
}

#[test]
fn end_port_ranges_are_inclusive_at_both_ends() {
    let mut bad = vec![];
    for (start, end) in [
        (8000u16, 8007u16),
        (1000, 2000),
        (80, 80),
        (1023, 1025),
        (32768, 65535),
        (1, 65535),
        (65535, 65535),
    ] {
        let c = cluster(&[
            pod("x/a", "app=a", "10.0.1.1"),
            netpol(
                "x/p",
                &format!(
                    "{{podSelector: {{}}, ingress: [{{ports: [{{port: {start}, endPort: {end}}}, {{protocol: UDP, port: {start}, endPort: {end}}}]}}]}}"
                ),
            ),
        ]);
        let mut probes = vec![
            (start, true),
            (end, true),
            (start + (end - start) / 2, true),
        ];
        if start > 1 {
            probes.push((start - 1, false));
        }
        if end < u16::MAX {
            probes.push((end + 1, false));
        }
        for (port, want) in probes {
            for proto in [TCP, UDP] {
                if allows(&c, "x/a", Ingress, "8.8.8.8", proto, port) != want {
                    bad.push(format!(
                        "{start}-{end} proto {proto}: port {port} want {want}"
                    ));
                }
            }
            if allows(&c, "x/a", Ingress, "8.8.8.8", SCTP, port) {
                bad.push(format!("{start}-{end}: SCTP port {port} allowed"));
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn the_protocol_must_match_and_defaults_to_tcp() {
    let c = cluster(&[
        pod("x/sctp", "app=sctp", "10.0.1.1"),
        pod("x/dflt", "app=dflt", "10.0.1.2"),
        pod("x/udp", "app=udp", "10.0.1.3"),
        netpol(
            "x/sctp",
            "{podSelector: {matchLabels: {app: sctp}}, ingress: [{ports: [{protocol: SCTP, port: 80}]}]}",
        ),
        netpol(
            "x/dflt",
            "{podSelector: {matchLabels: {app: dflt}}, ingress: [{ports: [{port: 80}]}]}",
        ),
        netpol(
            "x/udp",
            "{podSelector: {matchLabels: {app: udp}}, ingress: [{ports: [{protocol: UDP}]}]}",
        ),
    ]);
    check(
        &c,
        &[
            ("x/sctp", Ingress, "8.8.8.8", SCTP, 80, ALLOW),
            ("x/sctp", Ingress, "8.8.8.8", SCTP, 81, DENY),
            ("x/sctp", Ingress, "8.8.8.8", TCP, 80, DENY),
            ("x/sctp", Ingress, "8.8.8.8", UDP, 80, DENY),
            ("x/dflt", Ingress, "8.8.8.8", TCP, 80, ALLOW),
            ("x/dflt", Ingress, "8.8.8.8", UDP, 80, DENY),
            ("x/dflt", Ingress, "8.8.8.8", SCTP, 80, DENY),
            ("x/udp", Ingress, "8.8.8.8", UDP, 53, ALLOW),
            ("x/udp", Ingress, "8.8.8.8", UDP, 1, ALLOW),
            ("x/udp", Ingress, "8.8.8.8", UDP, 65535, ALLOW),
            // A later fragment is judged with port 0: any-port rules pass it.
            ("x/udp", Ingress, "8.8.8.8", UDP, 0, ALLOW),
            ("x/udp", Ingress, "8.8.8.8", TCP, 53, DENY),
            ("x/udp", Ingress, "8.8.8.8", ICMP, 0, DENY),
        ],
    );
}

#[test]
fn a_rule_with_ports_and_no_peers_admits_any_peer_on_those_ports() {
    let c = cluster(&[
        pod("x/a", "app=a", "10.0.1.1,fd00:1::1"),
        pod("y/b", "app=b", "10.0.1.2,fd00:1::2"),
        remote_pod("y/r", "app=r", "10.0.2.1"),
        netpol(
            "x/p",
            "{podSelector: {}, ingress: [{ports: [{port: 80}]}], egress: [{ports: [{port: 53, protocol: UDP}]}]}",
        ),
    ]);
    check(
        &c,
        &[
            ("x/a", Ingress, "y/b", TCP, 80, ALLOW),
            ("x/a", Ingress, "y/r", TCP, 80, ALLOW),
            ("x/a", Ingress, "8.8.8.8", TCP, 80, ALLOW),
            ("x/a", Ingress, "2001:db8::1", TCP, 80, ALLOW),
            ("x/a", Ingress, "8.8.8.8", TCP, 81, DENY),
            ("x/a", Ingress, "8.8.8.8", UDP, 80, DENY),
            ("x/a", Egress, "8.8.8.8", UDP, 53, ALLOW),
            ("x/a", Egress, "2001:db8::53", UDP, 53, ALLOW),
            ("x/a", Egress, "8.8.8.8", TCP, 53, DENY),
        ],
    );
    check6(&c, &[("x/a", Ingress, "y/b", TCP, 80, ALLOW)]);
}

#[test]
fn a_rule_with_peers_and_no_ports_admits_every_protocol_and_port() {
    let c = cluster(&[
        pod("x/a", "app=a", "10.0.1.1,fd00:1::1"),
        pod("x/b", "app=b", "10.0.1.2,fd00:1::2"),
        pod("x/c", "app=c", "10.0.1.3"),
        netpol(
            "x/p",
            "{podSelector: {matchLabels: {app: a}}, \
             ingress: [{from: [{podSelector: {matchLabels: {app: b}}}]}], \
             egress: [{to: [{podSelector: {matchLabels: {app: b}}}, {ipBlock: {cidr: 203.0.113.0/24}}]}]}",
        ),
    ]);
    let mut cases: Vec<Case> = vec![];
    for (proto, port) in [
        (TCP, 1),
        (TCP, 80),
        (TCP, 65535),
        (UDP, 53),
        (SCTP, 9),
        (ICMP, 0),
        (GRE, 0),
    ] {
        cases.push(("x/a", Ingress, "x/b", proto, port, ALLOW));
        cases.push(("x/a", Egress, "x/b", proto, port, ALLOW));
        cases.push(("x/a", Egress, "203.0.113.9", proto, port, ALLOW));
        cases.push(("x/a", Ingress, "x/c", proto, port, DENY));
        cases.push(("x/a", Egress, "x/c", proto, port, DENY));
    }
    check(&c, &cases);
    check6(&c, &[("x/a", Ingress, "x/b", PROTO_ICMP_V6, 0, ALLOW)]);
}

const PROTO_ICMP_V6: u8 = lb_common::PROTO_ICMPV6;

#[test]
fn an_empty_rule_admits_everything() {
    let c = cluster(&[
        pod("x/a", "app=a", "10.0.1.1,fd00:1::1"),
        pod("y/b", "app=b", "10.0.1.2"),
        netpol("x/p", "{podSelector: {}, ingress: [{}], egress: [{}]}"),
    ]);
    assert_eq!(c.isolation("x/a"), (true, true));
    check(
        &c,
        &[
            ("x/a", Ingress, "y/b", TCP, 80, ALLOW),
            ("x/a", Ingress, "8.8.8.8", ICMP, 0, ALLOW),
            ("x/a", Ingress, "2001:db8::1", SCTP, 7, ALLOW),
            ("x/a", Egress, "8.8.8.8", UDP, 53, ALLOW),
            ("x/a", Egress, "2001:db8::1", TCP, 443, ALLOW),
        ],
    );
    // And `from: []` (an empty list of peers) is the same.
    let c = cluster(&[
        pod("x/a", "app=a", "10.0.1.1"),
        netpol("x/p", "{podSelector: {}, ingress: [{from: [], ports: []}]}"),
    ]);
    check(&c, &[("x/a", Ingress, "8.8.8.8", GRE, 0, ALLOW)]);
}

// ---------------------------------------------------------------------------
// The host and host-network pods.

#[test]
fn host_network_pods_are_never_selected_and_never_endpoints() {
    let c = cluster(&[
        pod("x/a", "app=a", "10.0.1.1"),
        pod_yaml(NODE, "x/h", "app=a", NODE_IP, "", true),
        pod_yaml("node-2", "x/r", "app=peer", OTHER_NODE_IP, "", true),
        netpol(
            "x/p",
            "{podSelector: {matchLabels: {app: a}}, \
             ingress: [{from: [{podSelector: {matchLabels: {app: peer}}}]}], \
             egress: [{to: [{podSelector: {matchLabels: {app: peer}}}]}]}",
        ),
    ]);
    assert_eq!(c.maps.endpoints.len(), 1, "{:?}", c.maps.endpoints);
    assert!(
        !c.maps
            .endpoints
            .contains_key(&net_addr(NODE_IP.parse().unwrap()))
    );
    assert_eq!(c.report.endpoints.len(), 1);
    // The node's address is the host, not the host-network pod.
    assert_eq!(c.identity("x/h"), ID_HOST);
    assert!(
        !c.maps
            .ipcache
            .contains_key(&(net_addr(OTHER_NODE_IP.parse().unwrap()), 128))
    );
    // Only x/a holds an identity: host-network pods get none.
    assert_eq!(c.report.identities.len(), 1, "{:?}", c.report.identities);
    check(
        &c,
        &[
            ("x/a", Ingress, "x/r", TCP, 80, DENY),
            ("x/a", Egress, "x/r", TCP, 80, DENY),
        ],
    );
    // An ipBlock reaches them.
    let c = cluster(&[
        pod("x/a", "app=a", "10.0.1.1"),
        pod_yaml("node-2", "x/r", "app=peer", OTHER_NODE_IP, "", true),
        netpol(
            "x/p",
            "{podSelector: {matchLabels: {app: a}}, egress: [{to: [{ipBlock: {cidr: 192.168.0.2/32}}]}]}",
        ),
    ]);
    check(
        &c,
        &[
            ("x/a", Egress, "x/r", TCP, 80, ALLOW),
            ("x/a", Egress, NODE_IP, TCP, 80, DENY),
        ],
    );
}

#[test]
fn this_nodes_addresses_always_reach_its_pods_on_ingress() {
    let c = cluster(&[
        pod("x/a", "app=a", "10.0.1.1,fd00:1::1"),
        netpol(
            "x/deny",
            "{podSelector: {}, policyTypes: [Ingress, Egress]}",
        ),
    ]);
    for ip in [NODE_IP, NODE_IP6, HOST_IF] {
        assert_eq!(
            c.maps.ipcache[&(net_addr(ip.parse().unwrap()), 128)],
            ID_HOST
        );
    }
    check(
        &c,
        &[
            ("x/a", Ingress, NODE_IP, TCP, 10250, ALLOW),
            ("x/a", Ingress, NODE_IP6, TCP, 10250, ALLOW),
            ("x/a", Ingress, HOST_IF, ICMP, 0, ALLOW),
            ("x/a", Ingress, OTHER_NODE_IP, TCP, 10250, DENY),
            ("x/a", Egress, NODE_IP, TCP, 6443, DENY),
            ("x/a", Egress, HOST_IF, UDP, 53, DENY),
        ],
    );
}

// ---------------------------------------------------------------------------
// Broken policies.

#[test]
fn a_broken_policy_isolates_every_pod_of_its_namespace_and_allows_nothing() {
    let rows: &[(&str, &str)] = &[
        (
            "{podSelector: {matchExpressions: [{key: app, operator: Foo, values: [a]}]}, ingress: [{}], egress: [{}]}",
            "spec.podSelector.matchExpressions[0].operator",
        ),
        (
            "{podSelector: {matchLabels: {app: nothing}}, egress: [{to: [{podSelector: {matchExpressions: [{key: app, operator: In}]}}]}]}",
            "spec.egress[0].to[0].podSelector.matchExpressions[0].values",
        ),
        (
            "{podSelector: {}, ingress: [{ports: [{protocol: ICMP}]}]}",
            "spec.ingress[0].ports[0].protocol",
        ),
        (
            "{podSelector: {}, ingress: [{ports: [{port: 90, endPort: 80}]}]}",
            "spec.ingress[0].ports[0].endPort",
        ),
        (
            "{podSelector: {}, ingress: [{ports: [{port: http, endPort: 80}]}]}",
            "spec.ingress[0].ports[0].endPort",
        ),
        (
            "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]}",
            "spec.ingress[0].from[0]",
        ),
        (
            "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]}",
            "spec.ingress[0].from[0].ipBlock.cidr",
        ),
        (
            "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]}]}",
            "spec.ingress[0].from[0].ipBlock.except[0]",
        ),
        (
            "{podSelector: {}, policyTypes: [Sideways]}",
            "spec.policyTypes[0]",
        ),
        (
            "{podSelector: {}, ingress: [{from: [{}]}]}",
            "spec.ingress[0].from[0]",
        ),
    ];
    let mut bad = vec![];
    for (spec, field) in rows {
        let c = cluster(&[
            pod("x/a", "app=a", "10.0.1.1,fd00:1::1"),
            pod("x/b", "app=b", "10.0.1.2"),
            pod("y/c", "app=c", "10.0.1.3"),
            netpol("x/bad", spec),
        ]);
        if !c.snap.warnings.iter().any(|w| w.contains(field)) {
            bad.push(format!(
                "{spec}: no warning naming {field}: {:?}",
                c.snap.warnings
            ));
        }
        let got = (
            c.isolation("x/a"),
            c.isolation("x/b"),
            c.isolation("y/c"),
            c.entries_of("x/a") + c.entries_of("x/b"),
        );
        if got != ((true, true), (true, true), (false, false), 0) {
            bad.push(format!("{spec}: (isolation a, b, y/c; entries) = {got:?}"));
        }
        let verdicts = [
            allows(&c, "x/a", Ingress, "x/b", TCP, 80),
            allows(&c, "x/a", Ingress, "y/c", TCP, 80),
            allows(&c, "x/a", Egress, "x/b", TCP, 80),
            allows(&c, "x/a", Egress, "8.8.8.8", UDP, 53),
            allows(&c, "x/a", Ingress, "2001:db8::1", TCP, 80),
            allows(&c, "y/c", Ingress, "x/a", TCP, 80),
            allows(&c, "x/a", Ingress, NODE_IP, TCP, 10250),
        ];
        if verdicts != [DENY, DENY, DENY, DENY, DENY, ALLOW, ALLOW] {
            bad.push(format!("{spec}: verdicts {verdicts:?}"));
        }
        let ep = c.report.endpoints.iter().find(|e| e.pod == "x/a").unwrap();
        if !(ep.ingress_isolated && ep.egress_isolated && ep.allows.is_empty()) {
            bad.push(format!("{spec}: report {ep:?}"));
        }
        if c.maps.flags != POL_F_ANY_INGRESS | POL_F_ANY_EGRESS {
            bad.push(format!("{spec}: flags {:#x}", c.maps.flags));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

// ---------------------------------------------------------------------------
// Identities, endpoint ids, flags.

#[test]
fn identities_are_shared_by_equal_labels_in_one_namespace_only() {
    let mut c = cluster(&[
        pod("x/a", "app=web", "10.0.1.1,fd00:1::1"),
        remote_pod("x/b", "app=web", "10.0.2.2"),
        pod("y/c", "app=web", "10.0.1.3"),
        pod("x/d", "app=db", "10.0.1.4"),
        pod("w/e", "app=web", "10.0.1.5"),
    ]);
    let id = |c: &Cluster, p: &str| c.identity(p);
    assert_eq!(id(&c, "x/a"), id(&c, "x/b"));
    assert_ne!(id(&c, "x/a"), id(&c, "y/c"));
    assert_ne!(id(&c, "x/a"), id(&c, "x/d"));
    assert_ne!(id(&c, "y/c"), id(&c, "w/e"));
    // Both addresses of a pod, and its endpoint, carry its identity.
    let v6 = net_addr("fd00:1::1".parse().unwrap());
    assert_eq!(c.maps.ipcache[&(v6, 128)], id(&c, "x/a"));
    assert_eq!(c.maps.endpoints[&v6], c.ep("x/a"));
    assert_eq!(c.ep("x/a").identity, id(&c, "x/a"));
    for i in [id(&c, "x/a"), id(&c, "y/c"), id(&c, "x/d")] {
        assert!((ID_FIRST_LABELS..ID_FIRST_CIDR).contains(&i));
    }
    let web = c
        .report
        .identities
        .iter()
        .find(|i| i.identity == id(&c, "x/a"))
        .unwrap();
    assert_eq!((web.namespace.as_str(), web.pods), ("x", 2));
    assert_eq!(c.report.identities.len(), 4);

    // A Namespace object without labels only names what was assumed.
    let before = id(&c, "w/e");
    c.apply(&namespace("w", ""));
    c.recompute();
    assert_eq!(id(&c, "w/e"), before);

    // An identity no pod holds is forgotten.
    c.delete("Pod", "x/d");
    c.recompute();
    assert_eq!(c.report.identities.len(), 3);
}

#[test]
fn endpoint_ids_survive_a_recompute_and_a_restart() {
    let mut c = cluster(&[
        pod("x/b", "app=b", "10.0.1.2,fd00:1::2"),
        pod("x/c", "app=c", "10.0.1.3"),
        remote_pod("x/r", "app=r", "10.0.2.1"),
        netpol(
            "x/p",
            "{podSelector: {}, ingress: [{from: [{podSelector: {matchLabels: {app: b}}}]}]}",
        ),
    ]);
    // Local pods only.
    assert_eq!(c.maps.endpoints.len(), 3);
    assert!(
        !c.maps
            .endpoints
            .contains_key(&net_addr("10.0.2.1".parse().unwrap()))
    );
    let (b, cc) = (c.ep("x/b").ep_id, c.ep("x/c").ep_id);
    assert_ne!(b, cc);

    let first = c.maps.clone();
    c.recompute();
    assert_eq!(
        c.maps, first,
        "a recompute of the same snapshot changes nothing"
    );

    // A new pod that sorts first takes a new id; the others keep theirs.
    c.apply(&pod("x/a", "app=a", "10.0.1.1"));
    c.recompute();
    let a = c.ep("x/a").ep_id;
    assert_eq!((c.ep("x/b").ep_id, c.ep("x/c").ep_id), (b, cc));
    assert!(a != b && a != cc);

    // A pod leaving frees nothing the others hold.
    c.delete("Pod", "x/b");
    c.recompute();
    assert_eq!((c.ep("x/a").ep_id, c.ep("x/c").ep_id), (a, cc));
    check(&c, &[("x/c", Ingress, "x/a", TCP, 80, DENY)]);

    // A restarted agent reads the ids back from the maps and computes the
    // same maps (identities are derived from the labels).
    let before = c.maps.clone();
    c.ids = Identities::default();
    c.ep_ids = EpIds::adopt(&before);
    c.recompute();
    assert_eq!(c.maps, before);
}

#[test]
fn any_ingress_and_any_egress_flags_follow_the_policies() {
    let rows: &[(&[&str], u32)] = &[
        (&[], 0),
        // Selecting no pod still isolates that direction (on some node).
        (
            &["{podSelector: {matchLabels: {app: nobody}}}"],
            POL_F_ANY_INGRESS,
        ),
        (&["{podSelector: {}, ingress: [{}]}"], POL_F_ANY_INGRESS),
        (
            &["{podSelector: {}, policyTypes: [Egress]}"],
            POL_F_ANY_EGRESS,
        ),
        (
            &["{podSelector: {}, egress: [{}]}"],
            POL_F_ANY_INGRESS | POL_F_ANY_EGRESS,
        ),
        (
            &[
                "{podSelector: {}, policyTypes: [Ingress]}",
                "{podSelector: {}, policyTypes: [Egress]}",
            ],
            POL_F_ANY_INGRESS | POL_F_ANY_EGRESS,
        ),
    ];
    for (specs, flags) in rows {
        let mut docs = vec![pod("x/a", "app=a", "10.0.1.1")];
        for (i, s) in specs.iter().enumerate() {
            docs.push(netpol(&format!("z/p{i}"), s));
        }
        let c = cluster(&docs);
        assert_eq!(c.maps.flags, *flags, "{specs:?}");
        // x/a is never selected by a policy of namespace z.
        assert_eq!(c.isolation("x/a"), (false, false));
    }
    // The flags drop when the policy goes.
    let mut c = cluster(&[
        pod("x/a", "app=a", "10.0.1.1"),
        netpol("x/p", "{podSelector: {}, egress: [{}]}"),
    ]);
    assert_eq!(c.maps.flags, POL_F_ANY_INGRESS | POL_F_ANY_EGRESS);
    c.delete("NetworkPolicy", "x/p");
    c.recompute();
    assert_eq!(c.maps.flags, 0);
    assert_eq!(c.isolation("x/a"), (false, false));
}

#[test]
fn a_finished_pod_is_neither_an_endpoint_nor_in_the_ipcache() {
    let mut c = cluster(&[
        pod("x/a", "app=a", "10.0.1.1"),
        pod("x/b", "app=b", "10.0.1.2"),
        netpol(
            "x/p",
            "{podSelector: {matchLabels: {app: a}}, ingress: [{from: [{podSelector: {matchLabels: {app: b}}}]}]}",
        ),
    ]);
    check(&c, &[("x/a", Ingress, "10.0.1.2", TCP, 80, ALLOW)]);
    c.apply(&pod("x/b", "app=b", "10.0.1.2").replace("phase: Running", "phase: Succeeded"));
    c.recompute();
    let b = net_addr("10.0.1.2".parse().unwrap());
    assert!(!c.maps.ipcache.contains_key(&(b, 128)));
    assert!(!c.maps.endpoints.contains_key(&b));
    check(&c, &[("x/a", Ingress, "10.0.1.2", TCP, 80, DENY)]);
}

/// Egress named ports through an ipBlock are granted per peer identity,
/// so they must not reach replicas (same labels, same identity) that the
/// block leaves out: an `except`ed address, or an address outside it.
#[test]
fn an_egress_ip_block_with_a_named_port_reaches_only_pods_inside_it() {
    let c = cluster(&[
        pod("x/cli", "app=cli", "10.0.1.1"),
        pod_ports("x/s1", "app=srv", "10.0.1.2", "http=8080"),
        pod_ports("x/s2", "app=srv", "10.0.1.3", "http=8080"),
        pod_yaml("node-2", "x/s3", "app=srv", "10.1.0.4", "http=8080", false),
        netpol(
            "x/p",
            "{podSelector: {matchLabels: {app: cli}}, egress: [\
             {to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.1.3/32]}}], ports: [{port: http}]}]}",
        ),
    ]);
    check(
        &c,
        &[
            ("x/cli", Egress, "x/s1", TCP, 8080, ALLOW),
            ("x/cli", Egress, "x/s2", TCP, 8080, DENY),
            ("x/cli", Egress, "x/s3", TCP, 8080, DENY),
        ],
    );
}

/// A named port is the destination pod's own number even when two pods
/// share an identity (same labels) but number the port differently.
#[test]
fn egress_named_ports_of_pods_sharing_an_identity_stay_per_pod() {
    let c = cluster(&[
        pod("x/cli", "app=cli", "10.0.1.1"),
        pod_ports("x/s1", "app=srv", "10.0.1.2", "http=8080"),
        pod_ports("x/s2", "app=srv", "10.0.1.3", "http=9090"),
        netpol(
            "x/p",
            "{podSelector: {matchLabels: {app: cli}}, egress: [\
             {to: [{podSelector: {matchLabels: {app: srv}}}], ports: [{port: http}]}]}",
        ),
    ]);
    assert_eq!(c.identity("x/s1"), c.identity("x/s2"));
    check(
        &c,
        &[
            ("x/cli", Egress, "x/s1", TCP, 8080, ALLOW),
            ("x/cli", Egress, "x/s2", TCP, 9090, ALLOW),
            ("x/cli", Egress, "x/s1", TCP, 9090, DENY),
            ("x/cli", Egress, "x/s2", TCP, 8080, DENY),
        ],
    );
}

#[test]
fn a_pod_whose_entries_do_not_fit_is_isolated_with_nothing_allowed_and_named() {
    let mut c = cluster(&[
        pod("x/a", "app=a", "10.0.1.1"),
        pod("x/b", "app=b", "10.0.1.2"),
        pod("y/c", "app=c", "10.0.2.1"),
        netpol(
            "x/allow",
            "{podSelector: {}, ingress: [{from: [{namespaceSelector: {}}], ports: [{port: 80}, {port: 81}, {port: 82}]}]}",
        ),
    ]);
    let cap = crate::compute::policy::Capacity {
        ipcache: 100,
        entries: 10,
        cidrs: 10,
    };
    let out = crate::compute::policy::compute_within(
        &c.snap,
        &c.host_addrs,
        &std::collections::HashMap::new(),
        &mut c.ids,
        &mut c.ep_ids,
        &cap,
    );
    // 3 identities x 3 ports = 9 entries per pod of x: the first fits, the second does not.
    let errs: Vec<&String> = out
        .errors
        .iter()
        .filter(|e| e.contains("do not fit"))
        .collect();
    assert_eq!(errs.len(), 1, "{:?}", out.errors);
    assert!(errs[0].contains("pod x/b"), "{}", errs[0]);
    c.maps = out.maps;
    c.report = out.report;
    check(
        &c,
        &[
            ("x/a", Ingress, "y/c", TCP, 80, ALLOW),
            ("x/b", Ingress, "y/c", TCP, 80, DENY),
            ("x/b", Egress, "y/c", TCP, 80, DENY),
            ("y/c", Egress, "x/a", TCP, 80, ALLOW),
        ],
    );
    let b = c.report.endpoints.iter().find(|e| e.pod == "x/b").unwrap();
    assert!(b.ingress_isolated && b.egress_isolated && b.error.is_some());
}

#[test]
fn each_pod_interface_names_its_endpoint_for_source_validation() {
    let mut c = cluster(&[
        pod("x/a", "app=a", "10.0.1.1,fd00:1::1"),
        pod("x/b", "app=b", "10.0.1.2"),
    ]);
    let routes: std::collections::HashMap<IpAddr, u32> = [
        ("10.0.1.1".parse().unwrap(), 11),
        ("fd00:1::1".parse().unwrap(), 11),
    ]
    .into();
    let out = crate::compute::policy::compute_within(
        &c.snap,
        &c.host_addrs,
        &routes,
        &mut c.ids,
        &mut c.ep_ids,
        &Default::default(),
    );
    let a = out.maps.endpoints[&net_addr("10.0.1.1".parse().unwrap())];
    assert_eq!(a.ifindex, 11);
    assert_eq!(
        out.maps.endpoints[&net_addr("fd00:1::1".parse().unwrap())].ifindex,
        11
    );
    assert_eq!(out.maps.ifaces, [(11, a.ep_id)].into());
    assert_eq!(
        out.maps.endpoints[&net_addr("10.0.1.2".parse().unwrap())].ifindex,
        0,
        "a pod whose route is not known yet is not validated"
    );
}
