//! The lab's agents: one per node, started in its namespace and control
//! cgroup, waited for until they serve a generation, restarted in a storm,
//! and their state dumped after a step for the tests.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{Lab, Options, control, control::Cluster, scenario, scenario::Scenario, topo};
use crate::spawn::{Proc, confine};

pub(super) struct AgentRun {
    node: String,
    pin_dir: PathBuf,
    log: PathBuf,
    proc: Proc,
    /// How to start it again (a restart storm): its arguments, control
    /// cgroup and network namespace.
    args: Vec<String>,
    ctl: PathBuf,
    netns: PathBuf,
}

impl AgentRun {
    /// Starts the agent, its stderr appended to its log.
    fn spawn(args: &[String], ctl: &Path, netns: &Path, log: &Path) -> anyhow::Result<Proc> {
        let logf = std::fs::File::options()
            .create(true)
            .append(true)
            .open(log)?;
        let mut cmd = Command::new(crate::agent_bin());
        cmd.args(args).stderr(logf);
        confine(&mut cmd, Some(ctl), Some(netns))?;
        cmd.stdout(std::process::Stdio::null())
            .stdin(std::process::Stdio::null());
        let child = cmd.spawn().context("spawning lb-agent")?;
        Ok(Proc {
            child,
            stdout: None,
        })
    }

    /// SIGKILL, then the same agent again.
    fn restart(&mut self) -> anyhow::Result<()> {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
        self.proc = Self::spawn(&self.args, &self.ctl, &self.netns, &self.log)?;
        Ok(())
    }
}

/// Restarts every agent every `every` until `stop`; returns the restarts.
/// The rounds keep a fixed cadence from the start (a round that took long
/// makes the next come sooner), so the time restarts take on a loaded
/// machine does not thin the storm out.
pub(super) fn storm(
    agents: &mut [AgentRun],
    every: Duration,
    stop: &AtomicBool,
) -> anyhow::Result<u64> {
    let mut restarts = 0;
    let mut until = Instant::now();
    loop {
        until += every;
        while Instant::now() < until {
            if stop.load(Ordering::Relaxed) {
                return Ok(restarts);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for a in agents.iter_mut() {
            a.restart()
                .with_context(|| format!("restarting the agent of node {}", a.node))?;
            restarts += 1;
        }
    }
}

impl Lab {
    pub(super) fn start_agents(
        &mut self,
        c: &Cluster,
        node_cgroups: &[PathBuf],
        ctl: &Path,
        sc: &Scenario,
        opts: &Options,
    ) -> anyhow::Result<()> {
        for (k, node) in c.nodes.iter().enumerate() {
            let pin_dir =
                PathBuf::from("/sys/fs/bpf").join(format!("{}n{}", topo::prefix(), k + 1));
            let log = self.dir.join(format!("agent-{node}.log"));
            let mut args: Vec<String> = vec![
                "run".into(),
                format!("--source=file:{}", self.dir.join("source").display()),
                format!("--node-name={node}"),
                format!("--pin-dir={}", pin_dir.display()),
                format!("--cgroup={}", node_cgroups[k].display()),
                // node-local: the node's own address in its namespace
                format!(
                    "--health-addr={}:10256",
                    control::node_ip(k, scenario::Family::IPv4)
                ),
            ];
            args.extend(sc.agent_args.iter().cloned());
            args.extend(opts.agent_args.iter().cloned());
            let netns = topo::ns_path(&topo::node_ns(k));
            let proc = AgentRun::spawn(&args, ctl, &netns, &log)?;
            self.agents.push(AgentRun {
                node: node.clone(),
                pin_dir,
                log,
                proc,
                args,
                ctl: ctl.to_path_buf(),
                netns,
            });
        }
        Ok(())
    }

    /// Waits until every agent reports `generation` in `lb-agent status`.
    pub(super) fn wait_synced(&mut self, generation: u64) -> anyhow::Result<()> {
        for a in &mut self.agents {
            let log = |a: &AgentRun| tail(&std::fs::read_to_string(&a.log).unwrap_or_default());
            let what = format!(
                "the agent of node {} syncing generation {generation}",
                a.node
            );
            crate::try_wait_until(Duration::from_secs(60), &what, || {
                let out = Command::new(crate::agent_bin())
                    .args(["status", "-o", "json"])
                    .arg(format!("--pin-dir={}", a.pin_dir.display()))
                    .output()?;
                let synced = serde_json::from_slice::<serde_json::Value>(&out.stdout)
                    .ok()
                    .and_then(|v| v["synced_generation"].as_u64())
                    .is_some_and(|g| g >= generation);
                if let (false, Ok(Some(st))) = (synced, a.proc.child.try_wait()) {
                    bail!("the agent of node {} exited ({st}):\n{}", a.node, log(a));
                }
                Ok(synced)
            })
            .map_err(|e| anyhow::anyhow!("{e:#}:\n{}", log(a)))?;
        }
        Ok(())
    }

    /// For tests: each node's conntrack, status, endpoints, backends and
    /// packet-filter rules after a step, as
    /// `DIR/step<i>-<node>-{ct,status,endpoints,backends}.json` and `-rules.txt`.
    pub(super) fn dump(&self, dir: &Path, step: usize) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        for (k, a) in self.agents.iter().enumerate() {
            for (what, args) in [
                ("ct", ["ct", "list", "-o", "json"].as_slice()),
                ("status", ["status", "-o", "json"].as_slice()),
                ("endpoints", ["endpoint", "list", "-o", "json"].as_slice()),
                ("backends", ["backend", "list", "-o", "json"].as_slice()),
            ] {
                let out = Command::new(crate::agent_bin())
                    .args(args)
                    .arg(format!("--pin-dir={}", a.pin_dir.display()))
                    .output()?;
                std::fs::write(
                    dir.join(format!("step{step}-{}-{what}.json", a.node)),
                    &out.stdout,
                )?;
            }
            let rules = topo::sh_out(
                &topo::node_ns(k),
                "iptables-save 2>&1; ip6tables-save 2>&1; nft list ruleset 2>&1",
            );
            std::fs::write(dir.join(format!("step{step}-{}-rules.txt", a.node)), rules)?;
        }
        Ok(())
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
