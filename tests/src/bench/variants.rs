//! Each variant brought up on the topology, measured, and taken down
//! again, so the next starts from a clean node.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::bail;

use super::{
    Churn, Cold, Measured, Mode, Options, Path, Results, Row, Variant,
    rules::{self, cluster_ip, target},
    topo::{
        BACKEND, BACKEND_PORT, Client, NODE_DEVICE, NODE_NAME, NODE_OUTSIDE, NODE_PORT,
        SERVICE_PORT, Topology,
    },
};
use crate::agent::{AgentProc, Manifests, pin_path};

/// How long a cold start may take before the bench gives up on it.
const COLD_LIMIT: Duration = Duration::from_secs(900);

fn measure(
    topo: &Topology,
    path: Path,
    n: usize,
    mode: Mode,
    secs: f64,
) -> anyhow::Result<Measured> {
    let m = match mode {
        Mode::Connections => "connections",
        Mode::Requests => "requests",
    };
    let to = target_of(path, n);
    let v = topo.client(client_at(path), &[m, &to.to_string(), &secs.to_string()])?;
    Ok(serde_json::from_value(v)?)
}

/// ClusterIPs are reached from the node (its pods and processes, under the
/// socket hooks); NodePorts and the backend itself from another machine.
pub fn client_at(path: Path) -> Client {
    match path {
        Path::ClusterIp => Client::Inside,
        Path::NodePort | Path::Backend => Client::Outside,
    }
}

pub fn target_of(path: Path, n: usize) -> SocketAddr {
    match path {
        Path::Backend => (BACKEND, BACKEND_PORT).into(),
        Path::ClusterIp => (cluster_ip(target(n)), SERVICE_PORT).into(),
        Path::NodePort => (NODE_OUTSIDE, NODE_PORT).into(),
    }
}

/// Measures `paths` in both modes; a variant that carries no connection
/// at all is an error (the bench would otherwise report a rate of zero
/// as if it were one).
fn measure_paths(
    topo: &Topology,
    n: usize,
    variant: Variant,
    paths: &[Path],
    opts: &Options,
    res: &mut Results,
) -> anyhow::Result<()> {
    for &path in paths {
        for mode in [Mode::Connections, Mode::Requests] {
            let measured = measure(topo, path, n, mode, opts.secs)?;
            if measured.ok == 0 {
                bail!(
                    "{} carried no {mode:?} through {path:?} at {n} Services: {}",
                    variant.label(),
                    measured.first_error.as_deref().unwrap_or("no error")
                );
            }
            eprintln!(
                "bench:   {:<24} {path:?} {mode:?}: {:.0}/s, p50 {:.0} us, p99 {:.0} us, {} failed",
                variant.label(),
                measured.rate,
                measured.p50_us,
                measured.p99_us,
                measured.failed
            );
            res.rows.push(Row {
                services: n,
                variant,
                path,
                mode,
                measured,
            });
        }
    }
    Ok(())
}

/// The control plane alone at `n` Services: cold start, memory and
/// churn from files and from the API server, no traffic measured.
pub fn control(topo: &Topology, n: usize, changes: usize) -> anyhow::Result<Results> {
    let mut res = Results::default();
    let dir = crate::testbed::TempDir(std::env::temp_dir().join(crate::unique("bench-files")));
    std::fs::create_dir_all(&dir.0)?;
    let mut agent = Agent::start(topo, n, &dir.0, &[])?;
    res.cold.push(agent.cold.clone());
    res.churn.push(agent.churn(n, changes)?);
    drop(agent);
    let (cold, churn) = kube(topo, n, &dir.0, changes)?;
    res.cold.push(cold);
    res.churn.push(churn);
    Ok(res)
}

