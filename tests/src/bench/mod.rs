//! `cargo xtask bench`: this project against direct connections and
//! kube-proxy-shaped iptables and nftables rules, side by side in one run
//! on one topology (see `topo`), at growing numbers of Services. Not a
//! test: it measures, and writes BENCHMARKS.md and a plot.
//!
//! One stage per module: `rules` (what each variant is told), `topo` (the
//! namespaces), `load` (client and server), `variants` (bringing each
//! variant up and measuring through it), `report` (the files).

pub mod churn;
pub mod ct_growth;
pub mod load;
pub mod report;
pub mod rules;
pub mod topo;
pub mod variants;

use serde::{Deserialize, Serialize};

pub use load::Measured;

/// A bench run's shape.
#[derive(Debug, Clone)]
pub struct Options {
    pub sizes: Vec<usize>,
    /// Seconds per measurement.
    pub secs: f64,
    pub quick: bool,
    /// Conntrack entries for the per-packet figures (beside an empty map).
    pub ct_entries: usize,
    /// BPF_PROG_TEST_RUN repeats per per-packet figure.
    pub repeat: u32,
    /// The iptables and nftables baselines run at these sizes and below
    /// only (their programming grows faster than linearly).
    pub baselines_up_to: usize,
    /// Where BENCHMARKS.md and the plot go.
    pub out_dir: std::path::PathBuf,
}

impl Options {
    pub fn full(out_dir: std::path::PathBuf) -> Self {
        Self {
            sizes: vec![1, 1_000, 10_000, 30_000, 100_000],
            secs: 5.0,
            quick: false,
            ct_entries: 1_000_000,
            repeat: 1_000_000,
            baselines_up_to: usize::MAX,
            out_dir,
        }
    }

    pub fn quick(out_dir: std::path::PathBuf) -> Self {
        Self {
            sizes: vec![1, 1_000],
            secs: 2.0,
            quick: true,
            ct_entries: 100_000,
            repeat: 100_000,
            baselines_up_to: usize::MAX,
            out_dir,
        }
    }
}

/// The ways a connection reaches the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Variant {
    Direct,
    Iptables,
    Nftables,
    /// This project: socket hooks for ClusterIPs, TC for NodePorts.
    Agent,
    /// This project with its XDP program in native mode on the node's device.
    AgentXdp,
    /// This project reading the cluster from an API server (the test one,
    /// paged lists and watches) instead of files.
    AgentKube,
}

impl Variant {
    pub fn label(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Iptables => "iptables (kube-proxy)",
            Self::Nftables => "nftables (kube-proxy)",
            Self::Agent => "lb-agent",
            Self::AgentXdp => "lb-agent, XDP native",
            Self::AgentKube => "lb-agent, kube source",
        }
    }
}

/// Where the client connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Path {
    /// The backend's own address (the direct variant).
    Backend,
    ClusterIp,
    NodePort,
}

/// New connections, or requests on one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Mode {
    Connections,
    Requests,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub services: usize,
    pub variant: Variant,
    pub path: Path,
    pub mode: Mode,
    pub measured: Measured,
}

/// Programming a variant with `services` Services from nothing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cold {
    pub services: usize,
    pub variant: Variant,
    pub secs: f64,
    /// The agent's resident memory once synced.
    pub rss_mib: Option<f64>,
    /// Of `secs`, the agent's time writing the maps (its log's
    /// `writing_ms` for the first change set).
    #[serde(default)]
    pub writing_secs: Option<f64>,
}

/// One EndpointSlice changed at `services` Services: from the change set
/// being written to the agent reporting it synced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Churn {
    pub services: usize,
    /// Which source told the agent (Agent: files; AgentKube: watches).
    pub variant: Variant,
    pub changes: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Changes written per second (none: one written, awaited, the next).
    #[serde(default)]
    pub rate_per_s: Option<f64>,
    /// Connections to the measured Service while the others churned: by
    /// path, how many completed and how many failed.
    #[serde(default)]
    pub meanwhile: Vec<(Path, u64, u64)>,
}

impl Churn {
    /// A churn's row from each change's milliseconds.
    pub fn of(services: usize, variant: Variant, mut took: Vec<f64>) -> Self {
        took.sort_by(f64::total_cmp);
        let pct = |p: f64| took[((took.len() as f64 * p) as usize).min(took.len() - 1)];
        Self {
            services,
            variant,
            changes: took.len(),
            p50_ms: pct(0.5),
            p99_ms: pct(0.99),
            rate_per_s: None,
            meanwhile: Vec::new(),
        }
    }
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Results {
    pub rows: Vec<Row>,
    pub cold: Vec<Cold>,
    pub churn: Vec<Churn>,
    /// Per packet, by BPF_PROG_TEST_RUN (see `lb_agent::datapath::packet_cost`).
    pub packets: Vec<lb_agent::datapath::packet_cost::Costs>,
    /// A conntrack map of `ct_entries` grown while the agent runs (not in
    /// a quick run).
    #[serde(default)]
    pub ct_growth: Vec<ct_growth::CtGrowth>,
    /// Figures replaced after the run by a later measurement of the same
    /// thing (which, when, with what command), said at the report's top.
    #[serde(default)]
    pub remeasured: Vec<String>,
    /// The CPU and kernel the run itself measured on (a report written
    /// later, elsewhere, still names them).
    #[serde(default)]
    pub machine: Option<String>,
}

/// Runs every variant at every size; writes the report.
pub fn run(opts: &Options) -> anyhow::Result<Results> {
    crate::require_kernel();
    let topo = topo::Topology::up()?;
    let mut res = Results {
        machine: Some(report::machine()),
        ..Results::default()
    };
    for &n in &opts.sizes {
        eprintln!("bench: {n} Services");
        variants::all(&topo, n, opts, &mut res)?;
        for ct in [0, opts.ct_entries] {
            let c = lb_agent::datapath::packet_cost::measure(n, ct, opts.repeat)?;
            eprintln!("bench:   per packet with {ct} conntrack entries: {c:?}");
            res.packets.push(c);
        }
        // Written after every size: a long run stopped early still leaves
        // what it measured.
        report::write(opts, &res)?;
    }
    if !opts.quick {
        eprintln!(
            "bench: a conntrack map of {} entries grown while running",
            opts.ct_entries
        );
        res.ct_growth
            .push(ct_growth::measure(&topo, opts.ct_entries)?);
        report::write(opts, &res)?;
    }
    Ok(res)
}
