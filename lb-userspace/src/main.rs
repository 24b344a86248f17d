//! `lb-agent`: the node agent and its inspection subcommands.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use lb_agent::{agent, cli, cli::Output, datapath};

#[derive(Parser)]
#[command(name = "lb-agent", version, about = "eBPF service load balancer agent")]
struct Cli {
    /// Where maps and links are pinned (on a bpffs); every subcommand
    /// reads the agent's there.
    #[arg(
        long,
        global = true,
        default_value = "/sys/fs/bpf/lb",
        env = "LB_PIN_DIR"
    )]
    pin_dir: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

/// `-o` of the inspection subcommands.
#[derive(clap::Args)]
struct OutputArg {
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

/// `--health-addr`: an address, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct HealthAddr(Option<SocketAddr>);

fn health_addr(s: &str) -> Result<HealthAddr, String> {
    match s {
        "off" => Ok(HealthAddr(None)),
        a => a
            .parse()
            .map(|a| HealthAddr(Some(a)))
            .map_err(|_| format!("`{a}` is not ADDRESS:PORT or off")),
    }
}

/// `--api-server`: refused at once when it is no URL, not after start-up.
fn api_url(s: &str) -> Result<String, String> {
    s.parse::<hyper::Uri>()
        .map_err(|e| format!("`{s}` is not a URL: {e}"))?;
    Ok(s.to_string())
}

/// `policy get POD`: `namespace/name`.
fn pod_name(s: &str) -> Result<String, String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(s.to_string())
        }
        _ => Err(format!("`{s}` is not NAMESPACE/NAME")),
    }
}

