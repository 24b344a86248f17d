//! Turns change sets into map writes: applies changes to the snapshot,
//! recomputes only the Services they touch, diffs those against the mirror
//! and hands the ops to the writer. A full batch (a complete listing) also
//! removes frontends that no Service claims any more.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use lb_common::{SVC_FLAG_ADDR_ONLY, ServiceKey};

use crate::{
    compute::desired::{self, ip_of},
    compute::plan::{Mirror, Op},
    compute::{policy::PolicyMaps, policy_plan::PolicyOp, policy_sync::PolicySync},
    model::snapshot::{Change, ObjRef, Snapshot},
    serve::health_check::Check,
};

/// Where ops go: the kernel maps, or a fake in tests.
pub trait Writer {
    fn apply(&mut self, ops: &[Op]) -> anyhow::Result<()>;
    fn read_mirror(&self) -> anyhow::Result<Mirror>;
    fn apply_policy(&mut self, ops: &[PolicyOp]) -> anyhow::Result<()>;
    fn read_policy(&self) -> anyhow::Result<PolicyMaps>;
}

pub struct Reconciler {
    pub snapshot: Snapshot,
    mirror: Mirror,
    /// Frontends each Service owns, and the reverse, so a change costs only
    /// what it touches and two Services cannot fight over one frontend.
    owned: HashMap<ObjRef, Vec<ServiceKey>>,
    owner: HashMap<ServiceKey, ObjRef>,
    /// healthCheckNodePort -> what it reports, kept per touched Service.
    pub health_checks: BTreeMap<u16, Check>,
    /// `--nodeport-addresses`: which of the node's addresses serve
    /// NodePorts (empty: all of them).
    pub node_port_cidrs: Vec<crate::model::cidr::Cidr>,
    pub policy: PolicySync,
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub ops: usize,
    pub errors: Vec<String>,
    /// The policy state was recomputed (its report is new).
    pub policy_changed: bool,
}

fn describe_key(k: &ServiceKey) -> String {
    let ip = ip_of(&k.addr);
    let proto = match k.proto {
        6 => "TCP",
        17 => "UDP",
        _ => "any",
    };
    match ip {
        std::net::IpAddr::V4(v4) => format!("{v4}:{}/{proto}", k.port.to_host()),
        std::net::IpAddr::V6(v6) => format!("[{v6}]:{}/{proto}", k.port.to_host()),
    }
}

impl Reconciler {
    pub fn new(mirror: Mirror, node_name: Option<String>) -> Self {
        Self {
            snapshot: Snapshot::for_node(node_name),
            mirror,
            owned: HashMap::new(),
            owner: HashMap::new(),
            health_checks: BTreeMap::new(),
            node_port_cidrs: Vec::new(),
            policy: PolicySync::default(),
        }
    }

    pub fn mirror(&self) -> &Mirror {
        &self.mirror
    }

    pub fn apply(
        &mut self,
        changes: &[Change],
        full: bool,
        w: &mut dyn Writer,
    ) -> anyhow::Result<Outcome> {
        let mut out = Outcome::default();
        let mut touched = BTreeSet::new();
        for c in changes {
            match self.snapshot.apply(c) {
                Ok(t) => touched.extend(t),
                Err(e) => out.errors.push(format!("{e}; keeping its previous state")),
            }
        }
        let mut ops = Vec::new();
        for svc in &touched {
            self.sync_service(svc, &mut ops, &mut out.errors);
        }
        if full {
            self.remove_unclaimed(&mut ops);
        }
        out.ops = ops.len();
        if let Err(e) = w.apply(&ops) {
            // The kernel holds something between the old and new state: read
            // it back and let the next full resync converge.
            self.mirror = w.read_mirror()?;
            return Err(e);
        }
        out.errors.append(&mut self.snapshot.warnings);
        if self.snapshot.policy_dirty || full {
            out.ops += self.sync_policy(w, &mut out.errors)?;
            out.policy_changed = true;
        }
        Ok(out)
    }

