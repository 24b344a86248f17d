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
    let mut status = dp.status()?;
    status.agent_pid = std::process::id();
    dp.set_status(status)?;
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
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(removed = n, "conntrack sweep"),
                    Err(e) => tracing::warn!("conntrack sweep: {e:#}"),
                }
                continue;
            }
            _ = tick.tick() => {}
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
        match rec.apply(&batch.changes, batch.full, &mut dp) {
            Ok(out) => {
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
