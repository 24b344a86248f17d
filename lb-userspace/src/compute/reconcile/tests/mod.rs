//! The reconciler's tests: a fake writer and YAML helpers here, the tests
//! by concern in the files below.

use super::frontends::describe_key;
use super::*;
use crate::compute::desired;
use crate::source::manifest::{Object, parse_documents};

#[derive(Default)]
struct Fake {
    mirror: Mirror,
    applied: Vec<Op>,
    policy: PolicyMaps,
    capacity: Capacity,
    /// The policy maps' capacity, and whether they grow (to exactly what
    /// is asked) and how often they did; and how many policy writes came.
    policy_capacity: crate::compute::policy::Capacity,
    policy_grows: bool,
    policy_growths: usize,
    policy_writes: usize,
}
impl Writer for Fake {
    fn capacity(&self) -> Capacity {
        self.capacity
    }
    fn policy_capacity(&self) -> crate::compute::policy::Capacity {
        self.policy_capacity
    }
    fn grow_policy(
        &mut self,
        wanted: &crate::compute::policy::Capacity,
    ) -> Option<crate::compute::policy::Capacity> {
        if !self.policy_grows || *wanted == self.policy_capacity {
            return None;
        }
        self.policy_growths += 1;
        self.policy_capacity = *wanted;
        Some(*wanted)
    }
    fn apply(&mut self, ops: &[Op]) -> anyhow::Result<()> {
        self.applied.extend_from_slice(ops);
        Ok(())
    }
    fn read_mirror(&self) -> anyhow::Result<Mirror> {
        Ok(self.mirror.clone())
    }
    fn apply_policy(&mut self, ops: &[PolicyOp]) -> anyhow::Result<()> {
        self.policy_writes += 1;
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

/// Service `name` on ClusterIP `ip` port 80, with one EndpointSlice
/// of `backends` (ready, port 8080).
fn svc_eps(name: &str, ip: &str, backends: &[&str]) -> String {
    let eps: Vec<String> = backends
        .iter()
        .map(|b| format!("{{addresses: [{b}], conditions: {{ready: true}}}}"))
        .collect();
    format!(
        "{}apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: x, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nendpoints: [{}]\nports: [{{port: 8080}}]\n---\n",
        svc(name, ip, ""),
        eps.join(", ")
    )
}

fn writes_to(ops: &[Op], ip: &str) -> bool {
    let a = crate::compute::desired::net_addr(ip.parse().unwrap());
    ops.iter().any(|o| match o {
        Op::PutService { key, .. } | Op::DelService { key } => key.addr == a,
        _ => false,
    })
}

fn fkey(ip: &str, port: u16) -> ServiceKey {
    ServiceKey::frontend(
        desired::net_addr(ip.parse().unwrap()),
        lb_common::BeU16::from_host(port),
        lb_common::PROTO_TCP,
        lb_common::SCOPE_INTERNAL,
    )
}

mod capacity;
mod changes;
mod frontends;
