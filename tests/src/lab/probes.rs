//! Probes: resolving `from`/`to` into places and addresses (at validation,
//! so a bad reference is exit 2), running a step's probes concurrently, and
//! printing one line per attempt.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
};

use serde::Serialize;
use serde_json::Value;

use super::{
    control::{Cluster, node_ip},
    scenario::{Family, Invalid, Probe, Protocol},
    topo,
};
use crate::spawn::Proc;

#[derive(Clone, Debug, PartialEq)]
pub enum From {
    External,
    Node(usize),
    /// (pod index, node index)
    Pod(usize, usize),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    Plain,
    Http,
    Hold(String),
    Reuse(String),
    /// New connections back to back for this many seconds (`churnSecs`).
    Churn(u32),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    pub step: usize,
    pub from_label: String,
    pub to_label: String,
    pub family: Family,
    pub from: From,
    /// None: the target has no address of this family (reported, not run).
    pub target: Option<SocketAddr>,
    pub protocol: Protocol,
    pub count: u32,
    pub timeout_ms: u64,
    pub source_port: u16,
    pub mark: u32,
    pub kind: Kind,
    /// UDP churn on one connected socket.
    pub same_socket: bool,
    /// UDP: the request's size, sent with "don't fragment" (0: a line).
    pub payload_bytes: u32,
}

/// One output line, fields in LAB.md's order.
#[derive(Serialize, Clone, Debug)]
pub struct Attempt {
    pub step: usize,
    pub from: String,
    pub to: String,
    pub family: &'static str,
    pub target: String,
    pub protocol: &'static str,
    pub ok: bool,
    pub served_by: Option<String>,
    pub client_seen: Option<String>,
    pub error: Option<String>,
    pub ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// Churn probes (`churnSecs`): the run's totals.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub churn: Option<Churn>,
}

/// What a churn probe adds to its one line (LAB.md).
#[derive(Serialize, serde::Deserialize, Clone, Debug, Default)]
pub struct Churn {
    /// Connections tried.
    pub attempts: u64,
    /// Connections that failed (connect error, or no answer in time).
    pub failed: u64,
    /// The slowest connect, ms.
    pub max_ms: f64,
    /// Connects slower than one second.
    pub over_1s: u64,
    /// Failures by error name.
    pub errors: BTreeMap<String, u64>,
    /// The first few slow (over one second) or failed attempts: client
    /// port, connect ms, error, seconds into the run.
    pub slow: Vec<Value>,
}

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

fn place(r: &Resolved, node_cgroups: &[PathBuf], ext: &Path) -> (PathBuf, PathBuf) {
    match r.from {
        From::External => (ext.to_path_buf(), topo::ns_path(&topo::external_ns())),
        From::Node(k) => (node_cgroups[k].clone(), topo::ns_path(&topo::node_ns(k))),
        From::Pod(i, k) => (node_cgroups[k].clone(), topo::ns_path(&topo::pod_ns(i))),
    }
}

fn attempt(r: &Resolved, v: &Value) -> Attempt {
    Attempt {
        step: r.step,
        from: r.from_label.clone(),
        to: r.to_label.clone(),
        family: r.family.as_str(),
        target: r.target.map(|t| t.to_string()).unwrap_or_default(),
        protocol: r.protocol.as_str(),
        ok: v["ok"] == true,
        served_by: v["served_by"].as_str().map(str::to_string),
        client_seen: v["client_seen"].as_str().map(str::to_string),
        error: v["error"].as_str().map(str::to_string),
        ms: v["ms"].as_f64().unwrap_or(0.0),
        http_status: v["http_status"].as_u64().map(|s| s as u16),
        churn: match r.kind {
            Kind::Churn(_) => {
                Some(
                    serde_json::from_value(v["churn"].clone()).unwrap_or_else(|_| Churn {
                        attempts: 0,
                        failed: 1,
                        errors: [(
                            v["error"].as_str().unwrap_or("probe crashed").to_string(),
                            1,
                        )]
                        .into(),
                        ..Default::default()
                    }),
                )
            }
            _ => None,
        },
    }
}

