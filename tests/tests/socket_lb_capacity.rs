//! The socket-level datapath with a real agent at capacity: a full
//! services map, 5000 documents, rejected documents.

mod common;

use lb_tests::testbed::{Testbed, backend_ip4, ready, service, slice};
use serde_json::Value;

use common::socket::*;

/// The ClusterIP of Service `s{i}` in [`many`].
fn many_ip(i: usize) -> String {
    format!("10.96.{}.{}", 1 + i / 200, 1 + i % 200)
}

/// ClusterIP Services `s{i}` for `i` in `range` (TCP 80 -> 8080), each with
/// one ready endpoint (backend `i % backends`): two documents per Service.
fn many(range: std::ops::Range<usize>, backends: usize) -> String {
    let mut y = String::new();
    for i in range {
        let name = format!("s{i}");
        y += &service(&name, &[&many_ip(i)], &[TCP]);
        y += "---\n";
        y += &one_endpoint(&name, i % backends);
        y += "---\n";
    }
    y
}

/// Waits (on the agent's synced generation, never a sleep) through
/// `rounds` change sets.
fn sync_rounds(bed: &mut Testbed, rounds: usize) {
    for _ in 0..rounds {
        let g = bed.manifests.commit();
        bed.agent.wait_synced(g);
    }
}

#[test]
fn a_full_services_map_programs_what_fits_names_the_rest_once_and_a_bigger_restart_adds_it() {
    // Each Service takes 3 entries (its ClusterIP marker, the port's
    // frontend, one backend slot): 12 hold four of the six.
    let mut bed = Testbed::with_agent_args(2, &["--max-services=12"]);
    let g = bed.apply("svc.yaml", &many(0..6, 2));
    let st = bed.agent.status().unwrap();
    assert_eq!(st["synced_generation"], g, "{st}");
    assert_eq!(st["clean"], false, "{st}");
    assert_eq!(st["services_not_programmed"], 2, "{st}");
    assert_eq!(not_programmed(&st), ["t/s4", "t/s5"], "{st}");
    for r in st["not_programmed"].as_array().unwrap() {
        assert_eq!(r["map"], "LB_SERVICES_V1", "{r}");
        assert_eq!(r["needed"], 3, "{r}");
        assert_eq!(r["capacity"], 12, "{r}");
    }
    // What fits works; what does not is not half there.
    for i in 0..4 {
        served(&bed.probe(&format!("{}:80", many_ip(i)), "tcp", 2, "-", false));
    }
    let r = bed.probe(&format!("{}:80", many_ip(5)), "tcp", 1, "-", false);
    assert_eq!(r[0]["ok"], false, "{}", r[0]);
    let list: Value =
        serde_json::from_slice(&bed.agent.cli(&["service", "list", "-o", "json"]).stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 4, "{list}");
    // Named once, in words.
    let said = |bed: &Testbed, svc: &str| {
        bed.agent
            .log_text()
            .matches(&format!("Service {svc} not programmed"))
            .count()
    };
    let log = bed.agent.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("Service t/s4 not programmed"))
        .unwrap_or_else(|| panic!("t/s4 not named in the log:\n{log}"));
    for words in ["LB_SERVICES_V1", "needs 3 entries", "12", "--max-services"] {
        assert!(line.contains(words), "`{words}` missing: {line}");
    }
    assert!(!line.contains("PutService"), "a debug dump: {line}");
    // /metrics, /healthz and `status` say so.
    let (_, metrics) = bed.agent.http_get("/metrics");
    assert!(
        metrics.contains("lb_services_not_programmed 2"),
        "{metrics}"
    );
    let (code, body) = bed.agent.http_get("/healthz");
    assert_eq!(code, 200, "still serving what fits: {body}");
    assert!(body.contains("2 Services not programmed"), "{body}");
    let out = bed.agent.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("not programmed") && text.contains("t/s4") && text.contains("t/s5"),
        "{text}"
    );
    // Nothing loops: change sets come and go for a few seconds (30 and
    // more turns of the agent's loop), each waited for, and the message
    // stays one.
    let since = std::time::Instant::now();
    while since.elapsed() < std::time::Duration::from_secs(3) {
        sync_rounds(&mut bed, 1);
    }
    assert_eq!(said(&bed, "t/s4"), 1, "{}", bed.agent.log_text());
    assert_eq!(said(&bed, "t/s5"), 1, "{}", bed.agent.log_text());
    assert!(
        !bed.agent.log_text().contains("full resync"),
        "{}",
        bed.agent.log_text()
    );
    // Room freed by a later change set: the next Service gets in.
    bed.apply("svc.yaml", &many(1..6, 2));
    served(&bed.probe(&format!("{}:80", many_ip(4)), "tcp", 2, "-", false));
    let st = bed.agent.status().unwrap();
    assert_eq!(not_programmed(&st), ["t/s5"], "{st}");
    // A restart with a bigger map programs the rest; what worked never fails.
    let stops: Vec<_> = [1, 4]
        .iter()
        .map(|i| bed.dir.0.join(format!("stop{i}")))
        .collect();
    let mut loops: Vec<_> = [1, 4]
        .iter()
        .zip(&stops)
        .map(|(i, stop)| start_loop(&bed, &format!("{}:80", many_ip(*i)), stop))
        .collect();
    bed.agent.kill9();
    bed.agent.extra = vec!["--max-services=64".into()];
    bed.agent.start();
    sync_rounds(&mut bed, 1);
    served(&bed.probe(&format!("{}:80", many_ip(5)), "tcp", 2, "-", false));
    let st = bed.agent.status().unwrap();
    assert_eq!(st["clean"], true, "{st}");
    assert_eq!(st["services_not_programmed"], 0, "{st}");
    assert_eq!(st["maps"]["LB_SERVICES_V1"]["max_entries"], 64, "{st}");
    for (stop, lp) in stops.iter().zip(&mut loops) {
        no_failures(stop, lp, "across the restart");
    }
    let log = bed.agent.log_text();
    assert!(
        log.contains("LB_SERVICES_V1") && log.contains("from 12 to 64 entries"),
        "the resize is logged:\n{log}"
    );
}

