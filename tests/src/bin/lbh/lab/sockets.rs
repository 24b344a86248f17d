//! Raw sockets with explicit options: source port, SO_MARK, SO_LINGER;
//! connect() with a timeout.

use std::{
    net::SocketAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

pub(super) fn socket(
    target: SocketAddr,
    ty: libc::c_int,
    src: u16,
    mark: u32,
) -> std::io::Result<OwnedFd> {
    let family = if target.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    // SAFETY: plain socket syscalls on a fresh fd with stack-held option values.
    unsafe {
        let fd = libc::socket(family, ty | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let owned = OwnedFd::from_raw_fd(fd);
        let one: libc::c_int = 1;
        let sz = std::mem::size_of::<libc::c_int>() as u32;
        if mark != 0
            && libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_MARK,
                (&mark as *const u32).cast(),
                4,
            ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        if src != 0 {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&one as *const libc::c_int).cast(),
                sz,
            );
            let bind: SocketAddr = if target.is_ipv6() {
                format!("[::]:{src}")
            } else {
                format!("0.0.0.0:{src}")
            }
            .parse()
            .expect("addr");
            let (sa, len) = sockaddr(bind);
            if libc::bind(fd, (&sa as *const libc::sockaddr_storage).cast(), len) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(owned)
    }
}

pub(super) fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, u32) {
    // SAFETY: zeroed sockaddr_storage is valid; we write the variant that fits.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match a {
        SocketAddr::V4(v4) => {
            let sin = (&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>();
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            unsafe {
                (*sin).sin_family = libc::AF_INET as u16;
                (*sin).sin_port = v4.port().to_be();
                (*sin).sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
            }
            (ss, std::mem::size_of::<libc::sockaddr_in>() as u32)
        }
        SocketAddr::V6(v6) => {
            let sin6 = (&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>();
            // SAFETY: as above, for sockaddr_in6.
            unsafe {
                (*sin6).sin6_family = libc::AF_INET6 as u16;
                (*sin6).sin6_port = v6.port().to_be();
                (*sin6).sin6_addr.s6_addr = v6.ip().octets();
            }
            (ss, std::mem::size_of::<libc::sockaddr_in6>() as u32)
        }
    }
}

/// connect() with a timeout; the error is the syscall's own.
pub(super) fn connect(fd: &OwnedFd, target: SocketAddr, timeout: Duration) -> std::io::Result<()> {
    let raw = fd.as_raw_fd();
    let (sa, len) = sockaddr(target);
    // SAFETY: fcntl/connect/poll/getsockopt on an fd we own, with stack buffers.
    unsafe {
        let flags = libc::fcntl(raw, libc::F_GETFL);
        libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK);
        let r = libc::connect(raw, (&sa as *const libc::sockaddr_storage).cast(), len);
        if r != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINPROGRESS) {
                return Err(e);
            }
            let mut pfd = libc::pollfd {
                fd: raw,
                events: libc::POLLOUT,
                revents: 0,
            };
            if libc::poll(&mut pfd, 1, timeout.as_millis() as i32) == 0 {
                return Err(std::io::Error::from_raw_os_error(libc::ETIMEDOUT));
            }
            let mut err: libc::c_int = 0;
            let mut l = std::mem::size_of::<libc::c_int>() as u32;
            libc::getsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&mut err as *mut libc::c_int).cast(),
                &mut l,
            );
            if err != 0 {
                return Err(std::io::Error::from_raw_os_error(err));
            }
        }
        libc::fcntl(raw, libc::F_SETFL, flags);
    }
    Ok(())
}

/// The client's own port of a socket (0 when it has none yet).
pub(super) fn local_port(fd: &OwnedFd) -> u16 {
    // SAFETY: getsockname into a zeroed sockaddr_storage of its own size.
    unsafe {
        let mut ss: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as u32;
        if libc::getsockname(
            fd.as_raw_fd(),
            (&mut ss as *mut libc::sockaddr_storage).cast(),
            &mut len,
        ) != 0
        {
            return 0;
        }
        // sin_port and sin6_port sit at the same offset.
        let sin = (&ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>();
        u16::from_be((*sin).sin_port)
    }
}

/// SO_LINGER 0: close() sends an RST and leaves no TIME_WAIT, so the
/// client's ports come round again within seconds, as a busy client's do.
pub(super) fn linger_zero(fd: &OwnedFd) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a stack-held linger of its own size.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        );
    }
}
