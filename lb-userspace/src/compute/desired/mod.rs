//! Desired datapath state of one Service: pure, no I/O. Each frontend
//! (cluster IP, port, protocol) with the backends Kubernetes says it has.
//!
//! Split by job: this file builds the frontends; `endpoints` sorts a
//! Service port's endpoints the way kube-proxy does; `topology` narrows
//! them by EndpointSlice hints.

mod endpoints;
#[cfg(test)]
mod tests;
mod topology;

use endpoints::endpoints_for;
pub use endpoints::local_ready_endpoints;

use std::net::IpAddr;

use lb_common::{
    Backend, BeU16, NetAddr, PROTO_TCP, PROTO_UDP, SCOPE_EXTERNAL, SCOPE_INTERNAL,
    SVC_FLAG_ADDR_ONLY, SVC_FLAG_EXT_LOCAL, SVC_FLAG_EXTERNAL, SVC_FLAG_INT_LOCAL,
    SVC_FLAG_NODEPORT, SVC_FLAG_SOURCE_RANGES, ServiceKey,
};

use crate::model::snapshot::{Family, Proto, ServiceInfo, SliceInfo};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frontend {
    /// Slot 0 key.
    pub key: ServiceKey,
    pub flags: u8,
    /// sessionAffinity ClientIP timeout in seconds (0: none).
    pub affinity_timeout: u32,
    /// loadBalancerSourceRanges, on LoadBalancer IP frontends only.
    pub source_ranges: Vec<crate::model::cidr::Cidr>,
    /// Sorted, without duplicates: the order is the agent's, not the API's.
    pub backends: Vec<Backend>,
    /// Endpoints still listed in the Service's EndpointSlices (whatever
    /// their conditions) but not among `backends`, on frontends the packet
    /// path tracks (`SVC_FLAG_EXTERNAL`): their flows drain (the agent keeps
    /// them as backends flagged `BACKEND_DRAINING`, in no slot). Sorted.
    pub draining: Vec<Backend>,
}

pub fn net_addr(ip: IpAddr) -> NetAddr {
    match ip {
        IpAddr::V4(v4) => NetAddr::from_octets(v4.to_ipv6_mapped().octets()),
        IpAddr::V6(v6) => NetAddr::from_octets(v6.octets()),
    }
}

pub fn ip_of(addr: &NetAddr) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(addr.octets());
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

fn proto_num(p: Proto) -> Option<u8> {
    match p {
        Proto::Tcp => Some(PROTO_TCP),
        Proto::Udp => Some(PROTO_UDP),
        // The socket hooks see no SCTP; packet-level SCTP is not built.
        Proto::Sctp => None,
    }
}

/// Marks a LoadBalancer IP while frontends are built (never written).
const SVC_FLAG_LB_IP: u8 = 1 << 7;

fn family_of(ip: &IpAddr) -> Family {
    if ip.is_ipv4() { Family::V4 } else { Family::V6 }
}

/// loadBalancerSourceRanges that apply to the LoadBalancer IP `ip`: those
/// of its own family (an IPv6 range says nothing about IPv4 clients, and
/// as a prefix over IPv4-mapped addresses `::/0` would let every one in).
/// As kube-proxy: a zero-length range of the family, or no range of it,
/// leaves the address unfiltered.
fn ranges_for(svc: &ServiceInfo, ip: &IpAddr) -> Vec<crate::model::cidr::Cidr> {
    let mine: Vec<_> = svc
        .source_ranges
        .iter()
        .filter(|c| c.addr.is_ipv4() == ip.is_ipv4())
        .copied()
        .collect();
    if mine.iter().any(|c| c.len == 0) {
        return vec![];
    }
    mine
}

/// Frontends of `svc` given the EndpointSlices that name it and this node's
/// NodePort addresses (`node_addrs`, loopback among them when it serves
/// NodePorts): every ClusterIP, each NodePort address at each nodePort
/// (loopback ones for in-cluster clients: the node's own), LoadBalancer
/// ingress IPs and externalIPs at each port. A family the Service has no
/// ClusterIP of gets nothing.
pub fn service_frontends(
    svc: &ServiceInfo,
    slices: &[&SliceInfo],
    node_name: Option<&str>,
    node_addrs: &[IpAddr],
) -> Vec<Frontend> {
    let here = Here {
        node: node_name,
        zone: None,
    };
    frontends_here(svc, slices, here, node_addrs)
}

/// Where the agent runs, as topology hints see it: its node's name and its
/// `topology.kubernetes.io/zone`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Here<'a> {
    pub node: Option<&'a str>,
    pub zone: Option<&'a str>,
}