#[test]
fn a_manifest_of_5000_documents_applies() {
    let mut bed = Testbed::new(2);
    let g = bed.apply("big.yaml", &many(0..2500, 2));
    let st = bed.agent.status().unwrap();
    assert_eq!(st["synced_generation"], g, "{st}");
    assert_eq!(st["clean"], true, "{st}");
    assert_eq!(st["rejected_count"], 0, "{st}");
    let (_, metrics) = bed.agent.http_get("/metrics");
    assert!(
        metrics.contains("lb_objects{kind=\"Service\"} 2500")
            && metrics.contains("lb_objects{kind=\"EndpointSlice\"} 2500"),
        "{metrics}"
    );
    let list: Value =
        serde_json::from_slice(&bed.agent.cli(&["service", "list", "-o", "json"]).stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2500);
    served(&bed.probe(&format!("{}:80", many_ip(2499)), "tcp", 2, "-", false));
}

#[test]
fn rejected_documents_are_listed_in_status_and_the_generation_is_not_clean() {
    let mut bed = Testbed::new(1);
    let good = format!(
        "{}---\n{}",
        service("good", &["10.96.0.10"], &[TCP]),
        slice(
            "good-1",
            "good",
            "IPv4",
            &[("http", 8080, "TCP")],
            &ready([backend_ip4(0)])
        )
    );
    let broken = "---\napiVersion: v1\nkind: Service\nmetadata: {name: torn, namespace: t\n";
    let invalid = format!("---\n{}", service("bad", &["10.96.0.300"], &[TCP]));
    let g = bed.apply("mixed.yaml", &format!("{good}{broken}{invalid}"));
    let st = bed.agent.status().unwrap();
    assert_eq!(
        st["synced_generation"], g,
        "applied, with what was left out: {st}"
    );
    assert_eq!(st["clean"], false, "{st}");
    assert_eq!(st["rejected_count"], 2, "{st}");
    let rejected = st["rejected"].as_array().unwrap();
    for r in rejected {
        assert!(
            r["file"]
                .as_str()
                .is_some_and(|f| f.ends_with("mixed.yaml")),
            "{r}"
        );
        assert!(!r["reason"].as_str().unwrap_or_default().is_empty(), "{r}");
    }
    assert!(
        rejected.iter().any(|r| r["object"] == "Service t/bad"
            && r["kind"] == "invalid"
            && r["reason"].as_str().unwrap().contains("clusterIP")),
        "{st}"
    );
    assert!(
        rejected.iter().any(|r| r["object"]
            .as_str()
            .is_some_and(|o| o.contains("document 3 (line 20)"))
            && r["kind"] == "yaml"),
        "the broken document is named by its place: {st}"
    );
    served(&bed.probe("10.96.0.10:80", "tcp", 2, "-", false));
    let out = bed.agent.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("rejected") && text.contains("Service t/bad"),
        "{text}"
    );
    // Another change set that leaves the file alone: still not clean.
    bed.apply("other.yaml", &service("other", &["10.96.0.20"], &[TCP]));
    let st = bed.agent.status().unwrap();
    assert_eq!(
        (st["clean"].clone(), st["rejected_count"].clone()),
        (Value::Bool(false), 2.into()),
        "{st}"
    );
    // Fixed: clean again.
    bed.apply("mixed.yaml", &good);
    let st = bed.agent.status().unwrap();
    assert_eq!(st["clean"], true, "{st}");
    assert_eq!(st["rejected_count"], 0, "{st}");
    assert_eq!(st["rejected"], Value::Array(vec![]), "{st}");
}