    /// Recomputes the policy state and writes what changed.
    fn sync_policy(
        &mut self,
        w: &mut dyn Writer,
        errors: &mut Vec<String>,
    ) -> anyhow::Result<usize> {
        self.snapshot.policy_dirty = false;
        let ops = self.policy.plan(&self.snapshot, errors);
        if let Err(e) = w.apply_policy(&ops) {
            self.policy.reload(w.read_policy()?);
            // Computed again at the next resync.
            self.snapshot.policy_dirty = true;
            return Err(e);
        }
        self.policy.applied(&ops);
        Ok(ops.len())
    }

    /// After a complete listing: frontends the maps hold that no Service
    /// claims any more (deleted while nobody watched) go.
    fn remove_unclaimed(&mut self, ops: &mut Vec<Op>) {
        let stale: Vec<ServiceKey> = self
            .mirror
            .frontends()
            .filter(|k| !self.owner.contains_key(k))
            .copied()
            .collect();
        for k in stale {
            tracing::info!(frontend = %describe_key(&k), "removing frontend no Service claims");
            self.mirror.remove(&k, ops);
        }
    }

    /// Recomputes every Service against a fresh read of the maps.
    pub fn resync(&mut self, w: &mut dyn Writer) -> anyhow::Result<Outcome> {
        self.mirror = w.read_mirror()?;
        self.owned.clear();
        self.owner.clear();
        let all: Vec<ObjRef> = self.snapshot.services().map(|s| s.key.clone()).collect();
        let mut out = Outcome::default();
        let mut ops = Vec::new();
        for svc in &all {
            self.sync_service(svc, &mut ops, &mut out.errors);
        }
        self.remove_unclaimed(&mut ops);
        out.ops = ops.len();
        w.apply(&ops)?;
        self.policy.reload(w.read_policy()?);
        out.ops += self.sync_policy(w, &mut out.errors)?;
        out.policy_changed = true;
        Ok(out)
    }

    /// This node's addresses that serve NodePorts.
    pub fn node_port_addrs(&self) -> Vec<std::net::IpAddr> {
        let addrs = &self.snapshot.node.addrs;
        if self.node_port_cidrs.is_empty() {
            return addrs.clone();
        }
        addrs
            .iter()
            .filter(|a| self.node_port_cidrs.iter().any(|c| c.contains(a)))
            .copied()
            .collect()
    }

