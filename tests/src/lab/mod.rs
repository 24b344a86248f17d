//! The lab (LAB.md): a cluster in network namespaces driven by a scenario
//! file. `run` validates everything first (exit 2, nothing created), builds
//! the topology and agents (exit 1 naming the failed step), runs each step's
//! probes, prints one JSON line per attempt and tears everything down.
//!
//! Split by job: this file runs the steps and tears down; `agents` starts,
//! waits for, restarts and dumps the nodes' agents; `control` holds the
//! cluster's objects; `probes` runs and prints the probes; `topo` builds
//! the namespaces.

mod agents;
pub mod control;
pub mod probes;
pub mod scenario;
pub mod topo;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, bail};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::spawn::Proc;
use agents::{NodeAgent, storm};
use control::Cluster;
use probes::Resolved;
use scenario::{Invalid, Scenario};

pub struct Options {
    pub scenario: PathBuf,
    pub agent_args: Vec<String>,
    pub human: bool,
}

/// Exit codes of LAB.md.
pub const RAN: i32 = 0;
pub const SETUP_FAILED: i32 = 1;
pub const INVALID: i32 = 2;

/// Everything checked before anything is created: the scenario, every
/// step's objects, every probe's references.
pub fn validate(text: &str) -> Result<(Scenario, Vec<Vec<Resolved>>), Invalid> {
    let sc = Scenario::parse(text)?;
    let mut c = Cluster::new(&sc);
    let mut steps = Vec::new();
    let mut holds = Vec::new();
    for (i, step) in sc.steps().iter().enumerate() {
        let at = if i == 0 {
            String::new()
        } else {
            format!("steps[{}].", i - 1)
        };
        c.apply(step, &at)?;
        steps.push(probes::resolve(&c, &step.probes, i, &at, &mut holds)?);
    }
    Ok((sc, steps))
}

fn cgroup_dir(name: &str) -> anyhow::Result<PathBuf> {
    Ok(crate::cgroup_base()?.join(format!("{}{name}", topo::prefix())))
}

pub fn run(opts: &Options) -> i32 {
    let text = match std::fs::read_to_string(&opts.scenario) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("lab: cannot read {}: {e}", opts.scenario.display());
            return INVALID;
        }
    };
    let (sc, plans) = match validate(&text) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("lab: {}: {e}", opts.scenario.display());
            return INVALID;
        }
    };
    // Remove what dead lab runs left, and nothing else.
    crate::cleanup("lbl", |pid| !crate::pid_alive(pid));
    install_teardown_on_signal();
    let mut lab = Lab {
        xdp_pass: None,
        dir: std::env::temp_dir().join(format!("{}run", topo::prefix())),
        agents: vec![],
        holds: BTreeMap::new(),
        written: BTreeMap::new(),
    };
    let result = lab.go(&sc, &plans, opts);
    if INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
        // The signal thread tears down and exits 130; what the interrupted
        // run did after the signal does not count.
        loop {
            std::thread::park();
        }
    }
    let csum = lab.checksum_errors(&sc);
    drop(lab);
    teardown();
    match result {
        Ok(()) if csum.is_empty() => RAN,
        Ok(()) => {
            eprintln!("lab: checksum errors counted: {}", csum.join(", "));
            SETUP_FAILED
        }
        Err(e) => {
            eprintln!("lab: set-up failed: {e:#}");
            SETUP_FAILED
        }
    }
}

fn teardown() {
    let me = std::process::id();
    crate::cleanup("lbl", |pid| pid == me);
}

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// SIGINT/SIGTERM/SIGHUP are blocked in every thread and waited for by one,
/// which tears the run down and exits.
#[expect(unsafe_code, reason = "signal masks for teardown on Ctrl-C")]
fn install_teardown_on_signal() {
    // SAFETY: sigset manipulation on a local set; pthread_sigmask on this thread.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    std::thread::spawn(move || {
        let mut sig = 0;
        // SAFETY: sigwait on a valid set, writing into a local.
        unsafe { libc::sigwait(&set, &mut sig) };
        INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
        eprintln!("lab: signal {sig}: tearing down");
        teardown();
        std::process::exit(130);
    });
}

