//! `lb-agent run`: load or adopt the datapath, then apply change sets from
//! the source as they come, recording each applied generation.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;

mod ct_growth;
mod files;
mod left_out;
pub mod memory;
mod node;

use left_out::{
    destroy_left_udp, grow_for_left_out, log_left_out, publish_left_out, record_capacity,
};
use node::{local_addrs, sync_pod_ifaces};

use crate::{
    compute::plan::{Mirror, Op},
    compute::reconcile::{Reconciler, Writer},
    compute::{policy::PolicyMaps, policy_plan::PolicyOp, policy_sync::PolicySync},
    datapath::{self, Datapath, LoadOptions},
    source,
    source::Batch,
};

#[derive(Clone, Debug)]
pub enum Source {
    File(PathBuf),
    Kube,
}

impl std::str::FromStr for Source {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            Some(("file", dir)) if !dir.is_empty() => Ok(Self::File(dir.into())),
            _ if s == "kube" => Ok(Self::Kube),
            _ => Err(format!("unknown source `{s}`: expected kube or file:DIR")),
        }
    }
}

pub struct RunOptions {
    pub source: Source,
    pub kubeconfig: Option<PathBuf>,
    pub api_server: Option<String>,
    pub node_name: Option<String>,
    /// Empty: the interfaces holding this node's addresses.
    pub devices: Vec<String>,
    /// Name patterns (`*` globs) of pod interfaces that get the TC
    /// programs (loadBalancerSourceRanges for pods, and pods' traffic the
    /// socket hooks leave to the packet path).
    pub pod_ifaces: Vec<String>,
    /// Conntrack idle timeouts the sweep applies.
    pub ct_timeouts: crate::compute::conntrack_gc::Timeouts,
    /// Empty: every address of the Node object serves NodePorts.
    pub node_port_cidrs: Vec<crate::model::cidr::Cidr>,
    /// `--external-ip-cidrs`: the only addresses externalIPs may use
    /// (empty: any but this node's addresses and ClusterIPs).
    pub external_ip_cidrs: Vec<crate::model::cidr::Cidr>,
    /// `--service-cidrs`: the cluster's Service ranges, closed to
    /// externalIPs.
    pub service_cidrs: Vec<crate::model::cidr::Cidr>,
    /// `/healthz`, `/livez`, `/metrics` (None: off).
    pub health_addr: Option<std::net::SocketAddr>,
    pub load: LoadOptions,
    pub poll: Duration,
}

