//! Where the agent runs: the cgroup v2 hierarchy and the BPF filesystem.
#![expect(
    unsafe_code,
    reason = "host set-up through libc: statfs, getifaddrs, netlink sockets, signals, clocks"
)]

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

/// Names of the interfaces holding any of `addrs`.
pub fn interfaces_with(addrs: &[std::net::IpAddr]) -> anyhow::Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for (name, ip) in interface_addrs()? {
        if addrs.contains(&ip) && !out.contains(&name) {
            out.push(name);
        }
    }
    Ok(out)
}

/// Every address of this network namespace's interfaces, with the
/// interface holding it (getifaddrs).
pub fn interface_addrs() -> anyhow::Result<Vec<(String, std::net::IpAddr)>> {
    let mut out = Vec::new();
    // SAFETY: getifaddrs fills a list we walk read-only and free once.
    unsafe {
        let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut head) != 0 {
            return Err(std::io::Error::last_os_error()).context("getifaddrs");
        }
        let mut cur = head;
        while !cur.is_null() {
            let ifa = &*cur;
            cur = ifa.ifa_next;
            if ifa.ifa_addr.is_null() {
                continue;
            }
            let ip = match (*ifa.ifa_addr).sa_family as i32 {
                libc::AF_INET => {
                    let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    std::net::IpAddr::from(sin.sin_addr.s_addr.to_ne_bytes())
                }
                libc::AF_INET6 => {
                    let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    std::net::IpAddr::from(sin6.sin6_addr.s6_addr)
                }
                _ => continue,
            };
            let name = std::ffi::CStr::from_ptr(ifa.ifa_name)
                .to_string_lossy()
                .to_string();
            out.push((name, ip));
        }
        libc::freeifaddrs(head);
    }
    Ok(out)
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

/// Does an interface of this name exist in this network namespace?
pub fn interface_exists(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: a NUL-terminated name, read only.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, rest)) => {
            let Some(tail) = name.strip_prefix(head) else {
                return false;
            };
            (0..=tail.len())
                .filter(|i| tail.is_char_boundary(*i))
                .any(|i| glob_match(rest, &tail[i..]))
        }
    }
}

/// Interfaces of this network namespace whose names match one of
/// `patterns`, as (name, ifindex).
pub fn interfaces_matching(patterns: &[String]) -> anyhow::Result<Vec<(String, u32)>> {
    let mut out = Vec::new();
    // SAFETY: if_nameindex returns an array terminated by a zero entry,
    // walked read-only and freed once.
    unsafe {
        let head = libc::if_nameindex();
        if head.is_null() {
            return Err(std::io::Error::last_os_error()).context("if_nameindex");
        }
        let mut cur = head;
        while (*cur).if_index != 0 {
            let name = std::ffi::CStr::from_ptr((*cur).if_name)
                .to_string_lossy()
                .into_owned();
            if patterns.iter().any(|p| glob_match(p, &name)) {
                out.push((name, (*cur).if_index));
            }
            cur = cur.add(1);
        }
        libc::if_freenameindex(head);
    }
    Ok(out)
}

#[cfg(test)]
mod glob_tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("lxc*", "lxc1234"));
        assert!(glob_match("lxc*", "lxc"));
        assert!(!glob_match("lxc*", "eth0"));
        assert!(glob_match("*-host", "pod1-host"));
        assert!(glob_match("veth*x*", "veth12x3"));
        assert!(glob_match("eth0", "eth0") && !glob_match("eth0", "eth01"));
    }
}

/// Wakes `notify` whenever an interface of this network namespace appears,
/// changes or goes (rtnetlink link events), from a thread of its own: pod
/// interfaces get their programs as they appear, not at the next poll.
/// A full channel means a wake-up is already pending.
pub fn watch_links(notify: tokio::sync::mpsc::Sender<()>) -> anyhow::Result<()> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error()).context("opening a NETLINK_ROUTE socket");
    }
    // SAFETY: `raw` is a descriptor we just opened and own alone.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_nl is plain data; all-zero is a valid value.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as u16;
    sa.nl_groups = libc::RTMGRP_LINK as u32;
    // SAFETY: `sa` is a live sockaddr_nl of the size passed.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error()).context("joining the rtnetlink link group");
    }
    std::thread::Builder::new()
        .name("link-events".into())
        .spawn(move || {
            let mut buf = vec![0u8; 32768];
            loop {
                // SAFETY: `buf` is a live buffer of the length passed.
                let n =
                    unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n < 0 {
                    let e = std::io::Error::last_os_error();
                    match e.raw_os_error() {
                        Some(libc::EINTR) => continue,
                        // Events were lost: a resync catches up all the same.
                        Some(libc::ENOBUFS) => {}
                        _ => {
                            tracing::error!(
                                "rtnetlink link events: {e}; pod interfaces are now polled only"
                            );
                            return;
                        }
                    }
                }
                if notify.is_closed() {
                    return;
                }
                let _ = notify.try_send(());
            }
        })
        .context("starting the link-events thread")?;
    Ok(())
}

