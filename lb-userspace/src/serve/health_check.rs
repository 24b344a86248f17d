//! healthCheckNodePort servers (LoadBalancer Services with
//! `externalTrafficPolicy: Local`): HTTP 200 with the number of this node's
//! ready endpoints when there is at least one, 503 otherwise, as kube-proxy
//! answers, so a cloud load balancer sends traffic only to nodes that can
//! serve it locally.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener},
    sync::{Arc, Mutex},
};

use hyper::{Response, header::HeaderValue};
use serde::Serialize;
use tokio::sync::watch;

use crate::{
    model::snapshot::ObjRef,
    serve::http::{self, Body},
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub service: ObjRef,
    pub local_endpoints: usize,
}

/// kube-proxy's body, field for field.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Answer<'a> {
    service: ServiceName<'a>,
    local_endpoints: usize,
    service_proxy_healthy: bool,
}

#[derive(Serialize)]
struct ServiceName<'a> {
    namespace: &'a str,
    name: &'a str,
}

/// The HTTP response for one check.
pub fn response(c: &Check) -> Response<Body> {
    let body = serde_json::to_vec(&Answer {
        service: ServiceName {
            namespace: &c.service.namespace,
            name: &c.service.name,
        },
        local_endpoints: c.local_endpoints,
        service_proxy_healthy: true,
    })
    .unwrap_or_default();
    let code = if c.local_endpoints > 0 { 200 } else { 503 };
    let mut r = http::response(code, "application/json", body);
    let h = r.headers_mut();
    h.insert(
        "X-Content-Type-Options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        "X-Load-Balancing-Endpoint-Weight",
        HeaderValue::from(c.local_endpoints),
    );
    r
}

struct Server {
    check: Arc<Mutex<Check>>,
    /// Dropped with the server: its listener and connections end.
    _stop: watch::Sender<()>,
}

/// One listener per port, following the wanted set.
#[derive(Default)]
pub struct HealthChecks {
    servers: BTreeMap<u16, Server>,
}

impl HealthChecks {
    pub fn update(&mut self, wanted: &BTreeMap<u16, Check>) {
        self.servers.retain(|p, _| wanted.contains_key(p));
        for (port, check) in wanted {
            if let Some(s) = self.servers.get(port) {
                *s.check.lock().unwrap_or_else(|e| e.into_inner()) = check.clone();
                continue;
            }
            match serve(port_addrs(*port), check.clone()) {
                Ok((s, _)) => {
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

/// [::] takes IPv4 too (v4-mapped) unless the host disables it.
fn port_addrs(port: u16) -> [SocketAddr; 2] {
    [
        SocketAddr::from(([0u16; 8], port)),
        SocketAddr::from(([0u8; 4], port)),
    ]
}

fn serve(addrs: [SocketAddr; 2], check: Check) -> anyhow::Result<(Server, SocketAddr)> {
    let l = TcpListener::bind(&addrs[..])?;
    let bound = l.local_addr()?;
    let check = Arc::new(Mutex::new(check));
    let (stop, stopped) = watch::channel(());
    let c = check.clone();
    http::serve(
        l,
        move |_path| response(&c.lock().unwrap_or_else(|e| e.into_inner())),
        Some(stopped),
    )?;
    Ok((Server { check, _stop: stop }, bound))
}

#[cfg(test)]
mod tests {
    use std::{
        net::TcpStream,
        time::{Duration, Instant},
    };

    use http_body_util::BodyExt as _;

    use super::*;
    use crate::serve::health::tests::get;

    fn body(r: Response<Body>) -> String {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let b = rt.block_on(r.into_body().collect()).unwrap();
        String::from_utf8(b.to_bytes().to_vec()).unwrap()
    }

    #[test]
    fn answers_200_with_local_endpoints_and_503_without() {
        let c = Check {
            service: ObjRef::new("x", "web"),
            local_endpoints: 2,
        };
        let r = response(&c);
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["X-Load-Balancing-Endpoint-Weight"], "2");
        assert_eq!(r.headers()["Content-Type"], "application/json");
        assert_eq!(
            body(r),
            r#"{"service":{"namespace":"x","name":"web"},"localEndpoints":2,"serviceProxyHealthy":true}"#
        );
        let r = response(&Check {
            local_endpoints: 0,
            ..c
        });
        assert_eq!(r.status(), 503);
    }

    #[test]
    fn serves_clients_side_by_side_follows_the_count_and_stops_when_dropped() {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let check = Check {
            service: ObjRef::new("x", "web"),
            local_endpoints: 1,
        };
        let (server, addr) = serve([loopback; 2], check.clone()).unwrap();
        let idle = TcpStream::connect(addr).unwrap();
        let (code, body) = get(TcpStream::connect(addr).unwrap(), "/");
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("\"localEndpoints\":1"), "{body}");
        *server.check.lock().unwrap() = Check {
            local_endpoints: 0,
            ..check
        };
        assert_eq!(get(idle, "/").0, 503, "the idle client is answered too");
        drop(server);
        // The listener closes on the server's runtime thread, soon after.
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).is_ok() {
            assert!(
                Instant::now() < deadline,
                "{addr} still open after its server was dropped"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