struct Lab {
    /// XDP_PASS programs on the underlay's bridge-side peers (native XDP).
    xdp_pass: Option<aya_keepalive::Keep>,
    dir: PathBuf,
    agents: Vec<NodeAgent>,
    holds: BTreeMap<String, Proc>,
    written: BTreeMap<String, String>,
}

impl Lab {
    fn go(&mut self, sc: &Scenario, plans: &[Vec<Resolved>], opts: &Options) -> anyhow::Result<()> {
        std::fs::create_dir_all(self.dir.join("source")).context("creating the run directory")?;
        let mut c = Cluster::new(sc);
        let ctl = cgroup_dir("ctl")?;
        let ext = cgroup_dir("ext")?;
        for cg in [&ctl, &ext] {
            std::fs::create_dir(cg).with_context(|| format!("creating cgroup {}", cg.display()))?;
        }
        check_external_cgroup(&ext)?;
        let mut node_cgroups = Vec::new();
        for k in 0..c.nodes.len() {
            let cg = cgroup_dir(&format!("n{}", k + 1))?;
            std::fs::create_dir(&cg)
                .with_context(|| format!("creating cgroup {}", cg.display()))?;
            node_cgroups.push(cg);
        }
        topo::build(&c).context("building the topology")?;
        let args: Vec<&String> = sc.agent_args.iter().chain(&opts.agent_args).collect();
        let native = args.windows(2).any(|w| w[0] == "--xdp" && w[1] == "native")
            || args.iter().any(|a| *a == "--xdp=native");
        if native {
            self.xdp_pass = Some(
                topo::xdp_pass_on_peers(&c)
                    .context("attaching XDP_PASS to the bridge-side peers")?,
            );
        }
        self.start_servers(&c, &node_cgroups)
            .context("starting the pods' servers")?;
        let mut out = probes::Output::new(opts.human);
        for (i, step) in sc.steps().iter().enumerate() {
            c.apply(step, "").map_err(|e| anyhow::anyhow!("{e}"))?;
            let generation = i as u64 + 1;
            self.write_source(&c, generation)
                .with_context(|| format!("writing step {i}'s objects"))?;
            if i == 0 {
                self.start_agents(&c, &node_cgroups, &ctl, sc, opts)
                    .context("starting the agents")?;
            }
            self.wait_synced(generation)
                .with_context(|| format!("step {i}"))?;
            let attempts = match step.restart_agents_every_ms {
                Some(ms) => {
                    if plans[i]
                        .iter()
                        .any(|r| matches!(r.kind, probes::Kind::Hold(_)))
                    {
                        bail!("step {i}: hold a connection in a step without restarts");
                    }
                    let stop = AtomicBool::new(false);
                    let (agents, holds) = (&mut self.agents, &mut self.holds);
                    // The agents are restarted from this thread: their
                    // parent-death signal follows the thread that spawned
                    // them, and the probes' thread ends with the step.
                    let (attempts, restarts) = std::thread::scope(|s| {
                        let probing = s.spawn(|| {
                            let a = probes::run_step(&plans[i], &node_cgroups, &ext, holds);
                            stop.store(true, Ordering::Relaxed);
                            a
                        });
                        let restarts = storm(agents, Duration::from_millis(ms), &stop);
                        (probing.join(), restarts)
                    });
                    let attempts =
                        attempts.map_err(|_| anyhow::anyhow!("step {i}'s probes panicked"))?;
                    let restarts = restarts?;
                    eprintln!("step {i}: {restarts} agent restarts while its probes ran");
                    // The last agents started must be serving before what follows.
                    self.wait_synced(generation)
                        .with_context(|| format!("step {i}, after the restart storm"))?;
                    attempts
                }
                None => probes::run_step(&plans[i], &node_cgroups, &ext, &mut self.holds),
            };
            for a in attempts {
                out.line(&a);
            }
            if let Some(dir) = std::env::var_os("LB_LAB_DUMP_DIR") {
                self.dump(Path::new(&dir), i)
                    .with_context(|| format!("dumping step {i}'s node state"))?;
            }
        }
        out.finish();
        Ok(())
    }

