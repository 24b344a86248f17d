//! The network namespace's devices and routes: addresses, names and
//! globs, link events, host routes, the link type of a device, and moving
//! a thread into another namespace.
#![expect(
    unsafe_code,
    reason = "getifaddrs, if_nameindex, netlink sockets, ioctl, setns through libc"
)]

use anyhow::Context as _;

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
