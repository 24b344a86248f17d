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
