//! Lab helper: the servers and clients of tests and the demo. It is started
//! already inside its cgroup and network namespace (see `lb_tests::spawn`),
//! so every socket it opens belongs to them.
//!
//!   lbh serve NAME PORT...            TCP and UDP on [::]:PORT (both families)
//!   lbh probe TARGET PROTO COUNT [connected|unconnected|same-socket] [v6sock] [TIMEOUT_MS]
//!   lbh loop TARGET STOPFILE          TCP connections until STOPFILE exists
//!   lbh hold TARGET                   one TCP connection; a request per stdin line
//!   lbh hold-udp TARGET               one connected UDP socket; a request per stdin
//!                                     line, `reconnect` opens a new one
//!   lbh lab-serve                     stdin: `POD NETNS PORT/PROTO...` lines, then an empty line
//!   lbh lab-probe TARGET PROTO COUNT TIMEOUT_MS SRC_PORT MARK plain|http [BYTES]
//!   lbh lab-hold TARGET TIMEOUT_MS MARK   like hold, reporting the first request too
//!   lbh lab-churn TARGET SECS TIMEOUT_MS MARK TCP|UDP SRC_PORT|same
//!                                     new TCP connections back to back for SECS
//!                                     seconds, each closed with an RST (UDP:
//!                                     requests on new sockets from SRC_PORT, or
//!                                     on one connected socket); one line
#![expect(
    unsafe_code,
    reason = "a test helper of raw sockets: dual-stack binds, SO_LINGER, SO_MARK, setns"
)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use serde_json::json;

fn plain(a: SocketAddr) -> String {
    let ip = match a.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        ip => ip,
    };
    SocketAddr::new(ip, a.port()).to_string()
}

fn dual_stack_socket(ty: libc::c_int, port: u16) -> std::io::Result<std::os::fd::OwnedFd> {
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

fn serve(name: String, ports: Vec<u16>) {
    let mut threads = Vec::new();
    for port in ports {
        let tcp = TcpListener::from(dual_stack_socket(libc::SOCK_STREAM, port).expect("tcp bind"));
        let udp = UdpSocket::from(dual_stack_socket(libc::SOCK_DGRAM, port).expect("udp bind"));
        let n = name.clone();
        threads.push(std::thread::spawn(move || {
            for c in tcp.incoming() {
                let Ok(c) = c else { continue };
                let n = n.clone();
                std::thread::spawn(move || {
                    // accept() reports the real client: the socket hooks must not rewrite it.
                    let peer = c.peer_addr().map(plain).unwrap_or_default();
                    let mut w = c.try_clone().expect("clone");
                    for line in BufReader::new(c).lines() {
                        if line.is_err() || writeln!(w, "{n} {peer}").is_err() {
                            break;
                        }
                    }
                });
            }
        }));
        let n = name.clone();
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            loop {
                let Ok((_, from)) = udp.recv_from(&mut buf) else {
                    continue;
                };
                let _ = udp.send_to(format!("{n} {}\n", plain(from)).as_bytes(), from);
            }
        }));
    }
    println!("ready");
    let _ = std::io::stdout().flush();
    for t in threads {
        let _ = t.join();
    }
}

