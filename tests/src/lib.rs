//! Test harness: network namespaces, cgroups, helper processes and agents,
//! each removed when dropped (also when a test panics). Names carry the
//! prefix `lbt<pid>-` so a later run can remove what a dead run left.

pub mod agent;
pub mod apiserver;
pub mod bench;
pub mod lab;
pub mod netns;
pub mod probe;
pub mod spawn;
pub mod testbed;
mod wait;

pub use wait::{try_wait_until, wait_until};

use std::path::PathBuf;

/// Fails the calling test with a clear message unless it runs as root with
/// cgroup v2 and network namespaces: kernel tests never skip.
#[expect(unsafe_code, reason = "geteuid through libc")]
pub fn require_kernel() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (BPF, cgroups, network namespaces): run it through `cargo xtask test` as root"
    );
    assert!(
        lb_agent::datapath::host::cgroup2_root().is_ok(),
        "this test needs a cgroup v2 hierarchy mounted (none found in /proc/mounts)"
    );
    assert!(
        std::path::Path::new("/proc/self/ns/net").exists(),
        "this test needs network namespaces (/proc/self/ns/net is missing)"
    );
    cleanup_stale();
}

/// A prefix unique to this process and call.
pub fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "lbt{}-{}{}",
        std::process::id(),
        tag,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Built binaries: the agent from the workspace's target dir, the helper
/// from this package.
pub fn agent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("LB_AGENT_BIN") {
        return p.into();
    }
    built("lb-agent")
}

pub fn helper_bin() -> PathBuf {
    built("lbh")
}

/// A binary of this workspace's build: target/<profile>/deps/<test> ->
/// target/<profile>/<name>.
pub(crate) fn built(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(|d| {
            if d.ends_with("deps") {
                d.parent()
            } else {
                Some(d)
            }
        })
        .expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace first (`cargo xtask test` does)",
        p.display()
    );
    p
}

pub fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Where the lab makes its cgroups: the root of the cgroup v2 hierarchy, or
/// `LB_LAB_CGROUP_PARENT` (a test puts them under a parent of its own).
pub fn cgroup_base() -> anyhow::Result<PathBuf> {
    match std::env::var_os("LB_LAB_CGROUP_PARENT") {
        Some(p) => Ok(p.into()),
        None => lb_agent::datapath::host::cgroup2_root(),
    }
}

/// The pid in a `<tag><pid>-...` name.
fn tagged_pid(tag: &str, name: &str) -> Option<u32> {
    name.strip_prefix(tag)?.split('-').next()?.parse().ok()
}

/// Removes namespaces, cgroups (killing their processes), pins and temp
/// dirs named `<tag><pid>-...` for which `select(pid)` holds: runs whose
/// process is gone, or this run at its teardown.
pub fn cleanup(tag: &str, select: impl Fn(u32) -> bool) {
    let pick = |n: &str| tagged_pid(tag, n).is_some_and(&select);
    let mut cgroups = Vec::new();
    let mut bases: Vec<PathBuf> = lb_agent::datapath::host::cgroup2_root()
        .into_iter()
        .collect();
    bases.extend(cgroup_base().ok());
    bases.dedup();
    for root in bases {
        if let Ok(rd) = std::fs::read_dir(&root) {
            for e in rd.flatten() {
                if pick(&e.file_name().to_string_lossy()) {
                    let _ = std::fs::write(e.path().join("cgroup.kill"), "1");
                    cgroups.push(e.path());
                }
            }
        }
    }
    for c in &cgroups {
        spawn::remove_cgroup(c);
    }
    if let Ok(rd) = std::fs::read_dir("/sys/fs/bpf") {
        for e in rd.flatten() {
            if pick(&e.file_name().to_string_lossy()) {
                let _ = lb_agent::datapath::reset(&e.path());
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir("/run/netns") {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if pick(&n) {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", &n])
                    .status();
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) {
        for e in rd.flatten() {
            if pick(&e.file_name().to_string_lossy()) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Removes what test runs (`lbt`) whose process is gone left behind.
pub fn cleanup_stale() {
    cleanup("lbt", |pid| !pid_alive(pid));
}
