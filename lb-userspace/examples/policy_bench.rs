//! NetworkPolicy stage at scale (a benchmark, not a test): 10,000 pods in
//! 100 namespaces, 1,000 policies, 100 pods on this node. Prints the time
//! of the first computation and of one pod label change applied after it
//! (snapshot, computation, diff), and the entries per local endpoint; then
//! the agent's path (`PolicySync`: incremental after the first change set)
//! for several kinds of change, each timed against the full computation
//! on the same snapshot, interleaved (median and worst of `REPS`).
//!
//! `cargo run --release -p lb-userspace --example policy_bench [PODS POLICIES LOCAL [REPS [APPS]]]`
//!
//! APPS (50): distinct `app` labels; pods get identities per namespace,
//! app and tier, so 50 gives about 100 identities and 5000 about 5000.

use std::time::Instant;

use lb_agent::{
    compute::{
        identity::Identities,
        policy,
        policy::EpIds,
        policy_plan,
        policy_sync::{PlanKind, PolicySync},
    },
    model::snapshot::{Change, Snapshot},
    source::manifest::Object,
};
use serde_json::json;

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("valid object")
}

fn pod(i: usize, nodes: usize, local: usize, app: usize) -> Change {
    pod_tier(
        i,
        nodes,
        local,
        app,
        if i.is_multiple_of(2) { "web" } else { "db" },
    )
}

fn pod_tier(i: usize, nodes: usize, local: usize, app: usize, tier: &str) -> Change {
    let ns = format!("ns-{}", i % 100);
    let node = if i < local {
        "node-1".to_string()
    } else {
        format!("node-{}", 2 + i % nodes)
    };
    let ip = format!("10.{}.{}.{}", 64 + i / 65536, (i / 256) % 256, i % 256);
    Change::Upsert(Object::Pod(Box::new(obj(json!({
        "metadata": {"name": format!("pod-{i}"), "namespace": ns,
                     "labels": {"app": format!("app-{app}"), "tier": tier}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    })))))
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("number"))
        .collect();
    let (pods, policies, local) = (
        args.first().copied().unwrap_or(10_000),
        args.get(1).copied().unwrap_or(1_000),
        args.get(2).copied().unwrap_or(100),
    );
    let reps = args.get(3).copied().unwrap_or(15);
    let apps = args.get(4).copied().unwrap_or(50);
    let snap = Snapshot::for_node(Some("node-1".into()));
    let mut changes = vec![Change::Upsert(Object::Node(Box::new(obj(json!({
        "metadata": {"name": "node-1"},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.1"}]}
    })))))];
    for n in 0..100 {
        changes.push(Change::Upsert(Object::Namespace(Box::new(obj(json!({
            "metadata": {"name": format!("ns-{n}"), "labels": {"team": format!("team-{}", n % 10)}}
        }))))));
    }
    for i in 0..pods {
        changes.push(pod(i, 20, local, i % apps));
    }
    for p in 0..policies {
        changes.push(policy(p, 0));
    }
    run(snap, changes, (pods, policies, local), reps, apps);
}

/// Policy `p`; `v` varies its ipBlock (a change of the policy).
fn policy(p: usize, v: usize) -> Change {
    Change::Upsert(Object::NetworkPolicy(Box::new(obj(json!({
        "metadata": {"name": format!("pol-{p}"), "namespace": format!("ns-{}", p % 100)},
        "spec": {
            "podSelector": {"matchLabels": {"app": format!("app-{}", p % 50)}},
            "ingress": [
                {"from": [{"namespaceSelector": {"matchLabels": {"team": format!("team-{}", p % 10)}},
                           "podSelector": {"matchLabels": {"tier": "web"}}}],
                 "ports": [{"port": "http"}, {"port": 9000, "endPort": 9100, "protocol": "TCP"}]},
                {"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": [format!("10.64.{}.0/24", (p + v) % 40)]}}],
                 "ports": [{"port": 443}]}
            ],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"app": format!("app-{}", (p + 1) % 50)}}}]}]
        }
    })))))
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn namespace(n: usize, team: usize) -> Change {
    Change::Upsert(Object::Namespace(Box::new(obj(json!({
        "metadata": {"name": format!("ns-{n}"), "labels": {"team": format!("team-{team}")}}
    })))))
}

