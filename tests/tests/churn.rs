//! Issue 13's proof: a client opening new TCP connections back to back
//! through a NodePort (its ports coming round again within seconds) for a
//! minute never waits over a second for a connect, on the SNAT path (backend
//! on another node) and on the direct one (backend local).

mod common;

use common::*;
use serde_json::Value;

/// Connections each churn must at least make in its minute: about twice
/// round the client's ports (connect() takes the ~14,000 even ports of
/// 32768-60999 in turn). Both paths run over 1,000 a second in the lab.
const MIN_ATTEMPTS: u64 = 30_000;

fn churn_line<'a>(r: &'a Run, to: &str) -> &'a Value {
    let lines = select(r, 0, "external", to);
    assert_eq!(lines.len(), 1, "one line for the churn probe to {to}");
    lines[0]
}

/// A node's dump after step 0 (`ct` or `status`), naming the file and
/// showing what it holds when it is not JSON.
fn node_dump(dump: &DumpDir, node: &str, what: &str) -> Value {
    let p = dump.0.join(format!("step0-{node}-{what}.json"));
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{}: not JSON ({e}): `{text}`", p.display()))
}

/// Conntrack entries of `node` that name one of the slow attempts' client
/// ports, and its entries counted by kind: the evidence a failure reports.
fn evidence(dump: &DumpDir, node: &str, line: &Value) -> String {
    let ct = node_dump(dump, node, "ct");
    let entries = ct.as_array().cloned().unwrap_or_default();
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for e in &entries {
        *kinds
            .entry(e["kind"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    let ports: Vec<String> = line["slow"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["port"].as_u64())
        .filter(|p| *p != 0)
        .map(|p| format!(":{p}"))
        .collect();
    let named: Vec<String> = entries
        .iter()
        .filter(|e| {
            ["src", "dst", "to"].iter().any(|f| {
                e[f].as_str()
                    .is_some_and(|a| ports.iter().any(|p| a.ends_with(p.as_str())))
            })
        })
        .map(|e| e.to_string())
        .collect();
    // The node ports SNAT holds (reverse-SNAT entries), of 61000-65535,
    // and how long they have been idle.
    let held: std::collections::BTreeSet<&str> = entries
        .iter()
        .filter(|e| e["kind"] == "reverse-snat")
        .filter_map(|e| e["dst"].as_str()?.rsplit(':').next())
        .collect();
    let idle: Vec<i64> = entries
        .iter()
        .filter(|e| e["kind"] == "reverse-snat")
        .filter_map(|e| e["idle_s"].as_i64())
        .collect();
    let st = node_dump(dump, node, "status");
    format!(
        "{node}: counters {}\n{node}: conntrack entries by kind {kinds:?}\n{node}: SNAT ports held {} of 4536, idle {}-{} s\n{node}: entries naming a slow attempt's port:\n  {}",
        st["counters"],
        held.len(),
        idle.iter().min().unwrap_or(&0),
        idle.iter().max().unwrap_or(&0),
        named.join("\n  ")
    )
}

#[test]
fn a_minute_of_connect_churn_through_a_node_port_has_no_slow_connect() {
    let dump = DumpDir::new("churn");
    let r = lab_with(&scenario("nodeport-churn.yaml"), Some(&dump.0));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let snat = churn_line(&r, "nodeport/node-1/x/web");
    let direct = churn_line(&r, "nodeport/node-2/x/web");
    for l in [snat, direct] {
        println!("{l}");
    }
    let counters = |node: &str| node_dump(&dump, node, "status")["counters"].clone();
    let (c1, c2) = (counters("node-1"), counters("node-2"));
    let n = |c: &Value, name: &str| {
        c[name]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {name}: {c}"))
    };
    for (path, l, c) in [("SNAT", snat, &c1), ("direct", direct, &c2)] {
        println!(
            "{path} (via {}): {} attempts, {} failed, {} over 1 s, slowest connect {:.2} ms, mean {:.3} ms, errors {}; its node's ct_restored {}, drop_snat_ports_exhausted {}, ct_created {}",
            l["target"],
            l["attempts"],
            l["failed"],
            l["over_1s"],
            l["max_ms"].as_f64().unwrap_or(0.0),
            l["ms"].as_f64().unwrap_or(0.0),
            l["errors"],
            n(c, "ct_restored"),
            n(c, "drop_snat_ports_exhausted"),
            n(c, "ct_created"),
        );
    }
    for (path, l, node) in [("SNAT", snat, "node-1"), ("direct", direct, "node-2")] {
        let clean = l["failed"] == 0 && l["over_1s"] == 0 && l["ok"] == true;
        if let (false, Some(keep)) = (clean, std::env::var_os("LB_CHURN_KEEP_DUMP")) {
            // The node dumps outlive the run, for a closer look.
            std::fs::create_dir_all(&keep).unwrap();
            for f in std::fs::read_dir(&dump.0).unwrap().flatten() {
                std::fs::copy(f.path(), std::path::Path::new(&keep).join(f.file_name())).unwrap();
            }
        }
        assert!(
            clean,
            "{path} churn: failed or slow connects: {l}\n{}",
            evidence(&dump, node, l)
        );
    }
    let attempts = snat["attempts"].as_u64().unwrap();
    assert!(
        attempts >= MIN_ATTEMPTS,
        "the SNAT churn made only {attempts} connections in a minute: {snat}"
    );
    assert!(
        direct["attempts"].as_u64().unwrap() >= MIN_ATTEMPTS,
        "the direct churn made only {} connections: {direct}",
        direct["attempts"]
    );
    // Through node-1 the backend on node-2 sees node-1 (SNAT); through
    // node-2 it sees the client.
    assert_eq!(snat["served_by"], "x/web", "{snat}");
    assert_eq!(snat["client_seen"], "10.100.0.1", "{snat}");
    assert_eq!(direct["served_by"], "x/web", "{direct}");
    assert_eq!(direct["client_seen"], "10.100.0.200", "{direct}");
    // node-1's SNAT path did the work: every connection's SYN, request,
    // ACKs and RST went out SNAT'd and its replies came back through the
    // reverse SNAT entry; every flow was created there (new, or restored
    // on a reused client port); node-2 SNAT'd nothing.
    assert!(
        n(&c1, "tc_snat") >= attempts * 3 && n(&c1, "tc_reverse_snat") >= attempts * 2,
        "node-1 did not SNAT the churn: {c1}"
    );
    assert!(
        n(&c1, "ct_created") + n(&c1, "ct_restored") >= attempts,
        "node-1 did not track every connection: {c1}"
    );
    assert_eq!(n(&c1, "drop_snat_ports_exhausted"), 0, "{c1}");
    assert_eq!(n(&c2, "tc_snat"), 0, "node-2 SNAT'd: {c2}");
    assert!(n(&c2, "tc_dnat") > 0, "{c2}");
}

#[test]
fn a_churn_probe_is_one_probe_of_its_kind_or_the_scenario_is_invalid() {
    let dir = DumpDir::new("churn-invalid");
    let base = "pods: [{name: web, namespace: x, ports: [{port: 80}]}]\nprobes:\n  - ";
    for (probe, needle) in [
        (
            "{from: x/web, to: x/web, port: 80, sourcePort: 40000, churnSecs: 5}",
            "probes[0].churnSecs",
        ),
        (
            "{from: x/web, to: x/web, port: 80, sameSocket: true, churnSecs: 5}",
            "probes[0].sameSocket",
        ),
        (
            "{from: x/web, to: x/web, port: 80, protocol: UDP, sameSocket: true}",
            "probes[0].sameSocket",
        ),
        (
            "{from: x/web, to: x/web, port: 80, protocol: UDP, sameSocket: true, sourcePort: 4, churnSecs: 5}",
            "probes[0].churnSecs",
        ),
        (
            "{from: x/web, to: x/web, port: 80, count: 3, churnSecs: 5}",
            "probes[0].churnSecs",
        ),
        (
            "{from: x/web, to: x/web, port: 80, hold: h, churnSecs: 5}",
            "probes[0].churnSecs",
        ),
        (
            "{from: x/web, to: x/web, port: 80, churnSecs: 0}",
            "probes[0].churnSecs",
        ),
        (
            "{from: x/web, to: x/web, port: 80, churnsecs: 5}",
            "churnsecs",
        ),
    ] {
        let path = dir.0.join("churn.yaml");
        std::fs::write(&path, format!("{base}{probe}\n")).unwrap();
        let r = lab(&path);
        assert_eq!(r.code, 2, "{probe}: exit {} ({})", r.code, r.stderr);
        assert!(
            r.stderr.contains(needle),
            "{probe}: the message must name `{needle}`: {}",
            r.stderr
        );
        assert!(r.lines.is_empty(), "{probe}: no probe may run");
    }
}
