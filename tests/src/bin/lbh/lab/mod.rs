//! The lab's servers and clients: sockets made with explicit options
//! (source port, SO_MARK for `via`), one thread per pod namespace.
//!
//! Here: the servers; `clients` the probes; `churn` connections back to
//! back; `sockets` the raw sockets with their options.

mod churn;
mod clients;
mod sockets;

pub use churn::{ChurnMode, churn};
pub use clients::{http, request, tcp, udp, udp_sized};

use std::{
    io::{BufRead, BufReader, Write},
    net::UdpSocket,
};

use crate::sock::{dual_stack_socket, plain};

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
            // This thread and the ones it starts serve the pod from its namespace.
            lb_tests::netns::enter(std::path::Path::new(&ns)).unwrap_or_else(|e| panic!("{e:#}"));
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
                                let _ = udp
                                    .send_to(format!("{pod} {}\n", plain(from)).as_bytes(), from);
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
