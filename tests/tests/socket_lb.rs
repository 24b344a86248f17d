//! The socket-level datapath for real: cgroup sock_addr programs, a real
//! agent from a file source, real TCP and UDP servers in namespaces.
//!
//! This file: translation, balancing, refusal, removed backends; the
//! agent's lifecycle and its capacity sit in socket_lb_agent.rs and
//! socket_lb_capacity.rs; the Service helpers in common/socket.rs.

mod common;

use lb_tests::testbed::{Testbed, client_ip4, client_ip6};
use serde_json::Value;

use common::socket::*;

fn tcp_balances(ip: &str, target: &str, client: &str) {
    let mut bed = Testbed::new(3);
    web(&mut bed, &[ip], &[0, 1, 2]);
    let results = bed.probe(target, "tcp", 300, "-", false);
    for r in &results {
        assert_eq!(
            r["peer"].as_str(),
            Some(target),
            "getpeername must show the ClusterIP: {r}"
        );
        assert_eq!(
            r["client_seen"].as_str(),
            Some(client),
            "the server's accept() must see the real client: {r}"
        );
    }
    let by = served(&results);
    assert_eq!(by.len(), 3, "every backend must serve: {by:?}");
    for (b, n) in &by {
        assert!(
            (60..=141).contains(n),
            "backend {b} got {n} of 300 connections (want 20%..47%): {by:?}"
        );
    }
}

#[test]
fn tcp_cluster_ip_v4_spreads_over_backends_and_hides_them() {
    tcp_balances("10.96.0.10", "10.96.0.10:80", &client_ip4());
}

#[test]
fn tcp_cluster_ip_v6_spreads_over_backends_and_hides_them() {
    tcp_balances("fd00:96::a", "[fd00:96::a]:80", &client_ip6());
}

fn udp_replies_from_cluster_ip(ip: &str, target: &str, v6sock: bool) {
    let mut bed = Testbed::new(2);
    web(&mut bed, &[ip.trim_start_matches("::ffff:")], &[0, 1]);
    for mode in ["unconnected", "connected"] {
        let results = bed.probe(target, "udp", 20, mode, v6sock);
        served(&results);
        for r in &results {
            assert_eq!(
                r["peer"].as_str(),
                Some(target),
                "{mode} UDP reply must come from the ClusterIP: {r}"
            );
        }
    }
}

#[test]
fn udp_dns_style_exchange_v4_sees_cluster_ip() {
    udp_replies_from_cluster_ip("10.96.0.10", "10.96.0.10:53", false);
}

#[test]
fn udp_dns_style_exchange_v6_sees_cluster_ip() {
    udp_replies_from_cluster_ip("fd00:96::a", "[fd00:96::a]:53", false);
}

#[test]
fn udp_v4_mapped_on_ipv6_socket_sees_cluster_ip() {
    udp_replies_from_cluster_ip("::ffff:10.96.0.10", "[::ffff:10.96.0.10]:53", true);
}

#[test]
fn tcp_v4_mapped_on_ipv6_socket_is_translated() {
    let mut bed = Testbed::new(2);
    web(&mut bed, &["10.96.0.10"], &[0, 1]);
    let results = bed.probe("[::ffff:10.96.0.10]:80", "tcp", 20, "-", true);
    served(&results);
    for r in &results {
        assert_eq!(r["peer"].as_str(), Some("[::ffff:10.96.0.10]:80"), "{r}");
    }
}

#[test]
fn one_udp_socket_keeps_its_backend_and_sockets_spread() {
    let mut bed = Testbed::new(3);
    web(&mut bed, &["10.96.0.10"], &[0, 1, 2]);
    for _ in 0..5 {
        let by = served(&bed.probe("10.96.0.10:53", "udp", 10, "same-socket", false));
        assert_eq!(
            by.len(),
            1,
            "the datagrams of one unconnected socket went to several backends: {by:?}"
        );
    }
    let by = served(&bed.probe("10.96.0.10:53", "udp", 60, "unconnected", false));
    assert_eq!(
        by.len(),
        3,
        "60 UDP sockets should reach all 3 backends: {by:?}"
    );
}

fn assert_refused(results: &[Value], what: &str) {
    for r in results {
        assert_eq!(r["ok"], false, "{what}: {r}");
        assert_eq!(
            r["error"].as_str(),
            Some("refused"),
            "{what} must be refused, not time out: {r}"
        );
        let ms = r["ms"].as_f64().unwrap();
        assert!(ms < 50.0, "{what} took {ms} ms: refusal must be immediate");
    }
}

