//! The lab's agents: one per node, started in its namespace and control
//! cgroup, waited for until they serve a generation, restarted in a storm,
//! and their state dumped after a step for the tests.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{Lab, Options, control, control::Cluster, scenario, scenario::Scenario, topo};
use crate::agent::AgentProc;

/// A node's agent: the shared agent process and the node it serves.
pub(super) struct NodeAgent {
    node: String,
    agent: AgentProc,
}

/// Restarts every agent every `every` until `stop`; returns the restarts.
/// The rounds keep a fixed cadence from the start (a round that took long
/// makes the next come sooner), so the time restarts take on a loaded
/// machine does not thin the storm out.
pub(super) fn storm(
    agents: &mut [NodeAgent],
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
            a.agent
                .restart()
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
            let mut agent = AgentProc::new(
                PathBuf::from("/sys/fs/bpf").join(format!("{}n{}", topo::prefix(), k + 1)),
                node_cgroups[k].clone(),
                self.dir.join("source"),
                self.dir.join(format!("agent-{node}.log")),
            );
            // node-local: the node's own address in its namespace
            agent.health_addr = format!("{}:10256", control::node_ip(k, scenario::Family::IPv4));
            agent.cgroup = Some(ctl.to_path_buf());
            agent.netns = Some(topo::ns_path(&topo::node_ns(k)));
            agent.extra = std::iter::once(format!("--node-name={node}"))
                .chain(sc.agent_args.iter().cloned())
                .chain(opts.agent_args.iter().cloned())
                .collect();
            agent
                .try_start()
                .with_context(|| format!("starting the agent of node {node}"))?;
            self.agents.push(NodeAgent {
                node: node.clone(),
                agent,
            });
        }
        Ok(())
    }

    /// Waits until every agent reports `generation` in `lb-agent status`.
    pub(super) fn wait_synced(&mut self, generation: u64) -> anyhow::Result<()> {
        for a in &mut self.agents {
            a.agent
                .try_wait_synced(generation, Duration::from_secs(60))
                .map_err(|e| {
                    anyhow::anyhow!(
                        "the agent of node {}: {e:#}:\n{}",
                        a.node,
                        a.agent.log_tail(20)
                    )
                })?;
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
                let out = a.agent.try_cli(args)?;
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