pub fn all(topo: &Topology, n: usize, opts: &Options, res: &mut Results) -> anyhow::Result<()> {
    measure_paths(topo, n, Variant::Direct, &[Path::Backend], opts, res)?;
    let dir = crate::testbed::TempDir(std::env::temp_dir().join(crate::unique("bench-files")));
    std::fs::create_dir_all(&dir.0)?;

    if n <= opts.baselines_up_to {
        baselines(topo, n, &dir.0, opts, res)?;
    }

    let mut agent = Agent::start(topo, n, &dir.0, &[])?;
    res.cold.push(agent.cold.clone());
    measure_paths(
        topo,
        n,
        Variant::Agent,
        &[Path::ClusterIp, Path::NodePort],
        opts,
        res,
    )?;
    res.churn
        .push(agent.churn(n, if opts.quick { 10 } else { 50 })?);
    drop(agent);

    // Five seconds of churn at its rate (one in a quick run).
    let changes = if opts.quick { 100 } else { 500 };
    let (cold, churn) = kube(topo, n, &dir.0, changes)?;
    res.cold.push(cold);
    res.churn.push(churn);

    let _xdp_peer = topo.xdp_pass_on_client()?;
    let agent = Agent::start(topo, n, &dir.0, &["--xdp=native"])?;
    measure_paths(topo, n, Variant::AgentXdp, &[Path::NodePort], opts, res)?;
    // The XDP rows are XDP's only if it translated the packets (TC behind
    // it would carry them too).
    let counters = lb_agent::datapath::Pinned {
        pin_dir: agent.proc.pin_dir.clone(),
    }
    .counters()?;
    let xdp_dnat = lb_common::reasons::Reason::XdpDnat.name();
    let xdp_dnat = counters.iter().find(|(name, _)| *name == xdp_dnat);
    if xdp_dnat.is_none_or(|(_, n)| *n == 0) {
        bail!(
            "XDP native translated no packet at {n} Services (counters: {counters:?}): the XDP rows would be TC's"
        );
    }
    drop(agent);
    Ok(())
}

/// The agent on the node, from a manifest directory written before it
/// starts (a cold start).
pub struct Agent {
    pub proc: AgentProc,
    manifests: Manifests,
    pub cold: Cold,
}

impl Agent {
    pub fn start(
        topo: &Topology,
        n: usize,
        dir: &std::path::Path,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let tag = crate::unique("bench-agent");
        let mdir = dir.join(&tag);
        let _ = std::fs::remove_dir_all(&mdir);
        let mut manifests = Manifests::new(mdir.clone());
        manifests.write("cluster.yaml", &rules::manifests(n));
        manifests.write(
            rules::CHURN_FILE,
            &rules::slice_yaml(n, rules::CHURNED, rules::ENDPOINTS_PER_SERVICE),
        );
        let g = manifests.commit();
        let mut proc = AgentProc::new(
            pin_path(&tag),
            topo.cgroup.path.clone(),
            mdir,
            dir.join(format!("{tag}.log")),
        );
        proc.netns = Some(topo.node.path());
        proc.extra = [
            format!("--node-name={NODE_NAME}"),
            format!("--devices={NODE_DEVICE}"),
        ]
        .into_iter()
        .chain(extra.iter().map(|s| s.to_string()))
        .collect();
        let t = Instant::now();
        proc.start();
        wait_synced(&mut proc, g, COLD_LIMIT)?;
        let secs = t.elapsed().as_secs_f64();
        let rss_mib = proc.pid().and_then(rss_mib);
        let writing_secs = writing_secs(&proc);
        Ok(Self {
            proc,
            manifests,
            cold: Cold {
                services: n,
                variant: Variant::Agent,
                secs,
                rss_mib,
                writing_secs,
            },
        })
    }

    /// `changes` EndpointSlice changes (one endpoint of a Service other
    /// than the measured one going and coming back), one per change set:
    /// from the change set written to the agent's own synced timestamp.
    pub fn churn(&mut self, n: usize, changes: usize) -> anyhow::Result<Churn> {
        let i = rules::CHURNED;
        let mut took = Vec::new();
        for k in 0..changes {
            let full = rules::full_endpoints(n, i);
            let count = if k % 2 == 0 { full - 1 } else { full };
            self.manifests
                .write(rules::CHURN_FILE, &rules::slice_yaml(n, i, count));
            let written = unix_ms();
            let g = self.manifests.commit();
            let s = wait_synced(&mut self.proc, g, Duration::from_secs(60))?;
            took.push(s.synced_at_unix_ms.saturating_sub(written) as f64);
        }
        eprintln!("bench:   churn (file source), ms per change in order: {took:?}");
        Ok(Churn::of(n, Variant::Agent, took))
    }
}

pub(super) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn wait_synced(
    a: &mut AgentProc,
    generation: u64,
    limit: Duration,
) -> anyhow::Result<lb_common::Status> {
    wait_status(a, limit, &format!("generation {generation} synced"), |s| {
        s.synced_generation >= generation
    })
}

/// Waits until the agent's status record satisfies `done`; returns it.
/// Read from the pinned status map in this process: `lb-agent status`
/// also counts every map's entries (2.2M at 100,000 Services), and looking
/// every few milliseconds with it took the CPU the agent was being timed
/// on.
fn wait_status(
    a: &mut AgentProc,
    limit: Duration,
    what: &str,
    done: impl Fn(&lb_common::Status) -> bool,
) -> anyhow::Result<lb_common::Status> {
    let pinned = lb_agent::datapath::Pinned {
        pin_dir: a.pin_dir.clone(),
    };
    let mut seen = None;
    let waited = crate::wait::try_wait_until_every(
        Duration::from_millis(1),
        limit,
        &format!("the agent reporting {what}"),
        || {
            seen = pinned.status().ok().filter(|s| done(s));
            a.assert_running(what);
            Ok(seen.is_some())
        },
    );
    if let Err(e) = waited {
        bail!("{e:#}:\n{}", a.log_text());
    }
    Ok(seen.expect("the wait ended on a status that held"))
}