    fn start_servers(&mut self, c: &Cluster, node_cgroups: &[PathBuf]) -> anyhow::Result<()> {
        for (k, cg) in node_cgroups.iter().enumerate() {
            let pods: Vec<(usize, &control::Pod)> = c
                .pods
                .iter()
                .enumerate()
                .filter(|(_, p)| p.node == k)
                .collect();
            if pods.is_empty() {
                continue;
            }
            let mut cmd = Command::new(crate::helper_bin());
            cmd.arg("lab-serve");
            let mut p = Proc::spawn(cmd, Some(cg), None);
            for (i, pod) in pods {
                let ports: Vec<String> = pod
                    .spec
                    .ports
                    .iter()
                    .map(|pp| format!("{}/{}", pp.port, pp.protocol.as_str()))
                    .collect();
                p.send_line(&format!(
                    "{} {} {}",
                    pod.id(),
                    topo::ns_path(&topo::pod_ns(i)).display(),
                    ports.join(" ")
                ));
            }
            p.send_line("");
            let l = p.read_line();
            if l.trim() != "ready" {
                bail!(
                    "the servers of node {} did not start (said `{}`)",
                    c.nodes[k],
                    l.trim()
                );
            }
            self.holds.insert(format!("\0servers-{k}"), p);
        }
        Ok(())
    }

    fn write_source(&mut self, c: &Cluster, generation: u64) -> anyhow::Result<()> {
        let dir = self.dir.join("source");
        let files = c.render();
        for (name, text) in &files {
            if self.written.get(name) != Some(text) {
                let tmp = dir.join(format!(".{name}.tmp"));
                std::fs::write(&tmp, text)?;
                std::fs::rename(&tmp, dir.join(name))?;
            }
        }
        for name in self.written.keys().filter(|n| !files.contains_key(*n)) {
            std::fs::remove_file(dir.join(name))?;
        }
        self.written = files;
        let tmp = dir.join(".GENERATION.tmp");
        std::fs::write(&tmp, generation.to_string())?;
        std::fs::rename(&tmp, dir.join("GENERATION"))?;
        Ok(())
    }

    fn checksum_errors(&self, sc: &Scenario) -> Vec<String> {
        let c = Cluster::new(sc);
        topo::all_namespaces(&c)
            .into_iter()
            .filter(|ns| topo::ns_path(ns).exists())
            .filter_map(|ns| {
                let n = topo::checksum_errors(&ns);
                (n > 0).then(|| format!("{ns}: {n}"))
            })
            .collect()
    }
}

/// Refuses to run when `external`'s cgroup inherits socket programs: a
/// program at the hierarchy's root would translate for `external` too and
/// fake NodePort from outside.
fn check_external_cgroup(cg: &Path) -> anyhow::Result<()> {
    let out = Command::new("bpftool")
        .args(["cgroup", "show"])
        .arg(cg)
        .arg("effective")
        .output()
        .context("running bpftool")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let progs: Vec<&str> = text
        .lines()
        .filter(|l| {
            [
                "connect",
                "sendmsg",
                "recvmsg",
                "getpeername",
                "bind",
                "getsockname",
            ]
            .iter()
            .any(|t| l.contains(t))
        })
        .collect();
    if !progs.is_empty() {
        bail!(
            "the cgroup for `external` ({}) has effective socket programs, attached at an ancestor (likely the hierarchy's root): {}; detach them first",
            cg.display(),
            progs
                .iter()
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    Ok(())
}

/// Keeps loaded programs (and so their attachments) alive.
pub mod aya_keepalive {
    pub struct Keep(pub Box<dyn std::any::Any + Send>);
}
