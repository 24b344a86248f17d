//! The lab's probes: TCP requests, UDP exchanges, HTTP.

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use lb_tests::probe::Probe;

use super::sockets::{connect, socket};
use crate::sock::{answer, error_name};

pub fn request(c: &TcpStream, timeout: Duration, ms: f64) -> Probe {
    c.set_read_timeout(Some(timeout)).ok();
    let mut w = c;
    let mut line = String::new();
    let r = w
        .write_all(b"hello\n")
        .and_then(|_| BufReader::new(c).read_line(&mut line));
    match r {
        Ok(n) if n > 0 => {
            let (served_by, client_seen) = answer(&line);
            Probe::served(served_by, client_seen, ms)
        }
        Ok(_) => Probe::failed("closed", ms),
        Err(e) => Probe::failed(error_name(&e), ms),
    }
}

pub fn tcp(
    target: SocketAddr,
    timeout: Duration,
    src: u16,
    mark: u32,
) -> (Option<TcpStream>, Probe) {
    let t = Instant::now();
    let fd = match socket(target, libc::SOCK_STREAM, src, mark)
        .and_then(|fd| connect(&fd, target, timeout).map(|_| fd))
    {
        Ok(fd) => fd,
        Err(e) => {
            return (
                None,
                Probe::failed(error_name(&e), t.elapsed().as_secs_f64() * 1e3),
            );
        }
    };
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let c = TcpStream::from(fd);
    let v = request(&c, timeout, ms);
    (Some(c), v)
}

/// One request on a connected UDP socket; `ms` the time since `t`.
/// Connected, so an ICMP error surfaces as the receive's error.
pub(super) fn udp_exchange(s: &UdpSocket, req: &[u8], t: Instant) -> Probe {
    let mut buf = [0u8; 1500];
    let r = s.send(req).and_then(|_| s.recv(&mut buf));
    let ms = t.elapsed().as_secs_f64() * 1e3;
    match r {
        Ok(n) => {
            let (served_by, client_seen) = answer(&String::from_utf8_lossy(&buf[..n]));
            Probe::served(served_by, client_seen, ms)
        }
        Err(e) => Probe::failed(error_name(&e), ms),
    }
}

/// One request on a churn's connected UDP socket.
pub(super) fn udp_request(s: &UdpSocket) -> Probe {
    udp_exchange(s, b"hello\n", Instant::now())
}

/// One UDP request from a new socket (from port `src`, 0: any):
/// `size` bytes with "don't fragment" (IP_PMTUDISC_DO /
/// IPV6_PMTUDISC_DO), so an ICMP "fragmentation needed" / "packet too
/// big" the socket understood surfaces as EMSGSIZE; 0: a short line.
pub(super) fn udp_new(
    target: SocketAddr,
    timeout: Duration,
    src: u16,
    mark: u32,
    size: usize,
) -> Probe {
    let t = Instant::now();
    let s = match socket(target, libc::SOCK_DGRAM, src, mark) {
        Ok(fd) => UdpSocket::from(fd),
        Err(e) => return Probe::failed(error_name(&e), 0.0),
    };
    if size > 0 {
        let (level, opt, val) = if target.is_ipv4() {
            (
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                libc::IP_PMTUDISC_DO,
            )
        } else {
            (
                libc::IPPROTO_IPV6,
                libc::IPV6_MTU_DISCOVER,
                libc::IPV6_PMTUDISC_DO,
            )
        };
        // SAFETY: setsockopt with a stack-held int of its own size.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                level,
                opt,
                (&val as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            );
        }
    }
    s.set_read_timeout(Some(timeout)).ok();
    let mut req = vec![b'x'; size.max(6) - 1];
    req[..5].copy_from_slice(b"hello");
    req.push(b'\n');
    if let Err(e) = s.connect(target) {
        return Probe::failed(error_name(&e), t.elapsed().as_secs_f64() * 1e3);
    }
    udp_exchange(&s, &req, t)
}

pub fn udp_sized(target: SocketAddr, timeout: Duration, mark: u32, size: usize) -> Probe {
    udp_new(target, timeout, 0, mark, size)
}

pub fn udp(target: SocketAddr, timeout: Duration, src: u16, mark: u32) -> Probe {
    udp_new(target, timeout, src, mark, 0)
}

pub fn http(target: SocketAddr, timeout: Duration, mark: u32) -> Probe {
    let t = Instant::now();
    let fd = match socket(target, libc::SOCK_STREAM, 0, mark)
        .and_then(|fd| connect(&fd, target, timeout).map(|_| fd))
    {
        Ok(fd) => fd,
        Err(e) => {
            return Probe::failed(error_name(&e), t.elapsed().as_secs_f64() * 1e3);
        }
    };
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let mut c = TcpStream::from(fd);
    c.set_read_timeout(Some(timeout)).ok();
    let mut resp = String::new();
    let r = c
        .write_all(b"GET /healthz HTTP/1.0\r\n\r\n")
        .and_then(|_| std::io::Read::read_to_string(&mut c, &mut resp));
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok());
    match (r, status) {
        (_, Some(code)) => Probe {
            http_status: Some(code),
            ..Probe::served(None, None, ms)
        },
        (Err(e), None) => Probe::failed(error_name(&e), ms),
        (Ok(_), None) => Probe::failed("bad-http-response", ms),
    }
}
