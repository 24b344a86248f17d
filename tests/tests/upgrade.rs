//! An agent started over pins of an earlier layout or size carries them:
//! the status map as it was before its last field was added (an upgrade),
//! then a conntrack map of another size, under connections through a
//! ClusterIP (socket hooks) and a NodePort (TC), none of which may fail
//! (a connect times out after 1 s: a lost SYN-ACK fails it).

mod common;

use common::bpftool;
use lb_tests::{
    bench::{
        rules::{cluster_ip, target},
        topo::{self, Client, NODE_OUTSIDE, NODE_PORT, SERVICE_PORT, Topology},
        variants::Agent,
    },
    spawn::Proc,
};

/// The status value before `source` (64 bytes) was added at its end.
const OLD_STATUS_VALUE: usize = std::mem::size_of::<lb_common::Status>() - 64;

/// The conntrack map's keys.
fn ct_keys(agent: &Agent) -> std::collections::HashSet<lb_common::CtKey> {
    let pinned = lb_agent::datapath::Pinned {
        pin_dir: agent.proc.pin_dir.clone(),
    };
    let entries = pinned.conntrack().expect("the conntrack map");
    entries.into_iter().map(|(k, _)| k).collect()
}

/// Every entry of `before` is in the conntrack map still.
fn assert_kept(agent: &Agent, before: &std::collections::HashSet<lb_common::CtKey>, during: &str) {
    let after = ct_keys(agent);
    let lost = before.difference(&after).count();
    assert_eq!(
        lost,
        0,
        "{lost} of {} conntrack entries lost across {during} ({} after)",
        before.len(),
        after.len()
    );
}

/// Each loop has completed a connection (or request): the load runs
/// across what follows.
fn wait_running(loops: &mut [(&str, Proc)]) {
    for (name, p) in loops.iter_mut() {
        topo::wait_first_ok(p).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    }
}

fn assert_none_failed(loops: &mut [(&str, Proc)], during: &str) {
    for (name, p) in loops.iter_mut() {
        let r = topo::client_result(p).unwrap();
        assert!(r["ok"].as_u64().unwrap() > 0, "{name}: {r}");
        assert_eq!(r["failed"], 0, "{name} failed across {during}: {r}");
    }
}

