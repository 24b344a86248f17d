//! `lb-agent run`: load or adopt the datapath, then apply change sets from
//! the source as they come, recording each applied generation.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;

use crate::{
    kernel::{self, Datapath, LoadOptions},
    plan::{Mirror, Op},
    reconcile::{Reconciler, Writer},
    source_file::FileSource,
};

#[derive(Clone, Debug)]
pub enum Source {
    File(PathBuf),
}

impl std::str::FromStr for Source {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            Some(("file", dir)) if !dir.is_empty() => Ok(Self::File(dir.into())),
            _ if s == "kube" => Err("--source kube is not built yet; use --source file:DIR".into()),
            _ => Err(format!("unknown source `{s}`: expected file:DIR")),
        }
    }
}

pub struct RunOptions {
    pub source: Source,
    pub node_name: Option<String>,
    /// Empty: the interfaces holding this node's addresses.
    pub devices: Vec<String>,
    /// Empty: every address of the Node object serves NodePorts.
    pub node_port_cidrs: Vec<crate::cidr::Cidr>,
    /// `/healthz`, `/livez`, `/metrics` (None: off).
    pub health_addr: Option<std::net::SocketAddr>,
    pub load: LoadOptions,
    pub poll: Duration,
}

impl Writer for Datapath {
    fn apply(&mut self, ops: &[Op]) -> anyhow::Result<()> {
        Datapath::apply(self, ops)
    }
    fn read_mirror(&self) -> anyhow::Result<Mirror> {
        Datapath::read_mirror(self)
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    let mut dp = kernel::load(&opts.load)?;
    let mirror = dp.read_mirror()?;
    tracing::info!(
        frontends = mirror.frontends().count(),
        backends = mirror.backends().len(),
        pin_dir = %opts.load.pin_dir.display(),
        "datapath ready; adopted what the maps held"
    );
    let mut rec = Reconciler::new(mirror, opts.node_name.clone());
    rec.node_port_cidrs = opts.node_port_cidrs.clone();
    let Source::File(dir) = &opts.source;
    let mut source = FileSource::new(dir);
    let health = crate::health::Health::new();
    let mut status = dp.status()?;
    status.agent_pid = std::process::id();
    status.health_port = match opts.health_addr {
        Some(addr) => {
            let bound = crate::health::serve(addr, health.clone())
                .with_context(|| format!("--health-addr {addr}"))?;
            tracing::info!(%bound, "health endpoint serving /healthz /livez /metrics");
            bound.port() as u32
        }
        None => 0,
    };
    dp.set_status(status)?;
    let sizes = opts.load.sizes;
    for (map, cap) in [
        (lb_common::MAP_SERVICES, sizes.services),
        (lb_common::MAP_BACKENDS, sizes.backends),
        (lb_common::MAP_CT, sizes.ct),
        (lb_common::MAP_SOCK_REV, sizes.sock_rev),
    ] {
        health
            .metrics
            .map_capacity
            .get_or_create(&crate::health::MapLabel { map: map.into() })
            .set(cap as i64);
    }
    let pinned = kernel::Pinned {
        pin_dir: opts.load.pin_dir.clone(),
    };
    let mut needs_resync = false;
    let mut source_error: Option<String> = None;
    let mut node_addrs: Option<Vec<std::net::IpAddr>> = None;
    let mut health_checks = crate::health_check::HealthChecks::default();

    let mut gc = tokio::time::interval(Duration::from_secs(10));
    gc.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let timeouts = crate::conntrack_gc::Timeouts::default();
    let mut tick = tokio::time::interval(opts.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = gc.tick() => {
                match dp.ct_gc(rec.mirror().backends(), &timeouts) {
                    Ok((removed, kept)) => {
                        health.metrics.conntrack_entries.set(kept as i64);
                        if removed > 0 {
                            tracing::debug!(removed, kept, "conntrack sweep");
                        }
                    }
                    Err(e) => tracing::warn!("conntrack sweep: {e:#}"),
                }
                if let Ok(counters) = pinned.counters() {
                    for (name, v) in counters {
                        health.metrics.datapath_packets.get_or_create(&crate::health::ReasonLabel { reason: name.into() }).set(v as i64);
                    }
                }
                continue;
            }
            _ = tick.tick() => health.alive(),
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
        if needs_resync {
            match rec.resync(&mut dp) {
                Ok(o) => {
                    tracing::info!(ops = o.ops, "full resync done");
                    needs_resync = false;
                }
                Err(e) => {
                    tracing::error!("full resync failed: {e:#}");
                    continue;
                }
            }
        }
        let batch = match source.poll() {
            Ok(Some(b)) => b,
            Ok(None) => continue,
            Err(e) => {
                // Polled every tick: say it once, not ten times a second.
                let msg = format!("{e:#}");
                if source_error.as_deref() != Some(msg.as_str()) {
                    tracing::error!(
                        "source {}: {msg}; keeping the last applied state",
                        dir.display()
                    );
                    source_error = Some(msg);
                }
                continue;
            }
        };
        if source_error.take().is_some() {
            tracing::info!("source {} readable again", dir.display());
        }
        for e in &batch.errors {
            tracing::error!("{e}");
        }
        let started = std::time::Instant::now();
        match rec.apply(&batch.changes, batch.full, &mut dp) {
            Ok(out) => {
                health
                    .metrics
                    .sync_duration_seconds
                    .observe(started.elapsed().as_secs_f64());
                health.synced();
                for (kind, n) in source.counts_by_kind() {
                    health
                        .metrics
                        .objects
                        .get_or_create(&crate::health::KindLabel { kind })
                        .set(n as i64);
                }
                let m = rec.mirror();
                health
                    .metrics
                    .map_entries
                    .get_or_create(&crate::health::MapLabel {
                        map: lb_common::MAP_SERVICES.into(),
                    })
                    .set(m.services().len() as i64);
                health
                    .metrics
                    .map_entries
                    .get_or_create(&crate::health::MapLabel {
                        map: lb_common::MAP_BACKENDS.into(),
                    })
                    .set(m.backends().len() as i64);
                for e in &out.errors {
                    tracing::error!("{e}");
                }
                health_checks.update(&rec.health_checks);
                if let Err(e) = node_setup(&mut dp, &rec, &opts.devices, &mut node_addrs) {
                    tracing::error!("packet datapath: {e:#}");
                }
                if let Some(generation) = batch.generation {
                    status.synced_generation = generation;
                    status.synced_at_unix_ms = now_ms();
                    dp.set_status(status)
                        .context("recording the synced generation")?;
                    tracing::info!(generation, ops = out.ops, "change set applied");
                }
            }
            Err(e) => {
                tracing::error!("writing the maps failed: {e:#}; resyncing");
                needs_resync = true;
            }
        }
    }
    tracing::info!("stopping; pinned maps and links stay and keep serving");
    Ok(())
}

/// When this node's addresses change: the SNAT source in the config map,
/// and the packet programs on the devices (given, or those holding the
/// addresses).
fn node_setup(
    dp: &mut Datapath,
    rec: &Reconciler,
    devices: &[String],
    seen: &mut Option<Vec<std::net::IpAddr>>,
) -> anyhow::Result<()> {
    let addrs = &rec.snapshot.node.addrs;
    if seen.as_ref() == Some(addrs) {
        return Ok(());
    }
    *seen = Some(addrs.clone());
    let mut cfg = lb_common::Config::default();
    if let Some(v4) = addrs.iter().find(|a| a.is_ipv4()) {
        cfg.node_ip4 = crate::desired::net_addr(*v4);
        cfg.flags |= lb_common::CONFIG_HAS_IP4;
    }
    if let Some(v6) = addrs.iter().find(|a| a.is_ipv6()) {
        cfg.node_ip6 = crate::desired::net_addr(*v6);
        cfg.flags |= lb_common::CONFIG_HAS_IP6;
    }
    dp.set_config(cfg)?;
    let devs = if devices.is_empty() {
        crate::host::interfaces_with(addrs)?
    } else {
        devices.to_vec()
    };
    if devs.is_empty() {
        tracing::warn!(
            "no external device found for this node's addresses {addrs:?}; pass --devices"
        );
    }
    dp.attach_devices(&devs)
}
