//! The sessionAffinity map the clients fill grows while the agent runs: a
//! sweep finds it more than three quarters full and the agent grows it
//! (the entries carried, the old map looked up on a miss until the copy
//! after the swap), and every client keeps its backend.

mod common;

use std::time::Duration;

use lb_tests::testbed::{Testbed, backend_ip4, ready, service, slice};
use serde_json::Value;

use common::socket::{TCP, served};

fn affinity_map(bed: &Testbed) -> Value {
    bed.agent
        .status()
        .map_or(Value::Null, |s| s["maps"]["LB_AFFINITY_V1"].clone())
}

#[test]
fn an_affinity_map_the_clients_fill_grows_and_its_clients_keep_their_backends() {
    let mut bed = Testbed::with_agent_args(4, &["--affinity-initial=4096"]);
    let mut y = service("web", &["10.96.0.10"], &[TCP]);
    y += "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}\n---\n";
    y += &slice(
        "web-v4",
        "web",
        "IPv4",
        &[("http", 8080, "TCP")],
        &ready((0..4).map(backend_ip4)),
    );
    bed.apply("web.yaml", &y);
    assert_eq!(affinity_map(&bed)["max_entries"], 4096, "the initial size");
    let before = served(&bed.probe("10.96.0.10:80", "tcp", 5, "-", false));
    assert_eq!(before.len(), 1, "one backend for the client: {before:?}");

    // More clients of the Service: 3,200 of 4,096 entries (a small LRU
    // map evicts before it is full: its free slots are spread over CPUs).
    lb_agent::datapath::packet_cost::remember_clients(&bed.agent.pin_dir, 3199).unwrap();
    // A sweep every 10 s, the sync loop's look at it every 10 s.
    bed.agent
        .wait_until(Duration::from_secs(45), "the affinity map's growth", |a| {
            a.status()
                .and_then(|s| s["maps"]["LB_AFFINITY_V1"]["max_entries"].as_u64())
                .is_some_and(|m| m > 4096)
        });
    let old_pin = bed.agent.pin_dir.join("LB_AFFINITY_V1_PREVIOUS");
    bed.agent.wait_until(
        Duration::from_secs(10),
        "the end of the carry: the copy done, the old map's pin gone",
        |_| !old_pin.exists(),
    );
    let map = affinity_map(&bed);
    assert_eq!(map["max_entries"], 8192, "3,200 entries, half again: {map}");
    assert_eq!(map["entries"], 3200, "every client carried over: {map}");
    let after = served(&bed.probe("10.96.0.10:80", "tcp", 5, "-", false));
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );
    let log = bed.agent.log_text();
    assert!(log.contains("affinity 4096 -> 8192 (left 3200)"), "{log}");
    assert!(
        log.lines().any(|l| l.contains("LB_AFFINITY_V1")
            && l.contains("copying the earlier map's entries on a thread of their own; the programs look them up there meanwhile")),
        "{log}"
    );
}
