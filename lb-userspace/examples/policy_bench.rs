//! NetworkPolicy stage at scale (a benchmark, not a test): 10,000 pods in
//! 100 namespaces, 1,000 policies, 100 pods on this node. Prints the time
//! of the first computation and of one pod label change applied after it
//! (snapshot, computation, diff), and the entries per local endpoint.
//!
//! `cargo run --release -p lb-userspace --example policy_bench [PODS POLICIES LOCAL]`

use std::time::Instant;

use lb_agent::{
    compute::{identity::Identities, policy, policy::EpIds, policy_plan},
    model::snapshot::{Change, Snapshot},
    source::manifest::Object,
};
use serde_json::json;

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("valid object")
}

fn pod(i: usize, nodes: usize, local: usize, app: usize) -> Change {
    let ns = format!("ns-{}", i % 100);
    let node = if i < local {
        "node-1".to_string()
    } else {
        format!("node-{}", 2 + i % nodes)
    };
    let ip = format!("10.{}.{}.{}", 64 + i / 65536, (i / 256) % 256, i % 256);
    Change::Upsert(Object::Pod(Box::new(obj(json!({
        "metadata": {"name": format!("pod-{i}"), "namespace": ns,
                     "labels": {"app": format!("app-{app}"), "tier": if i % 2 == 0 { "web" } else { "db" }}},
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
    let mut snap = Snapshot::for_node(Some("node-1".into()));
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
        changes.push(pod(i, 20, local, i % 50));
    }
    for p in 0..policies {
        changes.push(Change::Upsert(Object::NetworkPolicy(Box::new(obj(json!({
            "metadata": {"name": format!("pol-{p}"), "namespace": format!("ns-{}", p % 100)},
            "spec": {
                "podSelector": {"matchLabels": {"app": format!("app-{}", p % 50)}},
                "ingress": [
                    {"from": [{"namespaceSelector": {"matchLabels": {"team": format!("team-{}", p % 10)}},
                               "podSelector": {"matchLabels": {"tier": "web"}}}],
                     "ports": [{"port": "http"}, {"port": 9000, "endPort": 9100, "protocol": "TCP"}]},
                    {"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": [format!("10.64.{}.0/24", p % 40)]}}],
                     "ports": [{"port": 443}]}
                ],
                "egress": [{"to": [{"podSelector": {"matchLabels": {"app": format!("app-{}", (p + 1) % 50)}}}]}]
            }
        }))))));
    }
    let t = Instant::now();
    for c in &changes {
        snap.apply(c).expect("apply");
    }
    let load = t.elapsed();
    let (mut ids, mut eps) = (Identities::default(), EpIds::default());
    let t = Instant::now();
    let first = policy::compute(&snap, &[], &mut ids, &mut eps);
    let first_ms = t.elapsed().as_secs_f64() * 1e3;
    let ops = policy_plan::diff(&Default::default(), &first.maps).len();
    // One label change of a remote pod that policies select as a peer.
    let t = Instant::now();
    snap.apply(&pod(local + 7, 20, local, 3)).expect("apply");
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
}
