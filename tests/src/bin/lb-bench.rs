//! `lb-bench run [--quick] [--out DIR] [--sizes N,N,...] [--baselines-up-to N]`
//! (run by `cargo xtask bench`), and
//! its own server and client inside the topology:
//!
//!   lb-bench server PORT
//!   lb-bench client connections|requests ADDR:PORT SECS [SRC]
//!   lb-bench packets SERVICES CT_ENTRIES REPEAT   (the per-packet figures alone)
//!   lb-bench control SERVICES CHANGES   (cold start, memory and churn alone)
//!   lb-bench ct-growth ENTRIES   (a conntrack map holding ENTRIES grown while running)

use anyhow::{Context as _, bail};
use lb_tests::bench;

const USAGE_RUN: &str =
    "lb-bench run [--quick] [--out DIR] [--sizes N,N,...] [--baselines-up-to N] [--report-only]";

fn main() {
    if let Err(e) = run() {
        eprintln!("lb-bench: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["server", port] => bench::load::serve(port.parse().context("PORT")?),
        ["client", mode, to, secs, src @ ..] => {
            let to = to.parse().context("ADDR:PORT")?;
            let secs = secs.parse().context("SECS")?;
            let src = match src {
                [] => None,
                [a] => Some(a.parse().context("SRC")?),
                _ => bail!("client: one source address at most"),
            };
            let m = match *mode {
                "connections" => bench::load::connections(src, to, secs),
                "requests" => bench::load::requests(src, to, secs),
                m => bail!("unknown client mode `{m}`"),
            };
            println!("{}", serde_json::to_string(&m)?);
            Ok(())
        }
        ["packets", services, ct, repeat] => {
            let c = lb_agent::datapath::packet_cost::measure(
                services.parse().context("SERVICES")?,
                ct.parse().context("CT_ENTRIES")?,
                repeat.parse().context("REPEAT")?,
            )?;
            println!("{}", serde_json::to_string(&c)?);
            Ok(())
        }
        ["control", services, changes] => {
            let topo = bench::topo::Topology::up()?;
            let res = bench::variants::control(
                &topo,
                services.parse().context("SERVICES")?,
                changes.parse().context("CHANGES")?,
            )?;
            println!("{}", serde_json::to_string_pretty(&res)?);
            Ok(())
        }
        ["ct-growth", entries] => {
            let topo = bench::topo::Topology::up()?;
            let g = bench::ct_growth::measure(&topo, entries.parse().context("ENTRIES")?)?;
            println!("{}", serde_json::to_string(&g)?);
            Ok(())
        }
        ["run", rest @ ..] => {
            let (mut quick, mut rewrite) = (false, false);
            let mut out = std::path::PathBuf::from(".");
            let (mut sizes, mut up_to) = (None, None);
            let mut it = rest.iter();
            while let Some(a) = it.next() {
                match *a {
                    "--quick" => quick = true,
                    // The report again from the raw results a run left.
                    "--report-only" => rewrite = true,
                    "--out" => out = it.next().context("--out needs a directory")?.into(),
                    "--sizes" => {
                        let v = it.next().context("--sizes needs N,N,...")?;
                        let parsed: Result<Vec<usize>, _> = v.split(',').map(str::parse).collect();
                        sizes = Some(parsed.with_context(|| format!("--sizes `{v}`"))?);
                    }
                    "--baselines-up-to" => {
                        let v = it.next().context("--baselines-up-to needs N")?;
                        up_to = Some(
                            v.parse()
                                .with_context(|| format!("--baselines-up-to `{v}`"))?,
                        );
                    }
                    a => bail!("unknown flag `{a}`; usage: {USAGE_RUN}"),
                }
            }
            let mut opts = if quick {
                bench::Options::quick(out)
            } else {
                bench::Options::full(out)
            };
            if let Some(s) = sizes {
                opts.sizes = s;
            }
            if let Some(n) = up_to {
                opts.baselines_up_to = n;
            }
            if rewrite {
                bench::report::rewrite(&opts)?;
            } else {
                bench::run(&opts)?;
            }
            eprintln!(
                "lb-bench: wrote {}",
                opts.out_dir.join("BENCHMARKS.md").display()
            );
            Ok(())
        }
        _ => bail!(
            "usage: {USAGE_RUN} | server PORT | client connections|requests ADDR:PORT SECS [SRC] | packets SERVICES CT_ENTRIES REPEAT | control SERVICES CHANGES | ct-growth ENTRIES"
        ),
    }
}