#[derive(Subcommand)]
#[expect(
    clippy::large_enum_variant,
    reason = "parsed once at start; `run` carries every flag of the agent"
)]
enum Cmd {
    /// Run the agent: keep the BPF maps equal to the cluster's desired state.
    Run {
        /// `kube` (the API server: in-cluster, or --kubeconfig/KUBECONFIG) or
        /// `file:DIR` (Kubernetes YAML; GENERATION written last marks a change set).
        #[arg(long, env = "LB_SOURCE")]
        source: agent::Source,
        /// A kubeconfig file for `--source kube` (default: KUBECONFIG, then
        /// the in-cluster service account).
        #[arg(long, env = "KUBECONFIG")]
        kubeconfig: Option<PathBuf>,
        /// The API server's URL, for clusters where no kube-proxy serves the
        /// `kubernetes` Service yet; the token and CA still come from the
        /// service account or kubeconfig.
        #[arg(long, env = "LB_API_SERVER", value_parser = api_url)]
        api_server: Option<String>,
        /// This node's name (its Node object gives the node's addresses).
        #[arg(long, env = "NODE_NAME")]
        node_name: Option<String>,
        /// cgroup v2 directory to attach the socket programs to (default: the
        /// root of the cgroup v2 hierarchy found in /proc/mounts).
        #[arg(long, env = "LB_CGROUP")]
        cgroup: Option<PathBuf>,
        /// Capacity of the services map (frontends plus one entry per backend
        /// slot), fixed. Without it the map is sized from the cluster: it
        /// starts at 65,536 entries (or the size it grew to before) and grows
        /// while the agent runs when Services need more.
        #[arg(long, env = "LB_MAX_SERVICES")]
        max_services: Option<u32>,
        /// Capacity of the backends map, fixed (without it: sized from the
        /// cluster, as --max-services).
        #[arg(long, env = "LB_MAX_BACKENDS")]
        max_backends: Option<u32>,
        /// Capacity of the socket reverse-translation LRU earlier agents
        /// wrote (read only now: translations live in socket storage).
        #[arg(long, default_value_t = lb_common::DEFAULT_SOCK_REV_MAX, env = "LB_MAX_SOCK_REV")]
        max_sock_rev: u32,
        /// Capacity of the packet-level conntrack LRU, fixed. Without it the
        /// map starts at --ct-initial entries (or the size it grew to
        /// before) and grows while the agent runs when a sweep finds it
        /// more than three quarters full.
        #[arg(long, env = "LB_MAX_CT", value_parser = clap::value_parser!(u32).range(1..))]
        max_ct: Option<u32>,
        /// The conntrack map's first size when --max-ct does not fix it.
        #[arg(long, default_value_t = lb_common::DEFAULT_CT_MAX, env = "LB_CT_INITIAL", value_parser = clap::value_parser!(u32).range(1..))]
        ct_initial: u32,
        /// Capacity of the policy conntrack LRU (flows a NetworkPolicy
        /// allowed), fixed. Without it the map starts at
        /// --policy-ct-initial entries (or the size it grew to before) and
        /// grows as the conntrack map does.
        #[arg(long, env = "LB_MAX_POLICY_CT", value_parser = clap::value_parser!(u32).range(1..))]
        max_policy_ct: Option<u32>,
        /// The policy conntrack map's first size when --max-policy-ct does
        /// not fix it.
        #[arg(long, default_value_t = lb_common::DEFAULT_POL_CT_MAX, env = "LB_POLICY_CT_INITIAL", value_parser = clap::value_parser!(u32).range(1..))]
        policy_ct_initial: u32,
        /// Capacity of the sessionAffinity LRU (a client's backend per
        /// Service with ClientIP affinity), fixed. Without it the map
        /// starts at --affinity-initial entries (or the size it grew to
        /// before) and grows as the conntrack map does.
        #[arg(long, env = "LB_MAX_AFFINITY", value_parser = clap::value_parser!(u32).range(1..))]
        max_affinity: Option<u32>,
        /// The affinity map's first size when --max-affinity does not fix
        /// it.
        #[arg(long, default_value_t = lb_common::DEFAULT_AFFINITY_MAX, env = "LB_AFFINITY_INITIAL", value_parser = clap::value_parser!(u32).range(1..))]
        affinity_initial: u32,
        /// Capacity of the Maglev map: how many tables (one per external
        /// frontend with backends, each 128 KiB of kernel memory at the
        /// default table size), fixed. Without it the map starts at
        /// --maglev-tables-initial (or the size it grew to before) and
        /// grows as the services map does; every table is kept through a
        /// growth or a restart with another size.
        #[arg(long, env = "LB_MAX_MAGLEV_TABLES", value_parser = clap::value_parser!(u32).range(1..))]
        max_maglev_tables: Option<u32>,
        /// The Maglev map's first size when --max-maglev-tables does not
        /// fix it.
        #[arg(long, default_value_t = lb_common::DEFAULT_MAGLEV_MAX, env = "LB_MAGLEV_TABLES_INITIAL", value_parser = clap::value_parser!(u32).range(1..))]
        maglev_tables_initial: u32,
        /// External devices for the packet programs, comma-separated
        /// (default: the interfaces holding this node's addresses).
        #[arg(long, value_delimiter = ',', env = "LB_DEVICES")]
        devices: Vec<String>,
        /// Conntrack idle timeout of an established TCP flow, seconds.
        #[arg(long, default_value_t = 21600, env = "LB_CT_TIMEOUT_TCP")]
        ct_timeout_tcp: u32,
        /// ... of a TCP flow that never got past its SYN.
        #[arg(long, default_value_t = 60, env = "LB_CT_TIMEOUT_TCP_SYN")]
        ct_timeout_tcp_syn: u32,
        /// ... of a TCP flow after a FIN or RST.
        #[arg(long, default_value_t = 10, env = "LB_CT_TIMEOUT_TCP_CLOSING")]
        ct_timeout_tcp_closing: u32,
        /// ... of a UDP flow.
        #[arg(long, default_value_t = 60, env = "LB_CT_TIMEOUT_UDP")]
        ct_timeout_udp: u32,
        /// Pod interfaces (host side) that get the TC programs, as name
        /// patterns with `*`, comma-separated; '' for none.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "lxc*",
            env = "LB_POD_IFACES"
        )]
        pod_ifaces: Vec<String>,
        /// Which of this node's addresses serve NodePorts, as CIDRs,
        /// comma-separated (default: every address of the Node object).
        #[arg(long, value_delimiter = ',', env = "LB_NODEPORT_ADDRESSES")]
        nodeport_addresses: Vec<lb_agent::model::cidr::Cidr>,
        /// The only addresses Services may claim as `spec.externalIPs`, as
        /// CIDRs, comma-separated (default: any address but this node's
        /// addresses and Services' ClusterIPs). An externalIP outside them
        /// is reported and not programmed.
        #[arg(long, value_delimiter = ',', env = "LB_EXTERNAL_IP_CIDRS")]
        external_ip_cidrs: Vec<lb_agent::model::cidr::Cidr>,
        /// The cluster's Service CIDRs (the API server's
        /// `--service-cluster-ip-range`), comma-separated: an externalIP
        /// inside them is refused even where no Service holds that
        /// ClusterIP yet (unless `--external-ip-cidrs` allows it).
        #[arg(long, value_delimiter = ',', env = "LB_SERVICE_CIDRS")]
        service_cidrs: Vec<lb_agent::model::cidr::Cidr>,
        /// Where `/healthz`, `/livez` and `/metrics` are served, or `off`
        /// (port 0 picks a free port, shown by `lb-agent status`).
        #[arg(long, default_value = "0.0.0.0:10256", env = "LB_HEALTH_ADDR", value_parser = health_addr)]
        health_addr: HealthAddr,
        /// Entries of each Maglev table (a prime; 0 turns Maglev off and
        /// new external flows hash over the backends). Every node must use
        /// the same size to pick the same backend for a flow.
        #[arg(long, default_value_t = lb_common::DEFAULT_MAGLEV_TABLE_SIZE, env = "LB_MAGLEV_TABLE_SIZE", value_parser = maglev_size)]
        maglev_table_size: u32,
        /// How the TC programs attach: tcx links where the kernel has them
        /// (auto), or clsact filters (netlink; kernels before 6.6).
        #[arg(long, value_enum, default_value = "auto", env = "LB_TC_ATTACH")]
        tc_attach: datapath::TcAttach,
        /// The XDP fast path on the external devices (in front of TC).
        #[arg(long, value_enum, default_value = "off", env = "LB_XDP")]
        xdp: datapath::XdpAttach,
        #[arg(long, value_enum, default_value = "text", env = "LB_LOG_FORMAT")]
        log_format: LogFormat,
    },
    /// Sync status, map fill levels and links, from the pins.
    Status {
        #[command(flatten)]
        output: OutputArg,
    },
    /// Frontends and their backends as the kernel holds them.
    Service {
        #[command(subcommand)]
        cmd: ListCmd,
    },
    /// Backends as the kernel holds them.
    Backend {
        #[command(subcommand)]
        cmd: ListCmd,
    },
    /// Packet-level conntrack entries.
    Ct {
        #[command(subcommand)]
        cmd: ListCmd,
    },
    /// This node's pods as NetworkPolicy sees them: identity, isolation,
    /// entry counts, verdicts.
    Endpoint {
        #[command(subcommand)]
        cmd: ListCmd,
    },
    /// Identities: one per distinct set of namespace and pod labels.
    Identity {
        #[command(subcommand)]
        cmd: ListCmd,
    },
    /// NetworkPolicy of one local pod.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// Remove everything the agent installed: links (detaching the programs) and maps.
    Reset,
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// The resolved allow entries of POD (`namespace/name`), with the
    /// policy rule each came from.
    Get {
        #[arg(value_parser = pod_name)]
        pod: String,
        #[command(flatten)]
        output: OutputArg,
    },
}