/// `service_frontends` on a node in a zone (EndpointSlice hints apply).
pub fn frontends_here(
    svc: &ServiceInfo,
    slices: &[&SliceInfo],
    here: Here<'_>,
    node_addrs: &[IpAddr],
) -> Vec<Frontend> {
    if svc.skip.is_some() {
        return vec![];
    }
    let mut out = Vec::new();
    let families: Vec<Family> = svc.cluster_ips.iter().map(family_of).collect();
    for ip in &svc.cluster_ips {
        // Marks the address so ports no Service has are refused, not routed.
        out.push(Frontend {
            key: ServiceKey::addr_only(net_addr(*ip)),
            flags: SVC_FLAG_ADDR_ONLY,
            affinity_timeout: 0,
            source_ranges: vec![],
            backends: vec![],
            draining: vec![],
        });
    }
    for sp in &svc.ports {
        let Some(proto) = proto_num(sp.proto) else {
            continue;
        };
        for family in &families {
            let eps = endpoints_for(slices, *family, &sp.name, sp.proto, proto, here);
            let mut add = |ip: &IpAddr, port: u16, flags: u8, scope: u8, backends: &[Backend]| {
                if family_of(ip) != *family {
                    return;
                }
                // kube-proxy filters LoadBalancer IPs only, not NodePorts.
                let ranges = if flags & SVC_FLAG_LB_IP != 0 && scope == SCOPE_INTERNAL {
                    ranges_for(svc, ip)
                } else {
                    vec![]
                };
                let mut flags = flags & !SVC_FLAG_LB_IP;
                if !ranges.is_empty() {
                    flags |= SVC_FLAG_SOURCE_RANGES;
                }
                // The packet path tracks flows through external frontends:
                // an endpoint still listed keeps its flows there (drains).
                let draining = if flags & SVC_FLAG_EXTERNAL != 0 {
                    eps.listed
                        .iter()
                        .filter(|b| backends.binary_search(b).is_err())
                        .copied()
                        .collect()
                } else {
                    vec![]
                };
                out.push(Frontend {
                    key: ServiceKey::frontend(net_addr(*ip), BeU16::from_host(port), proto, scope),
                    flags,
                    affinity_timeout: svc.affinity_timeout,
                    source_ranges: ranges,
                    backends: backends.to_vec(),
                    draining,
                });
            };
            // internalTrafficPolicy: Local: a ClusterIP leads to this node's
            // endpoints only; with none here while other nodes have some,
            // the socket hooks drop. (NodePorts, LoadBalancer IPs and
            // externalIPs are external destinations, which kube-proxy
            // exempts from the internal policy even for pods.)
            let (cluster_ip_backends, cluster_ip_flags) = if svc.internal_local {
                let drop = if eps.cluster.is_empty() {
                    0
                } else {
                    SVC_FLAG_INT_LOCAL
                };
                (&eps.local, drop)
            } else {
                (&eps.cluster, 0)
            };
            for ip in &svc.cluster_ips {
                add(
                    ip,
                    sp.port,
                    cluster_ip_flags,
                    SCOPE_INTERNAL,
                    cluster_ip_backends,
                );
            }
            // externalTrafficPolicy: Local: the frontend (all endpoints, for
            // clients inside the cluster) points the packet path at a second
            // entry of external scope holding this node's endpoints only.
            let local = if svc.external_local {
                SVC_FLAG_EXT_LOCAL
            } else {
                0
            };
            let mut externals: Vec<(IpAddr, u16, u8)> = Vec::new();
            for ip in &svc.lb_ips {
                externals.push((*ip, sp.port, SVC_FLAG_EXTERNAL | SVC_FLAG_LB_IP | local));
            }
            for ip in &svc.external_ips {
                externals.push((*ip, sp.port, SVC_FLAG_EXTERNAL | local));
            }
            if let Some(np) = sp.node_port {
                for ip in node_addrs {
                    if ip.is_loopback() {
                        // The node's own clients only (the socket hooks
                        // translate it in the host network namespace).
                        add(ip, np, SVC_FLAG_NODEPORT, SCOPE_INTERNAL, &eps.cluster);
                    } else {
                        externals.push((*ip, np, SVC_FLAG_EXTERNAL | SVC_FLAG_NODEPORT | local));
                    }
                }
            }
            for (ip, port, flags) in &externals {
                add(ip, *port, *flags, SCOPE_INTERNAL, &eps.cluster);
            }
            if svc.external_local {
                for (ip, port, _) in &externals {
                    add(ip, *port, SVC_FLAG_EXTERNAL, SCOPE_EXTERNAL, &eps.local);
                }
            }
        }
    }
    out.sort_by_key(|f| f.key);
    out.dedup_by_key(|f| f.key);
    out
}
