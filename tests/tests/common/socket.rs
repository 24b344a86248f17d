//! The socket-level tests' Service: `web` on TCP and UDP, and who served.

use std::collections::BTreeMap;

use lb_tests::testbed::{Testbed, backend_ip4, backend_ip6, ready, service, slice};
use serde_json::Value;

pub const TCP: (&str, u16, &str) = ("http", 80, "TCP");
pub const UDP: (&str, u16, &str) = ("dns", 53, "UDP");

/// Service `web` on `ips` with TCP 80 -> 8080 and UDP 53 -> 5353, served by
/// backends `idx` of each family.
pub fn web(bed: &mut Testbed, ips: &[&str], idx: &[usize]) -> u64 {
    let ports = [("http", 8080, "TCP"), ("dns", 5353, "UDP")];
    let mut y = service("web", ips, &[TCP, UDP]);
    if ips.iter().any(|i| !i.contains(':')) {
        y += "---\n";
        y += &slice(
            "web-v4",
            "web",
            "IPv4",
            &ports,
            &ready(idx.iter().map(|i| backend_ip4(*i))),
        );
    }
    if ips.iter().any(|i| i.contains(':')) {
        y += "---\n";
        y += &slice(
            "web-v6",
            "web",
            "IPv6",
            &ports,
            &ready(idx.iter().map(|i| backend_ip6(*i))),
        );
    }
    bed.apply("web.yaml", &y)
}

pub fn served(results: &[Value]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in results {
        assert_eq!(r["ok"], true, "probe failed: {r}");
        *m.entry(r["served_by"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    m
}

/// The Services `status` names as not programmed.
pub fn not_programmed(st: &Value) -> Vec<String> {
    st["not_programmed"]
        .as_array()
        .unwrap_or_else(|| panic!("status has no not_programmed list: {st}"))
        .iter()
        .map(|r| r["service"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// A connection loop to `target`, started; it stops when `stop` exists.
pub fn start_loop(bed: &Testbed, target: &str, stop: &std::path::Path) -> lb_tests::spawn::Proc {
    let mut lp = bed.client_proc(&["loop", target, stop.to_str().unwrap()]);
    assert_eq!(lp.read_line().trim(), "started");
    lp
}

/// Stops the loop `lp` (through `stop`) and checks that it connected and
/// no connection failed `during` what the test did.
pub fn no_failures(stop: &std::path::Path, lp: &mut lb_tests::spawn::Proc, during: &str) {
    std::fs::write(stop, "").unwrap();
    let summary: Value = serde_json::from_str(&lp.read_line()).unwrap();
    assert!(summary["ok"].as_u64().unwrap() > 0, "{summary}");
    assert_eq!(
        summary["failed"], 0,
        "connections failed {during}: {summary}"
    );
}

/// The EndpointSlice of Service `name`: TCP `http` 8080 on one ready
/// endpoint, backend `backend`.
pub fn one_endpoint(name: &str, backend: usize) -> String {
    slice(
        &format!("{name}-1"),
        name,
        "IPv4",
        &[("http", 8080, "TCP")],
        &ready([backend_ip4(backend)]),
    )
}
