//! Resolving a probe's `from`/`to` into places and addresses, at
//! validation (a bad reference is exit 2).

use std::net::{IpAddr, SocketAddr};

use serde_json::Value;

use crate::lab::{
    control::{Cluster, node_ip},
    scenario::{Family, Invalid, Probe, Protocol},
};

use super::{From, Kind, Resolved};

fn family_of(ip: &IpAddr) -> Family {
    if ip.is_ipv4() {
        Family::IPv4
    } else {
        Family::IPv6
    }
}

fn first_of_family<'a>(vals: impl Iterator<Item = &'a str>, f: Family) -> Option<IpAddr> {
    vals.filter_map(|s| s.parse::<IpAddr>().ok())
        .find(|ip| family_of(ip) == f)
}

fn service<'a>(c: &'a Cluster, ns: &str, name: &str, at: &str) -> Result<&'a Value, Invalid> {
    c.object("Service", ns, name)
        .ok_or_else(|| Invalid(format!("{at}.to: no Service {ns}/{name} at this step")))
}

fn strs<'a>(v: &'a Value, p: &str) -> Vec<&'a str> {
    v.pointer(p)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Resolves the probes of one step.
pub fn resolve(
    c: &Cluster,
    probes: &[Probe],
    step: usize,
    at: &str,
    holds: &mut Vec<String>,
) -> Result<Vec<Resolved>, Invalid> {
    let mut out = Vec::new();
    for (i, p) in probes.iter().enumerate() {
        let at = format!("{at}probes[{i}]");
        let pods: Vec<String> = c.pods.iter().map(|p| p.id()).collect();
        let froms: Vec<String> = if p.from == "*" {
            pods.clone()
        } else {
            vec![p.from.clone()]
        };
        for from_label in &froms {
            let from = parse_from(c, from_label, &at)?;
            let tos: Vec<String> = if p.to == "*" {
                pods.iter().filter(|t| *t != from_label).cloned().collect()
            } else if p.to == "service/*" {
                // Every Service of the scenario, in file order.
                c.objects
                    .iter()
                    .filter(|(k, _)| k.0 == "Service")
                    .map(|(k, _)| format!("service/{}/{}", k.1, k.2))
                    .collect()
            } else {
                vec![p.to.clone()]
            };
            for to in &tos {
                let fams = match p.ip_family {
                    Some(f) => vec![f],
                    None => c.families(),
                };
                for f in fams {
                    let Some(r) =
                        resolve_one(c, p, from.clone(), from_label, to, f, step, &at, holds)?
                    else {
                        continue;
                    };
                    out.push(r);
                }
            }
        }
    }
    Ok(out)
}

fn parse_from(c: &Cluster, from: &str, at: &str) -> Result<From, Invalid> {
    if from == "external" {
        return Ok(From::External);
    }
    if let Some(n) = from.strip_prefix("node/") {
        return c
            .node_index(n)
            .map(From::Node)
            .ok_or_else(|| Invalid(format!("{at}.from: no node `{n}`")));
    }
    let i = c
        .pods
        .iter()
        .position(|p| p.id() == from)
        .ok_or_else(|| Invalid(format!("{at}.from: no pod `{from}`")))?;
    Ok(From::Pod(i, c.pods[i].node))
}

