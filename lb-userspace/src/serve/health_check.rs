//! healthCheckNodePort servers (LoadBalancer Services with
//! `externalTrafficPolicy: Local`): HTTP 200 with the number of this node's
//! ready endpoints when there is at least one, 503 otherwise, as kube-proxy
//! answers, so a cloud load balancer sends traffic only to nodes that can
//! serve it locally.

use std::{
    collections::BTreeMap,
    io::Write,
    net::{SocketAddr, TcpListener},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use crate::model::snapshot::ObjRef;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub service: ObjRef,
    pub local_endpoints: usize,
}

/// The HTTP response for one check.
pub fn response(c: &Check) -> String {
    let body = format!(
        "{{\"service\":{{\"namespace\":\"{}\",\"name\":\"{}\"}},\"localEndpoints\":{},\"serviceProxyHealthy\":true}}",
        c.service.namespace, c.service.name, c.local_endpoints
    );
    let status = if c.local_endpoints > 0 {
        "200 OK"
    } else {
        "503 Service Unavailable"
    };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\nX-Load-Balancing-Endpoint-Weight: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        c.local_endpoints,
        body.len()
    )
}

struct Server {
    check: Arc<Mutex<Check>>,
    stop: Arc<AtomicBool>,
}

/// One listener thread per port, following the wanted set.
#[derive(Default)]
pub struct HealthChecks {
    servers: BTreeMap<u16, Server>,
}

impl HealthChecks {
    pub fn update(&mut self, wanted: &BTreeMap<u16, Check>) {
        let gone: Vec<u16> = self
            .servers
            .keys()
            .filter(|p| !wanted.contains_key(p))
            .copied()
            .collect();
        for p in gone {
            if let Some(s) = self.servers.remove(&p) {
                s.stop.store(true, Ordering::Relaxed);
            }
        }
        for (port, check) in wanted {
            if let Some(s) = self.servers.get(port) {
                *s.check.lock().unwrap_or_else(|e| e.into_inner()) = check.clone();
                continue;
            }
            match serve(*port, check.clone()) {
                Ok(s) => {
                    tracing::info!(port, service = %check.service, "health check node port serving");
                    self.servers.insert(*port, s);
                }
                Err(e) => tracing::error!(
                    "Service {}: spec.healthCheckNodePort {port}: {e:#}",
                    check.service
                ),
            }
        }
    }
}

fn serve(port: u16, check: Check) -> anyhow::Result<Server> {
    // [::] takes IPv4 too (v4-mapped) unless the host disables it.
    let l = TcpListener::bind(SocketAddr::from(([0u16; 8], port)))
        .or_else(|_| TcpListener::bind(SocketAddr::from(([0u8; 4], port))))?;
    l.set_nonblocking(true)?;
    let check = Arc::new(Mutex::new(check));
    let stop = Arc::new(AtomicBool::new(false));
    let (c, s) = (check.clone(), stop.clone());
    std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut conn, _)) => {
                    let _ = conn.set_nonblocking(false);
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                    let _ = crate::serve::health::read_request(&mut conn);
                    let resp = response(&c.lock().unwrap_or_else(|e| e.into_inner()));
                    let _ = conn.write_all(resp.as_bytes());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    });
    Ok(Server { check, stop })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_200_with_local_endpoints_and_503_without() {
        let c = Check {
            service: ObjRef::new("x", "web"),
            local_endpoints: 2,
        };
        let r = response(&c);
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(
            r.ends_with("\"localEndpoints\":2,\"serviceProxyHealthy\":true}"),
            "{r}"
        );
        let r = response(&Check {
            local_endpoints: 0,
            ..c
        });
        assert!(r.starts_with("HTTP/1.1 503 "), "{r}");
    }
}
