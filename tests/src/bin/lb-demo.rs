//! The demo: a client namespace, three backend namespaces, the real agent
//! from the example manifests, and requests through the ClusterIP.
//!
//!   lb-demo MANIFEST_DIR

use std::collections::BTreeMap;

use lb_tests::testbed::Testbed;

fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "examples/demo".into());
    eprintln!(
        "demo: bringing up a client and three backends in network namespaces, and the agent in a cgroup of its own"
    );
    let mut bed = Testbed::new(3);
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {dir}: {e}")) {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "yaml") {
            bed.manifests.write(
                p.file_name().unwrap().to_str().unwrap(),
                &std::fs::read_to_string(&p).expect("manifest"),
            );
        }
    }
    let g = bed.manifests.commit();
    bed.agent.wait_synced(g);
    println!("== lb-agent service list (read from the pinned maps)");
    print!(
        "{}",
        String::from_utf8_lossy(&bed.agent.cli(&["service", "list"]).stdout)
    );
    for (target, proto, mode) in [
        ("10.96.0.10:80", "tcp", "-"),
        ("[fd00:96::a]:80", "tcp", "-"),
        ("10.96.0.10:53", "udp", "connected"),
        ("10.96.0.10:81", "tcp", "-"),
    ] {
        println!(
            "\n== 12 {} requests from the client to {target}",
            proto.to_uppercase()
        );
        let mut count: BTreeMap<String, usize> = BTreeMap::new();
        for r in bed.probe(target, proto, 12, mode, false) {
            let who = if r["ok"] == true {
                format!(
                    "answered by {} (server saw client {}; client saw peer {})",
                    r["served_by"].as_str().unwrap_or("?"),
                    r["client_seen"].as_str().unwrap_or("?"),
                    r["peer"].as_str().unwrap_or("?")
                )
            } else {
                format!(
                    "failed: {} after {:.2} ms",
                    r["error"].as_str().unwrap_or("?"),
                    r["ms"].as_f64().unwrap_or(0.0)
                )
            };
            println!("  {who}");
            *count
                .entry(r["served_by"].as_str().unwrap_or("none").to_string())
                .or_default() += 1;
        }
        println!("  per backend: {count:?}");
    }
    eprintln!("\ndemo: tearing down");
}
