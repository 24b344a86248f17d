//! Table-driven tests of the NetworkPolicy stage (`compute::policy`).
//!
//! Clusters are built from YAML the way the agent reads them; the computed
//! maps are then judged by `allowed`, which does the kernel's lookups
//! (lb-ebpf/src/policy.rs, `allowed`) over the map contents, longest prefix
//! matches included, bit by bit over the keys' memory layout.
//!
//! Here: the shared constants and the clusters built from YAML; `verdict`
//! is the kernel's lookup over the maps; the tests sit in one file per
//! concern (isolation, peers, ipBlock, ports, the host, broken policies,
//! identities and endpoint ids).

mod broken;
mod evaluator;
mod host;
mod identities;
mod ip_block;
mod isolation;
mod peers;
mod ports;
mod verdict;

use verdict::*;

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
    errors: Vec<crate::compute::policy::PolicyProblem>,
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
                .apply(Change::Upsert(o))
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }

    fn delete(&mut self, kind: &str, key: &str) {
        let (ns, name) = split_key(key);
        self.snap
            .apply(Change::Delete {
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
