//! The bench is not run by the suite, but its code is: its quick topology
//! must carry connections through every variant, or a bench run would
//! measure a path that does not work.

use lb_tests::bench::{self, Mode, Path, Variant};

#[test]
fn the_bench_topology_carries_connections_through_every_variant() {
    lb_tests::require_kernel();
    let out = lb_tests::testbed::TempDir(std::env::temp_dir().join(lb_tests::unique("bench-out")));
    let opts = bench::Options {
        sizes: vec![3],
        secs: 0.3,
        quick: true,
        ct_entries: 1000,
        repeat: 100,
        baselines_up_to: usize::MAX,
        out_dir: out.0.clone(),
    };
    let r = bench::run(&opts).expect("the bench's quick run");
    let expected = [
        (Variant::Direct, Path::Backend),
        (Variant::Iptables, Path::ClusterIp),
        (Variant::Iptables, Path::NodePort),
        (Variant::Nftables, Path::ClusterIp),
        (Variant::Nftables, Path::NodePort),
        (Variant::Agent, Path::ClusterIp),
        (Variant::Agent, Path::NodePort),
        (Variant::AgentXdp, Path::NodePort),
    ];
    for (v, p) in expected {
        for m in [Mode::Connections, Mode::Requests] {
            let row = r
                .rows
                .iter()
                .find(|x| x.variant == v && x.path == p && x.mode == m)
                .unwrap_or_else(|| panic!("no {v:?} {p:?} {m:?} row: {r:#?}"));
            assert!(
                row.measured.ok > 0 && row.measured.failed == 0,
                "{v:?} through {p:?} ({m:?}): {:?}",
                row.measured
            );
        }
    }
    for v in [Variant::Agent, Variant::AgentKube] {
        assert!(
            r.cold.iter().any(|c| c.variant == v && c.rss_mib.is_some()),
            "the agent's cold start and memory ({v:?}): {:?}",
            r.cold
        );
        assert!(r.churn.iter().any(|c| c.variant == v), "{:?}", r.churn);
    }
    // The kube source's churn ran on its schedule with connections to the
    // measured Service through both paths, none failed.
    let kube = r.churn.iter().find(|c| c.variant == Variant::AgentKube);
    let kube = kube.expect("a kube churn row");
    assert!(kube.rate_per_s.is_some_and(|r| r > 0.0), "{kube:?}");
    let paths: Vec<Path> = kube.meanwhile.iter().map(|m| m.0).collect();
    assert_eq!(paths, [Path::ClusterIp, Path::NodePort], "{kube:?}");
    assert!(
        kube.meanwhile
            .iter()
            .all(|&(_, ok, failed)| ok > 0 && failed == 0),
        "{kube:?}"
    );
    assert_eq!(r.packets.len(), 2, "{:?}", r.packets);
    let md = std::fs::read_to_string(out.0.join("BENCHMARKS.md")).expect("BENCHMARKS.md");
    assert!(md.contains("| 3 |"), "{md}");
    let svg = std::fs::read_to_string(out.0.join(bench::report::PLOT)).expect("the plot");
    assert!(
        svg.contains("<svg") && svg.contains("lb-agent ClusterIP"),
        "{svg}"
    );
}