fn error_name(e: &std::io::Error) -> String {
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
fn answer(line: &str) -> (Option<String>, Option<String>) {
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

fn probe_tcp(target: SocketAddr, timeout: Duration) -> serde_json::Value {
    let t = Instant::now();
    let s = match TcpStream::connect_timeout(&target, timeout) {
        Ok(s) => s,
        Err(e) => {
            return json!({"ok": false, "error": error_name(&e), "ms": t.elapsed().as_secs_f64() * 1e3});
        }
    };
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let peer = s.peer_addr().map(|a| a.to_string()).ok();
    s.set_read_timeout(Some(timeout)).ok();
    let mut w = s.try_clone().expect("clone");
    let mut line = String::new();
    let r = writeln!(w, "hello").and_then(|_| BufReader::new(s).read_line(&mut line));
    match r {
        Ok(n) if n > 0 => {
            let (served_by, client_seen) = answer(&line);
            json!({"ok": true, "served_by": served_by, "client_seen": client_seen, "peer": peer, "error": null, "ms": ms})
        }
        Ok(_) => json!({"ok": false, "error": "closed", "peer": peer, "ms": ms}),
        Err(e) => json!({"ok": false, "error": error_name(&e), "peer": peer, "ms": ms}),
    }
}

fn probe_udp(
    target: SocketAddr,
    timeout: Duration,
    connected: bool,
    v6sock: bool,
) -> serde_json::Value {
    let bind: SocketAddr = if v6sock || target.is_ipv6() {
        "[::]:0".parse().unwrap()
    } else {
        "0.0.0.0:0".parse().unwrap()
    };
    let s = UdpSocket::bind(bind).expect("udp bind");
    udp_exchange(&s, target, timeout, connected)
}

fn udp_exchange(
    s: &UdpSocket,
    target: SocketAddr,
    timeout: Duration,
    connected: bool,
) -> serde_json::Value {
    s.set_read_timeout(Some(timeout)).ok();
    let t = Instant::now();
    let sent = if connected {
        s.connect(target).and_then(|_| s.send(b"hello\n"))
    } else {
        s.send_to(b"hello\n", target)
    };
    if let Err(e) = sent {
        return json!({"ok": false, "error": error_name(&e), "ms": t.elapsed().as_secs_f64() * 1e3});
    }
    let mut buf = [0u8; 1500];
    let r = if connected {
        s.recv(&mut buf).map(|n| (n, s.peer_addr().ok()))
    } else {
        s.recv_from(&mut buf).map(|(n, a)| (n, Some(a)))
    };
    let ms = t.elapsed().as_secs_f64() * 1e3;
    match r {
        Ok((n, from)) => {
            let (served_by, client_seen) = answer(&String::from_utf8_lossy(&buf[..n]));
            json!({"ok": true, "served_by": served_by, "client_seen": client_seen, "peer": from.map(|a| a.to_string()), "error": null, "ms": ms})
        }
        Err(e) => json!({"ok": false, "error": error_name(&e), "ms": ms}),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    match arg(0).as_str() {
        "serve" => serve(
            arg(1),
            args[2..].iter().map(|p| p.parse().expect("port")).collect(),
        ),
        "probe" => {
            let target: SocketAddr = arg(1).parse().expect("target");
            let count: usize = arg(3).parse().expect("count");
            let timeout =
                Duration::from_millis(args.get(6).and_then(|t| t.parse().ok()).unwrap_or(1000));
            // `same-socket`: every attempt from one unconnected UDP socket.
            let shared = (arg(4) == "same-socket").then(|| {
                let bind = if arg(5) == "v6sock" || target.is_ipv6() {
                    "[::]:0"
                } else {
                    "0.0.0.0:0"
                };
                UdpSocket::bind(bind).expect("udp bind")
            });
            for _ in 0..count {
                let v = match (arg(2).as_str(), &shared) {
                    ("tcp", _) => probe_tcp(target, timeout),
                    (_, Some(s)) => udp_exchange(s, target, timeout, false),
                    _ => probe_udp(target, timeout, arg(4) == "connected", arg(5) == "v6sock"),
                };
                println!("{v}");
            }
        }
        "loop" => {
            let target: SocketAddr = arg(1).parse().expect("target");
            let stop = std::path::PathBuf::from(arg(2));
            let (mut ok, mut failed, mut errors) = (0u64, 0u64, Vec::new());
            println!("started");
            let _ = std::io::stdout().flush();
            while !stop.exists() {
                let v = probe_tcp(target, Duration::from_millis(1000));
                if v["ok"] == true {
                    ok += 1;
                } else {
                    failed += 1;
                    errors.push(v["error"].clone());
                }
            }
            println!("{}", json!({"ok": ok, "failed": failed, "errors": errors}));
        }
        "hold" => {
            let target: SocketAddr = arg(1).parse().expect("target");
            let s = TcpStream::connect_timeout(&target, Duration::from_secs(1)).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(2))).ok();
            let mut w = s.try_clone().expect("clone");
            let mut r = BufReader::new(s);
            for _ in std::io::stdin().lock().lines() {
                let mut line = String::new();
                let res = writeln!(w, "hello").and_then(|_| r.read_line(&mut line));
                let v = match res {
                    Ok(n) if n > 0 => {
                        let (served_by, _) = answer(&line);
                        json!({"ok": true, "served_by": served_by})
                    }
                    Ok(_) => json!({"ok": false, "error": "closed"}),
                    Err(e) => json!({"ok": false, "error": error_name(&e)}),
                };
                println!("{v}");
                let _ = std::io::stdout().flush();
            }
            let _ = r.read(&mut [0u8; 1]);
        }
        "hold-udp" => {
            let target: SocketAddr = arg(1).parse().expect("target");
            let open = || {
                let s = UdpSocket::bind(if target.is_ipv4() {
                    "0.0.0.0:0"
                } else {
                    "[::]:0"
                })
                .expect("bind");
                s.connect(target).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(2))).ok();
                s
            };
            let mut s = open();
            for line in std::io::stdin().lock().lines() {
                if line.as_deref().is_ok_and(|l| l.trim() == "reconnect") {
                    s = open();
                }
                let mut buf = [0u8; 512];
                let res = s.send(b"hello\n").and_then(|_| s.recv_from(&mut buf));
                let v = match res {
                    Ok((n, from)) => {
                        let (served_by, _) = answer(&String::from_utf8_lossy(&buf[..n]));
                        json!({"ok": true, "served_by": served_by, "from": plain(from)})
                    }
                    Err(e) => json!({"ok": false, "error": error_name(&e)}),
                };
                println!("{v}");
                let _ = std::io::stdout().flush();
            }
        }
        "lab-serve" => lab::serve(),
        "lab-probe" => {
            let target: SocketAddr = arg(1).parse().expect("target");
            let count: usize = arg(3).parse().expect("count");
            let timeout = Duration::from_millis(arg(4).parse().expect("timeout"));
            let src: u16 = arg(5).parse().expect("source port");
            let mark: u32 = arg(6).parse().expect("mark");
            let size: usize = arg(8).parse().unwrap_or(0);
            for _ in 0..count {
                let v = match (arg(2).as_str(), arg(7).as_str()) {
                    (_, "http") => lab::http(target, timeout, mark),
                    ("TCP", _) => lab::tcp(target, timeout, src, mark).1,
                    _ if size > 0 => lab::udp_sized(target, timeout, mark, size),
                    _ => lab::udp(target, timeout, src, mark),
                };
                println!("{v}");
                let _ = std::io::stdout().flush();
            }
        }
        "lab-churn" => {
            let target: SocketAddr = arg(1).parse().expect("target");
            let secs: u64 = arg(2).parse().expect("seconds");
            let timeout = Duration::from_millis(arg(3).parse().expect("timeout"));
            let mark: u32 = arg(4).parse().expect("mark");
            let mode = match (arg(5).as_str(), arg(6).as_str()) {
                ("UDP", "same") => lab::ChurnMode::UdpSame,
                ("UDP", src) => lab::ChurnMode::Udp(src.parse().expect("source port")),
                _ => lab::ChurnMode::Tcp,
            };
            println!(
                "{}",
                lab::churn(target, Duration::from_secs(secs), timeout, mark, mode)
            );
            let _ = std::io::stdout().flush();
        }
        "lab-hold" => {
            let target: SocketAddr = arg(1).parse().expect("target");
            let timeout = Duration::from_millis(arg(2).parse().expect("timeout"));
            let mark: u32 = arg(3).parse().expect("mark");
            let (conn, first) = lab::tcp(target, timeout, 0, mark);
            println!("{first}");
            let _ = std::io::stdout().flush();
            for _ in std::io::stdin().lock().lines() {
                let v = match &conn {
                    Some(c) => lab::request(c, timeout, 0.0),
                    None => json!({"ok": false, "error": "closed", "ms": 0.0}),
                };
                println!("{v}");
                let _ = std::io::stdout().flush();
            }
        }
        other => {
            eprintln!("lbh: unknown mode `{other}`");
            std::process::exit(2);
        }
    }
}

