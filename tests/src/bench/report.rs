//! BENCHMARKS.md, a plot of connections per second against the number of
//! Services (SVG), and the raw results (JSON), from one run.

use std::{collections::BTreeSet, fmt::Write as _, process::Command};

use anyhow::Context as _;
use plotters::prelude::*;

use super::{Mode, Options, Path, Results, Variant};

/// The plot and raw results, beside BENCHMARKS.md in the output directory.
pub const PLOT: &str = "docs/bench/connections.svg";
pub const RESULTS: &str = "docs/bench/results.json";

fn cmd_out(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|e| format!("({cmd}: {e})"))
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// This machine's CPU, cores and kernel, as the report names them.
pub fn machine() -> String {
    format!(
        "{} ({} cores); kernel {}",
        cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cmd_out("uname", &["-r"]),
    )
}

/// What one variant measured through `path` in `mode` at `n` Services
/// (direct: to the backend itself).
fn measured(r: &Results, n: usize, v: Variant, path: Path, mode: Mode) -> Option<&super::Measured> {
    let path = if v == Variant::Direct {
        Path::Backend
    } else {
        path
    };
    r.rows
        .iter()
        .find(|x| x.services == n && x.variant == v && x.path == path && x.mode == mode)
        .map(|x| &x.measured)
}

fn rate(r: &Results, n: usize, v: Variant, path: Path, mode: Mode) -> Option<f64> {
    measured(r, n, v, path, mode).map(|m| m.rate)
}

fn latency(r: &Results, n: usize, v: Variant, path: Path, mode: Mode) -> Option<(f64, f64)> {
    measured(r, n, v, path, mode).map(|m| (m.p50_us, m.p99_us))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    }
}

