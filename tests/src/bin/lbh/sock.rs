//! What both kinds of helper share: dual-stack sockets, error names, the
//! servers' answer to a request line.

use std::net::{IpAddr, SocketAddr};

pub(super) fn plain(a: SocketAddr) -> String {
    let ip = match a.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        ip => ip,
    };
    SocketAddr::new(ip, a.port()).to_string()
}

pub(super) fn dual_stack_socket(
    ty: libc::c_int,
    port: u16,
) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    // SAFETY: plain socket syscalls on a fresh fd; sockaddr_in6 lives on the stack for bind.
    unsafe {
        let fd = libc::socket(libc::AF_INET6, ty | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let owned = std::os::fd::OwnedFd::from_raw_fd(fd);
        let zero: libc::c_int = 0;
        let one: libc::c_int = 1;
        let sz = std::mem::size_of::<libc::c_int>() as u32;
        libc::setsockopt(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            (&zero as *const libc::c_int).cast(),
            sz,
        );
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            sz,
        );
        let mut sa: libc::sockaddr_in6 = std::mem::zeroed();
        sa.sin6_family = libc::AF_INET6 as u16;
        sa.sin6_port = port.to_be();
        if libc::bind(
            fd,
            (&sa as *const libc::sockaddr_in6).cast(),
            std::mem::size_of_val(&sa) as u32,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        if ty == libc::SOCK_STREAM && libc::listen(fd, 512) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(owned)
    }
}

pub(super) fn error_name(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "refused".into(),
        Some(libc::EMSGSIZE) => "message too long".into(),
        Some(libc::EHOSTUNREACH) | Some(libc::ENETUNREACH) => "unreachable".into(),
        Some(libc::EAGAIN) | Some(libc::ETIMEDOUT) | Some(libc::EINPROGRESS) => "timeout".into(),
        _ if e.kind() == std::io::ErrorKind::TimedOut
            || e.kind() == std::io::ErrorKind::WouldBlock =>
        {
            "timeout".into()
        }
        _ => e.to_string(),
    }
}

/// `namespace/name ip:port` -> (served_by, client ip without brackets).
pub(super) fn answer(line: &str) -> (Option<String>, Option<String>) {
    let mut it = line.trim().splitn(2, ' ');
    let served_by = it.next().map(str::to_string);
    let client = it.next().map(|c| {
        c.rsplit_once(':')
            .map_or(c, |(ip, _)| ip)
            .trim_matches(['[', ']'])
            .to_string()
    });
    (served_by, client)
}
