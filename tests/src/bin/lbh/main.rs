//! Lab helper: the servers and clients of tests and the demo. It is started
//! already inside its cgroup and network namespace (see `lb_tests::spawn`),
//! so every socket it opens belongs to them. Each probe attempt prints one
//! JSON line, an `lb_tests::probe::Probe`; `lbh help` lists the modes.
//!
//! Split by job: `sock` holds what both kinds of helper share (dual-stack
//! binds, error names, the servers' answer); `basic` the tests' and the
//! demo's servers and probes; `lab` the lab's.

#![expect(
    unsafe_code,
    reason = "a test helper of raw sockets: dual-stack binds, SO_LINGER, SO_MARK"
)]

mod basic;
mod lab;
mod sock;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    path::PathBuf,
    time::Duration,
};

use clap::{Parser, Subcommand, ValueEnum};
use lb_tests::probe::Probe;
use serde_json::json;

use basic::{probe_tcp, probe_udp, serve, udp_exchange};
use sock::{answer, error_name, plain};

#[derive(Parser)]
#[command(name = "lbh", about = "The tests' and the lab's servers and clients")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Proto {
    Tcp,
    Udp,
}

/// How `probe` sends UDP.
#[derive(Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
enum UdpMode {
    /// sendto() from a new socket per attempt.
    #[default]
    Unconnected,
    /// connect() then send() on a new socket per attempt.
    Connected,
    /// sendto() from one socket for every attempt.
    SameSocket,
}

#[derive(Subcommand)]
enum Mode {
    /// TCP and UDP on [::]:PORT (both families), answering `NAME CLIENT`.
    Serve {
        name: String,
        #[arg(required = true)]
        ports: Vec<u16>,
    },
    /// COUNT requests, one line each.
    Probe {
        target: SocketAddr,
        #[arg(ignore_case = true)]
        proto: Proto,
        count: usize,
        #[arg(long, value_enum, default_value_t)]
        udp: UdpMode,
        /// UDP from an IPv6 socket (an IPv4 target v4-mapped).
        #[arg(long)]
        v6sock: bool,
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
    },
    /// TCP connections until STOP_FILE exists; then one line of totals.
    Loop {
        target: SocketAddr,
        stop_file: PathBuf,
    },
    /// One TCP connection; a request per stdin line.
    Hold { target: SocketAddr },
    /// One connected UDP socket; a request per stdin line, `reconnect`
    /// opens a new socket first.
    HoldUdp { target: SocketAddr },
    /// The lab's servers; stdin: `POD NETNS PORT/PROTO...` lines, then an
    /// empty line.
    LabServe,
    /// The lab's probe: COUNT requests, one line each.
    LabProbe {
        target: SocketAddr,
        #[arg(ignore_case = true)]
        proto: Proto,
        count: usize,
        #[arg(long)]
        timeout_ms: u64,
        /// The client's port (0: any).
        #[arg(long, default_value_t = 0)]
        src_port: u16,
        /// SO_MARK of the client's sockets (0: none).
        #[arg(long, default_value_t = 0)]
        mark: u32,
        /// GET /healthz over TCP instead of a request line.
        #[arg(long)]
        http: bool,
        /// UDP: a request of this many bytes with "don't fragment" (0: a
        /// line).
        #[arg(long, default_value_t = 0)]
        bytes: usize,
    },
    /// Like `hold`, with the lab's socket options, reporting the first
    /// request too.
    LabHold {
        target: SocketAddr,
        #[arg(long)]
        timeout_ms: u64,
        #[arg(long, default_value_t = 0)]
        mark: u32,
    },
    /// New TCP connections back to back for SECS seconds, each closed with
    /// an RST (UDP: requests on new sockets from SRC_PORT, or on one
    /// connected socket); one line.
    LabChurn {
        target: SocketAddr,
        #[arg(ignore_case = true)]
        proto: Proto,
        #[arg(long)]
        secs: u64,
        #[arg(long)]
        timeout_ms: u64,
        #[arg(long, default_value_t = 0)]
        mark: u32,
        /// UDP: the client's port for every new socket (0: any).
        #[arg(long, default_value_t = 0)]
        src_port: u16,
        /// UDP: every request on one connected socket (a DNS client's).
        #[arg(long)]
        same_socket: bool,
    },
}

