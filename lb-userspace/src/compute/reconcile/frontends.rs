//! Who holds a frontend: the rank that settles a frontend two Services
//! claim, the externalIPs refused, the node addresses that serve
//! NodePorts, and the removal of frontends no Service claims.

use lb_common::ServiceKey;

use super::Reconciler;
use crate::{compute::desired::ip_of, compute::plan::Op, model::snapshot::ObjRef};

pub(super) fn describe_key(k: &ServiceKey) -> String {
    let ip = ip_of(&k.addr);
    let proto = match k.proto {
        6 => "TCP",
        17 => "UDP",
        _ => "any",
    };
    match ip {
        std::net::IpAddr::V4(v4) => format!("{v4}:{}/{proto}", k.port.to_host()),
        std::net::IpAddr::V6(v6) => format!("[{v6}]:{}/{proto}", k.port.to_host()),
    }
}

/// Who wins a frontend two Services claim, smallest first: a ClusterIP
/// always; then the oldest Service (creationTimestamp; one without sorts
/// last); then namespace/name. The same on every node, whatever the order
/// changes arrive in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Rank<'a> {
    /// 0: the frontend is on one of the Service's ClusterIPs; 1: any other
    /// claim; 2: a Service no longer in the snapshot.
    pub(super) class: u8,
    created: i64,
    service: &'a ObjRef,
}

impl Rank<'_> {
    pub(super) fn why(&self, loser: &Rank) -> &'static str {
        if self.class < loser.class {
            "a ClusterIP wins over any other claim"
        } else if self.created < loser.created {
            "the older Service wins"
        } else {
            "created at the same time; the first by namespace/name wins"
        }
    }
}

impl Reconciler {
    /// After a complete listing: frontends the maps hold that no Service
    /// claims any more (deleted while nobody watched) go.
    pub(super) fn remove_unclaimed(&mut self, ops: &mut Vec<Op>) {
        let stale: Vec<ServiceKey> = self
            .mirror
            .frontends()
            .filter(|k| !self.owner.contains_key(k))
            .copied()
            .collect();
        for k in stale {
            tracing::info!(frontend = %describe_key(&k), "removing frontend no Service claims");
            self.mirror.remove(&k, ops);
        }
        // Backends an earlier agent kept draining for frontends since gone.
        self.mirror.remove_unreferenced(ops);
    }

    /// This node's addresses that serve NodePorts, loopback (127.0.0.1,
    /// ::1) included unless `--nodeport-addresses` leaves it out.
    pub fn node_port_addrs(&self) -> Vec<std::net::IpAddr> {
        let mut addrs = self.snapshot.node.addrs.clone();
        addrs.extend([
            std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ]);
        if self.node_port_cidrs.is_empty() {
            return addrs;
        }
        addrs
            .into_iter()
            .filter(|a| self.node_port_cidrs.iter().any(|c| c.contains(a)))
            .collect()
    }

    /// Why the externalIP `ip` may not be programmed, if it may not: outside
    /// `--external-ip-cidrs` when given; otherwise an address of this node
    /// or a Service's ClusterIP (CVE-2020-8554: an externalIP intercepts
    /// whatever the node sends to that address).
    pub(super) fn refuse_external_ip(&self, ip: &std::net::IpAddr) -> Option<String> {
        if !self.external_ip_cidrs.is_empty() {
            return (!self.external_ip_cidrs.iter().any(|c| c.contains(ip)))
                .then(|| "is outside --external-ip-cidrs".to_string());
        }
        if ip.is_loopback() || ip.is_unspecified() || self.snapshot.node.addrs.contains(ip) {
            return Some(
                "is an address of this node (allow it with --external-ip-cidrs)".to_string(),
            );
        }
        if self.snapshot.is_cluster_ip(ip) {
            let whose = match self.snapshot.cluster_ip_owner(ip) {
                Some(o) => format!("the ClusterIP of Service {o}"),
                None => "a ClusterIP".to_string(),
            };
            return Some(format!("is {whose} (allow it with --external-ip-cidrs)"));
        }
        if let Some(c) = self.service_cidrs.iter().find(|c| c.contains(ip)) {
            return Some(format!(
                "is inside the Service CIDR {c} (allow it with --external-ip-cidrs)"
            ));
        }
        None
    }

    pub(super) fn rank<'a>(&'a self, svc: &'a ObjRef, key: &ServiceKey) -> Rank<'a> {
        match self.snapshot.service(svc) {
            Some(info) => Rank {
                class: if key.scope == lb_common::SCOPE_INTERNAL
                    && info.cluster_ips.contains(&ip_of(&key.addr))
                {
                    0
                } else {
                    1
                },
                created: info.created.unwrap_or(i64::MAX),
                service: svc,
            },
            None => Rank {
                class: 2,
                created: i64::MAX,
                service: svc,
            },
        }
    }
}
