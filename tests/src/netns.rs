//! Network namespaces: made with `ip netns add`, entered with setns (the
//! calling thread, a helper thread, or a child between fork and exec:
//! `spawn::confine`) or through nsenter for shell snippets; never with
//! `ip netns exec`, which remounts /sys and would hide bpffs.

use std::{
    fs::File,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

/// Opens a network namespace (`/run/netns/NAME`, `/proc/PID/ns/net`) for
/// [`enter_fd`]. The file is close-on-exec.
pub fn open(path: &Path) -> anyhow::Result<File> {
    File::open(path).with_context(|| format!("opening network namespace {}", path.display()))
}

/// Moves the calling thread into the network namespace `ns` refers to.
/// Nothing but the syscall (no allocation, no lock), so it is
/// async-signal-safe: `spawn::confine` calls it between fork and exec.
#[expect(unsafe_code, reason = "setns through libc")]
pub fn enter_fd(ns: BorrowedFd<'_>) -> std::io::Result<()> {
    // SAFETY: setns takes a file descriptor the borrow keeps open and
    // moves only the calling thread; no memory is shared with the kernel.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Moves the calling thread into the network namespace at `path`, for
/// good: for a thread that lives there (a server's). To visit one, use
/// [`in_netns`].
pub fn enter(path: &Path) -> anyhow::Result<()> {
    let ns = open(path)?;
    enter_fd(ns.as_fd()).with_context(|| format!("entering network namespace {}", path.display()))
}

/// `f` run on a helper thread inside the network namespace at `path`; the
/// calling thread stays where it is. What `f` makes there (a listener, a
/// program attached to a device) stays in that namespace.
pub fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| -> anyhow::Result<T> {
            enter(path)?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("a thread in {} panicked", path.display()))?
    })
}

/// `program` inside the network namespace at `path`, through nsenter (a
/// process of its own, so this one stays where it is).
pub fn command(path: &Path, program: &str) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", path.display())).arg(program);
    cmd
}

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
        run(command(&self.path(), "sh").args(["-ec", script]));
    }

    pub fn sh_output(&self, script: &str) -> String {
        let out = command(&self.path(), "sh")
            .args(["-ec", script])
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