/// The kernel's id of the map pinned at `pin`.
fn map_id(pin: &std::path::Path) -> u64 {
    let out = bpftool(&[
        "-j".as_ref(),
        "map".as_ref(),
        "show".as_ref(),
        "pinned".as_ref(),
        pin.as_ref(),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    v["id"].as_u64().unwrap_or_else(|| panic!("{v}"))
}

fn bpftool_create(pin: &std::path::Path, args: &[&str]) {
    let mut all: Vec<&std::ffi::OsStr> = vec!["map".as_ref(), "create".as_ref(), pin.as_ref()];
    all.extend(args.iter().map(std::ffi::OsStr::new));
    bpftool(&all);
}

/// The old pins a carry left 10 s after it could end (a carried
/// conntrack map's copy after the swap runs on a thread, a moment after
/// the change set).
fn old_pins_left(agent: &Agent) -> Vec<String> {
    let left = || -> Vec<String> {
        std::fs::read_dir(&agent.proc.pin_dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with("_PREVIOUS"))
            .collect()
    };
    let _ = lb_tests::try_wait_until(
        std::time::Duration::from_secs(10),
        "the carry's end",
        || Ok(left().is_empty()),
    );
    left()
}

#[test]
fn maps_of_an_earlier_layout_or_size_are_carried_without_a_failed_connection() {
    lb_tests::require_kernel();
    let t = Topology::up().expect("topology");
    let dir = lb_tests::testbed::TempDir(std::env::temp_dir().join(lb_tests::unique("upgrade")));
    std::fs::create_dir_all(&dir.0).unwrap();
    let n = 3;
    // Closed flows keep their entries through the test, and the map has
    // room for every flow the loops make (no LRU eviction).
    let keep = "--ct-timeout-tcp-closing=600";
    let mut agent = Agent::start(&t, n, &dir.0, &["--max-ct=262144", keep]).expect("agent");
    let node_port = format!("{NODE_OUTSIDE}:{NODE_PORT}");
    let cluster = format!("{}:{SERVICE_PORT}", cluster_ip(target(n)));
    // Flows that end before the upgrade: their entries stay idle through it.
    let burst = t
        .client(Client::Outside, &["connections", &node_port, "0.5"])
        .unwrap();
    assert!(burst["ok"].as_u64().unwrap() > 10, "{burst}");
    let before = ct_keys(&agent);
    assert!(
        before.len() > 10,
        "conntrack entries before the upgrade: {}",
        before.len()
    );

    // An upgrade: the earlier agent's status map lacks the last field.
    let mut loops = [
        (
            "NodePort connections",
            t.spawn_client(Client::Outside, &["connections", &node_port, "4"]),
        ),
        (
            "ClusterIP connections",
            t.spawn_client(Client::Inside, &["connections", &cluster, "4"]),
        ),
        (
            "a NodePort connection's requests",
            t.spawn_client(Client::Outside, &["requests", &node_port, "4"]),
        ),
    ];
    wait_running(&mut loops);
    // The earlier agent stops; its programs keep running under their links.
    agent.proc.kill9();
    let status_pin = agent.proc.pin_dir.join(lb_common::MAP_STATUS);
    std::fs::remove_file(&status_pin).unwrap();
    let old_value = OLD_STATUS_VALUE.to_string();
    let status_args = ["type", "array", "key", "4", "value", &old_value];
    bpftool_create(
        &status_pin,
        &[&status_args[..], &["entries", "1", "name", "LB_STATUS_V1"]].concat(),
    );
    // The Maglev map of agents before its tables were mmapable: unpinned
    // with the one of this agent's name beside it (a downgrade left it:
    // tables that may name Services changed since), which starts again.
    let maglev_pin = agent.proc.pin_dir.join(lb_common::MAP_MAGLEV);
    let maglev_before = map_id(&maglev_pin);
    let old_maglev = agent.proc.pin_dir.join(lb_common::MAP_MAGLEV_OLD);
    bpftool_create(
        &old_maglev,
        &[
            "type",
            "array",
            "key",
            "4",
            "value",
            "4",
            "entries",
            "1",
            "name",
            "LB_MAGLEV_V1",
        ],
    );
    agent.proc.start();
    agent.proc.wait_synced(1);
    assert_none_failed(&mut loops, "the upgrade");
    assert_kept(&agent, &before, "the upgrade");
    let log = agent.proc.log_text();
    assert!(
        log.contains("LB_STATUS_V1 carried into this agent's layout"),
        "{log}"
    );
    assert!(!old_maglev.exists(), "the earlier Maglev map is unpinned");
    assert_ne!(map_id(&maglev_pin), maglev_before, "a fresh Maglev map");
    assert_eq!(old_pins_left(&agent), Vec::<String>::new());

    // A bigger conntrack map: its entries are copied into the new one, and
    // a NodePort handshake the earlier programs began completes under this
    // agent's (found in the old map until the second copy).
    let mut loops = [
        (
            "NodePort connections",
            t.spawn_client(Client::Outside, &["connections", &node_port, "3"]),
        ),
        (
            "ClusterIP connections",
            t.spawn_client(Client::Inside, &["connections", &cluster, "3"]),
        ),
        (
            "a NodePort connection's requests",
            t.spawn_client(Client::Outside, &["requests", &node_port, "3"]),
        ),
    ];
    wait_running(&mut loops);
    let before = ct_keys(&agent);
    agent.proc.kill9();
    agent.proc.extra.retain(|a| !a.starts_with("--max-ct"));
    agent.proc.extra.push("--max-ct=524288".into());
    agent.proc.start();
    agent.proc.wait_synced(1);
    assert_none_failed(&mut loops, "the conntrack map's growth");
    let st = agent.proc.status().unwrap();
    assert_eq!(st["maps"]["LB_CT_V1"]["max_entries"], 524288, "{st}");
    // The copy after the swap runs on a thread: every entry is there once
    // the carry ended.
    assert_eq!(old_pins_left(&agent), Vec::<String>::new());
    assert_kept(&agent, &before, "the conntrack map's growth");
    let log = agent.proc.log_text();
    assert!(
        log.contains("LB_CT_V1 grown from 262144 to 524288 entries"),
        "{log}"
    );
}