impl Writer for Datapath {
    fn capacity(&self) -> crate::compute::reconcile::Capacity {
        Datapath::capacity(self)
    }
    fn policy_capacity(&self) -> crate::compute::policy::Capacity {
        Datapath::policy_capacity(self)
    }
    fn grow_policy(
        &mut self,
        wanted: &crate::compute::policy::Capacity,
    ) -> Option<crate::compute::policy::Capacity> {
        self.grow_policy_maps(wanted)
    }
    fn apply(&mut self, ops: &[Op]) -> anyhow::Result<()> {
        Datapath::apply(self, ops)
    }
    fn read_mirror(&self) -> anyhow::Result<Mirror> {
        Datapath::read_mirror(self)
    }
    fn apply_policy(&mut self, ops: &[PolicyOp]) -> anyhow::Result<()> {
        self.policy.apply(ops)
    }
    fn read_policy(&self) -> anyhow::Result<PolicyMaps> {
        self.policy.read()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    crate::datapath::host::check_ephemeral_ports();
    let health = crate::serve::health::Health::new();
    let (tx, mut batches) = tokio::sync::mpsc::channel::<Batch>(source::QUEUED);
    let source_desc = match &opts.source {
        Source::File(dir) => {
            let (polled, every) = (dir.clone(), opts.poll);
            std::thread::Builder::new()
                .name("file-source".into())
                .spawn(move || files::poll_files(polled, every, tx))
                .context("starting the file source's thread")?;
            format!("file:{}", dir.display())
        }
        Source::Kube => {
            let node_name = opts
                .node_name
                .clone()
                .context("--source kube needs --node-name or NODE_NAME")?;
            let (client, url) = source::kube::client(&source::kube::KubeOptions {
                kubeconfig: opts.kubeconfig.clone(),
                api_server: opts.api_server.clone(),
            })
            .await?;
            let desc = format!("kube {url}");
            tokio::spawn(source::kube::run(client, node_name, health.clone(), tx));
            desc
        }
    };
    let mut dp = datapath::load(&opts.load)?;
    let mirror = dp.read_mirror()?;
    tracing::info!(
        frontends = mirror.frontends().count(),
        backends = mirror.backends().len(),
        pin_dir = %opts.load.pin_dir.display(),
        "datapath ready; adopted what the maps held"
    );
    let mut rec = Reconciler::new(mirror, opts.node_name.clone());
    rec.node_port_cidrs = opts.node_port_cidrs.clone();
    rec.external_ip_cidrs = opts.external_ip_cidrs.clone();
    rec.service_cidrs = opts.service_cidrs.clone();
    rec.policy = PolicySync::adopt(dp.policy.read()?);
    rec.policy.host_addrs = local_addrs();
    rec.policy.ifindex_of = crate::datapath::host::host_routes();
    let mut status = dp.status()?;
    status.agent_pid = std::process::id();
    status.set_source(&source_desc);
    status.health_port = match opts.health_addr {
        Some(addr) => {
            let bound = crate::serve::health::serve(addr, health.clone())
                .with_context(|| format!("--health-addr {addr}"))?;
            tracing::info!(%bound, "health endpoint serving /healthz /livez /metrics");
            bound.port() as u32
        }
        None => 0,
    };
    dp.set_status(status)?;
    record_capacity(&health, dp.sizes());
    let pinned = datapath::Pinned {
        pin_dir: opts.load.pin_dir.clone(),
    };
    let mut needs_resync = false;
    // A failed write is answered with full resyncs, backing off (from one
    // tick to 30 s) and said once per distinct error, never every tick.
    let mut resync = crate::backoff::Backoff::new(opts.poll);
    // The generation of a change set whose write failed: recorded once a
    // resync has put its state in the maps.
    let mut unrecorded: Option<u64> = None;
    // What the source holds and cannot read (the file source's list).
    let mut source_rejected: Vec<crate::source::Rejected> = Vec::new();
    let mut last_report = None;
    let mut node = node::NodeDevices::default();
    let mut health_checks = crate::serve::health_check::HealthChecks::default();

    let mut ct_growth = ct_growth::CtGrowth::default();
    let sweeper = {
        let health = health.clone();
        let record = ct_growth.recorder();
        crate::datapath::Sweeper::spawn(
            opts.load.pin_dir.clone(),
            opts.ct_timeouts,
            crate::compute::ct_sweep::SWEEP_EVERY,
            move |r| match r {
                Ok(r) => {
                    record(crate::datapath::Kept {
                        ct: r.kept as u64,
                        pol_ct: r.policy_kept as u64,
                        affinity: r.affinity_kept as u64,
                    });
                    health.metrics.swept(&r);
                }
                Err(e) => tracing::warn!("conntrack sweep: {e:#}"),
            },
        )
        .context("starting the conntrack sweeper thread")?
    };
    // Metrics and pod interfaces: what the sweeps did on this loop.
    let mut gc = tokio::time::interval(crate::compute::ct_sweep::SWEEP_EVERY);
    gc.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tick = tokio::time::interval(opts.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // The sender stays here so the channel never closes when nothing watches.
    let (link_tx, mut link_events) = tokio::sync::mpsc::channel::<()>(1);
    if !opts.pod_ifaces.iter().all(String::is_empty) {
        crate::datapath::host::watch_links(link_tx.clone())?;
    }
    loop {
        let mut batch = tokio::select! {
            _ = gc.tick() => {
                let t = std::time::Instant::now();
                ct_growth.grow_if_full(&mut dp);
                sync_pod_ifaces(&mut dp, &opts.pod_ifaces);
                // Not before the first change set: it attaches the devices
                // in the order a swap needs, and the first tick comes at once.
                if health.is_synced() {
                    node.retry(&mut dp, &opts.devices, &opts.pod_ifaces);
                    dp.finish_carry();
                }
                if let Ok(counters) = pinned.counters() {
                    for (name, v) in counters {
                        health.metrics.datapath_packets.get_or_create(&crate::serve::health::ReasonLabel { reason: name.into() }).set(v as i64);
                    }
                }
                policy_metrics(&health, &pinned, &rec);
                tracing::debug!(took_ms = t.elapsed().as_secs_f64() * 1e3, "periodic work");
                continue;
            }
            _ = tick.tick() => {
                health.alive();
                // A conntrack growth loads on a thread, and the grown map's
                // copy runs on one: each ends soon after it is done.
                if ct_growth.ended(&mut dp) {
                    record_capacity(&health, dp.sizes());
                }
                if dp.carry_copied() {
                    dp.finish_carry();
                }
                if needs_resync && resync.due() {
                    let resynced = rec.resync(&mut dp);
                    let resynced = grow_for_left_out(&mut dp, &mut rec, resynced);
                    match resynced {
                        Ok(o) => {
                            tracing::info!(
                                ops = o.ops,
                                writing_ms = dp.take_write_time().as_secs_f64() * 1e3,
                                "full resync done"
                            );
                            destroy_left_udp(&dp, &mut rec, &health);
                            sweeper.backends_left(rec.take_left_backends());
                            needs_resync = false;
                            resync.reset();
                            log_left_out(&o);
                            if let Some(g) = unrecorded.take() {
                                status.synced_generation = g;
                            }
                            publish_left_out(
                                &opts.load.pin_dir,
                                &health,
                                &rec,
                                &source_rejected,
                                status.synced_generation,
                                &mut last_report,
                            );
                            status.synced_at_unix_ms = now_ms();
                            if let Err(e) = dp.set_status(status) {
                                tracing::warn!("recording the resync: {e:#}");
                            }
                        }
                        Err(e) => resync.failed(&format!("{e:#}")),
                    }
                }
                continue;
            }
            Some(()) = link_events.recv() => {
                let t = std::time::Instant::now();
                sync_pod_ifaces(&mut dp, &opts.pod_ifaces);
                // A pod's route names its interface: source validation.
                let routes = crate::datapath::host::host_routes();
                if routes != rec.policy.ifindex_of && health.is_synced() {
                    rec.policy.ifindex_of = routes;
                    match rec.sync_policy(&mut dp) {
                        Ok(_) => {
                            if let Err(e) = crate::serve::report::write(&opts.load.pin_dir, &rec.policy.report) {
                                tracing::warn!("policy report: {e:#}");
                            }
                        }
                        Err(e) => {
                            tracing::error!("writing the policy maps failed: {e:#}; resyncing");
                            needs_resync = true;
                        }
                    }
                }
                tracing::debug!(took_ms = t.elapsed().as_secs_f64() * 1e3, "link change");
                continue;
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => {
                dp.settle();
                break;
            }
            b = batches.recv() => match b {
                Some(b) => b,
                None => anyhow::bail!("the source stopped"),
            },
        };
        health.metrics.rejected(&batch.errors);
        let started = std::time::Instant::now();
        rec.policy.ifindex_of = crate::datapath::host::host_routes();
        if let Some(r) = batch.rejected.take() {
            source_rejected = r;
        }
        let changes = batch.changes.len();
        let applied = rec.apply_from(
            std::mem::take(&mut batch.changes),
            &batch.files,
            batch.full,
            &mut dp,
        );
        // The Services left out for room get it now.
        let applied = grow_for_left_out(&mut dp, &mut rec, applied);
        // Even after a failed write: those backends are gone from what the
        // maps are to hold.
        destroy_left_udp(&dp, &mut rec, &health);
        sweeper.backends_left(rec.take_left_backends());
        match applied {
            Ok(out) => {
                unrecorded = None;
                log_left_out(&out);
                health
                    .metrics
                    .sync_duration_seconds
                    .observe(started.elapsed().as_secs_f64());
                health.synced();
                for (kind, n) in batch.counts.iter().flatten() {
                    health
                        .metrics
                        .objects
                        .get_or_create(&crate::serve::health::KindLabel { kind: kind.clone() })
                        .set(*n as i64);
                }
                // The sizes too: a map may have grown in this change set.
                record_capacity(&health, dp.sizes());
                let m = rec.mirror();
                for (map, n) in [
                    (lb_common::MAP_SERVICES, m.services().len()),
                    (lb_common::MAP_BACKENDS, m.backends().len()),
                    (lb_common::MAP_SRC_RANGES, m.range_entries()),
                ] {
                    health
                        .metrics
                        .map_entries
                        .get_or_create(&crate::serve::health::MapLabel { map: map.into() })
                        .set(n as i64);
                }
                health.metrics.problems(&out.errors);
                if out.policy_changed
                    && let Err(e) =
                        crate::serve::report::write(&opts.load.pin_dir, &rec.policy.report)
                {
                    tracing::warn!("policy report: {e:#}");
                }
                health_checks.update(&rec.health_checks);
                node.sync(&mut dp, &rec, &opts.devices, &opts.pod_ifaces);
                // Pods come with their objects: their interfaces are new now.
                sync_pod_ifaces(&mut dp, &opts.pod_ifaces);
                // This agent's programs now run under every link.
                dp.finish_carry();
                health.node_deleting(rec.snapshot.node.deleting);
                if let Some(generation) = batch.generation {
                    status.synced_generation = generation;
                }
                // Before the generation is recorded: whoever sees it sees
                // what it left out.
                publish_left_out(
                    &opts.load.pin_dir,
                    &health,
                    &rec,
                    &source_rejected,
                    status.synced_generation,
                    &mut last_report,
                );
                let (generation, full) = (batch.generation, batch.full);
                if changes >= memory::TRIM_AFTER {
                    // What the change set's objects took goes back before
                    // the sync is recorded: the memory after a sync is the
                    // agent's steady state, not a parse's leftovers.
                    drop(batch);
                    memory::release_freed();
                }
                status.synced_at_unix_ms = now_ms();
                dp.set_status(status)
                    .context("recording the synced generation")?;
                if full {
                    // A full change set (a cold start: seconds at 100,000
                    // Services) leaves the periodic work overdue; run at
                    // once, it would hold the first changes after it
                    // (25-60 ms). It comes a period later instead.
                    gc.reset();
                }
                tracing::info!(
                    generation,
                    changes,
                    ops = out.ops,
                    full,
                    took_ms = started.elapsed().as_secs_f64() * 1e3,
                    writing_ms = dp.take_write_time().as_secs_f64() * 1e3,
                    "change set applied"
                );
            }
            Err(e) => {
                tracing::error!("writing the maps failed: {e:#}; resyncing");
                needs_resync = true;
                unrecorded = batch.generation.or(unrecorded);
            }
        }
    }
    tracing::info!("stopping; pinned maps and links stay and keep serving");
    Ok(())
}

/// Policy verdicts per endpoint (by pod) and reason, into `/metrics`.
fn policy_metrics(
    health: &crate::serve::health::Health,
    pinned: &crate::datapath::Pinned,
    rec: &Reconciler,
) {
    let Ok(counts) = pinned.policy_counts() else {
        return;
    };
    let pods: std::collections::HashMap<u32, &str> = rec
        .policy
        .report
        .endpoints
        .iter()
        .map(|e| (e.ep_id, e.pod.as_str()))
        .collect();
    for (ep, row) in counts {
        let pod = pods
            .get(&ep)
            .copied()
            .unwrap_or(if ep == 0 { "unknown" } else { "gone" });
        for (reason, v) in lb_common::POL_REASON_NAMES.iter().zip(row) {
            health
                .metrics
                .policy_verdicts
                .get_or_create(&crate::serve::health::PolicyLabel {
                    pod: pod.into(),
                    reason: (*reason).into(),
                })
                .set(v as i64);
        }
    }
}