/// The lab's servers and clients: sockets made with explicit options
/// (source port, SO_MARK for `via`), one thread per pod namespace.
mod lab {
    use std::{
        io::{BufRead, BufReader, Write},
        net::{SocketAddr, TcpStream, UdpSocket},
        os::fd::{AsRawFd, FromRawFd, OwnedFd},
        time::{Duration, Instant},
    };

    use serde_json::{Value, json};

    use super::{answer, dual_stack_socket, error_name, plain};

    fn setns(path: &str) -> std::io::Result<()> {
        let f = std::fs::File::open(path)?;
        // SAFETY: setns on a namespace fd we hold; affects this thread only.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn serve() {
        let mut pods = Vec::new();
        for line in std::io::stdin().lock().lines() {
            let line = line.expect("stdin");
            if line.trim().is_empty() {
                break;
            }
            let mut it = line.split_whitespace();
            let pod = it.next().expect("pod").to_string();
            let ns = it.next().expect("netns").to_string();
            let ports: Vec<(u16, String)> = it
                .map(|p| {
                    let (n, proto) = p.split_once('/').expect("PORT/PROTO");
                    (n.parse().expect("port"), proto.to_string())
                })
                .collect();
            pods.push((pod, ns, ports));
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let n = pods.len();
        for (pod, ns, ports) in pods {
            let tx = tx.clone();
            std::thread::spawn(move || {
                setns(&ns).unwrap_or_else(|e| panic!("setns {ns}: {e}"));
                let mut handles = Vec::new();
                for (port, proto) in ports {
                    let pod = pod.clone();
                    if proto == "UDP" {
                        let udp = UdpSocket::from(
                            dual_stack_socket(libc::SOCK_DGRAM, port).expect("udp bind"),
                        );
                        handles.push(std::thread::spawn(move || {
                            let mut buf = [0u8; 1500];
                            loop {
                                let Ok((n, from)) = udp.recv_from(&mut buf) else {
                                    continue;
                                };
                                let lines = buf[..n].iter().filter(|b| **b == b'\n').count().max(1);
                                for _ in 0..lines {
                                    let _ = udp.send_to(
                                        format!("{pod} {}\n", plain(from)).as_bytes(),
                                        from,
                                    );
                                }
                            }
                        }));
                    } else {
                        let tcp = std::net::TcpListener::from(
                            dual_stack_socket(libc::SOCK_STREAM, port).expect("tcp bind"),
                        );
                        handles.push(std::thread::spawn(move || {
                            for c in tcp.incoming() {
                                let Ok(c) = c else { continue };
                                let pod = pod.clone();
                                std::thread::spawn(move || {
                                    let peer = c.peer_addr().map(plain).unwrap_or_default();
                                    let mut w = c.try_clone().expect("clone");
                                    let mut r = BufReader::new(c);
                                    let mut line = String::new();
                                    while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                                        let reply = format!("{pod} {peer}\n");
                                        if w.write_all(reply.as_bytes()).is_err() {
                                            break;
                                        }
                                        line.clear();
                                    }
                                });
                            }
                        }));
                    }
                }
                tx.send(()).expect("ready");
                for h in handles {
                    let _ = h.join();
                }
            });
        }
        for _ in 0..n {
            rx.recv().expect("a pod's server thread died");
        }
        println!("ready");
        let _ = std::io::stdout().flush();
        // Serve until killed (the lab's cgroup.kill).
        loop {
            std::thread::park();
        }
    }

