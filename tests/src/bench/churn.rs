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
    rules::{self, ENDPOINTS_PER_SERVICE, cluster_ip, target},
    topo::{SERVICE_PORT, Topology, client_result, wait_first_ok},
    variants::{client_at, target_of},
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

fn full(n: usize, i: usize) -> usize {
    if i == target(n) {
        1
    } else {
        ENDPOINTS_PER_SERVICE
    }
}

/// A change written and not yet seen in the map.
struct Pending {
    key: ServiceKey,
    count: u16,
    written: Instant,
}

/// `changes` slice changes at `RATE` through `api` to the agent pinned at
/// `pin_dir`, with connection loops to the measured Service meanwhile.
/// The churned Services' slices must be in the API server at full size.
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
    // The loops outlast the churn; a change's wait is at most a period
    // behind, except at the end.
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
    let map = lb_agent::datapath::Pinned {
        pin_dir: pin_dir.to_path_buf(),
    }
    .services_map()?;
    let mut made = vec![0usize; services.len()];
    let mut pending: Vec<Pending> = Vec::new();
    let mut took = Vec::with_capacity(changes);
    let start = Instant::now();
    let mut k = 0;
    while k < changes || !pending.is_empty() {
        pending.retain(|p| {
            let shown = map.get(&p.key, 0).is_ok_and(|v| v.count == p.count);
            if shown {
                took.push(p.written.elapsed().as_secs_f64() * 1e3);
            }
            !shown
        });
        if let Some(p) = pending.iter().find(|p| p.written.elapsed() > SHOW_LIMIT) {
            bail!(
                "a change to {:?} did not show in the services map within {SHOW_LIMIT:?}",
                p.key
            );
        }
        let s = k % services.len();
        let i = services[s];
        let key = frontend(i);
        // The next change to a Service waits until its last one shows
        // (telling them apart needs one at a time): a slow agent slows
        // the churn, which the rate reported says.
        if k < changes
            && start.elapsed() >= period * k as u32
            && !pending.iter().any(|p| p.key == key)
        {
            // Each Service alternates between one endpoint fewer and all.
            let count = full(n, i) - usize::from(made[s].is_multiple_of(2));
            made[s] += 1;
            let written = Instant::now();
            api.apply_yaml(&rules::slice_yaml(n, i, count));
            pending.push(Pending {
                key,
                count: count as u16,
                written,
            });
            k += 1;
        } else {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    let rate = changes as f64 / start.elapsed().as_secs_f64();
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
    took.sort_by(f64::total_cmp);
    let pct = |p: f64| took[((took.len() as f64 * p) as usize).min(took.len() - 1)];
    Ok(Churn {
        services: n,
        variant: Variant::AgentKube,
        changes,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        rate_per_s: Some(rate),
        meanwhile,
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