/// Host routes (/32, /128) of this network namespace and the ifindex of
/// their device: how a pod address reaches its pod's interface (CNIs like
/// Cilium's and Calico's route each pod to its veth).
pub fn host_routes() -> std::collections::HashMap<std::net::IpAddr, u32> {
    let mut names: std::collections::HashMap<String, u32> = Default::default();
    let mut index_of = |name: &str| -> u32 {
        *names.entry(name.to_string()).or_insert_with(|| {
            std::ffi::CString::new(name)
                // SAFETY: a valid NUL-terminated string; if_nametoindex only reads it.
                .map(|c| unsafe { libc::if_nametoindex(c.as_ptr()) })
                .unwrap_or(0)
        })
    };
    let mut out = std::collections::HashMap::new();
    let v4 = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    for (ip, dev) in parse_route4(&v4) {
        let i = index_of(&dev);
        if i != 0 {
            out.insert(ip, i);
        }
    }
    let v6 = std::fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
    for (ip, dev) in parse_route6(&v6) {
        let i = index_of(&dev);
        if i != 0 {
            out.insert(ip, i);
        }
    }
    out
}

/// /32 routes of /proc/net/route (addresses in host byte order, hex).
fn parse_route4(text: &str) -> Vec<(std::net::IpAddr, String)> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (dev, dst, mask) = (f.first()?, f.get(1)?, f.get(7)?);
            if *mask != "FFFFFFFF" {
                return None;
            }
            let d = u32::from_str_radix(dst, 16).ok()?;
            Some((std::net::IpAddr::from(d.to_ne_bytes()), dev.to_string()))
        })
        .collect()
}

/// /128 routes of /proc/net/ipv6_route (destination, prefix length in hex,
/// ..., device last).
fn parse_route6(text: &str) -> Vec<(std::net::IpAddr, String)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 10 || f[1] != "80" {
                return None;
            }
            let d = u128::from_str_radix(f[0], 16).ok()?;
            let ip = std::net::Ipv6Addr::from(d);
            // Local and multicast entries of the local table are not pods.
            if ip.is_multicast() || f[9] == "lo" {
                return None;
            }
            Some((std::net::IpAddr::V6(ip), f[9].to_string()))
        })
        .collect()
}

#[cfg(test)]
mod route_tests {
    #[test]
    fn host_routes_are_read_from_procfs_text() {
        let v4 = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                  lxc000001\t0A01F40A\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n\
                  eth0\t000064C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(
            super::parse_route4(v4),
            [("10.244.1.10".parse().unwrap(), "lxc000001".to_string())]
        );
        let v6 = "fd00024400010000000000000000000a 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000400 00000001 00000000 00000001 lxc000001\n\
                  fd000244000100000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001 lxc000001\n";
        assert_eq!(
            super::parse_route6(v6),
            [("fd00:244:1::a".parse().unwrap(), "lxc000001".to_string())]
        );
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

/// Moves the calling thread (only it) into the network namespace `ns`.
pub fn enter_netns(ns: std::os::fd::BorrowedFd<'_>) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: setns on a valid namespace fd changes only this thread's
    // namespace; no memory is shared with the kernel.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// ARPHRD_ETHER and ARPHRD_LOOPBACK: devices whose packets carry an
/// Ethernet header at TC and XDP (loopback's is all zeros).
const LINK_TYPES_WITH_ETHERNET: [u16; 2] = [1, 772];

/// Refuses a device whose packets carry no Ethernet header (WireGuard,
/// tun, IP-in-IP and GRE tunnels: ARPHRD_NONE and the like): the packet
/// programs parse Ethernet frames and would misread every packet there.
pub fn check_ethernet(dev: &str) -> anyhow::Result<()> {
    let t = link_type(dev).with_context(|| format!("reading the link type of {dev}"))?;
    if LINK_TYPES_WITH_ETHERNET.contains(&t) {
        return Ok(());
    }
    let what = match t {
        0xfffe => " (none: WireGuard, tun)",
        768 => " (IP-in-IP tunnel)",
        778 => " (GRE tunnel)",
        776 => " (SIT tunnel)",
        _ => "",
    };
    anyhow::bail!(
        "device {dev} has no Ethernet header (link type {t}{what}): the packet programs parse Ethernet frames, so it gets none; route external traffic through an Ethernet device or leave {dev} out of --devices"
    )
}

/// The ARPHRD_* type of `dev` in the calling thread's network namespace
/// (SIOCGIFHWADDR; /sys/class/net shows the namespace sysfs was mounted in).
fn link_type(dev: &str) -> std::io::Result<u16> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    const SIOCGIFHWADDR: libc::c_ulong = 0x8927;
    let name = dev.as_bytes();
    if name.len() >= 16 {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    // struct ifreq: the name, then a union whose sockaddr starts with the
    // family (the link type here).
    let mut ifreq = [0u8; 40];
    ifreq[..name.len()].copy_from_slice(name);
    // SAFETY: a fresh socket fd, owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is valid and nobody else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: SIOCGIFHWADDR reads the name and writes within the 40-byte
    // struct ifreq we pass.
    if unsafe { libc::ioctl(fd.as_raw_fd(), SIOCGIFHWADDR as _, ifreq.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(u16::from_ne_bytes([ifreq[16], ifreq[17]]))
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