    fn socket(
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

    fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, u32) {
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
    fn connect(fd: &OwnedFd, target: SocketAddr, timeout: Duration) -> std::io::Result<()> {
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

    pub fn request(c: &TcpStream, timeout: Duration, ms: f64) -> Value {
        c.set_read_timeout(Some(timeout)).ok();
        let mut w = c;
        let mut line = String::new();
        let r = w
            .write_all(b"hello\n")
            .and_then(|_| BufReader::new(c).read_line(&mut line));
        match r {
            Ok(n) if n > 0 => {
                let (served_by, client_seen) = answer(&line);
                json!({"ok": true, "served_by": served_by, "client_seen": client_seen, "error": null, "ms": ms})
            }
            Ok(_) => json!({"ok": false, "error": "closed", "ms": ms}),
            Err(e) => json!({"ok": false, "error": error_name(&e), "ms": ms}),
        }
    }

    pub fn tcp(
        target: SocketAddr,
        timeout: Duration,
        src: u16,
        mark: u32,
    ) -> (Option<TcpStream>, Value) {
        let t = Instant::now();
        let fd = match socket(target, libc::SOCK_STREAM, src, mark)
            .and_then(|fd| connect(&fd, target, timeout).map(|_| fd))
        {
            Ok(fd) => fd,
            Err(e) => {
                return (
                    None,
                    json!({"ok": false, "error": error_name(&e), "ms": t.elapsed().as_secs_f64() * 1e3}),
                );
            }
        };
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let c = TcpStream::from(fd);
        let v = request(&c, timeout, ms);
        (Some(c), v)
    }

    /// How long one churn connect may take: long enough that a hung
    /// handshake (SYN retransmitted for a minute) shows as a slow connect,
    /// not as a failure.
    const CHURN_CONNECT: Duration = Duration::from_secs(70);
    /// Slow or failed attempts listed one by one (the counts cover all).
    const CHURN_LISTED: usize = 20;

    /// The client's own port of a socket (0 when it has none yet).
    fn local_port(fd: &OwnedFd) -> u16 {
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
    fn linger_zero(fd: &OwnedFd) {
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

    /// What a churn makes back to back.
    #[derive(Clone, Copy)]
    pub enum ChurnMode {
        /// New TCP connections, each closed with an RST.
        Tcp,
        /// UDP requests, each on a new socket from this port (0: any).
        Udp(u16),
        /// UDP requests on one connected socket (a DNS client's).
        UdpSame,
    }

    /// New TCP connections (or UDP requests, see `ChurnMode`) back to back
    /// until `secs` have passed (the last one started may run past it by
    /// one attempt at most): each sends one request line and reads the
    /// answer (within `timeout`). One line: the usual fields (`served_by`,
    /// `client_seen` of the first answer, `ms` the mean connect or round
    /// trip) and `churn`, the totals.
    pub fn churn(
        target: SocketAddr,
        secs: Duration,
        timeout: Duration,
        mark: u32,
        mode: ChurnMode,
    ) -> Value {
        let start = Instant::now();
        let (mut attempts, mut failed, mut over_1s) = (0u64, 0u64, 0u64);
        let (mut max_ms, mut sum_ms) = (0f64, 0f64);
        let mut errors = std::collections::BTreeMap::<String, u64>::new();
        let mut slow = Vec::new();
        let mut first: Option<Value> = None;
        let mut same: Option<UdpSocket> = None;
        while start.elapsed() < secs {
            attempts += 1;
            let at_s = start.elapsed().as_secs_f64();
            let (v, port, ms) = match mode {
                ChurnMode::Tcp => tcp_attempt(target, timeout, mark),
                ChurnMode::Udp(src) => {
                    let v = udp(target, timeout, src, mark);
                    let ms = v["ms"].as_f64().unwrap_or(0.0);
                    (v, src, ms)
                }
                ChurnMode::UdpSame => {
                    if same.is_none() {
                        same = socket(target, libc::SOCK_DGRAM, 0, mark)
                            .map(UdpSocket::from)
                            .and_then(|s| {
                                s.set_read_timeout(Some(timeout))?;
                                s.connect(target)?;
                                Ok(s)
                            })
                            .ok();
                    }
                    let v = match &same {
                        Some(s) => udp_request(s),
                        None => json!({"ok": false, "error": "socket", "ms": 0.0}),
                    };
                    let ms = v["ms"].as_f64().unwrap_or(0.0);
                    let port = same
                        .as_ref()
                        .and_then(|s| s.local_addr().ok())
                        .map_or(0, |a| a.port());
                    (v, port, ms)
                }
            };
            max_ms = max_ms.max(ms);
            sum_ms += ms;
            if ms > 1000.0 {
                over_1s += 1;
            }
            let ok = v["ok"] == true;
            if ok {
                first.get_or_insert(v.clone());
            } else {
                failed += 1;
                let e = v["error"].as_str().unwrap_or("?").to_string();
                *errors.entry(e).or_default() += 1;
            }
            if (!ok || ms > 1000.0) && slow.len() < CHURN_LISTED {
                slow.push(json!({"port": port, "ms": ms, "error": v["error"], "at_s": at_s}));
            }
        }
        let first = first.unwrap_or(Value::Null);
        let mean = if attempts > 0 {
            sum_ms / attempts as f64
        } else {
            0.0
        };
        json!({
            "ok": attempts > 0 && failed == 0,
            "served_by": first["served_by"],
            "client_seen": first["client_seen"],
            "error": errors.keys().next(),
            "ms": mean,
            "churn": {
                "attempts": attempts,
                "failed": failed,
                "max_ms": max_ms,
                "over_1s": over_1s,
                "errors": errors,
                "slow": slow,
            },
        })
    }

    /// One churn connection: (answer, client port, connect ms).
    fn tcp_attempt(target: SocketAddr, timeout: Duration, mark: u32) -> (Value, u16, f64) {
        let t = Instant::now();
        let fd = match socket(target, libc::SOCK_STREAM, 0, mark) {
            Ok(fd) => fd,
            Err(e) => return (json!({"ok": false, "error": error_name(&e)}), 0, 0.0),
        };
        linger_zero(&fd);
        let connected = connect(&fd, target, CHURN_CONNECT);
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let port = local_port(&fd);
        let v = match connected {
            Ok(()) => {
                let c = TcpStream::from(fd);
                request(&c, timeout, ms)
                // dropped here: closed with an RST
            }
            Err(e) => json!({"ok": false, "error": error_name(&e), "ms": ms}),
        };
        (v, port, ms)
    }

    /// One request on a connected UDP socket; `ms` the time since `t`.
    /// Connected, so an ICMP error surfaces as the receive's error.
    fn udp_exchange(s: &UdpSocket, req: &[u8], t: Instant) -> Value {
        let mut buf = [0u8; 1500];
        let r = s.send(req).and_then(|_| s.recv(&mut buf));
        let ms = t.elapsed().as_secs_f64() * 1e3;
        match r {
            Ok(n) => {
                let (served_by, client_seen) = answer(&String::from_utf8_lossy(&buf[..n]));
                json!({"ok": true, "served_by": served_by, "client_seen": client_seen, "error": null, "ms": ms})
            }
            Err(e) => json!({"ok": false, "error": error_name(&e), "ms": ms}),
        }
    }

    /// One request on a churn's connected UDP socket.
    fn udp_request(s: &UdpSocket) -> Value {
        udp_exchange(s, b"hello\n", Instant::now())
    }

    /// One UDP request from a new socket (from port `src`, 0: any):
    /// `size` bytes with "don't fragment" (IP_PMTUDISC_DO /
    /// IPV6_PMTUDISC_DO), so an ICMP "fragmentation needed" / "packet too
    /// big" the socket understood surfaces as EMSGSIZE; 0: a short line.
    fn udp_new(target: SocketAddr, timeout: Duration, src: u16, mark: u32, size: usize) -> Value {
        let t = Instant::now();
        let s = match socket(target, libc::SOCK_DGRAM, src, mark) {
            Ok(fd) => UdpSocket::from(fd),
            Err(e) => return json!({"ok": false, "error": error_name(&e), "ms": 0.0}),
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
            return json!({"ok": false, "error": error_name(&e), "ms": t.elapsed().as_secs_f64() * 1e3});
        }
        udp_exchange(&s, &req, t)
    }

    pub fn udp_sized(target: SocketAddr, timeout: Duration, mark: u32, size: usize) -> Value {
        udp_new(target, timeout, 0, mark, size)
    }

    pub fn udp(target: SocketAddr, timeout: Duration, src: u16, mark: u32) -> Value {
        udp_new(target, timeout, src, mark, 0)
    }

    pub fn http(target: SocketAddr, timeout: Duration, mark: u32) -> Value {
        let t = Instant::now();
        let fd = match socket(target, libc::SOCK_STREAM, 0, mark)
            .and_then(|fd| connect(&fd, target, timeout).map(|_| fd))
        {
            Ok(fd) => fd,
            Err(e) => {
                return json!({"ok": false, "error": error_name(&e), "ms": t.elapsed().as_secs_f64() * 1e3});
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
            (_, Some(code)) => {
                json!({"ok": true, "served_by": null, "client_seen": null, "error": null, "ms": ms, "http_status": code})
            }
            (Err(e), None) => json!({"ok": false, "error": error_name(&e), "ms": ms}),
            (Ok(_), None) => json!({"ok": false, "error": "bad-http-response", "ms": ms}),
        }
    }
}