#[derive(Subcommand)]
enum ListCmd {
    List {
        #[command(flatten)]
        output: OutputArg,
    },
}

fn maglev_size(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if n != 0 && !lb_agent::compute::maglev::is_prime(n as usize) {
        return Err(format!(
            "{n} is not prime (Maglev needs a prime table size, e.g. 251, 4093, 16381, 65521)"
        ));
    }
    Ok(n)
}

fn init_logs(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    use std::io::IsTerminal as _;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if !matches!(cli.cmd, Cmd::Run { .. }) {
        datapath::host::quiet_on_closed_pipe();
    }
    let pinned = datapath::Pinned {
        pin_dir: cli.pin_dir,
    };
    match cli.cmd {
        Cmd::Run {
            source,
            kubeconfig,
            api_server,
            node_name,
            cgroup,
            max_services,
            max_backends,
            max_sock_rev,
            max_ct,
            ct_initial,
            max_policy_ct,
            policy_ct_initial,
            max_affinity,
            affinity_initial,
            max_maglev_tables,
            maglev_tables_initial,
            devices,
            pod_ifaces,
            ct_timeout_tcp,
            ct_timeout_tcp_syn,
            ct_timeout_tcp_closing,
            ct_timeout_udp,
            nodeport_addresses,
            external_ip_cidrs,
            service_cidrs,
            xdp,
            tc_attach,
            maglev_table_size,
            health_addr,
            log_format,
        } => {
            init_logs(log_format);
            // A map no flag sizes starts at its default or at the size it
            // grew to before.
            let grown_or = |name: &str, default: u32| {
                datapath::pinned_max_entries(&pinned.pin_dir, name)
                    .unwrap_or(0)
                    .max(default)
            };
            let cgroup = match cgroup {
                Some(c) => c,
                None => datapath::host::cgroup2_root()?,
            };
            let opts = agent::RunOptions {
                source,
                kubeconfig,
                api_server,
                node_name,
                devices,
                pod_ifaces,
                ct_timeouts: lb_agent::compute::conntrack_gc::Timeouts {
                    tcp: ct_timeout_tcp,
                    tcp_syn: ct_timeout_tcp_syn,
                    tcp_closing: ct_timeout_tcp_closing,
                    other: ct_timeout_udp,
                },
                node_port_cidrs: nodeport_addresses,
                external_ip_cidrs,
                service_cidrs,
                health_addr: health_addr.0,
                load: datapath::LoadOptions {
                    pin_dir: pinned.pin_dir.clone(),
                    maglev_size: maglev_table_size,
                    cgroup,
                    xdp,
                    tc_attach,
                    sizes: datapath::MapSizes {
                        services: max_services.unwrap_or_else(|| {
                            grown_or(lb_common::MAP_SERVICES, lb_common::DEFAULT_SERVICES_MAX)
                        }),
                        backends: max_backends.unwrap_or_else(|| {
                            grown_or(lb_common::MAP_BACKENDS, lb_common::DEFAULT_BACKENDS_MAX)
                        }),
                        grow_services: max_services.is_none(),
                        grow_backends: max_backends.is_none(),
                        // No flag sizes it: it starts at its default (or
                        // what it grew to) and grows.
                        ranges: grown_or(
                            lb_common::MAP_SRC_RANGES,
                            lb_common::DEFAULT_SRC_RANGES_MAX,
                        ),
                        grow_ranges: true,
                        sock_rev: max_sock_rev,
                        ct: max_ct.unwrap_or_else(|| grown_or(lb_common::MAP_CT, ct_initial)),
                        grow_ct: max_ct.is_none(),
                        pol_ct: max_policy_ct
                            .unwrap_or_else(|| grown_or(lb_common::MAP_POL_CT, policy_ct_initial)),
                        grow_pol_ct: max_policy_ct.is_none(),
                        affinity: max_affinity
                            .unwrap_or_else(|| grown_or(lb_common::MAP_AFFINITY, affinity_initial)),
                        grow_affinity: max_affinity.is_none(),
                        maglev: max_maglev_tables.unwrap_or_else(|| {
                            grown_or(lb_common::MAP_MAGLEV, maglev_tables_initial)
                        }),
                        grow_maglev: max_maglev_tables.is_none(),
                        ipcache: grown_or(lb_common::MAP_IPCACHE, lb_common::DEFAULT_IPCACHE_MAX),
                        pol_entries: grown_or(lb_common::MAP_POLICY, lb_common::DEFAULT_POLICY_MAX),
                        pol_cidrs: grown_or(
                            lb_common::MAP_POL_CIDR,
                            lb_common::DEFAULT_POL_CIDR_MAX,
                        ),
                        grow_policy: true,
                    },
                },
                poll: Duration::from_millis(100),
            };
            // Before any thread allocates (agent::memory).
            agent::memory::one_arena();
            // The sync loop runs on this thread (block_on) and applies a
            // change set without yielding: a cold start of 100,000
            // Services holds it for seconds. The sources' watches run on
            // a worker meanwhile (the HTTP servers have a thread of their
            // own, serve/http.rs).
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?;
            rt.block_on(agent::run(opts))
        }
        Cmd::Status {
            output: OutputArg { output },
        } => cli::inspect::status(&pinned, output),
        Cmd::Service {
            cmd: ListCmd::List { output },
        } => cli::inspect::services(&pinned, output.output),
        Cmd::Ct {
            cmd: ListCmd::List { output },
        } => cli::inspect::conntrack(&pinned, output.output),
        Cmd::Backend {
            cmd: ListCmd::List { output },
        } => cli::inspect::backends(&pinned, output.output),
        Cmd::Endpoint {
            cmd: ListCmd::List { output },
        } => cli::policy::endpoints(&pinned, output.output),
        Cmd::Identity {
            cmd: ListCmd::List { output },
        } => cli::policy::identities(&pinned, output.output),
        Cmd::Policy {
            cmd: PolicyCmd::Get { pod, output },
        } => cli::policy::get(&pinned, &pod, output.output),
        Cmd::Reset => {
            let removed = datapath::reset(&pinned.pin_dir).context("reset")?;
            eprintln!(
                "removed {} pins under {}",
                removed.len(),
                pinned.pin_dir.display()
            );
            Ok(())
        }
    }
}

#[cfg(test)]
#[path = "main_tests.rs"]
mod tests;
