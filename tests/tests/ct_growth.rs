//! A conntrack map the flows outgrow while the agent runs: a sweep finds it
//! more than three quarters full and the agent grows it (the entries
//! carried, the old map looked up on a miss until the second copy), under
//! connections through a NodePort (TC), none of which may fail (a connect
//! times out after 1 s: a lost SYN-ACK fails it).

use std::time::Duration;

use lb_tests::bench::{
    topo::{self, Client, NODE_OUTSIDE, NODE_PORT, Topology},
    variants::Agent,
};

fn ct_max_entries(agent: &Agent) -> Option<u64> {
    agent.proc.status()?["maps"]["LB_CT_V1"]["max_entries"].as_u64()
}

/// An agent whose conntrack map (`size`: 2,048 entries) a burst of
/// NodePort connections has filled: closed flows keep their entries
/// (600 s).
fn filled(size: &str) -> (Topology, lb_tests::testbed::TempDir, Agent) {
    lb_tests::require_kernel();
    let t = Topology::up().expect("topology");
    let dir = lb_tests::testbed::TempDir(std::env::temp_dir().join(lb_tests::unique("ctgrow")));
    std::fs::create_dir_all(&dir.0).unwrap();
    let args = [size, "--ct-timeout-tcp-closing=600"];
    let agent = Agent::start(&t, 3, &dir.0, &args).expect("agent");
    assert_eq!(ct_max_entries(&agent), Some(2048), "the initial size");
    let node_port = format!("{NODE_OUTSIDE}:{NODE_PORT}");
    let burst = t
        .client(Client::Outside, &["connections", &node_port, "2"])
        .unwrap();
    assert!(
        burst["ok"].as_u64().unwrap() > 1024,
        "enough flows to fill 2,048 entries: {burst}"
    );
    (t, dir, agent)
}

#[test]
fn a_conntrack_map_the_flows_fill_grows_while_running_without_a_failed_connection() {
    let (t, _dir, mut agent) = filled("--ct-initial=2048");
    let node_port = format!("{NODE_OUTSIDE}:{NODE_PORT}");

    let mut loops = [
        t.spawn_client(Client::Outside, &["connections", &node_port, "35"]),
        t.spawn_client(Client::Outside, &["requests", &node_port, "35"]),
    ];
    for p in loops.iter_mut() {
        topo::wait_first_ok(p).unwrap();
    }
    // A sweep every 10 s, the sync loop's look at it every 10 s.
    agent
        .proc
        .wait_until(Duration::from_secs(30), "the conntrack map's growth", |a| {
            a.status()
                .and_then(|s| s["maps"]["LB_CT_V1"]["max_entries"].as_u64())
                .is_some_and(|m| m > 2048)
        });
    for (name, p) in ["NodePort connections", "a NodePort connection's requests"]
        .iter()
        .zip(loops.iter_mut())
    {
        let r = topo::client_result(p).unwrap();
        assert!(r["ok"].as_u64().unwrap() > 0, "{name}: {r}");
        assert_eq!(r["failed"], 0, "{name} failed across the growth: {r}");
    }
    let log = agent.proc.log_text();
    assert!(
        log.contains("conntrack maps grown: packet path 2048 -> "),
        "the growth and its reason are logged:\n{log}"
    );
    assert!(!log.contains("growing the conntrack maps"), "{log}");
    // The entries come over after the swap, on a thread of their own (the
    // sync loop never waits for them), and the carry then ends.
    assert!(
        log.contains("copying the earlier map's entries on a thread of their own; the programs look them up there meanwhile"),
        "{log}"
    );
    let old_pin = agent.proc.pin_dir.join("LB_CT_V1_PREVIOUS");
    agent.proc.wait_until(
        Duration::from_secs(10),
        "the end of the carry: the copy done, the old map's pin gone",
        |a| {
            a.log_text()
                .contains("entries of the earlier map copied after the swap")
                && !old_pin.exists()
        },
    );
}

