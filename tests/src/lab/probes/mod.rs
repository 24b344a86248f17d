//! Probes: resolving `from`/`to` into places and addresses (at validation,
//! so a bad reference is exit 2), running a step's probes concurrently, and
//! printing one line per attempt.
//!
//! Split by job: this file runs a step's probes; `targets` resolves
//! `from`/`to`; `output` prints the lines.

mod output;
mod targets;

pub use output::Output;
pub use targets::resolve;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
};

use serde::Serialize;

use super::{
    scenario::{Family, Protocol},
    topo,
};
use crate::{
    probe::{Churn, Probe},
    spawn::Proc,
};

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

fn place(r: &Resolved, node_cgroups: &[PathBuf], ext: &Path) -> (PathBuf, PathBuf) {
    match r.from {
        From::External => (ext.to_path_buf(), topo::ns_path(&topo::external_ns())),
        From::Node(k) => (node_cgroups[k].clone(), topo::ns_path(&topo::node_ns(k))),
        From::Pod(i, k) => (node_cgroups[k].clone(), topo::ns_path(&topo::pod_ns(i))),
    }
}

fn attempt(r: &Resolved, v: Probe) -> Attempt {
    Attempt {
        step: r.step,
        from: r.from_label.clone(),
        to: r.to_label.clone(),
        family: r.family.as_str(),
        target: r.target.map(|t| t.to_string()).unwrap_or_default(),
        protocol: r.protocol.as_str(),
        churn: match r.kind {
            Kind::Churn(_) => Some(v.churn.unwrap_or_else(|| Churn {
                attempts: 0,
                failed: 1,
                errors: [(v.error.clone().unwrap_or_else(|| "probe crashed".into()), 1)].into(),
                ..Default::default()
            })),
            _ => None,
        },
        ok: v.ok,
        served_by: v.served_by,
        client_seen: v.client_seen,
        error: v.error,
        ms: v.ms,
        http_status: v.http_status,
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
                    "lab-hold".into(),
                    target.to_string(),
                    format!("--timeout-ms={}", r.timeout_ms),
                    format!("--mark={}", r.mark),
                ]);
            }
            Kind::Churn(secs) => {
                cmd.args([
                    "lab-churn".into(),
                    target.to_string(),
                    r.protocol.as_str().into(),
                    format!("--secs={secs}"),
                    format!("--timeout-ms={}", r.timeout_ms),
                    format!("--mark={}", r.mark),
                    format!("--src-port={}", r.source_port),
                ]);
                if r.same_socket {
                    cmd.arg("--same-socket");
                }
            }
            Kind::Plain | Kind::Http => {
                cmd.args([
                    "lab-probe".into(),
                    target.to_string(),
                    r.protocol.as_str().into(),
                    r.count.to_string(),
                    format!("--timeout-ms={}", r.timeout_ms),
                    format!("--src-port={}", r.source_port),
                    format!("--mark={}", r.mark),
                    format!("--bytes={}", r.payload_bytes),
                ]);
                if r.kind == Kind::Http {
                    cmd.arg("--http");
                }
            }
        }
        running.push(Running::Proc(Proc::spawn(cmd, Some(&cg), Some(&ns))));
    }
    let mut out = Vec::new();
    for (r, run) in rs.iter().zip(running) {
        match run {
            Running::NoAddress => {
                for _ in 0..r.count {
                    let no = format!("no {} address", r.family.as_str());
                    out.push(attempt(r, Probe::failed(no, 0.0)));
                }
            }
            Running::Reused(name) => {
                let v = holds
                    .get_mut(&name)
                    .and_then(|h| serde_json::from_str(&h.read_line()).ok())
                    .unwrap_or_else(|| Probe::failed("held connection gone", 0.0));
                out.push(attempt(r, v));
            }
            Running::Proc(mut p) => {
                for _ in 0..r.count {
                    let l = p.read_line();
                    let v = serde_json::from_str(&l)
                        .unwrap_or_else(|_| Probe::failed("probe crashed", 0.0));
                    out.push(attempt(r, v));
                }
                if let Kind::Hold(name) = &r.kind {
                    holds.insert(name.clone(), p);
                }
            }
        }
    }
    out
}
