//! A Service as the agent needs it, converted from its k8s-openapi object.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;

use super::{ObjRef, Proto, meta_ref, port16};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePortInfo {
    pub name: String,
    pub port: u16,
    pub proto: Proto,
    pub node_port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    pub key: ObjRef,
    /// Why the service gets no datapath entries (headless, ExternalName, ...).
    pub skip: Option<&'static str>,
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePortInfo>,
    /// `spec.externalIPs`.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip`.
    pub lb_ips: Vec<IpAddr>,
    /// `externalTrafficPolicy: Local`: clients from outside get this node's
    /// endpoints only, with their address kept.
    pub external_local: bool,
    /// `internalTrafficPolicy: Local`: pods and host-network clients on a
    /// node reach its ClusterIPs' endpoints on that node only.
    pub internal_local: bool,
    /// `spec.healthCheckNodePort` (LoadBalancer with `externalTrafficPolicy: Local`).
    pub health_check_node_port: Option<u16>,
    /// sessionAffinity: ClientIP's timeout in seconds (0: no affinity).
    pub affinity_timeout: u32,
    /// `spec.loadBalancerSourceRanges` (leading and trailing spaces allowed).
    pub source_ranges: Vec<crate::model::cidr::Cidr>,
    /// `metadata.creationTimestamp` in Unix seconds: of two Services
    /// claiming one frontend (not a ClusterIP), the older one wins.
    pub created: Option<i64>,
}

pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
pub const PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";

pub fn service_info(svc: &Service) -> Result<ServiceInfo, String> {
    let key = meta_ref(&svc.metadata, "Service")?;
    let object = format!("Service {key}");
    let labels = svc.metadata.labels.as_ref();
    let has_label = |l: &str| labels.is_some_and(|m| m.contains_key(l));
    let spec = svc.spec.clone().unwrap_or_default();
    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        ports.push(ServicePortInfo {
            name: p.name.clone().unwrap_or_default(),
            port: port16(p.port, &object, &format!("spec.ports[{i}].port"))?,
            proto: Proto::parse(p.protocol.as_deref())
                .map_err(|e| format!("{object}: spec.ports[{i}].protocol: {e}"))?,
            node_port: match p.node_port {
                Some(n) if matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer")) => {
                    Some(port16(n, &object, &format!("spec.ports[{i}].nodePort"))?)
                }
                _ => None,
            },
        });
    }
    let raw_ips: Vec<String> = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.clone(),
        _ => spec.cluster_ip.iter().cloned().collect(),
    };
    let headless = raw_ips.iter().any(|ip| ip == "None");
    let skip = if spec.type_.as_deref() == Some("ExternalName") {
        Some("type ExternalName")
    } else if headless {
        Some("headless (clusterIP None)")
    } else if has_label(HEADLESS_LABEL) {
        Some("labelled service.kubernetes.io/headless")
    } else if has_label(PROXY_NAME_LABEL) {
        Some("labelled service.kubernetes.io/service-proxy-name")
    } else {
        None
    };
    let mut cluster_ips = Vec::new();
    if skip.is_none() {
        for (i, ip) in raw_ips.iter().enumerate().filter(|(_, ip)| !ip.is_empty()) {
            cluster_ips.push(ip.parse::<IpAddr>().map_err(|_| {
                format!("{object}: spec.clusterIPs[{i}]: `{ip}` is not an IP address")
            })?);
        }
    }
    let parse_ips = |list: Vec<String>, field: &str| -> Result<Vec<IpAddr>, String> {
        list.iter()
            .enumerate()
            .map(|(i, ip)| {
                // kube-proxy tolerates surrounding spaces in these lists.
                ip.trim()
                    .parse::<IpAddr>()
                    .map_err(|_| format!("{object}: {field}[{i}]: `{ip}` is not an IP address"))
            })
            .collect()
    };
    let (external_ips, lb_ips) = if skip.is_none() {
        let ext = parse_ips(
            spec.external_ips.clone().unwrap_or_default(),
            "spec.externalIPs",
        )?;
        let lb: Vec<String> = svc
            .status
            .iter()
            .flat_map(|s| s.load_balancer.iter())
            .flat_map(|lb| lb.ingress.iter().flatten())
            .filter_map(|i| i.ip.clone())
            .collect();
        let lb = if spec.type_.as_deref() == Some("LoadBalancer") {
            parse_ips(lb, "status.loadBalancer.ingress[].ip")?
        } else {
            vec![]
        };
        (ext, lb)
    } else {
        (vec![], vec![])
    };
    let external_local = spec.external_traffic_policy.as_deref() == Some("Local")
        && matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"));
    let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let health_check_node_port = match spec.health_check_node_port {
        Some(p) if external_local => Some(port16(p, &object, "spec.healthCheckNodePort")?),
        _ => None,
    };
    let mut source_ranges = Vec::new();
    for (i, r) in spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .enumerate()
    {
        source_ranges.push(
            r.parse::<crate::model::cidr::Cidr>()
                .map_err(|e| format!("{object}: spec.loadBalancerSourceRanges[{i}]: {e}"))?,
        );
    }
    let affinity_timeout = match spec.session_affinity.as_deref() {
        Some("ClientIP") => {
            let t = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .unwrap_or(10800);
            if !(1..=86400).contains(&t) {
                return Err(format!(
                    "{object}: spec.sessionAffinityConfig.clientIP.timeoutSeconds: {t} is not in 1..=86400"
                ));
            }
            t as u32
        }
        None | Some("None") => 0,
        Some(other) => {
            return Err(format!(
                "{object}: spec.sessionAffinity: unknown value `{other}`"
            ));
        }
    };
    Ok(ServiceInfo {
        key,
        skip,
        cluster_ips,
        ports,
        external_ips,
        lb_ips,
        external_local,
        internal_local,
        health_check_node_port,
        affinity_timeout,
        source_ranges,
        created: svc
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second()),
    })
}