/// Runs a step's probes at once (one process per probe, attempts in order
/// within it) and returns the attempts in probe order.
pub fn run_step(
    rs: &[Resolved],
    node_cgroups: &[PathBuf],
    ext: &Path,
    holds: &mut BTreeMap<String, Proc>,
) -> Vec<Attempt> {
    enum Running {
        Proc(Proc),
        Reused(String),
        NoAddress,
    }
    let mut running = Vec::new();
    for r in rs {
        let Some(target) = r.target else {
            running.push(Running::NoAddress);
            continue;
        };
        let (cg, ns) = place(r, node_cgroups, ext);
        let mut cmd = Command::new(crate::helper_bin());
        match &r.kind {
            Kind::Reuse(name) => {
                if let Some(h) = holds.get_mut(name) {
                    h.send_line("again");
                }
                running.push(Running::Reused(name.clone()));
                continue;
            }
            Kind::Hold(_) => {
                cmd.args([
                    "lab-hold",
                    &target.to_string(),
                    &r.timeout_ms.to_string(),
                    &r.mark.to_string(),
                ]);
            }
            Kind::Churn(secs) => {
                let mode = if r.same_socket {
                    "same".to_string()
                } else {
                    r.source_port.to_string()
                };
                cmd.args([
                    "lab-churn",
                    &target.to_string(),
                    &secs.to_string(),
                    &r.timeout_ms.to_string(),
                    &r.mark.to_string(),
                    r.protocol.as_str(),
                    &mode,
                ]);
            }
            Kind::Plain | Kind::Http => {
                cmd.args([
                    "lab-probe",
                    &target.to_string(),
                    r.protocol.as_str(),
                    &r.count.to_string(),
                    &r.timeout_ms.to_string(),
                    &r.source_port.to_string(),
                    &r.mark.to_string(),
                    if r.kind == Kind::Http {
                        "http"
                    } else {
                        "plain"
                    },
                    &r.payload_bytes.to_string(),
                ]);
            }
        }
        running.push(Running::Proc(Proc::spawn(cmd, Some(&cg), Some(&ns))));
    }
    let mut out = Vec::new();
    for (r, run) in rs.iter().zip(running) {
        match run {
            Running::NoAddress => {
                for _ in 0..r.count {
                    out.push(attempt(r, &serde_json::json!({"ok": false, "error": format!("no {} address", r.family.as_str()), "ms": 0.0})));
                }
            }
            Running::Reused(name) => {
                let v = match holds.get_mut(&name) {
                    Some(h) => serde_json::from_str(&h.read_line()).unwrap_or(
                        serde_json::json!({"ok": false, "error": "held connection gone"}),
                    ),
                    None => serde_json::json!({"ok": false, "error": "held connection gone"}),
                };
                out.push(attempt(r, &v));
            }
            Running::Proc(mut p) => {
                for _ in 0..r.count {
                    let l = p.read_line();
                    let v = serde_json::from_str(&l).unwrap_or(
                        serde_json::json!({"ok": false, "error": "probe crashed", "ms": 0.0}),
                    );
                    out.push(attempt(r, &v));
                }
                if let Kind::Hold(name) = &r.kind {
                    holds.insert(name.clone(), p);
                }
            }
        }
    }
    out
}

/// JSON lines, or the `--human` table and summaries.
pub struct Output {
    human: bool,
    all: Vec<Attempt>,
}

impl Output {
    pub fn new(human: bool) -> Self {
        Self { human, all: vec![] }
    }

    pub fn line(&mut self, a: &Attempt) {
        if self.human {
            let result = if a.ok {
                match (&a.served_by, a.http_status) {
                    (_, Some(code)) => format!("HTTP {code}"),
                    (Some(s), _) => {
                        format!("{s} (saw {})", a.client_seen.as_deref().unwrap_or("?"))
                    }
                    _ => "ok".into(),
                }
            } else {
                format!("FAILED: {}", a.error.as_deref().unwrap_or("?"))
            };
            let churn = a.churn.as_ref().map_or(String::new(), |c| {
                format!(
                    "  [{} connections, {} failed, slowest connect {:.2} ms, {} over 1 s]",
                    c.attempts, c.failed, c.max_ms, c.over_1s
                )
            });
            println!(
                "step {} {:<14} -> {:<28} {:<24} {:<4} {:>7.2} ms  {result}{churn}",
                a.step, a.from, a.to, a.target, a.protocol, a.ms
            );
        } else {
            println!("{}", serde_json::to_string(a).expect("json"));
        }
        self.all.push(a.clone());
    }

    pub fn finish(&self) {
        if !self.human {
            return;
        }
        let blocked: Vec<&Attempt> = self.all.iter().filter(|a| !a.ok).collect();
        // A churn probe's line stands for all its connections.
        let (tried, failed) = self.all.iter().fold((0, 0), |(t, f), a| match &a.churn {
            Some(c) => (t + c.attempts, f + c.failed),
            None => (t + 1, f + u64::from(!a.ok)),
        });
        println!("\n{tried} attempts, {failed} failed");
        let pairs: std::collections::BTreeSet<String> = blocked
            .iter()
            .map(|a| {
                format!(
                    "step {} {} -> {} ({} {}): {}",
                    a.step,
                    a.from,
                    a.to,
                    a.family,
                    a.protocol,
                    a.error.as_deref().unwrap_or("?")
                )
            })
            .collect();
        for p in &pairs {
            println!("  blocked: {p}");
        }
        let mut dist: BTreeMap<(usize, String, &str), BTreeMap<String, usize>> = BTreeMap::new();
        for a in self.all.iter().filter(|a| {
            !a.to.contains('/')
                || a.to.starts_with("service/")
                || a.to.starts_with("nodeport/")
                || a.to.starts_with("loadbalancer/")
                || a.to.starts_with("externalip/")
        }) {
            if a.to.split('/').count() >= 3 {
                *dist
                    .entry((a.step, a.to.clone(), a.family))
                    .or_default()
                    .entry(
                        a.served_by
                            .clone()
                            .unwrap_or_else(|| a.error.clone().unwrap_or_default()),
                    )
                    .or_default() += 1;
            }
        }
        if !dist.is_empty() {
            println!("\nwho answered, per service target:");
            for ((step, to, fam), m) in dist {
                let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                println!("  step {step} {to} ({fam}): {}", parts.join(", "));
            }
        }
    }
}