#[allow(clippy::too_many_arguments)]
fn resolve_one(
    c: &Cluster,
    p: &Probe,
    from: From,
    from_label: &str,
    to: &str,
    f: Family,
    step: usize,
    at: &str,
    holds: &mut Vec<String>,
) -> Result<Option<Resolved>, Invalid> {
    let need_port = || {
        p.port
            .ok_or_else(|| Invalid(format!("{at}.port: required for `to: {to}`")))
    };
    let parts: Vec<&str> = to.split('/').collect();
    let mut kind = Kind::Plain;
    let target: Option<SocketAddr> = match parts.as_slice() {
        ["service", ns, name] => {
            let s = service(c, ns, name, at)?;
            let port = need_port()?;
            first_of_family(strs(s, "/spec/clusterIPs").into_iter(), f)
                .map(|ip| SocketAddr::new(ip, port))
        }
        ["nodeport", node, ns, name] => {
            let k = c
                .node_index(node)
                .ok_or_else(|| Invalid(format!("{at}.to: no node `{node}`")))?;
            let s = service(c, ns, name, at)?;
            let port = need_port()?;
            let np = s
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|sp| {
                    sp["port"].as_u64() == Some(port as u64)
                        && sp.get("protocol").and_then(Value::as_str).unwrap_or("TCP")
                            == p.protocol.as_str()
                })
                .and_then(|sp| sp["nodePort"].as_u64())
                .ok_or_else(|| {
                    Invalid(format!(
                        "{at}.port: Service {ns}/{name} has no nodePort for port {port}/{}",
                        p.protocol.as_str()
                    ))
                })?;
            Some(SocketAddr::new(node_ip(k, f), np as u16))
        }
        ["loadbalancer", ns, name] => {
            let s = service(c, ns, name, at)?;
            let port = need_port()?;
            let ips: Vec<&str> = s
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|i| i["ip"].as_str())
                .collect();
            first_of_family(ips.into_iter(), f).map(|ip| SocketAddr::new(ip, port))
        }
        ["externalip", ns, name] => {
            let s = service(c, ns, name, at)?;
            let port = need_port()?;
            first_of_family(strs(s, "/spec/externalIPs").into_iter(), f)
                .map(|ip| SocketAddr::new(ip, port))
        }
        ["healthcheck", node, ns, name] => {
            let k = c
                .node_index(node)
                .ok_or_else(|| Invalid(format!("{at}.to: no node `{node}`")))?;
            let s = service(c, ns, name, at)?;
            let hc = s
                .pointer("/spec/healthCheckNodePort")
                .and_then(Value::as_u64)
                .ok_or_else(|| {
                    Invalid(format!(
                        "{at}.to: Service {ns}/{name} has no healthCheckNodePort"
                    ))
                })?;
            kind = Kind::Http;
            Some(SocketAddr::new(node_ip(k, f), hc as u16))
        }
        ["ip", addr] => {
            let ip: IpAddr = addr
                .parse()
                .map_err(|_| Invalid(format!("{at}.to: `{addr}` is not an IP address")))?;
            if family_of(&ip) != f {
                return Ok(None);
            }
            Some(SocketAddr::new(ip, need_port()?))
        }
        [ns, name] => {
            let pod = c
                .pod(&format!("{ns}/{name}"))
                .ok_or_else(|| Invalid(format!("{at}.to: no pod `{to}`")))?;
            Some(SocketAddr::new(pod.ip(f), need_port()?))
        }
        _ => {
            return Err(Invalid(format!(
                "{at}.to: `{to}` is not a probe target (see LAB.md)"
            )));
        }
    };
    if let Some(h) = &p.hold {
        if p.protocol != Protocol::TCP || p.count != 1 {
            return Err(Invalid(format!(
                "{at}.hold: a held connection is one TCP connection (count 1)"
            )));
        }
        holds.push(h.clone());
        kind = Kind::Hold(h.clone());
    }
    if let Some(r) = &p.reuse {
        if !holds.contains(r) {
            return Err(Invalid(format!("{at}.reuse: no earlier probe holds `{r}`")));
        }
        kind = Kind::Reuse(r.clone());
    }
    if p.payload_bytes.is_some() && (p.protocol != Protocol::UDP || p.churn_secs.is_some()) {
        return Err(Invalid(format!(
            "{at}.payloadBytes: only a plain UDP probe sends a sized request"
        )));
    }
    if p.same_socket && (p.churn_secs.is_none() || p.protocol != Protocol::UDP) {
        return Err(Invalid(format!(
            "{at}.sameSocket: only UDP churn (churnSecs) runs on one socket"
        )));
    }
    if let Some(secs) = p.churn_secs {
        let tcp = p.protocol == Protocol::TCP;
        if p.count != 1
            || p.hold.is_some()
            || p.reuse.is_some()
            || kind == Kind::Http
            || (tcp && p.source_port.is_some())
            || (p.same_socket && p.source_port.is_some())
        {
            return Err(Invalid(format!(
                "{at}.churnSecs: churn makes new TCP connections or UDP requests (count 1, no hold, reuse or healthcheck target; sourcePort for UDP only, not with sameSocket)"
            )));
        }
        if secs == 0 {
            return Err(Invalid(format!("{at}.churnSecs: must be at least 1")));
        }
        kind = Kind::Churn(secs);
    }
    let mark = match (&p.via, &from) {
        (Some(v), From::External) => c.node_index(v).map_or(0, |k| k as u32 + 1),
        (Some(_), _) => {
            return Err(Invalid(format!(
                "{at}.via: only probes from `external` go via a node"
            )));
        }
        _ => 0,
    };
    Ok(Some(Resolved {
        step,
        from_label: from_label.to_string(),
        to_label: to.to_string(),
        family: f,
        from,
        target,
        protocol: if kind == Kind::Http {
            Protocol::TCP
        } else {
            p.protocol
        },
        count: p.count,
        timeout_ms: p.timeout_ms,
        source_port: p.source_port.unwrap_or(0),
        mark,
        kind,
        same_socket: p.same_socket,
        payload_bytes: p.payload_bytes.unwrap_or(0),
    }))
}
