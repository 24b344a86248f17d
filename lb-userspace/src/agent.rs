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
    let Source::File(dir) = &opts.source;
    let mut source = FileSource::new(dir);
    let mut status = dp.status()?;
    status.agent_pid = std::process::id();
    dp.set_status(status)?;
    let mut needs_resync = false;

    let mut tick = tokio::time::interval(opts.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
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
                tracing::error!("source {}: {e:#}", dir.display());
                continue;
            }
        };
        for e in &batch.errors {
            tracing::error!("{e}");
        }
        match rec.apply(&batch.changes, batch.full, &mut dp) {
            Ok(out) => {
                for e in &out.errors {
                    tracing::error!("{e}");
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
