//! Network namespaces made with `ip netns add` and entered with nsenter or
//! setns only (`ip netns exec` remounts /sys and would hide bpffs).

use std::{path::PathBuf, process::Command};

pub struct Netns {
    pub name: String,
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    pub fn new(name: String) -> Self {
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self { name };
        ns.sh("ip link set lo up; sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0");
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs a shell snippet inside the namespace; panics with its stderr on failure.
    pub fn sh(&self, script: &str) {
        run(Command::new("nsenter")
            .arg(format!("--net={}", self.path().display()))
            .args(["sh", "-ec", script]));
    }

    pub fn sh_output(&self, script: &str) -> String {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.path().display()))
            .args(["sh", "-ec", script])
            .output()
            .expect("nsenter");
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A veth pair from `a` (named `a_if`) to `b` (named `b_if`), TX checksum
/// offload off on both ends so receivers verify real checksums.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    let tmp_a = format!("{}a", &a.name[a.name.len().saturating_sub(10)..]);
    let tmp_b = format!("{}b", &a.name[a.name.len().saturating_sub(10)..]);
    a.sh(&format!(
        "ip link add {tmp_a} type veth peer name {tmp_b}; ip link set {tmp_b} netns {b}; ip link set {tmp_a} name {a_if}; \
         ethtool -K {a_if} tx off >/dev/null; ip link set {a_if} up",
        b = b.name
    ));
    b.sh(&format!("ip link set {tmp_b} name {b_if}; ethtool -K {b_if} tx off >/dev/null; ip link set {b_if} up"));
}
