//! Desired datapath state of one Service: pure, no I/O. Each frontend
//! (cluster IP, port, protocol) with the backends Kubernetes says it has.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use lb_common::{
    BACKEND_LOCAL, Backend, BeU16, NetAddr, PROTO_TCP, PROTO_UDP, SCOPE_EXTERNAL, SCOPE_INTERNAL,
    SVC_FLAG_ADDR_ONLY, SVC_FLAG_EXT_LOCAL, SVC_FLAG_EXTERNAL, SVC_FLAG_INT_LOCAL,
    SVC_FLAG_NODEPORT, SVC_FLAG_SOURCE_RANGES, ServiceKey,
};

use crate::model::snapshot::{Family, Hints, Proto, ServiceInfo, SliceInfo};

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

/// This node's ready endpoints of a Service (distinct addresses), what its
/// healthCheckNodePort reports. As kube-proxy: terminating endpoints are
/// not counted even when they are all this node has left (and still
/// serve), so that load balancers move new connections to other nodes
/// while the old ones drain.
pub fn local_ready_endpoints(slices: &[&SliceInfo], node_name: Option<&str>) -> usize {
    let Some(node) = node_name else { return 0 };
    let mut addrs = BTreeSet::new();
    for s in slices {
        for e in s
            .endpoints
            .iter()
            .filter(|e| e.ready && e.node.as_deref() == Some(node))
        {
            addrs.extend(e.addrs.iter().copied());
        }
    }
    addrs.len()
}

/// The backends of one Service port and family, as kube-proxy categorizes
/// them.
struct Endpoints {
    /// Ready endpoints; when none is ready anywhere, the serving and
    /// terminating ones (so connections drain instead of failing).
    cluster: Vec<Backend>,
    /// This node's ready endpoints; when none of them is ready, this
    /// node's serving and terminating ones — whether or not other nodes
    /// have ready ones (traffic policy Local).
    local: Vec<Backend>,
    /// Every endpoint the slices list, whatever its conditions (sorted).
    listed: Vec<Backend>,
}

fn endpoints_for(
    slices: &[&SliceInfo],
    family: Family,
    port_name: &str,
    proto: Proto,
    proto_n: u8,
    here: Here<'_>,
) -> Endpoints {
    let node_name = here.node;
    // Ready endpoints with their hints (the first slice listing one wins).
    let mut ready: BTreeMap<Backend, Option<&Hints>> = BTreeMap::new();
    let mut terminating = BTreeSet::new();
    let mut listed = BTreeSet::new();
    for s in slices.iter().filter(|s| s.family == Some(family)) {
        // EndpointSlice ports are resolved per slice (a named targetPort can
        // differ between pods), so the port comes from the slice.
        let Some(port) = s
            .ports
            .iter()
            .find(|p| p.name == port_name && p.proto == proto)
        else {
            continue;
        };
        for e in &s.endpoints {
            for a in &e.addrs {
                let b = Backend {
                    addr: net_addr(*a),
                    port: BeU16::from_host(port.port),
                    proto: proto_n,
                    flags: if node_name.is_some() && e.node.as_deref() == node_name {
                        BACKEND_LOCAL
                    } else {
                        0
                    },
                };
                listed.insert(b);
                if e.ready {
                    ready.entry(b).or_insert(e.hints.as_deref());
                } else if e.serving && e.terminating {
                    terminating.insert(b);
                }
            }
        }
    }
    let local_of = |set: &mut dyn Iterator<Item = &Backend>| -> Vec<Backend> {
        set.filter(|b| b.flags & BACKEND_LOCAL != 0)
            .copied()
            .collect()
    };
    let mut local = local_of(&mut ready.keys());
    if local.is_empty() {
        local = local_of(&mut terminating.iter());
    }
    // Topology hints narrow the Cluster-policy set (never the Local ones).
    let mode = topology_mode(&ready, here);
    let cluster: Vec<Backend> = if ready.is_empty() {
        terminating.into_iter().collect()
    } else {
        ready
            .iter()
            .filter(|(_, h)| mode.admits(h.as_deref(), here))
            .map(|(b, _)| *b)
            .collect()
    };
    Endpoints {
        cluster,
        local,
        listed: listed.into_iter().collect(),
    }
}

/// kube-proxy's topology modes (topologyModeFromHints).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Topology {
    /// No topology: every ready endpoint.
    All,
    /// Endpoints hinted for this node.
    SameNode,
    /// Endpoints hinted for this node's zone.
    SameZone,
}

impl Topology {
    fn admits(self, hints: Option<&Hints>, here: Here<'_>) -> bool {
        let has =
            |list: &[String], want: Option<&str>| want.is_some_and(|w| list.iter().any(|x| x == w));
        match self {
            Topology::All => true,
            Topology::SameNode => hints.is_some_and(|h| has(&h.nodes, here.node)),
            Topology::SameZone => hints.is_some_and(|h| has(&h.zones, here.zone)),
        }
    }
}

