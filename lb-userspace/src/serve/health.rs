//! The agent's own HTTP endpoint (`--health-addr`, kube-proxy's 10256):
//! `/healthz` (200 once the first sync is done and the sync loop is alive,
//! 503 before and when it stalls; a 200 names what the maps leave out),
//! `/livez`, and `/metrics` in Prometheus text format.

use std::{
    net::{SocketAddr, TcpListener},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

pub use super::metrics::{KindLabel, MapLabel, Metrics, PolicyLabel, ReasonLabel, StateLabel};

pub struct Health {
    pub metrics: Metrics,
    registry: Mutex<Registry>,
    synced: AtomicBool,
    /// The Node object carries a deletionTimestamp: load balancers should
    /// stop sending here (kube-proxy answers 503 then too).
    node_deleting: AtomicBool,
    /// Seconds since the epoch of the sync loop's last turn.
    alive_at: AtomicU64,
    /// Services the maps cannot take, and input objects rejected: said by
    /// `/healthz` (still 200: what fits is served).
    not_programmed: AtomicU64,
    rejected: AtomicU64,
}

/// kube-proxy's health port, the default of `--health-addr`.
pub const DEFAULT_PORT: u16 = 10256;
pub const HEALTHZ_PATH: &str = "/healthz";
pub const LIVEZ_PATH: &str = "/livez";
pub const METRICS_PATH: &str = "/metrics";

/// The sync loop turns every 100 ms; this long without a turn is stale.
const STALE_AFTER_S: u64 = 30;

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Health {
    pub fn new() -> Arc<Self> {
        let metrics = Metrics {
            sync_duration_seconds: Histogram::new([
                0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
            ]),
            last_sync_timestamp_seconds: Gauge::default(),
            objects: Family::default(),
            map_entries: Family::default(),
            map_capacity: Family::default(),
            conntrack_entries: Gauge::default(),
            conntrack_flows: Family::default(),
            conntrack_orphan_entries: Gauge::default(),
            conntrack_evicted_entries: Gauge::default(),
            conntrack_evicted_answered_flows: Gauge::default(),
            watch_restarts: Counter::default(),
            sync_problems: Family::default(),
            source_rejected: Family::default(),
            udp_sockets_destroyed: Counter::default(),
            datapath_packets: Family::default(),
            policy_verdicts: Family::default(),
            policy_conntrack_entries: Gauge::default(),
            affinity_entries: Gauge::default(),
            services_not_programmed: Gauge::default(),
            rejected_objects: Gauge::default(),
        };
        let mut r = Registry::with_prefix("lb");
        r.register(
            "sync_duration_seconds",
            "Time to apply one change set to the maps",
            metrics.sync_duration_seconds.clone(),
        );
        r.register(
            "last_sync_timestamp_seconds",
            "When the last change set was applied",
            metrics.last_sync_timestamp_seconds.clone(),
        );
        r.register(
            "objects",
            "Objects the source holds, by kind",
            metrics.objects.clone(),
        );
        r.register(
            "map_entries",
            "Entries in each BPF map the agent writes",
            metrics.map_entries.clone(),
        );
        r.register(
            "map_capacity",
            "Capacity of each BPF map",
            metrics.map_capacity.clone(),
        );
        r.register(
            "conntrack_entries",
            "Conntrack entries seen by the last sweep",
            metrics.conntrack_entries.clone(),
        );
        r.register(
            "watch_restarts",
            "Restarts of API watches",
            metrics.watch_restarts.clone(),
        );
        r.register(
            "sync_problems",
            "What change sets could not do (an invalid object, a refused externalIP, a taken frontend or healthCheckNodePort, a NetworkPolicy problem), by kind",
            metrics.sync_problems.clone(),
        );
        r.register(
            "source_rejected",
            "Input a source read could not take (an unreadable file, a document that is not YAML, an unknown field, an invalid value, an unsupported kind, an object without a name), by kind",
            metrics.source_rejected.clone(),
        );
        r.register(
            "udp_sockets_destroyed",
            "Connected UDP sockets destroyed because their backend left the Service",
            metrics.udp_sockets_destroyed.clone(),
        );
        r.register(
            "datapath_packets",
            "Packets the datapath handled, by action or drop reason",
            metrics.datapath_packets.clone(),
        );
        r.register(
            "conntrack_flows",
            "Packet-path flows at the last sweep, by state (all, unanswered, closing)",
            metrics.conntrack_flows.clone(),
        );
        r.register(
            "conntrack_orphan_entries",
            "Conntrack entries no flow claims (partners of a forward entry the LRU evicted)",
            metrics.conntrack_orphan_entries.clone(),
        );
        r.register(
            "conntrack_evicted_entries",
            "Conntrack entries the LRU evicted (the map was full), since the agent started",
            metrics.conntrack_evicted_entries.clone(),
        );
        r.register(
            "conntrack_evicted_answered_flows",
            "Answered flows whose entries the LRU evicted, since the agent started",
            metrics.conntrack_evicted_answered_flows.clone(),
        );
        r.register(
            "policy_conntrack_entries",
            "Flows NetworkPolicy allowed and tracks (replies pass)",
            metrics.policy_conntrack_entries.clone(),
        );
        r.register(
            "affinity_entries",
            "Clients remembered for sessionAffinity: ClientIP (a client per Service)",
            metrics.affinity_entries.clone(),
        );
        r.register(
            "policy_verdicts",
            "NetworkPolicy verdicts by local pod and reason (new flows allowed, packets denied)",
            metrics.policy_verdicts.clone(),
        );
        r.register(
            "services_not_programmed",
            "Services the BPF maps cannot take (skipped whole; see lb-agent status)",
            metrics.services_not_programmed.clone(),
        );
        r.register(
            "rejected_objects",
            "Input objects or documents the agent could not take (see lb-agent status)",
            metrics.rejected_objects.clone(),
        );
        Arc::new(Self {
            metrics,
            registry: Mutex::new(r),
            synced: AtomicBool::new(false),
            node_deleting: AtomicBool::new(false),
            alive_at: AtomicU64::new(now_s()),
            not_programmed: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        })
    }

    /// What the applied state leaves out: Services not programmed (a map
    /// is full) and input objects rejected.
    pub fn left_out(&self, not_programmed: u64, rejected: u64) {
        self.not_programmed.store(not_programmed, Ordering::Relaxed);
        self.rejected.store(rejected, Ordering::Relaxed);
        self.metrics
            .services_not_programmed
            .set(not_programmed as i64);
        self.metrics.rejected_objects.set(rejected as i64);
    }

    /// `/healthz`'s 200 body: `ok`, then a line per thing left out.
    fn ok_body(&self) -> String {
        let mut body = "ok\n".to_string();
        let plural =
            |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let np = self.not_programmed.load(Ordering::Relaxed);
        if np > 0 {
            body += &format!(
                "warning: {} not programmed (a BPF map is full; the others are served); see `lb-agent status`\n",
                plural(np, "Service", "Services")
            );
        }
        let rej = self.rejected.load(Ordering::Relaxed);
        if rej > 0 {
            body += &format!(
                "warning: {} rejected (invalid input, left out); see `lb-agent status`\n",
                plural(rej, "object", "objects")
            );
        }
        body
    }

    /// The first change set has been applied.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }

    pub fn synced(&self) {
        self.synced.store(true, Ordering::Relaxed);
        self.metrics.last_sync_timestamp_seconds.set(now_s() as f64);
    }

    pub fn node_deleting(&self, deleting: bool) {
        self.node_deleting.store(deleting, Ordering::Relaxed);
    }

    pub fn alive(&self) {
        self.alive_at.store(now_s(), Ordering::Relaxed);
    }

    pub fn healthy(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
            && !self.node_deleting.load(Ordering::Relaxed)
            && now_s().saturating_sub(self.alive_at.load(Ordering::Relaxed)) < STALE_AFTER_S
    }

    fn respond(&self, path: &str) -> (u16, &'static str, String) {
        match path {
            HEALTHZ_PATH if self.healthy() => (200, "text/plain", self.ok_body()),
            HEALTHZ_PATH => (
                503,
                "text/plain",
                "not synced, the sync loop stalled, or the Node is being deleted\n".into(),
            ),
            LIVEZ_PATH => (200, "text/plain", "ok\n".into()),
            METRICS_PATH => {
                let mut body = String::new();
                let r = self.registry.lock().unwrap_or_else(|e| e.into_inner());
                let _ = encode(&mut body, &r);
                (
                    200,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body,
                )
            }
            _ => (404, "text/plain", "not found\n".into()),
        }
    }
}

/// Serves `h` on `addr` for the life of the process; returns the bound
/// address.
pub fn serve(addr: SocketAddr, h: Arc<Health>) -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind(addr)?;
    let bound = l.local_addr()?;
    crate::serve::http::serve(
        l,
        move |path| {
            let (code, ctype, body) = h.respond(path);
            crate::serve::http::response(code, ctype, body)
        },
        None,
    )?;
    Ok(bound)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{
        io::{Read as _, Write as _},
        net::TcpStream,
        time::Duration,
    };

    use super::*;

    /// Sends a GET on `c` and reads the answer to the end of the
    /// connection: (status code, body).
    pub(crate) fn get(mut c: TcpStream, path: &str) -> (u16, String) {
        // A guard against a hung server, not a measure of speed.
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        let mut resp = String::new();
        c.read_to_string(&mut resp)
            .unwrap_or_else(|e| panic!("GET {path}: {e} after {resp:?}"));
        let code = resp
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
        (code, body.unwrap_or_default())
    }

    #[test]
    fn an_idle_client_does_not_keep_another_waiting() {
        let h = Health::new();
        h.synced();
        let addr = serve("127.0.0.1:0".parse().unwrap(), h).unwrap();
        let idle = TcpStream::connect(addr).unwrap();
        assert_eq!(
            get(TcpStream::connect(addr).unwrap(), "/healthz"),
            (200, "ok\n".into())
        );
        // The idle connection was left alone meanwhile, not answered and
        // closed to make room for the other client.
        assert_eq!(get(idle, "/livez"), (200, "ok\n".into()));
        let (code, body) = get(TcpStream::connect(addr).unwrap(), "/metrics?x=1");
        assert_eq!(code, 200);
        assert!(body.trim_end().ends_with("# EOF"), "{body}");
        assert_eq!(get(TcpStream::connect(addr).unwrap(), "/nope").0, 404);
    }

    #[test]
    fn what_a_change_set_could_not_do_is_counted_by_kind() {
        use crate::compute::reconcile::Problem;
        let h = Health::new();
        let taken = Problem::HealthCheckPortTaken {
            service: crate::model::snapshot::ObjRef::new("x", "b"),
            port: 30000,
            holder: crate::model::snapshot::ObjRef::new("x", "a"),
        };
        h.metrics.problems(&[
            taken.clone(),
            taken,
            Problem::Invalid("Service x/c: spec.clusterIPs[0]: `10.96.0.300`".into()),
            Problem::Policy(crate::compute::policy::PolicyProblem::IpcacheFull {
                left_out: 3,
                capacity: 10,
            }),
        ]);
        let yaml = crate::source::Rejected {
            file: Some("a.yaml".into()),
            object: Some("document 2 (line 6)".into()),
            kind: crate::source::RejectKind::Yaml,
            reason: "YAML: bad".into(),
        };
        h.metrics.rejected(&[yaml.clone(), yaml]);
        let body = h.respond("/metrics").2;
        for line in [
            "lb_sync_problems_total{kind=\"health_check_node_port_taken\"} 2",
            "lb_sync_problems_total{kind=\"invalid_object\"} 1",
            "lb_sync_problems_total{kind=\"policy_ipcache_full\"} 1",
            "lb_source_rejected_total{kind=\"yaml\"} 2",
        ] {
            assert!(body.contains(line), "no `{line}` in:\n{body}");
        }
    }

    #[test]
    fn healthz_waits_for_the_first_sync_and_metrics_are_prometheus_text() {
        let h = Health::new();
        assert_eq!(h.respond("/healthz").0, 503);
        assert_eq!(h.respond("/livez").0, 200);
        h.synced();
        assert_eq!(h.respond("/healthz").0, 200);
        h.alive_at
            .store(now_s() - STALE_AFTER_S - 1, Ordering::Relaxed);
        assert_eq!(
            h.respond("/healthz").0,
            503,
            "a stalled sync loop is unhealthy"
        );
        h.alive();
        h.node_deleting(true);
        assert_eq!(h.respond("/healthz").0, 503, "the Node is being deleted");
        h.node_deleting(false);
        assert_eq!(h.respond("/healthz").0, 200);
        h.metrics
            .objects
            .get_or_create(&KindLabel {
                kind: "Service".into(),
            })
            .set(3);
        h.metrics.sync_duration_seconds.observe(0.002);
        let (code, _, body) = h.respond("/metrics");
        assert_eq!(code, 200);
        assert!(body.contains("lb_objects{kind=\"Service\"} 3"), "{body}");
        assert!(body.contains("lb_sync_duration_seconds_bucket"), "{body}");
        assert!(body.trim_end().ends_with("# EOF"), "{body}");
    }

    #[test]
    fn healthz_serves_with_warnings_when_input_is_left_out() {
        let h = Health::new();
        h.synced();
        h.left_out(2, 1);
        let (code, _, body) = h.respond("/healthz");
        assert_eq!(code, 200, "what fits is served: {body}");
        assert!(body.starts_with("ok\n"), "{body}");
        assert!(
            body.contains("2 Services not programmed") && body.contains("1 object rejected"),
            "{body}"
        );
        let (_, _, metrics) = h.respond("/metrics");
        assert!(
            metrics.contains("lb_services_not_programmed 2"),
            "{metrics}"
        );
        assert!(metrics.contains("lb_rejected_objects 1"), "{metrics}");
        h.left_out(0, 0);
        assert_eq!(h.respond("/healthz").2, "ok\n");
        // not synced: 503 whatever else
        let h = Health::new();
        h.left_out(1, 0);
        assert_eq!(h.respond("/healthz").0, 503);
    }
}
