use super::*;
use crate::source::manifest::parse_documents;

fn changes(y: &str) -> Vec<Change> {
    parse_documents(y)
        .unwrap()
        .into_iter()
        .map(|o| Change::Upsert(o.unwrap()))
        .collect()
}

#[test]
fn hints_and_the_nodes_zone_are_read_and_a_zone_change_touches_every_service() {
    let y = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: x}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: a-1, namespace: x, labels: {kubernetes.io/service-name: a}}\naddressType: IPv4\n\
             endpoints: [{addresses: [10.244.1.10], nodeName: n1, zone: za, hints: {forZones: [{name: za}], forNodes: [{name: n1}]}}, {addresses: [10.244.2.10], hints: {}}]\nports: [{port: 8080}]\n";
    let mut s = Snapshot::for_node(Some("n1".into()));
    for c in changes(y) {
        s.apply(c).unwrap();
    }
    let sl = s.slices_of(&ObjRef::new("x", "a"));
    let h = sl[0].endpoints[0].hints.as_deref().unwrap();
    assert_eq!(
        (h.zones.as_slice(), h.nodes.as_slice()),
        (&["za".to_string()][..], &["n1".to_string()][..])
    );
    assert_eq!(sl[0].endpoints[1].hints, None, "empty hints are none");
    let node = |zone: &str, addr: &str| {
        format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: n1, labels: {{topology.kubernetes.io/zone: '{zone}'}}}}\nstatus: {{addresses: [{{type: InternalIP, address: {addr}}}]}}\n"
        )
    };
    let touched = s
        .apply(changes(&node("za", "10.100.0.1")).remove(0))
        .unwrap();
    assert_eq!(s.node.zone.as_deref(), Some("za"));
    assert_eq!(
        touched,
        vec![ObjRef::new("x", "a")],
        "a zone change recomputes every Service"
    );
    // Another address, same zone: only NodePort Services (none here).
    let touched = s
        .apply(changes(&node("za", "10.100.0.2")).remove(0))
        .unwrap();
    assert!(touched.is_empty(), "{touched:?}");
    let touched = s.apply(changes(&node("", "10.100.0.2")).remove(0)).unwrap();
    assert_eq!(s.node.zone, None, "an empty label is no zone");
    assert_eq!(touched.len(), 1);
}

#[test]
fn endpoints_on_one_node_share_its_name_and_a_name_nobody_holds_goes() {
    let slice = |name: &str, node: &str| {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: x, labels: {{kubernetes.io/service-name: a}}}}\naddressType: IPv4\n\
             endpoints: [{{addresses: [10.244.1.10], nodeName: {node}}}, {{addresses: [10.244.1.11], nodeName: {node}}}]\nports: [{{port: 8080}}]\n"
        )
    };
    let mut s = Snapshot::for_node(Some("n1".into()));
    s.apply(changes(&slice("a-1", "n1")).remove(0)).unwrap();
    s.apply(changes(&slice("a-2", "n1")).remove(0)).unwrap();
    let nodes: Vec<std::sync::Arc<str>> = s
        .slices_of(&ObjRef::new("x", "a"))
        .iter()
        .flat_map(|sl| sl.endpoints.iter().map(|e| e.node.clone().unwrap()))
        .collect();
    assert_eq!(nodes.len(), 4);
    assert!(
        nodes.iter().all(|n| std::sync::Arc::ptr_eq(n, &nodes[0])),
        "one allocation for n1"
    );
    drop(nodes);
    // Slices move from node to node: names nobody holds any more go.
    for i in 0..1000 {
        s.apply(changes(&slice("a-1", &format!("m{i}"))).remove(0))
            .unwrap();
    }
    assert!(
        s.node_names.set.len() <= 2 * 64 + 1,
        "{} names held",
        s.node_names.set.len()
    );
    assert!(s.node_names.set.contains("n1"), "a-2 still names n1");
}
