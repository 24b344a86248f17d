//! Lab helper: the servers and clients of tests and the demo. It is started
//! already inside its cgroup and network namespace (see `lb_tests::spawn`),
//! so every socket it opens belongs to them.
//!
//!   lbh serve NAME PORT...            TCP and UDP on [::]:PORT (both families)
//!   lbh probe TARGET PROTO COUNT [connected|unconnected|same-socket] [v6sock] [TIMEOUT_MS]
//!   lbh loop TARGET STOPFILE          TCP connections until STOPFILE exists
//!   lbh hold TARGET                   one TCP connection; a request per stdin line

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
        other => {
            eprintln!("lbh: unknown mode `{other}`");
            std::process::exit(2);
        }
    }
}
