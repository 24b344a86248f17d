//! Idempotent set-up of a fresh machine: the nightly toolchain's rust-src,
//! LLVM 22 and bpf-linker 0.13 for the eBPF build, and the Debian tools the
//! tests use. Says what it installs and why; prints the commands and stops
//! where it cannot install (not root, not Debian).

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::run;

const DEBIAN_TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("ethtool", "ethtool"),
    ("bpftool", "bpftool"),
    ("nsenter", "util-linux"),
    // Only to prove that node namespaces hold no packet-filter rules.
    ("iptables-save", "iptables"),
    ("nft", "nftables"),
];

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

fn output(cmd: &mut Command) -> String {
    cmd.output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default()
}

fn cargo_bin(name: &str) -> std::path::PathBuf {
    let home = std::env::var("CARGO_HOME")
        .unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap_or_default()));
    Path::new(&home).join("bin").join(name)
}

fn bpf_linker_ok() -> bool {
    let path = if have("bpf-linker") {
        "bpf-linker".into()
    } else {
        cargo_bin("bpf-linker").display().to_string()
    };
    output(Command::new(path).arg("--version")).contains("0.13")
}

pub fn setup() -> anyhow::Result<()> {
    let mut apt: Vec<&str> = Vec::new();
    let mut steps: Vec<String> = Vec::new();

    let nightly = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]));
    let need_rust_src = !nightly.lines().any(|l| l.starts_with("rust-src"));
    if need_rust_src {
        steps.push("rustup component add rust-src --toolchain nightly".into());
    }
    let need_linker = !bpf_linker_ok();
    if need_linker && !Path::new("/usr/lib/llvm-22/bin/llvm-config").exists() {
        apt.extend([
            "llvm-22-dev",
            "libpolly-22-dev",
            "libzstd-dev",
            "zlib1g-dev",
        ]);
    }
    if need_linker {
        steps.push("PATH=/usr/lib/llvm-22/bin:$PATH cargo install bpf-linker --version ^0.13 --no-default-features --features llvm-22".into());
    }
    for (cmd, pkg) in DEBIAN_TOOLS {
        if !have(cmd) {
            apt.push(pkg);
        }
    }
    if apt.is_empty() && steps.is_empty() {
        eprintln!(
            "setup: everything needed is installed (rust-src, bpf-linker 0.13, {})",
            DEBIAN_TOOLS
                .iter()
                .map(|t| t.0)
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(());
    }
    let root = crate::is_root();
    let debian = have("apt-get");
    if !apt.is_empty() && (!root || !debian) {
        let mut msg = String::from("setup cannot install packages here (");
        msg += if !root {
            "not root"
        } else {
            "no apt-get: not Debian"
        };
        msg += "). Run these, then try again:\n";
        msg += &format!("  apt-get update && apt-get install -y {}\n", apt.join(" "));
        for s in &steps {
            msg += &format!("  {s}\n");
        }
        bail!(msg);
    }
    if !apt.is_empty() {
        eprintln!(
            "setup: installing Debian packages {} (LLVM 22 links the eBPF object through bpf-linker; the others build and inspect test namespaces)",
            apt.join(" ")
        );
        run(Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&apt)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    if need_rust_src {
        eprintln!(
            "setup: adding rust-src to the nightly toolchain (the eBPF crate builds core with -Z build-std)"
        );
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    if need_linker {
        eprintln!(
            "setup: building bpf-linker 0.13 against LLVM 22 (links the eBPF object; takes a few minutes once)"
        );
        let path = format!(
            "/usr/lib/llvm-22/bin:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        run(Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                "^0.13",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("PATH", path))
        .context("installing bpf-linker")?;
    }
    Ok(())
}