fn run(
    mut snap: Snapshot,
    changes: Vec<Change>,
    sizes: (usize, usize, usize),
    reps: usize,
    apps: usize,
) {
    let (pods, policies, local) = sizes;
    let t = Instant::now();
    for c in &changes {
        snap.apply(c.clone()).expect("apply");
    }
    let load = t.elapsed();
    let (mut ids, mut eps) = (Identities::default(), EpIds::default());
    let t = Instant::now();
    let first = policy::compute(&snap, &[], &mut ids, &mut eps);
    let first_ms = t.elapsed().as_secs_f64() * 1e3;
    let ops = policy_plan::diff(&Default::default(), &first.maps).len();
    // One label change of a remote pod that policies select as a peer.
    let t = Instant::now();
    snap.apply(pod(local + 7, 20, local, 3)).expect("apply");
    let next = policy::compute(&snap, &[], &mut ids, &mut eps);
    let changed = policy_plan::diff(&first.maps, &next.maps).len();
    let change_ms = t.elapsed().as_secs_f64() * 1e3;
    let per_ep: Vec<usize> = next
        .report
        .endpoints
        .iter()
        .map(|e| e.entries + e.cidr_entries)
        .collect();
    let max = per_ep.iter().max().copied().unwrap_or(0);
    let mean = per_ep.iter().sum::<usize>() as f64 / per_ep.len().max(1) as f64;
    println!(
        "pods {pods}, policies {policies}, local endpoints {}, identities {}",
        per_ep.len(),
        next.report.identities.len()
    );
    println!(
        "snapshot load            {:>9.1} ms",
        load.as_secs_f64() * 1e3
    );
    println!("first computation        {first_ms:>9.1} ms ({ops} map writes)");
    println!("one pod label change     {change_ms:>9.1} ms ({changed} map writes)");
    println!("entries per endpoint     max {max}, mean {mean:.1}");
    println!("ipcache entries          {}", next.maps.ipcache.len());

    // The agent's path: the first change set in full, then incremental.
    let mut sync = PolicySync::default();
    let mut errors = Vec::new();
    let mut prev = next.maps;
    let t = Instant::now();
    let all = std::mem::take(&mut snap.policy_changes);
    let ops = sync.plan_changes(&snap, &all, false, &mut errors);
    sync.applied(&ops);
    println!(
        "PolicySync first plan    {:>9.1} ms ({} map writes, {:?})",
        ms(t.elapsed()),
        ops.len(),
        sync.last
    );
    assert_eq!(
        sync.mirror(),
        &prev,
        "the same maps as the full computation"
    );

    // (name, change set there, change set back): applied alternately.
    let r = local + 7; // a remote pod (pods below `local` are this node's)
    let scenarios: Vec<(&str, Vec<Change>, Vec<Change>)> = vec![
        (
            "remote pod, new identity",
            vec![pod(r, 20, local, 4)],
            vec![pod(r, 20, local, 3)],
        ),
        (
            "remote pod, to a peer id.",
            // tier web in a team namespace: a new identity the ingress
            // peers of every policy for that team select.
            vec![pod_tier(r, 20, local, 3, "web")],
            vec![pod(r, 20, local, r % apps)],
        ),
        (
            "local pod relabelled",
            vec![pod(7, 20, local, 3)],
            vec![pod(7, 20, local, 7 % apps)],
        ),
        (
            "namespace relabelled",
            vec![namespace(7, 3)],
            vec![namespace(7, 7)],
        ),
        // Policy 8 selects local pod 8.
        ("policy changed", vec![policy(8, 1)], vec![policy(8, 0)]),
    ];
    println!(
        "{:<26} {:>17} {:>17} {:>8} {:>6}",
        format!("change (x{reps}, alternating)"),
        "incremental ms",
        "full ms",
        "writes",
        "eps"
    );
    println!(
        "{:<26} {:>8} {:>8} {:>8} {:>8}",
        "", "median", "max", "median", "max"
    );
    for (name, there, back) in &scenarios {
        let (mut inc, mut full) = (Vec::new(), Vec::new());
        let (mut writes, mut n_eps) = (0, 0);
        for rep in 0..reps {
            let set = if rep % 2 == 0 { there } else { back };
            // Incremental: snapshot, plan, mirror.
            let t = Instant::now();
            for c in set {
                snap.apply(c.clone()).expect("apply");
            }
            let ch = std::mem::take(&mut snap.policy_changes);
            let ops = sync.plan_changes(&snap, &ch, false, &mut errors);
            sync.applied(&ops);
            inc.push(ms(t.elapsed()));
            let PlanKind::Incremental(stats) = &sync.last else {
                panic!("{name}: not incremental: {:?}", sync.last);
            };
            (writes, n_eps) = (ops.len(), stats.endpoints);
            // The full computation of the same snapshot, diffed.
            let t = Instant::now();
            let c = policy::compute(&snap, &[], &mut ids, &mut eps);
            let d = policy_plan::diff(&prev, &c.maps);
            full.push(ms(t.elapsed()));
            assert_eq!(d, ops, "{name}: the same writes as the full computation");
            prev = c.maps;
        }
        inc.sort_by(f64::total_cmp);
        full.sort_by(f64::total_cmp);
        println!(
            "{name:<26} {:>8.2} {:>8.2} {:>8.1} {:>8.1} {writes:>8} {n_eps:>6}",
            inc[inc.len() / 2],
            inc[inc.len() - 1],
            full[full.len() / 2],
            full[full.len() - 1],
        );
    }
}
