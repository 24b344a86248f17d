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
use serde_json::Value;

use super::{
    scenario::{Family, Protocol},
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
