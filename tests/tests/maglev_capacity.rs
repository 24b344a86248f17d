//! The Maglev map at capacity with a real agent: a Service whose table does
//! not fit is left out whole and named with the flag that sizes the map;
//! a restart with a bigger `--max-maglev-tables`, or a growth while the
//! agent runs, keeps every table (the same inner maps, which the packet
//! programs read: their flows keep their backends) and programs the rest.
//! A connection loop through a ClusterIP (the socket path) checks that
//! nothing else is disturbed meanwhile; that the tables are the same maps
//! is checked by their ids.

mod common;

use std::collections::BTreeSet;

use lb_tests::testbed::{Testbed, service};
use serde_json::Value;

use common::socket::*;

fn cluster_ip(i: usize) -> String {
    format!("10.96.7.{}", 1 + i)
}

/// Services `s{i}` for `i` below `n`, each with a ClusterIP and one
/// externalIP (an external frontend: a Maglev table of its own), TCP 80 ->
/// 8080 on one endpoint.
fn external_services(n: usize) -> String {
    let mut y = String::new();
    for i in 0..n {
        let name = format!("s{i}");
        y += &service(&name, &[&cluster_ip(i)], &[TCP]);
        y += &format!("  externalIPs: [\"203.0.113.{}\"]\n", 1 + i);
        y += "---\n";
        y += &one_endpoint(&name, i % 2);
        y += "---\n";
    }
    y
}

/// The ids of the inner maps (the tables) the pinned Maglev map holds.
fn table_ids(bed: &Testbed) -> BTreeSet<u64> {
    let pin = bed.agent.pin_dir.join(lb_common::MAP_MAGLEV);
    let out = common::bpftool(&[
        "-j".as_ref(),
        "map".as_ref(),
        "dump".as_ref(),
        "pinned".as_ref(),
        pin.as_ref(),
    ]);
    let v: Value = serde_json::from_slice(&out).expect("bpftool's JSON");
    v.as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|e| {
            // The value is the inner map's id, as hex bytes in host order.
            let bytes: Vec<u8> = e["value"]
                .as_array()
                .unwrap_or_else(|| panic!("no value: {e}"))
                .iter()
                .map(|b| {
                    u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
                })
                .collect();
            u64::from(u32::from_ne_bytes(bytes.try_into().unwrap()))
        })
        .collect()
}

#[test]
fn a_full_maglev_map_names_the_rest_and_a_bigger_restart_keeps_every_table() {
    let mut bed = Testbed::with_agent_args(2, &["--max-maglev-tables=2"]);
    let g = bed.apply("svc.yaml", &external_services(3));
    let st = bed.agent.status().unwrap();
    assert_eq!(st["synced_generation"], g, "{st}");
    assert_eq!(st["clean"], false, "{st}");
    assert_eq!(not_programmed(&st), ["t/s2"], "{st}");
    let r = &st["not_programmed"][0];
    assert_eq!(r["map"], lb_common::MAP_MAGLEV, "{r}");
    assert_eq!(r["capacity"], 2, "{r}");
    let log = bed.agent.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("Service t/s2 not programmed"))
        .unwrap_or_else(|| panic!("t/s2 not named in the log:\n{log}"));
    assert!(line.contains("--max-maglev-tables"), "{line}");
    assert_eq!(st["maps"][lb_common::MAP_MAGLEV]["max_entries"], 2, "{st}");
    let before = table_ids(&bed);
    assert_eq!(before.len(), 2, "{before:?}");
    // What fits works (its ClusterIP through the socket hooks) throughout.
    let stop = bed.dir.0.join("stop");
    let mut lp = start_loop(&bed, &format!("{}:80", cluster_ip(0)), &stop);

    bed.agent.kill9();
    bed.agent.extra = vec!["--max-maglev-tables=8".into()];
    bed.agent.start();
    let g = bed.manifests.commit();
    bed.agent.wait_synced(g);
    let st = bed.agent.status().unwrap();
    assert_eq!(st["clean"], true, "{st}");
    assert_eq!(st["services_not_programmed"], 0, "{st}");
    assert_eq!(st["maps"][lb_common::MAP_MAGLEV]["max_entries"], 8, "{st}");
    assert_eq!(st["maps"][lb_common::MAP_MAGLEV]["entries"], 3, "{st}");
    let after = table_ids(&bed);
    assert!(
        after.is_superset(&before),
        "the earlier tables are the ones the bigger map holds: {before:?} before, {after:?} after"
    );
    served(&bed.probe(&format!("{}:80", cluster_ip(2)), "tcp", 2, "-", false));
    no_failures(&stop, &mut lp, "across the restart");
    let log = bed.agent.log_text();
    assert!(
        log.contains("LB_MAGLEV_V2 grown from 2 to 8 entries"),
        "the resize is logged:\n{log}"
    );
}

#[test]
fn the_maglev_map_grows_live_when_the_cluster_outgrows_it_and_keeps_every_table() {
    let mut bed = Testbed::with_agent_args(2, &["--maglev-tables-initial=2"]);
    bed.apply("svc.yaml", &external_services(2));
    let before = table_ids(&bed);
    assert_eq!(before.len(), 2, "{before:?}");
    let stop = bed.dir.0.join("stop");
    let mut lp = start_loop(&bed, &format!("{}:80", cluster_ip(0)), &stop);

    // A third external Service: the change set grows the map and
    // programs it.
    bed.apply("svc.yaml", &external_services(3));
    let st = bed.agent.status().unwrap();
    assert_eq!(st["clean"], true, "{st}");
    assert_eq!(st["services_not_programmed"], 0, "{st}");
    assert_eq!(st["maps"][lb_common::MAP_MAGLEV]["max_entries"], 4, "{st}");
    assert_eq!(st["maps"][lb_common::MAP_MAGLEV]["entries"], 3, "{st}");
    let after = table_ids(&bed);
    assert!(
        after.is_superset(&before),
        "the tables are the ones from before the growth: {before:?} before, {after:?} after"
    );
    served(&bed.probe(&format!("{}:80", cluster_ip(2)), "tcp", 2, "-", false));
    no_failures(&stop, &mut lp, "across the growth");
    let log = bed.agent.log_text();
    assert!(log.contains("Maglev tables 2 -> 4"), "{log}");
    assert!(
        !log.contains("Service t/s2 not programmed"),
        "the growth came first:\n{log}"
    );
}