#[test]
fn a_conntrack_map_max_ct_fixes_is_named_once_when_full_and_never_grown() {
    let (_t, _dir, mut agent) = filled("--max-ct=2048");
    let said = "the conntrack map holds";
    agent.proc.wait_until(
        Duration::from_secs(30),
        "the full map named in the log",
        |a| a.log_text().contains(said),
    );
    // Two sweeps later: still named once, still its size.
    std::thread::sleep(Duration::from_secs(21));
    let log = agent.proc.log_text();
    assert_eq!(log.matches(said).count(), 1, "{log}");
    assert!(log.contains("--max-ct fixes its size"), "{log}");
    assert_eq!(ct_max_entries(&agent), Some(2048));
}

/// An agent whose conntrack map of 524,288 entries, filled with 500,000,
/// has grown: the copy after the swap has just started on its thread.
fn copying_after_a_growth() -> (Topology, lb_tests::testbed::TempDir, Agent) {
    lb_tests::require_kernel();
    let t = Topology::up().expect("topology");
    let dir = lb_tests::testbed::TempDir(std::env::temp_dir().join(lb_tests::unique("ctcopy")));
    std::fs::create_dir_all(&dir.0).unwrap();
    let mut agent = Agent::start(&t, 3, &dir.0, &["--ct-initial=524288"]).expect("agent");
    lb_agent::datapath::packet_cost::fill_pinned_ct(
        &agent.proc.pin_dir,
        500_000,
        "10.96.0.10".parse().unwrap(),
    )
    .expect("the conntrack map filled");
    agent.proc.wait_until(
        Duration::from_secs(60),
        "the copy after the swap starting",
        |a| {
            a.log_text()
                .contains("copying the earlier map's entries on a thread of their own")
        },
    );
    (t, dir, agent)
}

/// SIGTERM while a grown conntrack map's half million entries are still
/// being copied after the swap: the agent finishes the copy and the carry
/// before it exits, so the next agent finds the grown map and no carry
/// to start over from the old one (which would drop what the programs
/// wrote in the grown map since the swap).
#[test]
fn an_agent_stopped_during_a_growths_copy_finishes_it_before_exiting() {
    let (_t, _dir, mut agent) = copying_after_a_growth();
    let pins = agent.proc.pin_dir.clone();
    let pid = agent.proc.pid().expect("running").to_string();
    let term = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(term.success());
    lb_tests::wait_until(Duration::from_secs(60), "the agent's exit", || {
        agent.proc.exited().is_some()
    });
    let log = agent.proc.log_text();
    assert!(
        log.contains("500000 entries of the earlier map copied after the swap"),
        "the copy ran to its end:\n{log}"
    );
    assert!(
        !pins.join("LB_CT_V1_PREVIOUS").exists(),
        "the carry ended before the exit:\n{log}"
    );
    assert_eq!(
        lb_agent::datapath::pinned_max_entries(&pins, "LB_CT_V1"),
        Some(1_048_576),
        "the grown map stays pinned"
    );
}

/// SIGKILL while a grown conntrack map's entries are still being copied
/// after the swap: the next agent keeps the grown map, with what the
/// programs wrote in it since the swap, and merges the old map's entries
/// into it without replacing any (it used to drop the grown map and carry
/// the old one again).
#[test]
fn an_agent_killed_during_a_growths_copy_leaves_the_grown_map_to_the_next() {
    let (_t, _dir, mut agent) = copying_after_a_growth();
    let pins = agent.proc.pin_dir.clone();
    // A flow the grown map's programs made after the swap (another
    // frontend: one forward entry the old map lacks).
    lb_agent::datapath::packet_cost::fill_pinned_ct(&pins, 1, "10.96.0.99".parse().unwrap())
        .expect("a flow after the swap");
    agent.proc.kill9();
    assert!(
        pins.join("LB_CT_V1_PREVIOUS").exists(),
        "killed while the carry was open"
    );
    agent.proc.start();
    let old_pin = pins.join("LB_CT_V1_PREVIOUS");
    agent
        .proc
        .wait_until(Duration::from_secs(60), "the carry's end", |_| {
            !old_pin.exists()
        });
    let st = agent.proc.status().expect("status");
    assert_eq!(
        (
            st["maps"]["LB_CT_V1"]["max_entries"].as_u64(),
            st["maps"]["LB_CT_V1"]["entries"].as_u64()
        ),
        (Some(1_048_576), Some(500_001)),
        "the grown map, its flow made after the swap, every old entry:\n{}",
        agent.proc.log_text()
    );
}
