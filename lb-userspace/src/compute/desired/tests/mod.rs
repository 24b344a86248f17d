//! Desired-state tests: Service and slice builders here, the tests by
//! concern in the files below.

use super::*;
use crate::model::snapshot::{EndpointInfo, ObjRef, ServicePortInfo, SlicePortInfo};
use lb_common::BACKEND_LOCAL;

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

/// An endpoint with its conditions; the fixtures below name the
/// combinations the tests use.
fn ep(addr: &str, ready: bool, serving: bool, terminating: bool) -> EndpointInfo {
    EndpointInfo {
        addr: Some(addr.parse().unwrap()),
        ready,
        serving,
        terminating,
        node: None,
        hints: None,
    }
}

fn ready(addr: &str) -> EndpointInfo {
    ep(addr, true, true, false)
}

/// Neither ready nor serving, and not going away (a failing probe).
fn not_ready(addr: &str) -> EndpointInfo {
    ep(addr, false, false, false)
}

/// Going away and still serving: used when nothing is ready.
fn terminating(addr: &str) -> EndpointInfo {
    ep(addr, false, true, true)
}

/// Going away and no longer serving.
fn gone(addr: &str) -> EndpointInfo {
    ep(addr, false, false, true)
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

/// `e` on `node`.
fn on(node: &str, mut e: EndpointInfo) -> EndpointInfo {
    e.node = Some(node.into());
    e
}

/// `e` with topology hints for `zones` and `nodes`.
fn hinted(mut e: EndpointInfo, zones: &[&str], nodes: &[&str]) -> EndpointInfo {
    e.hints = Some(Box::new(crate::model::snapshot::Hints {
        zones: zones.iter().map(|z| z.to_string()).collect(),
        nodes: nodes.iter().map(|n| n.to_string()).collect(),
    }));
    e
}

mod endpoints;
mod frontends;
mod topology;
mod traffic_policy;
