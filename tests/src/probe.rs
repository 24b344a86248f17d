//! What the helper (`lbh`) prints for a probe: one JSON line per attempt,
//! written by the helper and read by the tests and the lab.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One attempt: a request sent and the answer read (or why not).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Probe {
    pub ok: bool,
    /// The server's name (`namespace/name`) from its answer.
    pub served_by: Option<String>,
    /// The client address the server saw.
    pub client_seen: Option<String>,
    /// The address the socket is connected to, as the socket reports it
    /// (an IPv4 peer of an IPv6 socket v4-mapped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The address the answer came from, IPv4 unmapped (`hold-udp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The error's name (`refused`, `timeout`, `unreachable`, ...).
    pub error: Option<String>,
    /// Connect time (TCP) or round trip (UDP), milliseconds.
    #[serde(default)]
    pub ms: f64,
    /// HTTP probes: the status of the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// Churn probes: the run's totals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub churn: Option<Churn>,
}

impl Probe {
    /// An answer from `served_by`, which saw the client as `client_seen`.
    pub fn served(served_by: Option<String>, client_seen: Option<String>, ms: f64) -> Self {
        Self {
            ok: true,
            served_by,
            client_seen,
            ms,
            ..Self::default()
        }
    }

    /// No answer: `error` says why.
    pub fn failed(error: impl Into<String>, ms: f64) -> Self {
        Self {
            error: Some(error.into()),
            ms,
            ..Self::default()
        }
    }
}

/// The JSON line.
impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let line = serde_json::to_string(self).map_err(|_| std::fmt::Error)?;
        f.write_str(&line)
    }
}

/// What a churn probe adds to its one line (LAB.md).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
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
    /// The first few slow (over one second) or failed attempts.
    pub slow: Vec<Slow>,
}

/// A slow or failed attempt of a churn.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Slow {
    /// The client's port.
    pub port: u16,
    /// Connect time (TCP) or round trip (UDP).
    pub ms: f64,
    pub error: Option<String>,
    /// Seconds into the run.
    pub at_s: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_reads_back_as_written_and_absent_fields_are_none() {
        let p = Probe {
            peer: Some("[::ffff:10.96.0.10]:80".into()),
            ..Probe::served(Some("t/web".into()), Some("10.0.0.1".into()), 0.5)
        };
        assert_eq!(serde_json::from_str::<Probe>(&p.to_string()).unwrap(), p);
        let bare: Probe = serde_json::from_str(r#"{"ok":false,"error":"refused"}"#).unwrap();
        assert_eq!(bare, Probe::failed("refused", 0.0));
    }
}
