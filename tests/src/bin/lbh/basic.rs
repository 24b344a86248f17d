//! The tests' and the demo's servers and probes.

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use lb_tests::probe::Probe;

use crate::sock::{answer, dual_stack_socket, error_name, plain};

pub(super) fn serve(name: String, ports: Vec<u16>) {
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

pub(super) fn probe_tcp(target: SocketAddr, timeout: Duration) -> Probe {
    let t = Instant::now();
    let s = match TcpStream::connect_timeout(&target, timeout) {
        Ok(s) => s,
        Err(e) => {
            return Probe::failed(error_name(&e), t.elapsed().as_secs_f64() * 1e3);
        }
    };
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let peer = s.peer_addr().map(|a| a.to_string()).ok();
    s.set_read_timeout(Some(timeout)).ok();
    let mut w = s.try_clone().expect("clone");
    let mut line = String::new();
    let r = writeln!(w, "hello").and_then(|_| BufReader::new(s).read_line(&mut line));
    let v = match r {
        Ok(n) if n > 0 => {
            let (served_by, client_seen) = answer(&line);
            Probe::served(served_by, client_seen, ms)
        }
        Ok(_) => Probe::failed("closed", ms),
        Err(e) => Probe::failed(error_name(&e), ms),
    };
    Probe { peer, ..v }
}

pub(super) fn probe_udp(
    target: SocketAddr,
    timeout: Duration,
    connected: bool,
    v6sock: bool,
) -> Probe {
    let bind: SocketAddr = if v6sock || target.is_ipv6() {
        "[::]:0".parse().unwrap()
    } else {
        "0.0.0.0:0".parse().unwrap()
    };
    let s = UdpSocket::bind(bind).expect("udp bind");
    udp_exchange(&s, target, timeout, connected)
}

pub(super) fn udp_exchange(
    s: &UdpSocket,
    target: SocketAddr,
    timeout: Duration,
    connected: bool,
) -> Probe {
    s.set_read_timeout(Some(timeout)).ok();
    let t = Instant::now();
    let sent = if connected {
        s.connect(target).and_then(|_| s.send(b"hello\n"))
    } else {
        s.send_to(b"hello\n", target)
    };
    if let Err(e) = sent {
        return Probe::failed(error_name(&e), t.elapsed().as_secs_f64() * 1e3);
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
            Probe {
                peer: from.map(|a| a.to_string()),
                ..Probe::served(served_by, client_seen, ms)
            }
        }
        Err(e) => Probe::failed(error_name(&e), ms),
    }
}
