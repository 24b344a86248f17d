use super::*;

fn cluster(y: &str) -> Cluster {
    let s = Scenario::parse(y).unwrap();
    let mut c = Cluster::new(&s);
    for (i, st) in s.steps().iter().enumerate() {
        c.apply(st, &format!("step {i}: ")).unwrap();
    }
    c
}

const WEB: &str = "nodes: [n1, n2]
pods:
  - {name: a, namespace: x, labels: {app: web}, ports: [{port: 80, name: http}]}
  - {name: b, namespace: x, labels: {app: web}, ports: [{port: 8080, name: http}], ready: false}
  - {name: c, namespace: x, labels: {app: web}, ports: [{port: 80, name: http}], terminating: true}
objects:
  - {apiVersion: v1, kind: Service, metadata: {name: web, namespace: x}, spec: {selector: {app: web}, ports: [{port: 8080, targetPort: http}]}}
  - {apiVersion: v1, kind: Service, metadata: {name: np, namespace: x}, spec: {type: LoadBalancer, externalTrafficPolicy: Local, selector: {app: web}, ports: [{port: 1, targetPort: 80}, {port: 2, targetPort: 80, protocol: UDP}]}}
";

#[test]
fn addresses_and_allocations_follow_lab_md() {
    let c = cluster(WEB);
    assert_eq!(c.pod("x/a").unwrap().ip4().to_string(), "10.244.1.10");
    assert_eq!(c.pod("x/b").unwrap().ip4().to_string(), "10.244.2.10");
    assert_eq!(c.pod("x/c").unwrap().ip4().to_string(), "10.244.1.11");
    assert_eq!(c.pod("x/c").unwrap().ip6().to_string(), "fd00:244:1::b");
    let web = c.object("Service", "x", "web").unwrap();
    assert_eq!(web["spec"]["clusterIP"], "10.96.0.10");
    let np = c.object("Service", "x", "np").unwrap();
    assert_eq!(np["spec"]["clusterIP"], "10.96.0.11");
    assert_eq!(np["spec"]["ports"][0]["nodePort"], 30000);
    assert_eq!(np["spec"]["ports"][1]["nodePort"], 30001);
    assert_eq!(np["spec"]["healthCheckNodePort"], 30002);
}

#[test]
fn node_labels_give_zones_and_traffic_distribution_gives_hints_as_the_controller_does() {
    let c = cluster(
        "nodes: [n1, n2, n3]
nodeLabels: {n1: {topology.kubernetes.io/zone: a}, n2: {topology.kubernetes.io/zone: b, rack: r2}}
pods:
  - {name: a, namespace: x, node: n1, labels: {app: web}}
  - {name: b, namespace: x, node: n2, labels: {app: web}}
  - {name: c, namespace: x, node: n3, labels: {app: web}}
  - {name: d, namespace: x, node: n1, labels: {app: web}, ready: false}
objects:
  - {apiVersion: v1, kind: Service, metadata: {name: close, namespace: x}, spec: {trafficDistribution: PreferClose, selector: {app: web}, ports: [{port: 80}]}}
  - {apiVersion: v1, kind: Service, metadata: {name: node, namespace: x}, spec: {trafficDistribution: PreferSameNode, selector: {app: web}, ports: [{port: 80}]}}
  - {apiVersion: v1, kind: Service, metadata: {name: plain, namespace: x}, spec: {selector: {app: web}, ports: [{port: 80}]}}
",
    );
    let files = c.render();
    let n2: Value = serde_json::from_str(&files["node-n2.yaml"]).unwrap();
    assert_eq!(
        n2["metadata"]["labels"],
        json!({"kubernetes.io/hostname": "n2", "rack": "r2", "topology.kubernetes.io/zone": "b"})
    );
    // (endpoint address, zone, hints) per Service
    let eps = |name: &str| -> Vec<(String, Value, Value)> {
        c.slices(c.object("Service", "x", name).unwrap())
            .iter()
            .flat_map(|s| s["endpoints"].as_array().unwrap().clone())
            .map(|e| {
                (
                    e["addresses"][0].as_str().unwrap().to_string(),
                    e["zone"].clone(),
                    e["hints"].clone(),
                )
            })
            .collect()
    };
    let za = json!({"forZones": [{"name": "a"}]});
    let zb = json!({"forZones": [{"name": "b"}]});
    assert_eq!(
        eps("close"),
        vec![
            ("10.244.1.10".into(), json!("a"), za),
            ("10.244.2.10".into(), json!("b"), zb),
            // no zone label: no hint; not ready: no hint
            ("10.244.3.10".into(), Value::Null, Value::Null),
            ("10.244.1.11".into(), json!("a"), Value::Null),
        ]
    );
    let node = eps("node");
    assert_eq!(
        node[0].2,
        json!({"forZones": [{"name": "a"}], "forNodes": [{"name": "n1"}]})
    );
    assert_eq!(node[2].2, json!({"forNodes": [{"name": "n3"}]}));
    assert!(eps("plain").iter().all(|e| e.2.is_null()));
    let e = Scenario::parse("nodes: [n1]\nnodeLabels: {n9: {a: b}}\n").unwrap_err();
    assert!(e.0.contains("nodeLabels.n9"), "{e}");
}