/// As kube-proxy decides it from the ready endpoints' hints: node hints
/// when every ready endpoint has one and one names this node; else zone
/// hints when every ready endpoint has one and one names this node's zone;
/// else none (a single endpoint without hints turns them off).
fn topology_mode(ready: &BTreeMap<Backend, Option<&Hints>>, here: Here<'_>) -> Topology {
    if ready.is_empty() {
        return Topology::All;
    }
    let all =
        |f: fn(&Hints) -> &Vec<String>| ready.values().all(|h| h.is_some_and(|h| !f(h).is_empty()));
    let any = |mode: Topology| ready.values().any(|h| mode.admits(h.as_deref(), here));
    if all(|h| &h.nodes) && any(Topology::SameNode) {
        return Topology::SameNode;
    }
    if all(|h| &h.zones) && any(Topology::SameZone) {
        return Topology::SameZone;
    }
    Topology::All
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::snapshot::{EndpointInfo, ObjRef, ServicePortInfo, SlicePortInfo};

    fn svc(ips: &[&str], ports: &[(&str, u16, Proto)]) -> ServiceInfo {
        ServiceInfo {
            key: ObjRef::new("x", "web"),
            skip: None,
            cluster_ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
            ports: ports
                .iter()
                .map(|(n, p, pr)| ServicePortInfo {
                    name: n.to_string(),
                    port: *p,
                    proto: *pr,
                    node_port: None,
                })
                .collect(),
            external_ips: vec![],
            lb_ips: vec![],
            external_local: false,
            internal_local: false,
            health_check_node_port: None,
            affinity_timeout: 0,
            source_ranges: vec![],
            created: None,
        }
    }

    fn ep(addr: &str, ready: bool, serving: bool, terminating: bool) -> EndpointInfo {
        EndpointInfo {
            addrs: vec![addr.parse().unwrap()],
            ready,
            serving,
            terminating,
            node: None,
            hints: None,
        }
    }

    fn slice(family: Family, ports: &[(&str, u16, Proto)], eps: Vec<EndpointInfo>) -> SliceInfo {
        SliceInfo {
            key: ObjRef::new("x", "web-abc"),
            service: Some(ObjRef::new("x", "web")),
            family: Some(family),
            ports: ports
                .iter()
                .map(|(n, p, pr)| SlicePortInfo {
                    name: n.to_string(),
                    port: *p,
                    proto: *pr,
                })
                .collect(),
            endpoints: eps,
        }
    }

    fn backends(fe: &[Frontend], port: u16, proto: u8) -> Vec<String> {
        let f = fe
            .iter()
            .find(|f| f.key.port == BeU16::from_host(port) && f.key.proto == proto)
            .expect("frontend");
        f.backends
            .iter()
            .map(|b| format!("{}:{}", ip_of(&b.addr), b.port.to_host()))
            .collect()
    }

    #[test]
    fn endpoint_conditions_pick_ready_else_serving_terminating() {
        // (endpoints, expected backends)
        let cases: Vec<(Vec<EndpointInfo>, Vec<&str>)> = vec![
            (
                vec![
                    ep("10.0.0.1", true, true, false),
                    ep("10.0.0.2", true, true, false),
                ],
                vec!["10.0.0.1:80", "10.0.0.2:80"],
            ),
            // not ready and not terminating: never used
            (
                vec![
                    ep("10.0.0.1", true, true, false),
                    ep("10.0.0.2", false, false, false),
                ],
                vec!["10.0.0.1:80"],
            ),
            // a ready one hides the terminating ones
            (
                vec![
                    ep("10.0.0.1", true, true, false),
                    ep("10.0.0.2", false, true, true),
                ],
                vec!["10.0.0.1:80"],
            ),
            // no ready one: serving+terminating ones serve
            (
                vec![
                    ep("10.0.0.2", false, true, true),
                    ep("10.0.0.3", false, false, true),
                ],
                vec!["10.0.0.2:80"],
            ),
            (vec![ep("10.0.0.3", false, false, true)], vec![]),
            (vec![], vec![]),
        ];
        for (eps, want) in cases {
            let s = svc(&["10.96.0.10"], &[("http", 8080, Proto::Tcp)]);
            let sl = slice(Family::V4, &[("http", 80, Proto::Tcp)], eps.clone());
            let fe = service_frontends(&s, &[&sl], None, &[]);
            assert_eq!(backends(&fe, 8080, PROTO_TCP), want, "endpoints {eps:?}");
        }
    }

    #[test]
    fn named_target_port_resolves_per_slice() {
        let s = svc(&["10.96.0.10"], &[("http", 8080, Proto::Tcp)]);
        let mut a = slice(
            Family::V4,
            &[("http", 80, Proto::Tcp)],
            vec![ep("10.0.0.1", true, true, false)],
        );
        a.key.name = "a".into();
        let b = slice(
            Family::V4,
            &[("http", 9090, Proto::Tcp)],
            vec![ep("10.0.0.2", true, true, false)],
        );
        let fe = service_frontends(&s, &[&a, &b], None, &[]);
        assert_eq!(
            backends(&fe, 8080, PROTO_TCP),
            vec!["10.0.0.1:80", "10.0.0.2:9090"]
        );
    }

    #[test]
    fn one_port_number_over_tcp_and_udp_and_several_ports() {
        let s = svc(
            &["10.96.0.10"],
            &[
                ("dns-tcp", 53, Proto::Tcp),
                ("dns", 53, Proto::Udp),
                ("metrics", 9153, Proto::Tcp),
            ],
        );
        let sl = slice(
            Family::V4,
            &[
                ("dns-tcp", 5353, Proto::Tcp),
                ("dns", 5354, Proto::Udp),
                ("metrics", 9153, Proto::Tcp),
            ],
            vec![ep("10.0.0.1", true, true, false)],
        );
        let fe = service_frontends(&s, &[&sl], None, &[]);
        assert_eq!(backends(&fe, 53, PROTO_TCP), vec!["10.0.0.1:5353"]);
        assert_eq!(backends(&fe, 53, PROTO_UDP), vec!["10.0.0.1:5354"]);
        assert_eq!(backends(&fe, 9153, PROTO_TCP), vec!["10.0.0.1:9153"]);
        // three ports + the address marker
        assert_eq!(fe.len(), 4);
        assert_eq!(
            fe.iter()
                .filter(|f| f.flags & SVC_FLAG_ADDR_ONLY != 0)
                .count(),
            1
        );
    }

    #[test]
    fn families_take_only_their_slices() {
        let s = svc(&["10.96.0.10", "fd00:96::a"], &[("", 80, Proto::Tcp)]);
        let v4 = slice(
            Family::V4,
            &[("", 8080, Proto::Tcp)],
            vec![ep("10.0.0.1", true, true, false)],
        );
        let mut v6 = slice(
            Family::V6,
            &[("", 8080, Proto::Tcp)],
            vec![ep("fd00::1", true, true, false)],
        );
        v6.key.name = "v6".into();
        let fe = service_frontends(&s, &[&v4, &v6], None, &[]);
        let v4fe: Vec<_> = fe
            .iter()
            .filter(|f| f.key.addr.is_v4() && f.key.port.to_host() == 80)
            .collect();
        let v6fe: Vec<_> = fe
            .iter()
            .filter(|f| !f.key.addr.is_v4() && f.key.port.to_host() == 80)
            .collect();
        assert_eq!(v4fe.len(), 1);
        assert_eq!(v6fe.len(), 1);
        assert_eq!(ip_of(&v4fe[0].backends[0].addr).to_string(), "10.0.0.1");
        assert_eq!(ip_of(&v6fe[0].backends[0].addr).to_string(), "fd00::1");
    }

    #[test]
    fn node_ports_lb_ips_and_external_ips_per_family() {
        let mut s = svc(&["10.96.0.10"], &[("http", 80, Proto::Tcp)]);
        s.ports[0].node_port = Some(30000);
        s.lb_ips = vec![
            "10.200.0.1".parse().unwrap(),
            "fd00:200::1".parse().unwrap(),
        ];
        s.external_ips = vec!["10.200.0.2".parse().unwrap()];
        let sl = slice(
            Family::V4,
            &[("http", 8080, Proto::Tcp)],
            vec![ep("10.0.0.1", true, true, false)],
        );
        let node: Vec<IpAddr> = vec![
            "10.100.0.1".parse().unwrap(),
            "fd00:100::1".parse().unwrap(),
            "127.0.0.1".parse().unwrap(),
        ];
        let fe = service_frontends(&s, &[&sl], None, &node);
        let mut got: Vec<(String, u8, usize)> = fe
            .iter()
            .filter(|f| f.flags & SVC_FLAG_ADDR_ONLY == 0)
            .map(|f| {
                (
                    format!("{}:{}", ip_of(&f.key.addr), f.key.port.to_host()),
                    f.flags,
                    f.backends.len(),
                )
            })
            .collect();
        got.sort();
        // IPv6 addresses get nothing: the Service has no IPv6 ClusterIP.
        let ext = SVC_FLAG_EXTERNAL;
        let np = SVC_FLAG_NODEPORT;
        assert_eq!(
            got,
            vec![
                ("10.100.0.1:30000".to_string(), ext | np, 1),
                ("10.200.0.1:80".to_string(), ext, 1),
                ("10.200.0.2:80".to_string(), ext, 1),
                ("10.96.0.10:80".to_string(), 0, 1),
                ("127.0.0.1:30000".to_string(), np, 1),
            ]
        );
    }

    #[test]
    fn external_traffic_policy_local_adds_a_local_only_external_scope() {
        let mut s = svc(&["10.96.0.10"], &[("http", 80, Proto::Tcp)]);
        s.ports[0].node_port = Some(30000);
        s.external_local = true;
        let mut a = ep("10.0.0.1", true, true, false);
        a.node = Some("n1".into());
        let mut b = ep("10.0.0.2", true, true, false);
        b.node = Some("n2".into());
        let sl = slice(Family::V4, &[("http", 8080, Proto::Tcp)], vec![a, b]);
        let node: Vec<IpAddr> = vec!["10.100.0.1".parse().unwrap()];
        let fe = service_frontends(&s, &[&sl], Some("n1"), &node);
        let np: Vec<&Frontend> = fe
            .iter()
            .filter(|f| {
                f.key.port.to_host() == 30000
                    && f.key.addr.is_v4()
                    && ip_of(&f.key.addr).to_string() == "10.100.0.1"
            })
            .collect();
        assert_eq!(np.len(), 2);
        let internal = np.iter().find(|f| f.key.scope == SCOPE_INTERNAL).unwrap();
        let external = np.iter().find(|f| f.key.scope == SCOPE_EXTERNAL).unwrap();
        assert_eq!(
            internal.backends.len(),
            2,
            "pods and nodes reach every endpoint"
        );
        assert!(internal.flags & SVC_FLAG_EXT_LOCAL != 0);
        assert_eq!(
            external.backends.len(),
            1,
            "outside clients: this node's endpoints only"
        );
        assert!(external.backends[0].flags & BACKEND_LOCAL != 0);
        // the ClusterIP and loopback NodePort keep in-cluster semantics
        assert!(
            fe.iter()
                .filter(|f| f.key.scope == SCOPE_EXTERNAL)
                .all(|f| f.flags & SVC_FLAG_EXTERNAL != 0)
        );
    }

    /// An endpoint on `node` with conditions (ready, serving, terminating).
    fn on(addr: &str, node: &str, c: (bool, bool, bool)) -> EndpointInfo {
        let mut e = ep(addr, c.0, c.1, c.2);
        e.node = Some(node.into());
        e
    }

    const READY: (bool, bool, bool) = (true, true, false);
    const TERMINATING: (bool, bool, bool) = (false, true, true);
    const GONE: (bool, bool, bool) = (false, false, true);

    #[test]
    fn internal_traffic_policy_local_keeps_cluster_ips_to_this_nodes_endpoints() {
        // (endpoints, ClusterIP backends on n1, drop flag, NodePort backends)
        let cases: Vec<(Vec<EndpointInfo>, Vec<&str>, bool, Vec<&str>)> = vec![
            // a local endpoint: only it; NodePorts (external destinations,
            // pods included) keep every endpoint
            (
                vec![on("10.0.0.1", "n1", READY), on("10.0.0.2", "n2", READY)],
                vec!["10.0.0.1:8080"],
                true,
                vec!["10.0.0.1:8080", "10.0.0.2:8080"],
            ),
            // none here, some elsewhere: empty, dropped
            (
                vec![on("10.0.0.2", "n2", READY)],
                vec![],
                true,
                vec!["10.0.0.2:8080"],
            ),
            // none anywhere: empty, refused as usual
            (vec![], vec![], false, vec![]),
            (vec![on("10.0.0.1", "n1", GONE)], vec![], false, vec![]),
            // the local one terminates but serves: used, though n2 has a
            // ready one
            (
                vec![
                    on("10.0.0.1", "n1", TERMINATING),
                    on("10.0.0.2", "n2", READY),
                ],
                vec!["10.0.0.1:8080"],
                true,
                vec!["10.0.0.2:8080"],
            ),
            // a local ready one hides the local terminating ones
            (
                vec![
                    on("10.0.0.1", "n1", TERMINATING),
                    on("10.0.0.3", "n1", READY),
                ],
                vec!["10.0.0.3:8080"],
                true,
                vec!["10.0.0.3:8080"],
            ),
            // terminating and no longer serving: never
            (
                vec![on("10.0.0.1", "n1", GONE), on("10.0.0.2", "n2", READY)],
                vec![],
                true,
                vec!["10.0.0.2:8080"],
            ),
        ];
        for (eps, want, drop, want_np) in cases {
            let mut s = svc(&["10.96.0.10"], &[("http", 80, Proto::Tcp)]);
            s.internal_local = true;
            s.ports[0].node_port = Some(30000);
            let sl = slice(Family::V4, &[("http", 8080, Proto::Tcp)], eps.clone());
            let node: Vec<IpAddr> =
                vec!["10.100.0.1".parse().unwrap(), "127.0.0.1".parse().unwrap()];
            let fe = service_frontends(&s, &[&sl], Some("n1"), &node);
            let at = |ip: &str, port: u16| {
                fe.iter()
                    .find(|f| {
                        ip_of(&f.key.addr).to_string() == ip
                            && f.key.port.to_host() == port
                            && f.key.scope == SCOPE_INTERNAL
                    })
                    .unwrap_or_else(|| panic!("{ip}:{port} in {fe:?}"))
            };
            let names = |f: &Frontend| -> Vec<String> {
                f.backends
                    .iter()
                    .map(|b| format!("{}:{}", ip_of(&b.addr), b.port.to_host()))
                    .collect()
            };
            let cip = at("10.96.0.10", 80);
            assert_eq!(names(cip), want, "ClusterIP, endpoints {eps:?}");
            assert_eq!(
                cip.flags & SVC_FLAG_INT_LOCAL != 0,
                drop,
                "drop flag, endpoints {eps:?}"
            );
            for (ip, port) in [("10.100.0.1", 30000), ("127.0.0.1", 30000)] {
                let f = at(ip, port);
                assert_eq!(names(f), want_np, "{ip}:{port}, endpoints {eps:?}");
                assert_eq!(f.flags & SVC_FLAG_INT_LOCAL, 0);
            }
        }
        // Cluster policy: the flag never appears.
        let s = svc(&["10.96.0.10"], &[("http", 80, Proto::Tcp)]);
        let sl = slice(
            Family::V4,
            &[("http", 8080, Proto::Tcp)],
            vec![on("10.0.0.2", "n2", READY)],
        );
        let fe = service_frontends(&s, &[&sl], Some("n1"), &[]);
        assert!(fe.iter().all(|f| f.flags & SVC_FLAG_INT_LOCAL == 0));
        assert_eq!(backends(&fe, 80, PROTO_TCP), vec!["10.0.0.2:8080"]);
    }

    #[test]
    fn external_traffic_policy_local_falls_back_to_local_serving_terminating() {
        // (endpoints, external-scope backends on n1, in-cluster backends,
        // health check count)
        let cases: Vec<(Vec<EndpointInfo>, Vec<&str>, Vec<&str>, usize)> = vec![
            (
                vec![on("10.0.0.1", "n1", READY), on("10.0.0.2", "n2", READY)],
                vec!["10.0.0.1:8080"],
                vec!["10.0.0.1:8080", "10.0.0.2:8080"],
                1,
            ),
            // the local one terminates (still serving) while n2's is ready:
            // outside clients here still reach it; the health check fails
            // (kube-proxy counts ready endpoints only) so load balancers
            // move away while it drains
            (
                vec![
                    on("10.0.0.1", "n1", TERMINATING),
                    on("10.0.0.2", "n2", READY),
                ],
                vec!["10.0.0.1:8080"],
                vec!["10.0.0.2:8080"],
                0,
            ),
            (
                vec![
                    on("10.0.0.1", "n1", TERMINATING),
                    on("10.0.0.3", "n1", READY),
                ],
                vec!["10.0.0.3:8080"],
                vec!["10.0.0.3:8080"],
                1,
            ),
            (
                vec![on("10.0.0.1", "n1", GONE), on("10.0.0.2", "n2", READY)],
                vec![],
                vec!["10.0.0.2:8080"],
                0,
            ),
            (
                vec![on("10.0.0.2", "n2", TERMINATING)],
                vec![],
                vec!["10.0.0.2:8080"],
                0,
            ),
        ];
        for (eps, want_ext, want_int, health) in cases {
            let mut s = svc(&["10.96.0.10"], &[("http", 80, Proto::Tcp)]);
            s.external_local = true;
            s.ports[0].node_port = Some(30000);
            s.lb_ips = vec!["10.200.0.1".parse().unwrap()];
            let sl = slice(Family::V4, &[("http", 8080, Proto::Tcp)], eps.clone());
            let node: Vec<IpAddr> = vec!["10.100.0.1".parse().unwrap()];
            let fe = service_frontends(&s, &[&sl], Some("n1"), &node);
            for ip in ["10.100.0.1", "10.200.0.1"] {
                for (scope, want) in [(SCOPE_EXTERNAL, &want_ext), (SCOPE_INTERNAL, &want_int)] {
                    let f = fe
                        .iter()
                        .find(|f| ip_of(&f.key.addr).to_string() == ip && f.key.scope == scope)
                        .unwrap();
                    let got: Vec<String> = f
                        .backends
                        .iter()
                        .map(|b| format!("{}:{}", ip_of(&b.addr), b.port.to_host()))
                        .collect();
                    assert_eq!(&got, want, "{ip} scope {scope}, endpoints {eps:?}");
                }
            }
            assert_eq!(
                local_ready_endpoints(&[&sl], Some("n1")),
                health,
                "health check, endpoints {eps:?}"
            );
        }
    }

    #[test]
    fn endpoints_listed_but_unusable_drain_on_external_frontends() {
        const NOT_READY: (bool, bool, bool) = (false, false, false);
        // (endpoints, NodePort backends, NodePort draining)
        let cases: Vec<(Vec<EndpointInfo>, Vec<&str>, Vec<&str>)> = vec![
            (
                vec![on("10.0.0.1", "n1", READY), on("10.0.0.2", "n2", READY)],
                vec!["10.0.0.1:8080", "10.0.0.2:8080"],
                vec![],
            ),
            // terminating (still serving), not ready, or its pod gone
            // (terminating, not serving): listed, so its flows drain
            (
                vec![
                    on("10.0.0.1", "n1", TERMINATING),
                    on("10.0.0.2", "n2", READY),
                ],
                vec!["10.0.0.2:8080"],
                vec!["10.0.0.1:8080"],
            ),
            (
                vec![on("10.0.0.1", "n1", NOT_READY), on("10.0.0.2", "n2", READY)],
                vec!["10.0.0.2:8080"],
                vec!["10.0.0.1:8080"],
            ),
            (
                vec![on("10.0.0.1", "n1", GONE), on("10.0.0.2", "n2", READY)],
                vec!["10.0.0.2:8080"],
                vec!["10.0.0.1:8080"],
            ),
            // the terminating one serves again (no ready one left): in a
            // slot, not draining
            (
                vec![
                    on("10.0.0.1", "n1", TERMINATING),
                    on("10.0.0.2", "n2", NOT_READY),
                ],
                vec!["10.0.0.1:8080"],
                vec!["10.0.0.2:8080"],
            ),
            // gone from every slice: nothing to drain to
            (
                vec![on("10.0.0.2", "n2", READY)],
                vec!["10.0.0.2:8080"],
                vec![],
            ),
            (
                vec![on("10.0.0.1", "n1", GONE)],
                vec![],
                vec!["10.0.0.1:8080"],
            ),
        ];
        let names = |bs: &[Backend]| -> Vec<String> {
            bs.iter()
                .map(|b| format!("{}:{}", ip_of(&b.addr), b.port.to_host()))
                .collect()
        };
        for (eps, want, want_draining) in cases {
            let mut s = svc(&["10.96.0.10"], &[("http", 80, Proto::Tcp)]);
            s.ports[0].node_port = Some(30000);
            s.lb_ips = vec!["10.200.0.1".parse().unwrap()];
            let sl = slice(Family::V4, &[("http", 8080, Proto::Tcp)], eps.clone());
            let node: Vec<IpAddr> =
                vec!["10.100.0.1".parse().unwrap(), "127.0.0.1".parse().unwrap()];
            let fe = service_frontends(&s, &[&sl], Some("n1"), &node);
            for f in fe.iter().filter(|f| f.flags & SVC_FLAG_ADDR_ONLY == 0) {
                let at = format!("{}:{}", ip_of(&f.key.addr), f.key.port.to_host());
                assert_eq!(names(&f.backends), want, "{at}, endpoints {eps:?}");
                if f.flags & SVC_FLAG_EXTERNAL != 0 {
                    assert_eq!(names(&f.draining), want_draining, "{at}, endpoints {eps:?}");
                } else {
                    // ClusterIPs and loopback NodePorts: the socket hooks
                    // track nothing, so nothing drains there
                    assert!(f.draining.is_empty(), "{at}, endpoints {eps:?}");
                }
            }
            // the draining backend keeps its identity (locality included)
            for f in fe.iter().filter(|f| f.flags & SVC_FLAG_EXTERNAL != 0) {
                for b in &f.draining {
                    let local = ip_of(&b.addr).to_string() == "10.0.0.1";
                    assert_eq!(b.flags, if local { BACKEND_LOCAL } else { 0 });
                }
            }
        }
    }

    /// `e` with topology hints for `zones` and `nodes`.
    fn hinted(mut e: EndpointInfo, zones: &[&str], nodes: &[&str]) -> EndpointInfo {
        e.hints = Some(Box::new(crate::model::snapshot::Hints {
            zones: zones.iter().map(|z| z.to_string()).collect(),
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
        }));
        e
    }

    #[test]
    fn topology_hints_follow_kube_proxy() {
        const NOT_READY: (bool, bool, bool) = (false, false, false);
        let a1 = || on("10.0.0.1", "n1", READY);
        let a2 = || on("10.0.0.2", "n2", READY);
        let b3 = || on("10.0.0.3", "n3", READY);
        let all = vec!["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"];
        // (endpoints, this node's zone, Cluster-policy backends on n1)
        let cases: Vec<(&str, Vec<EndpointInfo>, Option<&str>, Vec<&str>)> = vec![
            (
                "no hints: every endpoint",
                vec![a1(), a2(), b3()],
                Some("a"),
                all.clone(),
            ),
            (
                "zone hints: this zone's endpoints",
                vec![
                    hinted(a1(), &["a"], &[]),
                    hinted(a2(), &["a"], &[]),
                    hinted(b3(), &["b"], &[]),
                ],
                Some("a"),
                vec!["10.0.0.1:8080", "10.0.0.2:8080"],
            ),
            (
                "an endpoint hinted for several zones",
                vec![
                    hinted(a1(), &["b"], &[]),
                    hinted(a2(), &["b"], &[]),
                    hinted(b3(), &["a", "b"], &[]),
                ],
                Some("a"),
                vec!["10.0.0.3:8080"],
            ),
            (
                "one ready endpoint without hints: hints ignored",
                vec![hinted(a1(), &["a"], &[]), hinted(a2(), &["a"], &[]), b3()],
                Some("a"),
                all.clone(),
            ),
            (
                "an endpoint with only a node hint lacks a zone hint",
                vec![
                    hinted(a1(), &["a"], &[]),
                    hinted(a2(), &["a"], &[]),
                    hinted(b3(), &[], &["n3"]),
                ],
                Some("a"),
                all.clone(),
            ),
            (
                "no endpoint for this zone: every endpoint",
                vec![hinted(a2(), &["b"], &[]), hinted(b3(), &["b"], &[])],
                Some("a"),
                vec!["10.0.0.2:8080", "10.0.0.3:8080"],
            ),
            (
                "this node has no zone label: every endpoint",
                vec![
                    hinted(a1(), &["a"], &[]),
                    hinted(a2(), &["a"], &[]),
                    hinted(b3(), &["b"], &[]),
                ],
                None,
                all.clone(),
            ),
            (
                "endpoints not ready need no hints (and are never used)",
                vec![
                    hinted(a1(), &["a"], &[]),
                    on("10.0.0.4", "n1", NOT_READY),
                    hinted(b3(), &["b"], &[]),
                ],
                Some("a"),
                vec!["10.0.0.1:8080"],
            ),
            (
                "node hints everywhere, one for this node: that one",
                vec![
                    hinted(a1(), &["a"], &["n1"]),
                    hinted(a2(), &["a"], &["n2"]),
                    hinted(b3(), &["b"], &["n3"]),
                ],
                Some("a"),
                vec!["10.0.0.1:8080"],
            ),
            (
                "node hints, none for this node: zone hints",
                vec![hinted(a2(), &["a"], &["n2"]), hinted(b3(), &["b"], &["n3"])],
                Some("a"),
                vec!["10.0.0.2:8080"],
            ),
            (
                "no ready endpoint: serving terminating ones, hints aside",
                vec![
                    hinted(on("10.0.0.1", "n1", TERMINATING), &["a"], &[]),
                    hinted(on("10.0.0.3", "n3", TERMINATING), &["b"], &[]),
                ],
                Some("a"),
                vec!["10.0.0.1:8080", "10.0.0.3:8080"],
            ),
        ];
        let names = |bs: &[Backend]| -> Vec<String> {
            bs.iter()
                .map(|b| format!("{}:{}", ip_of(&b.addr), b.port.to_host()))
                .collect()
        };
        for (what, eps, zone, want) in cases {
            let mut s = svc(&["10.96.0.10"], &[("http", 80, Proto::Tcp)]);
            s.ports[0].node_port = Some(30000);
            let sl = slice(Family::V4, &[("http", 8080, Proto::Tcp)], eps);
            let node: Vec<IpAddr> =
                vec!["10.100.0.1".parse().unwrap(), "127.0.0.1".parse().unwrap()];
            let here = Here {
                node: Some("n1"),
                zone,
            };
            let fe = frontends_here(&s, &[&sl], here, &node);
            // ClusterIP, loopback and node-address NodePorts alike: kube-proxy
            // filters its Cluster-policy endpoints for internal and
            // external traffic
            for f in fe.iter().filter(|f| f.flags & SVC_FLAG_ADDR_ONLY == 0) {
                assert_eq!(
                    names(&f.backends),
                    want,
                    "{what}: {}:{}",
                    ip_of(&f.key.addr),
                    f.key.port.to_host()
                );
            }
        }
    }

    #[test]
    fn topology_hints_leave_traffic_policy_local_alone() {
        let eps = vec![
            hinted(on("10.0.0.1", "n1", READY), &["b"], &[]),
            hinted(on("10.0.0.2", "n2", READY), &["a"], &[]),
        ];
        let here = Here {
            node: Some("n1"),
            zone: Some("a"),
        };
        let node: Vec<IpAddr> = vec!["10.100.0.1".parse().unwrap()];
        let sl = slice(Family::V4, &[("http", 8080, Proto::Tcp)], eps);
        // iTP Local: this node's endpoint, whatever its hints
        let mut s = svc(&["10.96.0.10"], &[("http", 80, Proto::Tcp)]);
        s.internal_local = true;
        let fe = frontends_here(&s, &[&sl], here, &node);
        assert_eq!(backends(&fe, 80, PROTO_TCP), vec!["10.0.0.1:8080"]);
        // ETP Local: the external scope holds this node's endpoint; the
        // in-cluster entry (Cluster policy) follows the hints
        let mut s = svc(&["10.96.0.10"], &[("http", 80, Proto::Tcp)]);
        s.external_local = true;
        s.ports[0].node_port = Some(30000);
        let fe = frontends_here(&s, &[&sl], here, &node);
        let at = |scope: u8| -> Vec<String> {
            fe.iter()
                .find(|f| {
                    f.key.port.to_host() == 30000
                        && f.key.scope == scope
                        && f.flags & SVC_FLAG_EXTERNAL != 0
                })
                .unwrap()
                .backends
                .iter()
                .map(|b| format!("{}:{}", ip_of(&b.addr), b.port.to_host()))
                .collect()
        };
        assert_eq!(at(SCOPE_EXTERNAL), vec!["10.0.0.1:8080"]);
        assert_eq!(at(SCOPE_INTERNAL), vec!["10.0.0.2:8080"]);
    }

    #[test]
    fn source_ranges_apply_to_load_balancer_ips_of_their_own_family() {
        // (ranges, IPv4 LB IP's ranges, IPv6 LB IP's ranges); an empty list
        // means no filter (no flag)
        let cases: Vec<(Vec<&str>, Vec<&str>, Vec<&str>)> = vec![
            (vec!["192.0.2.0/24", "::/0"], vec!["192.0.2.0/24"], vec![]),
            (vec!["fd00:1::/64"], vec![], vec!["fd00:1::/64"]),
            (
                vec!["10.0.0.0/8", " fd00:2::/48"],
                vec!["10.0.0.0/8"],
                vec!["fd00:2::/48"],
            ),
            (vec!["0.0.0.0/0", "10.0.0.0/8"], vec![], vec![]),
            (vec![], vec![], vec![]),
        ];
        for (ranges, want4, want6) in cases {
            let mut s = svc(&["10.96.0.10", "fd00:96::a"], &[("http", 80, Proto::Tcp)]);
            s.ports[0].node_port = Some(30000);
            s.lb_ips = vec![
                "10.200.0.1".parse().unwrap(),
                "fd00:200::1".parse().unwrap(),
            ];
            s.source_ranges = ranges.iter().map(|r| r.parse().unwrap()).collect();
            let node: Vec<IpAddr> = vec![
                "10.100.0.1".parse().unwrap(),
                "fd00:100::1".parse().unwrap(),
            ];
            let fe = service_frontends(&s, &[], None, &node);
            for (ip, want) in [("10.200.0.1", &want4), ("fd00:200::1", &want6)] {
                let f = fe
                    .iter()
                    .find(|f| ip_of(&f.key.addr).to_string() == ip)
                    .unwrap();
                let want: Vec<crate::model::cidr::Cidr> =
                    want.iter().map(|r| r.parse().unwrap()).collect();
                assert_eq!(f.source_ranges, want, "{ip}, ranges {ranges:?}");
                assert_eq!(
                    f.flags & SVC_FLAG_SOURCE_RANGES != 0,
                    !want.is_empty(),
                    "{ip}, ranges {ranges:?}"
                );
            }
            // never on NodePorts or ClusterIPs
            assert!(
                fe.iter()
                    .filter(|f| !["10.200.0.1", "fd00:200::1"]
                        .contains(&ip_of(&f.key.addr).to_string().as_str()))
                    .all(|f| f.source_ranges.is_empty() && f.flags & SVC_FLAG_SOURCE_RANGES == 0)
            );
        }
    }

    #[test]
    fn skipped_services_get_nothing() {
        let mut s = svc(&["10.96.0.10"], &[("", 80, Proto::Tcp)]);
        s.skip = Some("headless");
        let sl = slice(
            Family::V4,
            &[("", 80, Proto::Tcp)],
            vec![ep("10.0.0.1", true, true, false)],
        );
        assert!(service_frontends(&s, &[&sl], None, &[]).is_empty());
    }

    #[test]
    fn duplicate_endpoints_across_slices_count_once() {
        let s = svc(&["10.96.0.10"], &[("", 80, Proto::Tcp)]);
        let a = slice(
            Family::V4,
            &[("", 80, Proto::Tcp)],
            vec![ep("10.0.0.1", true, true, false)],
        );
        let mut b = a.clone();
        b.key.name = "b".into();
        assert_eq!(
            backends(&service_frontends(&s, &[&a, &b], None, &[]), 80, PROTO_TCP),
            vec!["10.0.0.1:80"]
        );
    }
}