    fn sync_service(&mut self, svc: &ObjRef, ops: &mut Vec<Op>, errors: &mut Vec<String>) {
        let want = match self.snapshot.service(svc) {
            Some(info) => {
                if let Some(why) = info.skip {
                    tracing::debug!(service = %svc, "no datapath entries: {why}");
                }
                desired::service_frontends(
                    info,
                    &self.snapshot.slices_of(svc),
                    self.snapshot.node_name.as_deref(),
                    &self.node_port_addrs(),
                )
            }
            None => vec![],
        };
        self.health_checks.retain(|_, c| &c.service != svc);
        if let Some(info) = self.snapshot.service(svc).filter(|i| i.skip.is_none()) {
            if let Some(port) = info.health_check_node_port {
                let local = desired::local_ready_endpoints(
                    &self.snapshot.slices_of(svc),
                    self.snapshot.node_name.as_deref(),
                );
                match self.health_checks.get(&port) {
                    Some(other) => errors.push(format!(
                        "Service {svc}: spec.healthCheckNodePort {port} already belongs to Service {}",
                        other.service
                    )),
                    None => {
                        self.health_checks.insert(port, Check { service: svc.clone(), local_endpoints: local });
                    }
                }
            }
        }
        let old = self.owned.remove(svc).unwrap_or_default();
        let mut mine = Vec::new();
        let before = ops.len();
        for fe in &want {
            match self.owner.get(&fe.key) {
                Some(other) if other != svc => {
                    errors.push(format!(
                        "Service {svc}: frontend {} already belongs to Service {other}; not programmed",
                        describe_key(&fe.key)
                    ));
                    continue;
                }
                _ => {}
            }
            self.mirror.upsert(fe, ops);
            self.owner.insert(fe.key, svc.clone());
            mine.push(fe.key);
        }
        for k in old.iter().filter(|k| !mine.contains(k)) {
            self.mirror.remove(k, ops);
            self.owner.remove(k);
        }
        if ops.len() != before {
            let ports: Vec<String> = want
                .iter()
                .filter(|f| f.flags & SVC_FLAG_ADDR_ONLY == 0)
                .map(|f| format!("{}->{}", describe_key(&f.key), f.backends.len()))
                .collect();
            tracing::info!(service = %svc, frontends = ?ports, ops = ops.len() - before, "applied");
        }
        if !mine.is_empty() {
            self.owned.insert(svc.clone(), mine);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::manifest::{Object, parse_documents};

    #[derive(Default)]
    struct Fake {
        mirror: Mirror,
        applied: Vec<Op>,
        policy: PolicyMaps,
    }
    impl Writer for Fake {
        fn apply(&mut self, ops: &[Op]) -> anyhow::Result<()> {
            self.applied.extend_from_slice(ops);
            Ok(())
        }
        fn read_mirror(&self) -> anyhow::Result<Mirror> {
            Ok(self.mirror.clone())
        }
        fn apply_policy(&mut self, ops: &[PolicyOp]) -> anyhow::Result<()> {
            crate::compute::policy_plan::apply(&mut self.policy, ops);
            Ok(())
        }
        fn read_policy(&self) -> anyhow::Result<PolicyMaps> {
            Ok(self.policy.clone())
        }
    }

    fn objs(y: &str) -> Vec<Change> {
        parse_documents(y)
            .unwrap()
            .into_iter()
            .map(|o| Change::Upsert(o.unwrap()))
            .collect()
    }

    fn svc(name: &str, ip: &str, extra: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: x{extra}}}\nspec: {{clusterIP: {ip}, ports: [{{port: 80}}]}}\n---\n"
        )
    }

    #[test]
    fn conflicting_cluster_ip_is_reported_and_first_owner_kept() {
        let mut r = Reconciler::new(Mirror::from_entries([], []), None);
        let mut w = Fake::default();
        let out = r
            .apply(
                &objs(&(svc("a", "10.96.0.10", "") + &svc("b", "10.96.0.10", ""))),
                true,
                &mut w,
            )
            .unwrap();
        assert_eq!(out.errors.len(), 2, "{:?}", out.errors); // marker and port
        assert!(out.errors[0].contains("Service x/b") && out.errors[0].contains("Service x/a"));
        assert_eq!(r.mirror().frontends().count(), 2);
    }

    #[test]
    fn full_batch_removes_unclaimed_frontends_and_partial_does_not() {
        let mut r = Reconciler::new(Mirror::from_entries([], []), None);
        let mut w = Fake::default();
        r.apply(&objs(&svc("a", "10.96.0.10", "")), true, &mut w)
            .unwrap();
        // an agent restarted: mirror from the maps, a snapshot without `a`
        let mut r2 = Reconciler::new(r.mirror().clone(), None);
        r2.apply(&objs(&svc("b", "10.96.0.11", "")), false, &mut w)
            .unwrap();
        assert_eq!(r2.mirror().frontends().count(), 4);
        r2.apply(&[], true, &mut w).unwrap();
        assert_eq!(r2.mirror().frontends().count(), 2);
    }

    #[test]
    fn one_slice_change_rewrites_only_its_service() {
        let slice = |name: &str, svc: &str, ip: &str| {
            format!(
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: x, labels: {{kubernetes.io/service-name: {svc}}}}}\naddressType: IPv4\nendpoints: [{{addresses: [{ip}], conditions: {{ready: true}}}}]\nports: [{{port: 8080}}]\n---\n"
            )
        };
        let mut r = Reconciler::new(Mirror::from_entries([], []), None);
        let mut w = Fake::default();
        let mut y = String::new();
        for i in 0..50 {
            y += &svc(&format!("s{i}"), &format!("10.96.1.{i}"), "");
            y += &slice(
                &format!("s{i}-a"),
                &format!("s{i}"),
                &format!("10.244.1.{i}"),
            );
        }
        r.apply(&objs(&y), true, &mut w).unwrap();
        w.applied.clear();
        let out = r
            .apply(&objs(&slice("s7-a", "s7", "10.244.2.7")), false, &mut w)
            .unwrap();
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        let s7 = crate::compute::desired::net_addr("10.96.1.7".parse().unwrap());
        for op in &w.applied {
            match op {
                Op::PutService { key, .. } | Op::DelService { key } => {
                    assert_eq!(key.addr, s7, "only s7's frontend is written: {op:?}")
                }
                Op::PutBackend { .. } | Op::DelBackend { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        // new backend, slot rewritten, old backend dropped: a handful of ops
        assert!((1..=4).contains(&w.applied.len()), "{:?}", w.applied);
    }

    #[test]
    fn labelled_and_headless_services_get_nothing() {
        let mut r = Reconciler::new(Mirror::from_entries([], []), None);
        let mut w = Fake::default();
        let y = svc(
            "a",
            "10.96.0.10",
            ", labels: {service.kubernetes.io/headless: ''}",
        ) + &svc(
            "b",
            "10.96.0.11",
            ", labels: {service.kubernetes.io/service-proxy-name: other}",
        ) + &svc("c", "None", "")
            + "apiVersion: v1\nkind: Service\nmetadata: {name: d, namespace: x}\nspec: {type: ExternalName, externalName: example.com}\n";
        let out = r.apply(&objs(&y), true, &mut w).unwrap();
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        assert_eq!(r.mirror().frontends().count(), 0);
        assert!(w.applied.is_empty());
    }

    #[test]
    fn this_nodes_addresses_become_node_port_frontends() {
        let mut r = Reconciler::new(Mirror::from_entries([], []), Some("n1".into()));
        let mut w = Fake::default();
        let y = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: x}\nspec: {type: NodePort, clusterIP: 10.96.0.10, ports: [{port: 80, nodePort: 30000}]}\n---\n\
                 apiVersion: v1\nkind: Node\nmetadata: {name: n2}\nstatus: {addresses: [{type: InternalIP, address: 10.100.0.2}]}\n";
        r.apply(&objs(y), true, &mut w).unwrap();
        // ClusterIP marker + port, and loopback NodePort; not node n2's address
        assert_eq!(r.mirror().frontends().count(), 3);
        let n1 = "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nstatus: {addresses: [{type: InternalIP, address: 10.100.0.1}, {type: Hostname, address: n1}]}\n";
        r.apply(&objs(n1), false, &mut w).unwrap();
        let keys: Vec<String> = r.mirror().frontends().map(describe_key).collect();
        assert!(
            keys.contains(&"10.100.0.1:30000/TCP".to_string()),
            "{keys:?}"
        );
        assert_eq!(keys.len(), 4);
        r.apply(
            &[Change::Delete {
                kind: "Node".into(),
                key: ObjRef::new("", "n1"),
            }],
            false,
            &mut w,
        )
        .unwrap();
        assert_eq!(r.mirror().frontends().count(), 3);
    }

    #[test]
    fn nodeport_addresses_pick_which_node_addresses_serve() {
        let mut r = Reconciler::new(Mirror::from_entries([], []), Some("n1".into()));
        r.node_port_cidrs = vec!["10.100.0.0/24".parse().unwrap()];
        let mut w = Fake::default();
        let y = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: x}\nspec: {type: NodePort, clusterIP: 10.96.0.10, ports: [{port: 80, nodePort: 30000}]}\n---\n\
                 apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nstatus: {addresses: [{type: InternalIP, address: 10.100.0.1}, {type: ExternalIP, address: 192.0.2.1}]}\n";
        r.apply(&objs(y), true, &mut w).unwrap();
        let keys: Vec<String> = r.mirror().frontends().map(describe_key).collect();
        assert!(
            keys.contains(&"10.100.0.1:30000/TCP".to_string()),
            "{keys:?}"
        );
        assert!(
            !keys.contains(&"192.0.2.1:30000/TCP".to_string()),
            "{keys:?}"
        );
    }

    #[test]
    fn invalid_object_keeps_previous_state() {
        let mut r = Reconciler::new(Mirror::from_entries([], []), None);
        let mut w = Fake::default();
        r.apply(&objs(&svc("a", "10.96.0.10", "")), true, &mut w)
            .unwrap();
        let bad = objs(&svc("a", "10.96.0.300", ""));
        let out = r.apply(&bad, false, &mut w).unwrap();
        assert!(
            out.errors[0].contains("Service x/a") && out.errors[0].contains("spec.clusterIPs[0]"),
            "{:?}",
            out.errors
        );
        assert_eq!(r.mirror().frontends().count(), 2);
        let _ = Object::Service(Box::default());
    }
}