/// Without `--max-services` the services map is sized from the cluster:
/// 40,000 Services (120,000 entries: an address, a frontend and a slot
/// each) outgrow its first 65,536 entries, and the agent grows it while
/// running (to half again what they need, a power of two), under a
/// connection loop.
#[test]
fn the_services_map_grows_live_when_the_cluster_outgrows_it() {
    let mut bed = Testbed::new(2);
    web(&mut bed, &["10.95.0.10"], &[0, 1]);
    let st = bed.agent.status().unwrap();
    assert_eq!(st["maps"]["LB_SERVICES_V1"]["max_entries"], 65536, "{st}");
    let stop = bed.dir.0.join("stop");
    let mut lp = start_loop(&bed, "10.95.0.10:80", &stop);
    bed.manifests.write("many.yaml", &many(0..40_000, 2));
    let g = bed.manifests.commit();
    bed.agent
        .wait_synced_within(g, std::time::Duration::from_secs(300));
    let st = bed.agent.status().unwrap();
    let log = bed.agent.log_text();
    assert_eq!(st["clean"], true, "{st}");
    assert_eq!(st["services_not_programmed"], 0, "{st}");
    assert_eq!(
        st["maps"]["LB_SERVICES_V1"]["max_entries"],
        262144,
        "{st}\n{}",
        log.lines()
            .filter(|l| l.contains("grow") || l.contains("carried") || l.contains("grown"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for i in [0, 39_999] {
        served(&bed.probe(&format!("{}:80", many_ip(i)), "tcp", 2, "-", false));
    }
    let (_, metrics) = bed.agent.http_get("/metrics");
    let grown = "lb_map_capacity{map=\"LB_SERVICES_V1\"} 262144";
    assert!(
        metrics.contains(grown),
        "/metrics lacks {grown}:\n{metrics}"
    );
    no_failures(&stop, &mut lp, "while the map grew");
    assert!(
        log.contains("maps grown for the cluster: services 65536 -> 262144 entries"),
        "{log}"
    );
    assert!(
        !log.contains("not programmed"),
        "nothing is reported left out: {log}"
    );
}

/// 6,000 Services of 12 endpoints each (84,000 services entries, 66,002
/// distinct backends) outgrow both maps in one change set: both grow
/// before the change set is recorded, and nothing is reported left out,
/// not even for a moment, under a connection loop.
#[test]
fn both_maps_grow_in_the_change_set_that_outgrows_them() {
    let mut bed = Testbed::new(2);
    web(&mut bed, &["10.95.0.10"], &[0, 1]);
    let stop = bed.dir.0.join("stop");
    let mut lp = start_loop(&bed, "10.95.0.10:80", &stop);
    bed.manifests.write("many.yaml", &outgrowing_both());
    let g = bed.manifests.commit();
    bed.agent
        .wait_synced_within(g, std::time::Duration::from_secs(300));
    let st = bed.agent.status().unwrap();
    let log = bed.agent.log_text();
    assert_eq!(st["services_not_programmed"], 0, "{st}");
    assert_eq!(st["clean"], true, "{st}");
    assert_eq!(st["maps"]["LB_SERVICES_V1"]["max_entries"], 131072, "{st}");
    assert_eq!(st["maps"]["LB_BACKENDS_V1"]["max_entries"], 131072, "{st}");
    assert!(
        !log.contains("not programmed"),
        "nothing is reported left out: {log}"
    );
    no_failures(&stop, &mut lp, "while the maps grew");
}

/// An agent restarted with another `--max-services` carries the services
/// map from the earlier agent's; its first change set then outgrows the
/// backends map. Growing it carries this agent's maps, that change set's
/// writes included (starting the carry over from the earlier agent's map
/// would lose every Service written before the growth).
#[test]
fn growth_in_the_first_change_set_after_a_resized_restart_keeps_its_writes() {
    let mut bed = Testbed::new(2);
    web(&mut bed, &["10.95.0.10"], &[0, 1]);
    let stop = bed.dir.0.join("stop");
    let mut lp = start_loop(&bed, "10.95.0.10:80", &stop);
    bed.agent.kill9();
    bed.manifests.write("many.yaml", &outgrowing_both());
    let g = bed.manifests.commit();
    bed.agent.extra = vec!["--max-services=100000".into()];
    bed.agent.start();
    bed.agent
        .wait_synced_within(g, std::time::Duration::from_secs(300));
    let st = bed.agent.status().unwrap();
    assert_eq!(st["services_not_programmed"], 0, "{st}");
    assert_eq!(st["clean"], true, "{st}");
    assert_eq!(st["maps"]["LB_SERVICES_V1"]["max_entries"], 100000, "{st}");
    assert_eq!(st["maps"]["LB_BACKENDS_V1"]["max_entries"], 131072, "{st}");
    // Every Service's frontend and its twelve slots, the ones written
    // before the growth included (most of them), and web's.
    let entries = st["maps"]["LB_SERVICES_V1"]["entries"].as_u64().unwrap();
    assert!(entries >= 6_000 * 13, "{entries} entries: {st}");
    let out = bed.agent.cli(&["service", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("{}:80", many_ip(0))), "{text}");
    no_failures(&stop, &mut lp, "across the restart and the growth");
}

/// 6,000 ClusterIP Services of one live backend and eleven addresses no
/// other Service has: 72,000 backends, more than the backends map's
/// default 65,536 (and with frontends, more services-map entries too).
fn outgrowing_both() -> String {
    let mut y = String::new();
    for i in 0..6_000 {
        let name = format!("s{i}");
        y += &service(&name, &[&many_ip(i)], &[TCP]);
        y += "---\n";
        // One live backend and eleven addresses no other Service has.
        let fake = (0..11).map(|k| {
            let n = i * 11 + k;
            format!(
                "10.{}.{}.{}",
                200 + n / 50_000,
                (n % 50_000) / 250,
                1 + n % 250
            )
        });
        let eps = ready(std::iter::once(backend_ip4(i % 2)).chain(fake));
        y += &slice(
            &format!("{name}-1"),
            &name,
            "IPv4",
            &[("http", 8080, "TCP")],
            &eps,
        );
        y += "---\n";
    }
    y
}

/// 100 LoadBalancer Services of 200 loadBalancerSourceRanges each (20,000
/// entries of the trie: a range per LoadBalancer IP) outgrow its first
/// 16,384: the agent grows it while running, under a connection loop, and
/// every Service is programmed with all its ranges.
#[test]
fn the_source_ranges_map_grows_live_when_the_cluster_outgrows_it() {
    let mut bed = Testbed::new(2);
    web(&mut bed, &["10.95.0.10"], &[0, 1]);
    let st = bed.agent.status().unwrap();
    assert_eq!(st["maps"]["LB_SRCRANGE_V1"]["max_entries"], 16384, "{st}");
    let stop = bed.dir.0.join("stop");
    let mut lp = start_loop(&bed, "10.95.0.10:80", &stop);
    let ranges: Vec<String> = (0..200).map(|r| format!("\"172.16.{r}.0/24\"")).collect();
    let mut y = String::new();
    for i in 0..100 {
        let name = format!("lb{i}");
        y += &service(&name, &[&many_ip(i)], &[TCP]).replace(
            "spec:\n",
            &format!(
                "spec:\n  type: LoadBalancer\n  loadBalancerSourceRanges: [{}]\n",
                ranges.join(", ")
            ),
        );
        y += &format!(
            "status: {{loadBalancer: {{ingress: [{{ip: 10.210.0.{}}}]}}}}\n---\n",
            i + 1
        );
        y += &one_endpoint(&name, i % 2);
        y += "---\n";
    }
    bed.manifests.write("ranges.yaml", &y);
    let g = bed.manifests.commit();
    bed.agent
        .wait_synced_within(g, std::time::Duration::from_secs(300));
    let st = bed.agent.status().unwrap();
    let log = bed.agent.log_text();
    assert_eq!(st["clean"], true, "{st}");
    assert_eq!(st["services_not_programmed"], 0, "{st}\n{log}");
    let trie = &st["maps"]["LB_SRCRANGE_V1"];
    assert_eq!(trie["max_entries"], 32768, "{st}");
    assert_eq!(trie["entries"], 20_000, "{st}");
    no_failures(&stop, &mut lp, "while the trie grew");
    assert!(
        log.contains("loadBalancerSourceRanges 16384 -> 32768"),
        "{log}"
    );
    assert!(
        !log.contains("not programmed"),
        "nothing is reported left out: {log}"
    );
    let (_, metrics) = bed.agent.http_get("/metrics");
    for line in [
        "lb_map_capacity{map=\"LB_SRCRANGE_V1\"} 32768",
        "lb_map_entries{map=\"LB_SRCRANGE_V1\"} 20000",
        "lb_map_capacity{map=\"LB_SERVICES_V1\"} 65536",
    ] {
        assert!(metrics.contains(line), "/metrics lacks {line}:\n{metrics}");
    }
    // A restart keeps the size the trie grew to, and every entry.
    bed.agent.kill9();
    bed.agent.start();
    sync_rounds(&mut bed, 1);
    let st = bed.agent.status().unwrap();
    let trie = &st["maps"]["LB_SRCRANGE_V1"];
    assert_eq!(
        (&trie["max_entries"], &trie["entries"]),
        (&Value::from(32768), &Value::from(20_000)),
        "{st}"
    );
    assert_eq!(st["services_not_programmed"], 0, "{st}");
}