#[test]
fn slices_resolve_named_ports_per_pod_and_conditions() {
    let c = cluster(WEB);
    let slices = c.slices(c.object("Service", "x", "web").unwrap());
    assert_eq!(
        slices.len(),
        2,
        "pods with different resolved ports go to different slices"
    );
    let all: Vec<(String, u64, Value)> = slices
        .iter()
        .flat_map(|s| {
            let port = s["ports"][0]["port"].as_u64().unwrap();
            s["endpoints"].as_array().unwrap().iter().map(move |e| {
                (
                    e["addresses"][0].as_str().unwrap().to_string(),
                    port,
                    e["conditions"].clone(),
                )
            })
        })
        .collect();
    assert!(all.contains(&(
        "10.244.1.10".into(),
        80,
        json!({"ready": true, "serving": true, "terminating": false})
    )));
    assert!(all.contains(&(
        "10.244.2.10".into(),
        8080,
        json!({"ready": false, "serving": false, "terminating": false})
    )));
    assert!(all.contains(&(
        "10.244.1.11".into(),
        80,
        json!({"ready": false, "serving": true, "terminating": true})
    )));
    for s in &slices {
        assert_eq!(s["metadata"]["labels"]["kubernetes.io/service-name"], "web");
        lb_agent::source::manifest::parse_object(s).unwrap();
    }
}

#[test]
fn dual_stack_allocates_both_families_and_one_slice_each() {
    let c = cluster(
        "ipFamily: DualStack\npods: [{name: a, namespace: x, labels: {app: w}}]\nobjects:\n  - {apiVersion: v1, kind: Service, metadata: {name: w, namespace: x}, spec: {selector: {app: w}, ports: [{port: 80}]}}\n",
    );
    let w = c.object("Service", "x", "w").unwrap();
    assert_eq!(w["spec"]["clusterIPs"], json!(["10.96.0.10", "fd00:96::a"]));
    let slices = c.slices(w);
    let fams: Vec<&str> = slices
        .iter()
        .map(|s| s["addressType"].as_str().unwrap())
        .collect();
    assert_eq!(fams, ["IPv4", "IPv6"]);
}

#[test]
fn substitution_and_bad_references() {
    let s = Scenario::parse("pods: [{name: a, namespace: x}]\nobjects:\n  - {apiVersion: v1, kind: Service, metadata: {name: w, namespace: x}, spec: {externalIPs: ['${podIP:x/a}'], ports: [{port: 80}]}}\n").unwrap();
    let mut c = Cluster::new(&s);
    c.apply(&s.steps()[0], "").unwrap();
    assert_eq!(
        c.object("Service", "x", "w").unwrap()["spec"]["externalIPs"][0],
        "10.244.1.10"
    );
    let s = Scenario::parse("objects:\n  - {apiVersion: v1, kind: Service, metadata: {name: w}, spec: {externalIPs: ['${podIP:x/nope}']}}\n").unwrap();
    let e = Cluster::new(&s).apply(&s.steps()[0], "").unwrap_err();
    assert!(e.0.contains("objects[0]") && e.0.contains("x/nope"), "{e}");
    let s = Scenario::parse("objects:\n  - {apiVersion: v1, kind: Service, metadata: {name: w}, spec: {ports: [{port: 80, targetport: 8080}]}}\n").unwrap();
    let e = Cluster::new(&s).apply(&s.steps()[0], "").unwrap_err();
    assert!(e.0.contains("spec.ports[0].targetport"), "{e}");
}