fn sizes(r: &Results) -> Vec<usize> {
    r.rows
        .iter()
        .map(|x| x.services)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// One table: per size, each variant's rate, its p50/p99 and its ratio
/// to direct; then this project against each baseline.
fn table(s: &mut String, r: &Results, path: Path, mode: Mode, variants: &[Variant]) {
    let unit = match mode {
        Mode::Connections => "connections/s",
        Mode::Requests => "requests/s",
    };
    let _ = write!(s, "| Services |");
    for v in variants {
        let _ = write!(s, " {} {unit} (p50 / p99 µs, vs direct) |", v.label());
    }
    let ours: Vec<Variant> = variants
        .iter()
        .copied()
        .filter(|v| matches!(v, Variant::Agent | Variant::AgentXdp))
        .collect();
    for o in &ours {
        let _ = write!(
            s,
            " {} vs iptables | {} vs nftables |",
            o.label(),
            o.label()
        );
    }
    let _ = write!(s, "\n|---|");
    for _ in 0..variants.len() + 2 * ours.len() {
        let _ = write!(s, "---|");
    }
    s.push('\n');
    for n in sizes(r) {
        let direct = rate(r, n, Variant::Direct, path, mode);
        let _ = write!(s, "| {n} |");
        for &v in variants {
            let x = rate(r, n, v, path, mode);
            match (x, latency(r, n, v, path, mode)) {
                (Some(x), Some((p50, p99))) => {
                    let _ = write!(
                        s,
                        " {x:.0} ({p50:.0} / {p99:.0}, {}) |",
                        ratio(Some(x), direct)
                    );
                }
                _ => s.push_str(" - |"),
            }
        }
        for &o in &ours {
            let x = rate(r, n, o, path, mode);
            let _ = write!(
                s,
                " {} | {} |",
                ratio(x, rate(r, n, Variant::Iptables, path, mode)),
                ratio(x, rate(r, n, Variant::Nftables, path, mode))
            );
        }
        s.push('\n');
    }
    s.push('\n');
}

fn markdown(opts: &Options, r: &Results) -> String {
    let mut s = String::new();
    let mut cmd = String::from(if opts.quick {
        "cargo xtask bench --quick"
    } else {
        "cargo xtask bench"
    });
    let asked: Vec<String> = opts.sizes.iter().map(usize::to_string).collect();
    cmd += &format!(" -- --sizes {}", asked.join(","));
    if opts.baselines_up_to != usize::MAX {
        cmd += &format!(" --baselines-up-to {}", opts.baselines_up_to);
    }
    let _ = writeln!(
        s,
        "# Benchmarks\n\nWritten by `{cmd}` (`tests/src/bench/`); every figure below comes from the same run, on this machine:\n\n\
         - CPU: {}\n- {}; {}\n- {} s per measurement; client and server each pinned to a CPU of their own\n",
        r.machine.clone().unwrap_or_else(machine),
        cmd_out("iptables", &["-V"]),
        cmd_out("nft", &["-v"]),
        opts.secs,
    );
    if !r.remeasured.is_empty() {
        s.push_str(
            "Figures measured again after that run, replacing its own (on the same machine unless the note names another):\n\n",
        );
        for m in &r.remeasured {
            let _ = writeln!(s, "- {m}");
        }
        s.push('\n');
    }
    s.push_str(
        "The topology: a client namespace, a node namespace routing to a backend namespace \
         (the pod, on the node's `lxc*` veth). The cluster: N Services of ten endpoints each, \
         the measured one last (a NodePort); iptables and nftables get the rules kube-proxy \
         writes for it (KUBE-SERVICES / KUBE-SVC / KUBE-SEP chains with statistic-mode random \
         and NodePort masquerade; a service-ips verdict map and numgen endpoint maps), \
         lb-agent gets the manifests. A connection is connect(), one 8-byte request and reply, \
         and a close with RST; \"direct\" connects to the backend's own address.\n\n",
    );
    let _ = writeln!(s, "![connections per second against Services]({PLOT})\n");
    let all = [
        Variant::Direct,
        Variant::Iptables,
        Variant::Nftables,
        Variant::Agent,
    ];
    s.push_str("## New connections through a ClusterIP (the socket path)\n\n");
    table(&mut s, r, Path::ClusterIp, Mode::Connections, &all);
    s.push_str("## New connections from outside through a NodePort (TC, and XDP native)\n\n");
    let np = [
        Variant::Direct,
        Variant::Iptables,
        Variant::Nftables,
        Variant::Agent,
        Variant::AgentXdp,
    ];
    table(&mut s, r, Path::NodePort, Mode::Connections, &np);
    s.push_str("## Requests on an established connection through a ClusterIP\n\n");
    table(&mut s, r, Path::ClusterIp, Mode::Requests, &all);
    s.push_str("## Requests on an established connection through a NodePort\n\n");
    table(&mut s, r, Path::NodePort, Mode::Requests, &np);
    s.push_str("## Programming from nothing, and memory\n\nlb-agent: from its start (maps empty) to `synced_generation`, with the file source and with the kube source (the test API server: paged lists of 500, then watches); of that, the time it spent writing the maps (batch updates); its resident memory then, and per object (Services plus endpoints). iptables: `iptables-restore` of the rules; nftables: `nft -f`.\n\n| Services | lb-agent (files) s | writing s | RSS MiB | KiB per object | lb-agent (kube) s | writing s | RSS MiB | KiB per object | iptables-restore s | nft -f s |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
    for n in sizes(r) {
        let c = |v| r.cold.iter().find(|c| c.services == n && c.variant == v);
        let objects = (n * (1 + super::rules::ENDPOINTS_PER_SERVICE)) as f64;
        let agent = |v| {
            let a = c(v);
            format!(
                "{} | {} | {} | {}",
                a.map_or("-".into(), |a| format!("{:.2}", a.secs)),
                a.and_then(|a| a.writing_secs)
                    .map_or("-".into(), |w| format!("{w:.2}")),
                a.and_then(|a| a.rss_mib)
                    .map_or("-".into(), |m| format!("{m:.0}")),
                a.and_then(|a| a.rss_mib)
                    .map_or("-".into(), |m| format!("{:.2}", m * 1024.0 / objects)),
            )
        };
        let _ = writeln!(
            s,
            "| {n} | {} | {} | {} | {} |",
            agent(Variant::Agent),
            agent(Variant::AgentKube),
            c(Variant::Iptables).map_or("-".into(), |c| format!("{:.2}", c.secs)),
            c(Variant::Nftables).map_or("-".into(), |c| format!("{:.2}", c.secs)),
        );
    }
    s.push_str(
        "\n## EndpointSlices changed\n\n\
         Files: one change set at a time, each awaited, timed from its GENERATION file written to the agent's own synced timestamp; \
         the changed Service is a NodePort Service (nine and ten endpoints in turn; at 1 Service, none and one), so a change rewrites \
         its Maglev table too. The file source is woken by its directory's change (inotify) and reads it every 100 ms besides. \
         Kube: EndpointSlices written to the API server on a fixed schedule of 100 a second (a change waits only while the same \
         Service's last one has not shown yet), in turn to up to ten Services other than the measured one (the first a NodePort \
         Service, the rest ClusterIP; each nine and ten endpoints in turn), each timed from its slot in the schedule to the moment \
         the services map holds its new endpoint count and the agent has recorded a sync since its write (the change set's Maglev \
         table swap comes before that record), read by the bench every 0.2 ms. Meanwhile new connections run back to back to the \
         measured Service through its ClusterIP (the socket path) and its NodePort (TC): the target is no failed one. At 1 Service \
         that Service itself changes and nothing is connected.\n\n\
         | Services | source | changes | changes/s | p50 ms | p99 ms | connections meanwhile: ok / failed |\n|---|---|---|---|---|---|---|\n",
    );
    for c in &r.churn {
        let src = if c.variant == Variant::AgentKube {
            "kube"
        } else {
            "files"
        };
        let rate = c
            .rate_per_s
            .map_or("one at a time".into(), |r| format!("{r:.0}"));
        let meanwhile = if c.meanwhile.is_empty() {
            "-".to_string()
        } else {
            c.meanwhile
                .iter()
                .map(|(p, ok, failed)| format!("{} {ok} / {failed}", path_name(*p)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            s,
            "| {} | {src} | {} | {rate} | {:.1} | {:.1} | {meanwhile} |",
            c.services, c.changes, c.p50_ms, c.p99_ms
        );
    }
    s.push_str(
        "\n## Per packet (BPF_PROG_TEST_RUN)\n\nThe kernel's mean time per run over many repeats of one packet through the loaded programs, \
         with the services map holding N frontends and the conntrack map the entries shown: a TCP SYN for no Service, \
         an ACK of a flow conntrack knows (TC ingress), and an empty program on each hook as the floor. \
         Targets: at most 150 ns above the empty program at TC for no Service, at most 60 ns at XDP, a conntrack hit at most 150 ns above it. \
         The last column is one conntrack sweep of those entries (live flows, each a forward and a reverse entry: the steady state's walk with batch lookups), \
         timed on the agent's own code, on a thread of its own, after a first sweep (a sweep reads into the memory the one before it read into: only the agent's first pays for fresh pages), and what it costs of one core at the agent's default cadence of one sweep every 10 s. A sweep that took more than 5% of a core at that cadence puts the next one off (the sweeper's cadence is then named), so the sweeps never take more (target: at most 5% at 1M entries).\n\n\
         | Services | conntrack entries | TC empty ns | TC no Service ns (above empty) | TC conntrack hit ns (above empty) | XDP empty ns | XDP no Service ns (above empty) | sweep ms (% of a core) |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for c in &r.packets {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} ({:+}) | {} ({:+}) | {} | {} ({:+}) | {} |",
            c.services,
            c.ct_entries,
            c.tc_empty_ns,
            c.tc_no_service_ns,
            i64::from(c.tc_no_service_ns) - i64::from(c.tc_empty_ns),
            c.tc_ct_hit_ns,
            i64::from(c.tc_ct_hit_ns) - i64::from(c.tc_empty_ns),
            c.xdp_empty_ns,
            c.xdp_no_service_ns,
            i64::from(c.xdp_no_service_ns) - i64::from(c.xdp_empty_ns),
            match (c.ct_sweep_ms, c.ct_sweep_core_pct(), c.ct_sweep_every_s()) {
                (Some(ms), Some(pct), Some(every)) => {
                    let every_10s = ms / 100.0;
                    if every > 10.05 {
                        format!(
                            "{ms:.0} ({every_10s:.1}% at one sweep every 10 s; the sweeper puts sweeps {every:.1} s apart: {pct:.1}%)"
                        )
                    } else {
                        format!("{ms:.0} ({every_10s:.1}% at one sweep every 10 s)")
                    }
                }
                _ => "not measured".into(),
            },
        );
    }
    if !r.ct_growth.is_empty() {
        s.push_str(
            "\n## Conntrack growth while running\n\nAn agent whose conntrack map (a power of two) holds live flows' entries past three quarters of it \
             (`lb-bench ct-growth ENTRIES`): the next sweep finds it so and the map grows. The object with the bigger map loads on a thread; \
             the sync loop, which applies changes, waits only for the swap of the programs under the links; \
             the old map's entries then come over on another thread, the programs taking each one over from the old map on its first miss until then.\n\n\
             | entries | map size | grown to | start to swap ms (the load on a thread) | the sync loop's wait (the swap) ms | copy after the swap ms |\n\
             |---|---|---|---|---|---|\n",
        );
        for g in &r.ct_growth {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.0} | {:.1} | {:.0} |",
                g.entries, g.from, g.to, g.load_ms, g.sync_loop_ms, g.copy_ms
            );
        }
    }
    s.push_str("\n## What this means\n\n");
    s.push_str(&meaning(r));
    s
}

/// The run's figures in words, at its largest size.
fn meaning(r: &Results) -> String {
    let all = sizes(r);
    let Some(&top) = all.last() else {
        return "No size was measured.\n".into();
    };
    // The baselines may stop at a smaller size than the agent.
    let base = all
        .iter()
        .copied()
        .rfind(|&n| rate(r, n, Variant::Iptables, Path::ClusterIp, Mode::Connections).is_some())
        .unwrap_or(top);
    let at = |n: usize| {
        let d = rate(r, n, Variant::Direct, Path::Backend, Mode::Connections);
        move |v, p| match (rate(r, n, v, p, Mode::Connections), d) {
            (Some(x), Some(d)) if d > 0.0 => format!("{:.0}%", 100.0 * x / d),
            _ => "-".into(),
        }
    };
    let b = at(base);
    let t = at(top);
    let cold = |v| {
        r.cold
            .iter()
            .find(|c| c.services == top && c.variant == v)
            .map_or("-".into(), |c| {
                format!(
                    "{:.1} s and {} MiB",
                    c.secs,
                    c.rss_mib.map_or("-".into(), |m| format!("{m:.0}"))
                )
            })
    };
    format!(
        "At {base} Services a pod's new connection to a ClusterIP runs at {} of a direct connection \
         with lb-agent (it is translated once, at connect(), and then costs nothing), against {} \
         with kube-proxy's iptables rules (which walk one rule per Service for every new \
         connection) and {} with its nftables rules (one map lookup). From outside through a \
         NodePort: lb-agent {} (TC), {} (XDP native), iptables {}, nftables {}. At {top} Services \
         lb-agent's ClusterIP connections run at {} of direct and its NodePort ones at {} (TC) and \
         {} (XDP); it programmed them from nothing in {} from files, {} from the API server. \
         Requests on a connection that is already open pay only the per-packet costs (none on \
         the socket path; a conntrack lookup in TC or XDP, or netfilter's). Here the client and \
         server themselves bound the rates near the direct figure, so only a big gap is a \
         difference; figures from a machine doing other work are noise.\n",
        b(Variant::Agent, Path::ClusterIp),
        b(Variant::Iptables, Path::ClusterIp),
        b(Variant::Nftables, Path::ClusterIp),
        b(Variant::Agent, Path::NodePort),
        b(Variant::AgentXdp, Path::NodePort),
        b(Variant::Iptables, Path::NodePort),
        b(Variant::Nftables, Path::NodePort),
        t(Variant::Agent, Path::ClusterIp),
        t(Variant::Agent, Path::NodePort),
        t(Variant::AgentXdp, Path::NodePort),
        cold(Variant::Agent),
        cold(Variant::AgentKube),
    )
}

fn plot(path: &std::path::Path, r: &Results) -> anyhow::Result<()> {
    let ns = sizes(r);
    let max_rate = r
        .rows
        .iter()
        .filter(|x| x.mode == Mode::Connections)
        .map(|x| x.measured.rate)
        .fold(1.0, f64::max);
    let (lo, hi) = (
        *ns.first().unwrap_or(&1) as f64,
        *ns.last().unwrap_or(&1) as f64,
    );
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "New connections per second against Services",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (lo.max(1.0)..hi.max(lo + 1.0) * 1.2).log_scale(),
            0.0..max_rate * 1.1,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("Services")
        .y_desc("connections/s")
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let series = [
        (Variant::Direct, Path::Backend, "direct"),
        (Variant::Agent, Path::ClusterIp, "lb-agent ClusterIP"),
        (Variant::Iptables, Path::ClusterIp, "iptables ClusterIP"),
        (Variant::Nftables, Path::ClusterIp, "nftables ClusterIP"),
        (Variant::Agent, Path::NodePort, "lb-agent NodePort (TC)"),
        (Variant::AgentXdp, Path::NodePort, "lb-agent NodePort (XDP)"),
        (Variant::Iptables, Path::NodePort, "iptables NodePort"),
        (Variant::Nftables, Path::NodePort, "nftables NodePort"),
    ];
    for (k, (v, p, name)) in series.iter().enumerate() {
        let pts: Vec<(f64, f64)> = ns
            .iter()
            .filter_map(|&n| rate(r, n, *v, *p, Mode::Connections).map(|x| (n as f64, x)))
            .collect();
        let color = Palette99::pick(k).to_rgba();
        let style = if *p == Path::NodePort {
            color.stroke_width(1)
        } else {
            color.stroke_width(3)
        };
        chart
            .draw_series(LineSeries::new(pts, style))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// The report again from a run's raw results (`lb-bench report`).
pub fn rewrite(opts: &Options) -> anyhow::Result<Results> {
    let path = opts.out_dir.join(RESULTS);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let r: Results =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    write(opts, &r)?;
    Ok(r)
}

pub fn write(opts: &Options, r: &Results) -> anyhow::Result<()> {
    std::fs::create_dir_all(&opts.out_dir)?;
    let md = opts.out_dir.join("BENCHMARKS.md");
    std::fs::write(&md, markdown(opts, r)).with_context(|| format!("writing {}", md.display()))?;
    std::fs::create_dir_all(opts.out_dir.join("docs/bench"))?;
    plot(&opts.out_dir.join(PLOT), r)?;
    std::fs::write(opts.out_dir.join(RESULTS), serde_json::to_string_pretty(r)?)?;
    Ok(())
}

fn path_name(p: Path) -> &'static str {
    match p {
        Path::ClusterIp => "ClusterIP",
        Path::NodePort => "NodePort",
        Path::Backend => "direct",
    }
}
