//! EndpointSlices changed through the API server at a steady rate (not one
//! change awaited before the next), each timed from its write to the
//! moment the services map holds it, while connections run to a Service
//! nothing changes: through its ClusterIP (the socket path) and its
//! NodePort (TC). The target: within 5 ms (p99) at 100 changes a
//! second, and no failed connection elsewhere.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lb_common::{BeU16, ServiceKey};

use super::{
    Churn, Path, Variant,
    rules::{self, cluster_ip, full_endpoints, target},
    topo::{SERVICE_PORT, Topology, client_result, wait_first_ok},
    variants::{client_at, target_of, unix_ms},
};

/// Changes written per second.
pub const RATE: u32 = 100;

/// How long one change may take to show before the bench gives up.
const SHOW_LIMIT: Duration = Duration::from_secs(10);

/// The Services whose slices change, in turn: up to ten besides the
/// measured one, each changed every tenth of a second at `RATE`. At one
/// Service there is no other: that one changes and nothing is connected.
pub fn churned(n: usize) -> Vec<usize> {
    let others: Vec<usize> = (0..n).filter(|&i| i != target(n)).take(10).collect();
    if others.is_empty() {
        vec![target(n)]
    } else {
        others
    }
}

/// A change written and not yet seen in the maps.
struct Pending {
    service: usize,
    key: ServiceKey,
    count: u16,
    /// Its slot in the schedule: a change held back (its Service's last
    /// one not shown yet) counts from when it should have been written.
    due: Instant,
    written_unix_ms: u64,
}

/// `changes` slice changes at `RATE` through `api` to the agent pinned at
/// `pin_dir`, with connection loops to the measured Service meanwhile.
/// A change counts as written once the services map holds its endpoint
/// count and the agent has recorded a sync since its write (the change
/// set's other writes, a Maglev table's swap among them, come before
/// that record). The churned Services' slices must be in the API server.
pub fn kube(
    topo: &Topology,
    api: &crate::apiserver::ApiServer,
    pin_dir: &std::path::Path,
    n: usize,
    changes: usize,
) -> anyhow::Result<Churn> {
    let services = churned(n);
    let connected = !services.contains(&target(n));
    let period = Duration::from_secs(1) / RATE;
    // The loops outlast the churn by two seconds of slack (checked).
    let secs = (period * changes as u32 + Duration::from_secs(2)).as_secs_f64();
    let mut loops = Vec::new();
    if connected {
        for path in [Path::ClusterIp, Path::NodePort] {
            let to = target_of(path, n).to_string();
            let mut p =
                topo.spawn_client(client_at(path), &["connections", &to, &secs.to_string()]);
            wait_first_ok(&mut p).with_context(|| format!("the loop through {path:?}"))?;
            loops.push((path, p));
        }
    }
    let pinned = lb_agent::datapath::Pinned {
        pin_dir: pin_dir.to_path_buf(),
    };
    let (map, status) = (pinned.services_map()?, pinned.status_map()?);
    let mut made = vec![0usize; services.len()];
    let mut pending: Vec<Pending> = Vec::new();
    let mut took = Vec::with_capacity(changes);
    let start = Instant::now();
    let mut k = 0;
    while k < changes || !pending.is_empty() {
        let synced_ms = status.get(&0, 0).map_or(0, |s| s.synced_at_unix_ms);
        let mut late = None;
        pending.retain(|p| {
            let count = map.get(&p.key, 0).map(|v| v.count).ok();
            if count == Some(p.count) && synced_ms >= p.written_unix_ms {
                took.push(p.due.elapsed().as_secs_f64() * 1e3);
                return false;
            }
            if p.due.elapsed() > SHOW_LIMIT {
                late = Some(format!(
                    "Service s{}'s change to {} endpoints was not in the maps after {SHOW_LIMIT:?} (the services map holds {count:?}, the agent's last sync {synced_ms} ms, the write {} ms)",
                    p.service, p.count, p.written_unix_ms
                ));
            }
            true
        });
        if let Some(late) = late {
            bail!(late);
        }
        let s = k % services.len();
        let i = services[s];
        let key = frontend(i);
        let due = start + period * k as u32;
        // The next change to a Service waits until its last one shows
        // (telling them apart needs one at a time); it still counts from
        // its slot, so a slow agent shows in the figures.
        if k < changes && Instant::now() >= due && !pending.iter().any(|p| p.key == key) {
            // Each Service alternates between one endpoint fewer and all.
            let count = full_endpoints(n, i) - usize::from(made[s].is_multiple_of(2));
            made[s] += 1;
            let written_unix_ms = unix_ms();
            api.apply_yaml(&rules::slice_yaml(n, i, count));
            pending.push(Pending {
                service: i,
                key,
                count: count as u16,
                due,
                written_unix_ms,
            });
            k += 1;
        } else {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    let elapsed = start.elapsed();
    if connected && elapsed.as_secs_f64() > secs - 0.5 {
        bail!(
            "the churn took {elapsed:?}, past the connection loops' {secs} s: they did not run throughout"
        );
    }
    let rate = changes as f64 / elapsed.as_secs_f64();
    let mut meanwhile = Vec::new();
    for (path, mut p) in loops {
        let m: super::load::Measured = serde_json::from_value(client_result(&mut p)?)?;
        eprintln!(
            "bench:   during the churn, {path:?} to the measured Service: {} ok, {} failed",
            m.ok, m.failed
        );
        meanwhile.push((path, m.ok, m.failed));
    }
    eprintln!(
        "bench:   churn (kube source, {rate:.0} changes/s), ms per change in order: {took:.1?}"
    );
    Ok(Churn {
        rate_per_s: Some(rate),
        meanwhile,
        ..Churn::of(n, Variant::AgentKube, took)
    })
}

/// Service `i`'s ClusterIP frontend, as the agent keys it.
fn frontend(i: usize) -> ServiceKey {
    let ip = std::net::IpAddr::V4(cluster_ip(i));
    ServiceKey::frontend(
        lb_agent::compute::desired::net_addr(ip),
        BeU16::from_host(SERVICE_PORT),
        6,
        lb_common::SCOPE_INTERNAL,
    )
}
