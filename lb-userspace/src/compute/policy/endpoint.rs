//! One local endpoint's share of the maps (entries, CIDR sets, allows),
//! before the capacity check; and the interface its traffic comes from.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use lb_common::{BeU16, DIR_EGRESS, DIR_INGRESS, PolCidrData, PolicyData};

use crate::model::policy::{PodInfo, PolicyInfo};

use super::{
    prefixes::cidr_sets,
    report::{peer_name, ports_name, prefix_name},
    rules::Ctx,
};

/// The interface a local pod's traffic comes from (0: not known yet).
pub(crate) fn ifindex_for(p: &PodInfo, ifindex_of: &HashMap<IpAddr, u32>) -> u32 {
    p.ips
        .iter()
        .find_map(|ip| ifindex_of.get(ip))
        .copied()
        .unwrap_or(0)
}

/// One local endpoint's share of the maps, before the capacity check.
pub(crate) struct EndpointOut {
    pub flags: u32,
    /// May hold an entry twice (CIDR prefixes sharing a set).
    pub entries: Vec<(PolicyData, u32)>,
    pub cidrs: Vec<((PolCidrData, u32), u32)>,
    /// (direction, peer, ports) -> the rules it came from.
    pub allows: BTreeMap<(u8, String, String), BTreeSet<String>>,
}

/// The entries of the local endpoint `p` (id `ep_id`) under `policies`
/// (those that do not select it are skipped).
pub(crate) fn endpoint_out<'a>(
    ctx: &Ctx<'a>,
    p: &PodInfo,
    policies: &[&'a PolicyInfo],
    ep_id: u32,
) -> EndpointOut {
    let plan = ctx.endpoint(p, policies);
    let mut allows: BTreeMap<(u8, String, String), BTreeSet<String>> = BTreeMap::new();
    let mut entries: Vec<(PolicyData, u32)> = Vec::new();
    let mut cidrs: Vec<((PolCidrData, u32), u32)> = Vec::new();
    for ((peer, dir, (proto, port, len)), from) in &plan.entries {
        entries.push((
            PolicyData {
                ep_id,
                identity: *peer,
                dir: *dir,
                proto: *proto,
                port: BeU16::from_host(*port),
            },
            *len,
        ));
        allows
            .entry((*dir, peer_name(*peer), ports_name(*proto, *port, *len)))
            .or_default()
            .extend(from.iter().cloned());
    }
    for (d, rules) in plan.cidr_rules.iter().enumerate() {
        let dir = if d == 0 { DIR_INGRESS } else { DIR_EGRESS };
        for (prefix, set, blocks, from) in cidr_sets(rules) {
            let data = PolCidrData {
                ep_id,
                dir,
                _pad: [0; 3],
                addr: prefix.addr(),
            };
            cidrs.push(((data, 64 + prefix.len), set));
            for (proto, port, len) in blocks {
                entries.push((
                    PolicyData {
                        ep_id,
                        identity: set,
                        dir,
                        proto,
                        port: BeU16::from_host(port),
                    },
                    len,
                ));
                allows
                    .entry((
                        dir,
                        format!("cidr {}", prefix_name(&prefix)),
                        ports_name(proto, port, len),
                    ))
                    .or_default()
                    .extend(from.iter().cloned());
            }
        }
    }
    EndpointOut {
        flags: plan.flags,
        entries,
        cidrs,
        allows,
    }
}