/// The time the agent says it spent writing the maps for its first
/// change set, once it has logged it (the log line follows the synced
/// status by a moment).
fn writing_secs(a: &AgentProc) -> Option<f64> {
    let mut found = None;
    let _ = crate::wait::try_wait_until_every(
        Duration::from_millis(20),
        Duration::from_secs(10),
        "the agent logging its first change set",
        || {
            found = a
                .log_text()
                .lines()
                .find(|l| l.contains("change set applied") && l.contains("full=true"))
                .and_then(|l| l.split("writing_ms=").nth(1))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok());
            Ok(found.is_some())
        },
    );
    found.map(|ms| ms / 1e3)
}

fn rss_mib(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// kube-proxy's iptables and nftables rules for `n` Services, each
/// loaded (timed), measured and removed.
fn baselines(
    topo: &Topology,
    n: usize,
    dir: &std::path::Path,
    opts: &Options,
    res: &mut Results,
) -> anyhow::Result<()> {
    // (variant, rules file, rules, loading command, what removes them)
    let kinds = [
        (
            Variant::Iptables,
            "iptables.rules",
            rules::iptables(n),
            "iptables-restore",
        ),
        (
            Variant::Nftables,
            "nftables.rules",
            rules::nftables(n),
            "nft -f -",
        ),
    ];
    for (variant, file, text, load) in kinds {
        let path = dir.join(file);
        std::fs::write(&path, text)?;
        let t = Instant::now();
        topo.node_sh_with_input(load, &path)?;
        res.cold.push(Cold {
            services: n,
            variant,
            secs: t.elapsed().as_secs_f64(),
            rss_mib: None,
            writing_secs: None,
        });
        let measured = measure_paths(
            topo,
            n,
            variant,
            &[Path::ClusterIp, Path::NodePort],
            opts,
            res,
        );
        if variant == Variant::Iptables {
            std::fs::write(&path, "*nat\nCOMMIT\n")?;
            topo.node_sh_with_input(load, &path)?;
        } else {
            topo.node.sh("nft delete table ip kube-proxy");
        }
        measured?;
    }
    Ok(())
}

/// The agent on the kube source: a cold start from the test API server's
/// paged lists, then `changes` EndpointSlice changes through its watch,
/// each from the object's write to the agent's synced timestamp.
fn kube(
    topo: &Topology,
    n: usize,
    dir: &std::path::Path,
    changes: usize,
) -> anyhow::Result<(Cold, Churn)> {
    // Listening in the node's namespace, where the agent runs.
    let api = topo.in_node(crate::apiserver::ApiServer::start)?;
    api.apply_yaml(&rules::manifests(n));
    // The manifests leave the file source's churned slice out.
    api.apply_yaml(&rules::slice_yaml(
        n,
        rules::CHURNED,
        rules::ENDPOINTS_PER_SERVICE,
    ));
    let tag = crate::unique("bench-kube");
    let kubeconfig = dir.join(format!("{tag}.kubeconfig"));
    crate::apiserver::ApiServer::write_kubeconfig(&kubeconfig, &api.url(), None);
    let mut proc = AgentProc::new(
        pin_path(&tag),
        topo.cgroup.path.clone(),
        dir.to_path_buf(),
        dir.join(format!("{tag}.log")),
    );
    proc.netns = Some(topo.node.path());
    proc.source_args = Some(vec![
        "--source=kube".into(),
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--node-name={NODE_NAME}"),
        format!("--devices={NODE_DEVICE}"),
    ]);
    // The kube source's change sets carry no generation: its syncs are
    // told by their timestamp.
    let t = Instant::now();
    let started = unix_ms();
    proc.start();
    wait_status(&mut proc, COLD_LIMIT, "its first sync", |s| {
        s.synced_at_unix_ms >= started
    })?;
    let cold = Cold {
        services: n,
        variant: Variant::AgentKube,
        secs: t.elapsed().as_secs_f64(),
        rss_mib: proc.pid().and_then(rss_mib),
        writing_secs: writing_secs(&proc),
    };
    let churn = super::churn::kube(topo, &api, &proc.pin_dir, n, changes)?;
    drop(proc);
    // Its drop wakes its listener by connecting to it: from where it listens.
    topo.in_node(move || drop(api))?;
    Ok((cold, churn))
}
