//! Ports and CIDRs as LPM prefixes: port ranges as (port, prefix length)
//! blocks, ipBlocks with their excepts as prefixes, and the CIDR sets an
//! endpoint's entries name.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use lb_common::{
    ID_FIRST_CIDR, NetAddr, POLICY_PREFIX_FULL, POLICY_PREFIX_PROTO, PROTO_SCTP, PROTO_TCP,
    PROTO_UDP,
};

use crate::model::{
    cidr::Cidr,
    policy::{PortRef, PortSpec},
    snapshot::Proto,
};

/// One allow entry's (proto, port, prefix length) part.
pub(super) type Block = (u8, u16, u32);

fn proto_num(p: Proto) -> u8 {
    match p {
        Proto::Tcp => PROTO_TCP,
        Proto::Udp => PROTO_UDP,
        Proto::Sctp => PROTO_SCTP,
    }
}

/// Aligned power-of-two blocks covering `start..=end`.
pub fn port_blocks(start: u16, end: u16) -> Vec<(u16, u32)> {
    let mut out = Vec::new();
    let (mut lo, end) = (start as u32, end as u32);
    while lo <= end {
        let mut size = if lo == 0 {
            1 << 16
        } else {
            lo & lo.wrapping_neg()
        };
        while lo + size - 1 > end {
            size >>= 1;
        }
        out.push((lo as u16, 16 - size.trailing_zeros()));
        lo += size;
    }
    out
}

/// The blocks of one port spec, a named port resolved with `resolve`.
pub(super) fn spec_blocks(
    spec: &PortSpec,
    resolve: impl Fn(&str, Proto) -> Option<u16>,
) -> Vec<Block> {
    let proto = proto_num(spec.proto);
    let fixed = POLICY_PREFIX_PROTO;
    match (&spec.port, spec.end_port) {
        (None, _) => vec![(proto, 0, fixed)],
        (Some(PortRef::Number(p)), None) => vec![(proto, *p, POLICY_PREFIX_FULL)],
        (Some(PortRef::Number(p)), Some(e)) => port_blocks(*p, e)
            .into_iter()
            .map(|(port, bits)| (proto, port, fixed + bits))
            .collect(),
        (Some(PortRef::Name(n)), _) => resolve(n, spec.proto)
            .map(|p| vec![(proto, p, POLICY_PREFIX_FULL)])
            .unwrap_or_default(),
    }
}

/// A prefix in the 128-bit space every map uses (IPv4 mapped).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct Prefix {
    bits: u128,
    pub(super) len: u32,
}

impl Prefix {
    pub(super) fn of(c: &Cidr) -> Self {
        let (bits, len) = match c.addr {
            IpAddr::V4(v4) => (u128::from(v4.to_ipv6_mapped()), 96 + c.len as u32),
            IpAddr::V6(v6) => (u128::from(v6), c.len as u32),
        };
        Self {
            bits: bits & mask(len),
            len,
        }
    }
    pub(super) fn contains(&self, o: &Prefix) -> bool {
        self.len <= o.len && o.bits & mask(self.len) == self.bits
    }
    pub(super) fn addr(&self) -> NetAddr {
        NetAddr::from_octets(self.bits.to_be_bytes())
    }
}

/// One address as a prefix of its own.
pub(super) fn host_prefix(ip: IpAddr) -> Prefix {
    Prefix::of(&Cidr {
        addr: ip,
        len: if ip.is_ipv4() { 32 } else { 128 },
    })
}

/// `cidr` holds `ip` as the stage compares them (128 bits, IPv4 mapped),
/// its `except` list aside.
pub(crate) fn block_holds(cidr: &Cidr, ip: IpAddr) -> bool {
    Prefix::of(cidr).contains(&host_prefix(ip))
}

fn mask(len: u32) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    }
}

/// The IPv4-mapped block: an IPv6 ipBlock never covers IPv4 peers.
pub(super) const V4_MAPPED: Prefix = Prefix {
    bits: 0xffff_u128 << 32,
    len: 96,
};

pub(super) struct CidrRule {
    pub(super) cidr: Prefix,
    pub(super) except: Vec<Prefix>,
    pub(super) blocks: Vec<Block>,
    pub(super) from: String,
}

/// The LPM entries of one endpoint's ipBlock rules in one direction: for
/// each prefix that a rule or an `except` names, the rules that cover
/// every address whose longest match it is (its own block, not carved
/// out). Equal rule sets share one CIDR-set identity; a prefix no rule
/// covers maps to 0 so it shadows the shorter blocks around it.
pub(super) fn cidr_sets(rules: &[CidrRule]) -> Vec<(Prefix, u32, Vec<Block>, BTreeSet<String>)> {
    let mut prefixes: BTreeSet<Prefix> = BTreeSet::new();
    for r in rules {
        prefixes.insert(r.cidr);
        prefixes.extend(r.except.iter().copied());
    }
    let mut sets: BTreeMap<Vec<Block>, u32> = BTreeMap::new();
    let mut out = Vec::new();
    for p in prefixes {
        let covering: Vec<&CidrRule> = rules
            .iter()
            .filter(|r| r.cidr.contains(&p) && !r.except.iter().any(|e| e.contains(&p)))
            .collect();
        let blocks: BTreeSet<Block> = covering
            .iter()
            .flat_map(|r| r.blocks.iter().copied())
            .collect();
        let blocks: Vec<Block> = blocks.into_iter().collect();
        let from: BTreeSet<String> = covering.iter().map(|r| r.from.clone()).collect();
        if blocks.is_empty() {
            out.push((p, 0, vec![], from));
            continue;
        }
        let n = sets.len() as u32;
        let id = *sets.entry(blocks.clone()).or_insert(ID_FIRST_CIDR + n);
        out.push((p, id, blocks, from));
    }
    out
}
