//! An EndpointSlice as the agent needs it, converted from its k8s-openapi
//! object.

use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::{ObjRef, Proto, meta_ref, port16};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePortInfo {
    pub name: String,
    pub port: u16,
    pub proto: Proto,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    /// `addresses[0]`: as the API says, no semantics are defined for the
    /// others and kube-proxy does not look at them. None for FQDN slices.
    pub addr: Option<IpAddr>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// `nodeName`, one allocation per name however many endpoints name it
    /// (the snapshot interns it).
    pub node: Option<Arc<str>>,
    /// `hints` (topology), when it names any zone or node.
    pub hints: Option<Box<Hints>>,
}

/// An endpoint's topology hints: the zones (`forZones`) and nodes
/// (`forNodes`) it should serve.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hints {
    pub zones: Vec<String>,
    pub nodes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceInfo {
    pub key: ObjRef,
    pub service: Option<ObjRef>,
    /// None for FQDN slices, which kube-proxy ignores too.
    pub family: Option<Family>,
    pub ports: Vec<SlicePortInfo>,
    pub endpoints: Vec<EndpointInfo>,
}

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

pub fn slice_info(slice: &EndpointSlice) -> Result<SliceInfo, String> {
    let key = meta_ref(&slice.metadata, "EndpointSlice")?;
    let object = format!("EndpointSlice {key}");
    let service = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .map(|s| ObjRef::new(&key.namespace, s));
    let family = match slice.address_type.as_str() {
        "IPv4" => Some(Family::V4),
        "IPv6" => Some(Family::V6),
        "FQDN" => None,
        other => {
            return Err(format!(
                "{object}: addressType: unknown address type `{other}`"
            ));
        }
    };
    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        // A port without a number means "all ports", which no proxy serves.
        let Some(n) = p.port else { continue };
        ports.push(SlicePortInfo {
            name: p.name.clone().unwrap_or_default(),
            port: port16(n, &object, &format!("ports[{i}].port"))?,
            proto: Proto::parse(p.protocol.as_deref())
                .map_err(|e| format!("{object}: ports[{i}].protocol: {e}"))?,
        });
    }
    // Exact: a slice is held as long as it lives.
    let mut endpoints = Vec::with_capacity(slice.endpoints.as_ref().map_or(0, Vec::len));
    for (i, e) in slice.endpoints.iter().flatten().enumerate() {
        let mut addr = None;
        if family.is_some() {
            for (j, a) in e.addresses.iter().enumerate() {
                let ip: IpAddr = a.parse().map_err(|_| {
                    format!("{object}: endpoints[{i}].addresses[{j}]: `{a}` is not an IP address")
                })?;
                if (family == Some(Family::V4)) != ip.is_ipv4() {
                    return Err(format!(
                        "{object}: endpoints[{i}].addresses[{j}]: `{a}` does not match addressType {}",
                        slice.address_type
                    ));
                }
                // Every address is checked; the first is the endpoint's.
                addr = addr.or(Some(ip));
            }
        }
        let c = e.conditions.clone().unwrap_or_default();
        let hints = e.hints.as_ref().map(|h| Hints {
            zones: h
                .for_zones
                .iter()
                .flatten()
                .map(|z| z.name.clone())
                .collect(),
            nodes: h
                .for_nodes
                .iter()
                .flatten()
                .map(|n| n.name.clone())
                .collect(),
        });
        // As kube-proxy reads them: unset ready and serving mean true.
        endpoints.push(EndpointInfo {
            addr,
            ready: c.ready.unwrap_or(true),
            serving: c.serving.unwrap_or(true),
            terminating: c.terminating.unwrap_or(false),
            node: e.node_name.as_deref().map(Arc::from),
            hints: hints
                .filter(|h| !h.zones.is_empty() || !h.nodes.is_empty())
                .map(Box::new),
        });
    }
    Ok(SliceInfo {
        key,
        service,
        family,
        ports,
        endpoints,
    })
}
