//! Issue 13's restart storm (tests/scenarios/restart-storm.yaml): every
//! node's agent is killed and started again every two seconds while TCP
//! connections, UDP requests (new sockets, a fixed source port, one
//! connected socket) run through a ClusterIP, a NodePort and a
//! LoadBalancer IP; not one attempt may fail, and connections opened
//! before the storm still work after it. The suite runs a bounded storm
//! (`LB_CHAOS_SECS`, default 20); `cargo xtask chaos --secs N` runs longer.

mod common;

use common::*;

#[test]
fn agents_restarted_every_two_seconds_fail_no_connection_and_no_request() {
    let secs: u32 = std::env::var("LB_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let template = std::fs::read_to_string(scenario("restart-storm.yaml")).unwrap();
    let dir = tempfile_dir("chaos");
    let path = dir.0.join("restart-storm.yaml");
    std::fs::write(&path, template.replace("STORM_SECS", &secs.to_string())).unwrap();
    let r = lab(&path);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let restarts = r
        .stderr
        .lines()
        .find_map(|l| {
            l.strip_prefix("step 1: ")?
                .split(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0);
    println!("{restarts} agent restarts in {secs} s");
    // A round every two seconds restarts both agents; one round of slack
    // for the storm's last moments racing the probes' end.
    assert!(
        restarts >= 2 * (secs as u64 / 2).saturating_sub(2),
        "the storm restarted the agents only {restarts} times in {secs} s:\n{}",
        r.stderr
    );
    let storm: Vec<_> = r.lines.iter().filter(|l| l["step"] == 1).collect();
    assert_eq!(storm.len(), 8, "one line per churn probe: {storm:?}");
    for l in &storm {
        println!(
            "{} -> {} {} ({}): {} attempts, {} failed, slowest {:.1} ms",
            l["from"],
            l["to"],
            l["protocol"],
            l["target"],
            l["attempts"],
            l["failed"],
            l["max_ms"].as_f64().unwrap_or(0.0)
        );
    }
    for l in &storm {
        let attempts = l["attempts"].as_u64().unwrap_or(0);
        assert!(
            attempts >= secs as u64,
            "too few attempts to mean anything: {l}"
        );
        assert_eq!(l["failed"], 0, "an attempt failed during the storm: {l}");
        assert_eq!(l["ok"], true, "{l}");
    }
    let after: Vec<_> = r.lines.iter().filter(|l| l["step"] == 2).collect();
    assert_eq!(after.len(), 3);
    for l in after {
        assert_eq!(
            l["ok"], true,
            "a connection held through the storm broke: {l}"
        );
    }
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempfile_dir(tag: &str) -> TempDir {
    let d = std::env::temp_dir().join(format!("lbt{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}
