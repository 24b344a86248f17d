//! Where the agent runs: the cgroup v2 hierarchy, the BPF filesystem, the
//! kernel's version and the process's own settings; the network
//! namespace's devices and routes are `net`'s.
#![expect(
    unsafe_code,
    reason = "host set-up through libc: statfs, signals, clocks"
)]

mod net;

pub use net::{
    check_ethernet, enter_netns, glob_match, host_routes, interface_addrs, interface_exists,
    interfaces_matching, interfaces_with, watch_links,
};

use std::{
    ffi::CString,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The first cgroup2 mount in /proc/mounts (/sys/fs/cgroup on pure v2
/// hosts, /sys/fs/cgroup/unified on hybrid ones).
pub fn cgroup2_root() -> anyhow::Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    cgroup2_root_in(&mounts)
        .context("no cgroup2 file system is mounted (see /proc/mounts); pass --cgroup PATH")
}

pub fn cgroup2_root_in(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_dev, dir, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(dir.replace("\\040", " ")))
    })
}

fn fs_type(path: &Path) -> std::io::Result<i64> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: statfs writes into a zeroed struct we own; `c` is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above: `st` is ours to write, `c` lives through the call.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_type as i64)
}

fn nearest_existing(path: &Path) -> &Path {
    let mut p = path;
    while !p.exists() {
        match p.parent() {
            Some(parent) => p = parent,
            None => break,
        }
    }
    p
}

/// Makes `pin_dir` a directory on a bpffs, mounting /sys/fs/bpf when the pin
/// directory lies under it and nothing is mounted there yet.
pub fn ensure_pin_dir(pin_dir: &Path) -> anyhow::Result<()> {
    let existing = nearest_existing(pin_dir);
    if fs_type(existing).with_context(|| format!("statfs {}", existing.display()))? != BPF_FS_MAGIC
    {
        let bpffs = Path::new("/sys/fs/bpf");
        if !pin_dir.starts_with(bpffs) {
            bail!(
                "pin directory {} is not on a BPF file system; mount one (mount -t bpf bpf DIR) or use a --pin-dir under /sys/fs/bpf",
                pin_dir.display()
            );
        }
        refuse_private_mount_namespace()?;
        std::fs::create_dir_all(bpffs).with_context(|| format!("creating {}", bpffs.display()))?;
        tracing::info!(
            "mounting bpffs at {} (nothing was mounted there)",
            bpffs.display()
        );
        let (src, target, fstype) = (c"bpf", c"/sys/fs/bpf", c"bpf");
        // SAFETY: constant NUL-terminated strings; no data argument.
        if unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        } != 0
        {
            return Err(std::io::Error::last_os_error()).context("mounting bpffs at /sys/fs/bpf");
        }
    }
    std::fs::create_dir_all(pin_dir).with_context(|| format!("creating {}", pin_dir.display()))?;
    Ok(())
}

/// A bpffs mounted in a private mount namespace (as `ip netns exec` makes)
/// is seen by nobody else: pins there would vanish with the agent.
fn refuse_private_mount_namespace() -> anyhow::Result<()> {
    let mine = std::fs::read_link("/proc/self/ns/mnt").context("reading /proc/self/ns/mnt")?;
    match std::fs::read_link("/proc/1/ns/mnt") {
        Ok(init) if init != mine => bail!(
            "refusing to mount bpffs: this process is in a private mount namespace ({}, PID 1 is in {}), as `ip netns exec` makes; \
             pins there would be seen by nobody else. Enter network namespaces with nsenter --net= instead, or mount bpffs first",
            mine.display(),
            init.display()
        ),
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::warn!(
                "cannot tell whether the mount namespace is PID 1's ({e}); mounting bpffs anyway"
            );
            Ok(())
        }
    }
}

/// The cgroup id the kernel reports for a cgroup v2 directory (its inode).
pub fn cgroup_id(path: &Path) -> anyhow::Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    Ok(std::fs::metadata(path)
        .with_context(|| format!("stat {}", path.display()))?
        .ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_on_hybrid_and_pure_hosts() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_root_in(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let pure = "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";
        assert_eq!(cgroup2_root_in(pure), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(cgroup2_root_in("proc /proc proc rw 0 0\n"), None);
    }
}

/// The oldest kernel the programs load on: `bpf_set_retval` (ECONNREFUSED
/// from the socket hooks) came in 5.18; the rest (getpeername hooks,
/// BPF_F_INNER_MAP, coarse clock, link updates) is older.
pub const KERNEL_FLOOR: (u32, u32) = (5, 18);

/// Refuses, naming the missing feature, on a kernel below the floor.
pub fn check_kernel() -> anyhow::Result<()> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("reading the kernel release")?;
    check_release(release.trim())
}

fn check_release(release: &str) -> anyhow::Result<()> {
    let mut it = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u32>().unwrap_or(0));
    let v = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    if v < KERNEL_FLOOR {
        anyhow::bail!(
            "kernel {release} is older than {}.{}: the socket hooks need bpf_set_retval (5.18) to refuse a Service without endpoints",
            KERNEL_FLOOR.0,
            KERNEL_FLOOR.1
        );
    }
    Ok(())
}

#[cfg(test)]
mod kernel_tests {
    #[test]
    fn the_kernel_floor_is_5_18() {
        for ok in ["6.18.0-amd64", "5.18.0", "6.1.0-28-cloud-amd64", "10.0"] {
            assert!(super::check_release(ok).is_ok(), "{ok}");
        }
        for old in ["5.17.15", "5.10.0-32-amd64", "4.19.0"] {
            let e = super::check_release(old).unwrap_err().to_string();
            assert!(e.contains("bpf_set_retval") && e.contains(old), "{e}");
        }
    }
}

/// The inspection commands die quietly on a closed pipe (`lb-agent status
/// | head`), as command-line tools do, instead of panicking in println!.
/// Not for `run`: the agent keeps EPIPE as an error on its sockets.
pub fn quiet_on_closed_pipe() {
    // SAFETY: resetting a signal's disposition to its default has no
    // preconditions; no handler is installed.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Seconds of CLOCK_MONOTONIC, the clock bpf_ktime_get_coarse_ns reads.
pub fn monotonic_s() -> u32 {
    // SAFETY: all-zero is a valid timespec; clock_gettime only writes into
    // this local one.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: as above: a valid pointer to a live local.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u32
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// SNAT hands out node ports from a range of its own: a node whose
/// ephemeral range reaches into it could see one of its own connections
/// collide with a translated flow towards the same backend.
pub fn check_ephemeral_ports() {
    let Ok(text) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range") else {
        return;
    };
    let mut it = text
        .split_whitespace()
        .filter_map(|n| n.parse::<u32>().ok());
    if let (Some(lo), Some(hi)) = (it.next(), it.next()) {
        let overlaps = |a: u16, b: u16| hi >= a as u32 && lo <= b as u32;
        if overlaps(lb_common::SNAT_LOW_MIN, lb_common::SNAT_LOW_MAX)
            || overlaps(lb_common::SNAT_PORT_MIN, lb_common::SNAT_PORT_MAX)
        {
            tracing::warn!(
                "net.ipv4.ip_local_port_range {lo}-{hi} overlaps the SNAT ports {}-{} and {}-{}: keep it within 30000-60999 so no socket of this node can collide with a translated flow",
                lb_common::SNAT_LOW_MIN,
                lb_common::SNAT_LOW_MAX,
                lb_common::SNAT_PORT_MIN,
                lb_common::SNAT_PORT_MAX
            );
        }
    }
}
