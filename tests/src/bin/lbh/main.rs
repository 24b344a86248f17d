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
//!
//! Split by job: `sock` holds what both kinds of helper share (dual-stack
//! binds, error names, the servers' answer); `basic` the tests' and the
//! demo's servers and probes; `lab` the lab's.

#![expect(
    unsafe_code,
    reason = "a test helper of raw sockets: dual-stack binds, SO_LINGER, SO_MARK, setns"
)]

mod basic;
mod lab;
mod sock;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use serde_json::json;

use basic::{probe_tcp, probe_udp, serve, udp_exchange};
use sock::{answer, error_name, plain};

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