fn print(line: impl std::fmt::Display) {
    println!("{line}");
    let _ = std::io::stdout().flush();
}

fn main() {
    match Cli::parse().mode {
        Mode::Serve { name, ports } => serve(name, ports),
        Mode::Probe {
            target,
            proto,
            count,
            udp,
            v6sock,
            timeout_ms,
        } => {
            let timeout = Duration::from_millis(timeout_ms);
            let shared = (proto == Proto::Udp && udp == UdpMode::SameSocket).then(|| {
                let bind = if v6sock || target.is_ipv6() {
                    "[::]:0"
                } else {
                    "0.0.0.0:0"
                };
                UdpSocket::bind(bind).expect("udp bind")
            });
            for _ in 0..count {
                let v = match (proto, &shared) {
                    (Proto::Tcp, _) => probe_tcp(target, timeout),
                    (Proto::Udp, Some(s)) => udp_exchange(s, target, timeout, false),
                    (Proto::Udp, None) => {
                        probe_udp(target, timeout, udp == UdpMode::Connected, v6sock)
                    }
                };
                println!("{v}");
            }
        }
        Mode::Loop { target, stop_file } => {
            let (mut ok, mut failed, mut errors) = (0u64, 0u64, Vec::new());
            print("started");
            while !stop_file.exists() {
                let v = probe_tcp(target, Duration::from_millis(1000));
                if v.ok {
                    ok += 1;
                } else {
                    failed += 1;
                    errors.push(v.error);
                }
            }
            println!("{}", json!({"ok": ok, "failed": failed, "errors": errors}));
        }
        Mode::Hold { target } => {
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
                        Probe::served(served_by, None, 0.0)
                    }
                    Ok(_) => Probe::failed("closed", 0.0),
                    Err(e) => Probe::failed(error_name(&e), 0.0),
                };
                print(v);
            }
            let _ = r.read(&mut [0u8; 1]);
        }
        Mode::HoldUdp { target } => {
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
                        Probe {
                            from: Some(plain(from)),
                            ..Probe::served(served_by, None, 0.0)
                        }
                    }
                    Err(e) => Probe::failed(error_name(&e), 0.0),
                };
                print(v);
            }
        }
        Mode::LabServe => lab::serve(),
        Mode::LabProbe {
            target,
            proto,
            count,
            timeout_ms,
            src_port,
            mark,
            http,
            bytes,
        } => {
            let timeout = Duration::from_millis(timeout_ms);
            for _ in 0..count {
                let v = match proto {
                    _ if http => lab::http(target, timeout, mark),
                    Proto::Tcp => lab::tcp(target, timeout, src_port, mark).1,
                    Proto::Udp if bytes > 0 => lab::udp_sized(target, timeout, mark, bytes),
                    Proto::Udp => lab::udp(target, timeout, src_port, mark),
                };
                print(v);
            }
        }
        Mode::LabChurn {
            target,
            proto,
            secs,
            timeout_ms,
            mark,
            src_port,
            same_socket,
        } => {
            let mode = match proto {
                Proto::Udp if same_socket => lab::ChurnMode::UdpSame,
                Proto::Udp => lab::ChurnMode::Udp(src_port),
                Proto::Tcp => lab::ChurnMode::Tcp,
            };
            let timeout = Duration::from_millis(timeout_ms);
            print(lab::churn(
                target,
                Duration::from_secs(secs),
                timeout,
                mark,
                mode,
            ));
        }
        Mode::LabHold {
            target,
            timeout_ms,
            mark,
        } => {
            let timeout = Duration::from_millis(timeout_ms);
            let (conn, first) = lab::tcp(target, timeout, 0, mark);
            print(first);
            for _ in std::io::stdin().lock().lines() {
                let v = match &conn {
                    Some(c) => lab::request(c, timeout, 0.0),
                    None => Probe::failed("closed", 0.0),
                };
                print(v);
            }
        }
    }
}
