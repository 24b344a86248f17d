//! New connections back to back (`lab-churn`).

use std::{
    net::{SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use lb_tests::probe::{Churn, Probe, Slow};

use super::{
    clients::{request, udp, udp_request},
    sockets::{connect, linger_zero, local_port, socket},
};
use crate::sock::error_name;

/// How long one churn connect may take: long enough that a hung
/// handshake (SYN retransmitted for a minute) shows as a slow connect,
/// not as a failure.
pub(super) const CHURN_CONNECT: Duration = Duration::from_secs(70);
/// Slow or failed attempts listed one by one (the counts cover all).
pub(super) const CHURN_LISTED: usize = 20;

/// What a churn makes back to back.
#[derive(Clone, Copy)]
pub enum ChurnMode {
    /// New TCP connections, each closed with an RST.
    Tcp,
    /// UDP requests, each on a new socket from this port (0: any).
    Udp(u16),
    /// UDP requests on one connected socket (a DNS client's).
    UdpSame,
}

/// New TCP connections (or UDP requests, see `ChurnMode`) back to back
/// until `secs` have passed (the last one started may run past it by
/// one attempt at most): each sends one request line and reads the
/// answer (within `timeout`). One line: the usual fields (`served_by`,
/// `client_seen` of the first answer, `ms` the mean connect or round
/// trip) and `churn`, the totals.
pub fn churn(
    target: SocketAddr,
    secs: Duration,
    timeout: Duration,
    mark: u32,
    mode: ChurnMode,
) -> Probe {
    let start = Instant::now();
    let (mut attempts, mut failed, mut over_1s) = (0u64, 0u64, 0u64);
    let (mut max_ms, mut sum_ms) = (0f64, 0f64);
    let mut errors = std::collections::BTreeMap::<String, u64>::new();
    let mut slow = Vec::new();
    let mut first: Option<Probe> = None;
    let mut same: Option<UdpSocket> = None;
    while start.elapsed() < secs {
        attempts += 1;
        let at_s = start.elapsed().as_secs_f64();
        let (v, port, ms) = match mode {
            ChurnMode::Tcp => tcp_attempt(target, timeout, mark),
            ChurnMode::Udp(src) => {
                let v = udp(target, timeout, src, mark);
                let ms = v.ms;
                (v, src, ms)
            }
            ChurnMode::UdpSame => {
                if same.is_none() {
                    same = socket(target, libc::SOCK_DGRAM, 0, mark)
                        .map(UdpSocket::from)
                        .and_then(|s| {
                            s.set_read_timeout(Some(timeout))?;
                            s.connect(target)?;
                            Ok(s)
                        })
                        .ok();
                }
                let v = match &same {
                    Some(s) => udp_request(s),
                    None => Probe::failed("socket", 0.0),
                };
                let ms = v.ms;
                let port = same
                    .as_ref()
                    .and_then(|s| s.local_addr().ok())
                    .map_or(0, |a| a.port());
                (v, port, ms)
            }
        };
        max_ms = max_ms.max(ms);
        sum_ms += ms;
        if ms > 1000.0 {
            over_1s += 1;
        }
        if !v.ok {
            failed += 1;
            let e = v.error.clone().unwrap_or_else(|| "?".into());
            *errors.entry(e).or_default() += 1;
        }
        if (!v.ok || ms > 1000.0) && slow.len() < CHURN_LISTED {
            slow.push(Slow {
                port,
                ms,
                error: v.error.clone(),
                at_s,
            });
        }
        if v.ok {
            first.get_or_insert(v);
        }
    }
    let first = first.unwrap_or_default();
    let mean = if attempts > 0 {
        sum_ms / attempts as f64
    } else {
        0.0
    };
    Probe {
        ok: attempts > 0 && failed == 0,
        served_by: first.served_by,
        client_seen: first.client_seen,
        error: errors.keys().next().cloned(),
        ms: mean,
        churn: Some(Churn {
            attempts,
            failed,
            max_ms,
            over_1s,
            errors,
            slow,
        }),
        ..Probe::default()
    }
}

/// One churn connection: (answer, client port, connect ms).
pub(super) fn tcp_attempt(target: SocketAddr, timeout: Duration, mark: u32) -> (Probe, u16, f64) {
    let t = Instant::now();
    let fd = match socket(target, libc::SOCK_STREAM, 0, mark) {
        Ok(fd) => fd,
        Err(e) => return (Probe::failed(error_name(&e), 0.0), 0, 0.0),
    };
    linger_zero(&fd);
    let connected = connect(&fd, target, CHURN_CONNECT);
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let port = local_port(&fd);
    let v = match connected {
        Ok(()) => {
            let c = TcpStream::from(fd);
            request(&c, timeout, ms)
            // dropped here: closed with an RST
        }
        Err(e) => Probe::failed(error_name(&e), ms),
    };
    (v, port, ms)
}
