//! `cargo xtask`: set-up, builds, tests and the demo, one command each.

mod setup;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what this machine lacks to build and test (idempotent).
    Setup,
    /// Build the eBPF object (through the agent's build script) and copy it
    /// to target/bpf/lb-ebpf.o for bpftool and tests.
    BuildEbpf,
    /// Set-up, build, then the whole test suite (needs root).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set-up, build, then the demo: the lab on examples/demo.yaml, as a table.
    Demo,
    /// Generated and mutated packets through every packet program
    /// (BPF_PROG_TEST_RUN), each checked against the datapath's invariants.
    Fuzz {
        /// How many packets (the test suite runs 100,000).
        #[arg(long, default_value_t = 1_000_000)]
        packets: u64,
        /// The generator's seed.
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Set-up, build, then the restart storm: every lab agent killed and
    /// restarted every two seconds under TCP and UDP load (the suite runs 20 s).
    Chaos {
        /// How long the storm lasts.
        #[arg(long, default_value_t = 60)]
        secs: u32,
    },
    /// Set-up, a release build, then this project against direct
    /// connections and kube-proxy-shaped iptables and nftables rules at
    /// 1 to 100,000 Services; writes BENCHMARKS.md and docs/bench/ (needs
    /// root and a quiet machine).
    Bench {
        /// Two sizes, two seconds per measurement (about two minutes).
        #[arg(long)]
        quick: bool,
        /// More for `lb-bench run` (`--sizes 1,1000`, `--baselines-up-to 10000`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set-up, build, then a lab scenario (see LAB.md): one JSON line per probe attempt.
    Lab {
        scenario: PathBuf,
        /// Extra flag for every agent (repeatable).
        #[arg(long = "agent-arg", allow_hyphen_values = true)]
        agent_args: Vec<String>,
        /// A readable table instead of JSON lines.
        #[arg(long)]
        human: bool,
    },
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("+ {cmd:?}");
    let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed ({st})");
    }
    Ok(())
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// Builds the default members (agent with its embedded object, helpers,
/// tests) once, so later steps reuse it.
fn build() -> anyhow::Result<()> {
    run(cargo().args(["build", "--tests", "--bins"]))
}

fn build_ebpf() -> anyhow::Result<PathBuf> {
    let out = cargo()
        .args(["build", "-p", "lb-userspace", "--message-format=json"])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cargo build")?;
    if !out.status.success() {
        bail!("building lb-userspace (and its eBPF object) failed");
    }
    let out_dir = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| {
            m["reason"] == "build-script-executed"
                && m["package_id"]
                    .as_str()
                    .is_some_and(|p| p.contains("lb-userspace"))
        })
        .filter_map(|m| m["out_dir"].as_str().map(PathBuf::from))
        .next_back()
        .context("no build-script output for lb-userspace")?;
    let src = out_dir.join("lb-ebpf");
    let dst_dir = root().join("target/bpf");
    std::fs::create_dir_all(&dst_dir)?;
    let dst = dst_dir.join("lb-ebpf.o");
    std::fs::copy(&src, &dst)
        .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
    eprintln!("eBPF object: {}", dst.display());
    Ok(dst)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Setup => setup::setup(),
        Cmd::BuildEbpf => setup::setup().and_then(|_| build_ebpf()).map(drop),
        Cmd::Test { args } => setup::setup().and_then(|_| test(&args)),
        Cmd::Demo => {
            setup::setup().and_then(|_| lab(&root().join("examples/demo.yaml"), &[], true))
        }
        Cmd::Lab {
            scenario,
            agent_args,
            human,
        } => setup::setup().and_then(|_| lab(&scenario, &agent_args, human)),
        Cmd::Fuzz { packets, seed } => setup::setup().and_then(|_| fuzz(packets, seed)),
        Cmd::Chaos { secs } => setup::setup().and_then(|_| chaos(secs)),
        Cmd::Bench { quick, args } => setup::setup().and_then(|_| bench(quick, &args)),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[expect(unsafe_code, reason = "geteuid through libc")]
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn require_root(what: &str) -> anyhow::Result<()> {
    if !is_root() {
        bail!("{what} needs root (BPF programs, cgroups, network namespaces); run it as root");
    }
    Ok(())
}

fn test(args: &[String]) -> anyhow::Result<()> {
    require_root("the test suite")?;
    build()?;
    build_ebpf()?;
    let agent = root().join("target/debug/lb-agent");
    // Kernel tests build their own namespaces and cgroups and may run side
    // by side; two threads keep a 2-core machine responsive.
    run(cargo()
        .args(["test", "--no-fail-fast"])
        .args(args)
        .args(["--", "--test-threads=2"])
        .env("LB_AGENT_BIN", agent))
}

fn fuzz(packets: u64, seed: Option<u64>) -> anyhow::Result<()> {
    require_root("the fuzzer (BPF_PROG_TEST_RUN)")?;
    let mut cmd = cargo();
    cmd.args([
        "test",
        "-p",
        "lb-userspace",
        "--lib",
        "datapath::test_run_fuzz",
        "--",
        "--nocapture",
    ])
    .env("LB_FUZZ_PACKETS", packets.to_string());
    if let Some(s) = seed {
        cmd.env("LB_FUZZ_SEED", s.to_string());
    }
    run(&mut cmd)
}

/// The restart storm of tests/tests/chaos.rs, `secs` long.
fn chaos(secs: u32) -> anyhow::Result<()> {
    require_root("the restart storm (the lab)")?;
    build()?;
    build_ebpf()?;
    run(cargo()
        .args([
            "test",
            "-p",
            "lb-tests",
            "--test",
            "chaos",
            "--",
            "--nocapture",
        ])
        .env("LB_CHAOS_SECS", secs.to_string())
        .env("LB_AGENT_BIN", root().join("target/debug/lb-agent")))
}

/// The bench from release builds (the agent's programming time and
/// memory are those of a release), writing into the repository's root.
fn bench(quick: bool, args: &[String]) -> anyhow::Result<()> {
    require_root("the bench (network namespaces, BPF, iptables, nftables)")?;
    eprintln!("xtask: building release binaries for the bench");
    run(cargo().args(["build", "--release", "--bins"]))?;
    let mut cmd = Command::new(root().join("target/release/lb-bench"));
    cmd.args(["run", "--out"]).arg(root());
    if quick {
        cmd.arg("--quick");
    }
    cmd.args(args);
    run(cmd.env("LB_AGENT_BIN", root().join("target/release/lb-agent")))
}

/// Runs the lab and exits with its own code (0 ran, 1 set-up failed, 2 invalid).
fn lab(scenario: &Path, agent_args: &[String], human: bool) -> anyhow::Result<()> {
    require_root("the lab")?;
    run(cargo().args(["build", "--quiet", "--bins"]))?;
    let mut cmd = Command::new(root().join("target/debug/lb-lab"));
    cmd.arg(scenario);
    for a in agent_args {
        cmd.arg(format!("--agent-arg={a}"));
    }
    if human {
        cmd.arg("--human");
    }
    let st = cmd.status().context("running lb-lab")?;
    std::process::exit(st.code().unwrap_or(1));
}