#[test]
fn service_without_backends_and_unknown_port_are_refused_at_once() {
    let mut bed = Testbed::new(1);
    web(&mut bed, &["10.96.0.10", "fd00:96::a"], &[]);
    for (addr, v6sock) in [
        ("10.96.0.10", false),
        ("[fd00:96::a]", false),
        ("[::ffff:10.96.0.10]", true),
    ] {
        assert_refused(
            &bed.probe(&format!("{addr}:80"), "tcp", 3, "-", v6sock),
            &format!("TCP connect to {addr}:80 with no backend"),
        );
        assert_refused(
            &bed.probe(&format!("{addr}:53"), "udp", 3, "connected", v6sock),
            &format!("UDP connect to {addr}:53 with no backend"),
        );
        assert_refused(
            &bed.probe(&format!("{addr}:53"), "udp", 3, "unconnected", v6sock),
            &format!("UDP sendto {addr}:53 with no backend"),
        );
    }
    // Backends now, but a port the Service does not have is still refused.
    web(&mut bed, &["10.96.0.10", "fd00:96::a"], &[0]);
    served(&bed.probe("10.96.0.10:80", "tcp", 2, "-", false));
    assert_refused(
        &bed.probe("10.96.0.10:81", "tcp", 2, "-", false),
        "a port the Service does not have",
    );
    assert_refused(
        &bed.probe("[fd00:96::a]:81", "tcp", 2, "-", false),
        "a port the Service does not have",
    );
    assert_refused(
        &bed.probe("10.96.0.10:54", "udp", 2, "unconnected", false),
        "a UDP port the Service does not have",
    );
}

#[test]
fn removed_backend_gets_no_new_connection_and_established_ones_live() {
    let mut bed = Testbed::new(3);
    web(&mut bed, &["10.96.0.10"], &[0, 1, 2]);
    let mut held = bed.client_proc(&["hold", "10.96.0.10:80"]);
    held.send_line("go");
    let first: Value = serde_json::from_str(&held.read_line()).unwrap();
    assert_eq!(first["ok"], true, "{first}");
    let keeper = first["served_by"].as_str().unwrap().to_string();
    let keep_idx: usize = keeper.trim_start_matches('b').parse().unwrap();
    let removed = (keep_idx + 1) % 3;
    let remaining: Vec<usize> = (0..3).filter(|i| *i != removed).collect();
    web(&mut bed, &["10.96.0.10"], &remaining); // waits for the agent's synced generation
    let by = served(&bed.probe("10.96.0.10:80", "tcp", 60, "-", false));
    assert!(
        !by.contains_key(&format!("b{removed}")),
        "removed backend b{removed} still got connections: {by:?}"
    );
    held.send_line("again");
    let again: Value = serde_json::from_str(&held.read_line()).unwrap();
    assert_eq!(again["ok"], true, "established connection broke: {again}");
    assert_eq!(again["served_by"].as_str(), Some(keeper.as_str()));
}

/// A DNS client's connected UDP socket: its backend leaving the Service
/// ends it with an error (another backend leaving does not), and the
/// socket it opens next reaches a live backend.
#[test]
fn connected_udp_socket_of_a_removed_backend_is_destroyed_and_reconnects() {
    let mut bed = Testbed::new(3);
    web(&mut bed, &["10.96.0.10"], &[0, 1, 2]);
    let mut held = bed.client_proc(&["hold-udp", "10.96.0.10:53"]);
    let mut ask = |line: &str| -> Value {
        held.send_line(line);
        serde_json::from_str(&held.read_line()).unwrap()
    };
    let first = ask("go");
    assert_eq!(first["ok"], true, "{first}");
    let keeper = first["served_by"].as_str().unwrap().to_string();
    let keep_idx: usize = keeper.trim_start_matches('b').parse().unwrap();
    let last = (keep_idx + 2) % 3;
    web(&mut bed, &["10.96.0.10"], &[keep_idx, last]);
    let again = ask("again");
    assert_eq!(
        again["ok"], true,
        "another backend leaving broke the socket: {again}"
    );
    assert_eq!(
        again["served_by"].as_str(),
        Some(keeper.as_str()),
        "{again}"
    );
    web(&mut bed, &["10.96.0.10"], &[last]);
    let after = ask("again");
    assert_eq!(
        after["ok"], false,
        "the socket still reached removed b{keep_idx}: {after}"
    );
    assert_ne!(
        after["error"], "timeout",
        "the socket must fail at once, not go silent: {after}"
    );
    let fresh = ask("reconnect");
    assert_eq!(fresh["ok"], true, "{fresh}");
    assert_eq!(
        fresh["served_by"].as_str(),
        Some(format!("b{last}").as_str()),
        "{fresh}"
    );
}

/// A quiet connected UDP socket (a DNS forwarder waiting on a slow
/// upstream) keeps seeing the ClusterIP as its replies' source while the
/// same client opens hundreds of TCP connections through the Service: its
/// reverse translation lives in the socket's own storage, which no other
/// socket's churn can evict (the old shared map is made tiny here).
#[test]
fn a_quiet_udp_socket_keeps_its_frontend_under_connect_churn() {
    let mut bed = Testbed::with_agent_args(3, &["--max-sock-rev=16"]);
    web(&mut bed, &["10.96.0.10"], &[0, 1, 2]);
    let mut held = bed.client_proc(&["hold-udp", "10.96.0.10:53"]);
    let mut ask = |line: &str| -> Value {
        held.send_line(line);
        serde_json::from_str(&held.read_line()).unwrap()
    };
    let first = ask("go");
    assert_eq!(first["from"], "10.96.0.10:53", "{first}");
    let by = served(&bed.probe("10.96.0.10:80", "tcp", 300, "-", false));
    assert_eq!(by.values().sum::<usize>(), 300);
    let again = ask("again");
    assert_eq!(again["ok"], true, "{again}");
    assert_eq!(
        again["from"], "10.96.0.10:53",
        "the reply must still come from the ClusterIP: {again}"
    );
    assert_eq!(again["served_by"], first["served_by"], "{again}");
}
