//! The lab's control plane, pure: what the API server, kubelet and
//! endpoints controller would hold for a scenario at each step. ClusterIPs,
//! nodePorts and healthCheckNodePorts are allocated deterministically in file
//! order; pod addresses follow LAB.md.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use serde_json::{Value, json};

use super::scenario::{Family, Invalid, IpFamily, PodSpec, Protocol, Scenario, Step};

pub type ObjKey = (String, String, String); // kind, namespace, name

#[derive(Clone, Debug)]
pub struct Pod {
    pub spec: PodSpec,
    /// 0-based node index.
    pub node: usize,
    /// 0-based index among the node's pods (address .10 + i).
    pub slot: usize,
}

impl Pod {
    pub fn ip4(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, self.node as u8 + 1, 10 + self.slot as u8)
    }
    pub fn ip6(&self) -> Ipv6Addr {
        Ipv6Addr::new(
            0xfd00,
            0x244,
            self.node as u16 + 1,
            0,
            0,
            0,
            0,
            10 + self.slot as u16,
        )
    }
    pub fn ip(&self, f: Family) -> IpAddr {
        match f {
            Family::IPv4 => IpAddr::V4(self.ip4()),
            Family::IPv6 => IpAddr::V6(self.ip6()),
        }
    }
    pub fn id(&self) -> String {
        format!("{}/{}", self.spec.namespace, self.spec.name)
    }
}

pub fn node_ip(k: usize, f: Family) -> IpAddr {
    match f {
        Family::IPv4 => IpAddr::V4(Ipv4Addr::new(10, 100, 0, k as u8 + 1)),
        Family::IPv6 => IpAddr::V6(Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, k as u16 + 1)),
    }
}

pub fn external_ip(f: Family) -> IpAddr {
    match f {
        Family::IPv4 => IpAddr::V4(Ipv4Addr::new(10, 100, 0, 200)),
        Family::IPv6 => IpAddr::V6(Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 0x200)),
    }
}

#[derive(Clone, Debug, Default)]
struct Alloc {
    next_v4: u32,
    next_v6: u128,
    next_port: u16,
    used_ports: std::collections::BTreeSet<u16>,
    cluster_ips: HashMap<(String, String), Vec<String>>,
    node_ports: HashMap<(String, String, usize), u16>,
    hc_ports: HashMap<(String, String), u16>,
}

impl Alloc {
    fn port(&mut self) -> u16 {
        while self.used_ports.contains(&(30000 + self.next_port)) {
            self.next_port += 1;
        }
        let p = 30000 + self.next_port;
        self.used_ports.insert(p);
        self.next_port += 1;
        p
    }
    fn ip(&mut self, f: Family) -> String {
        match f {
            Family::IPv4 => {
                let base = u32::from(Ipv4Addr::new(10, 96, 0, 10));
                self.next_v4 += 1;
                Ipv4Addr::from(base + self.next_v4 - 1).to_string()
            }
            Family::IPv6 => {
                let base = u128::from("fd00:96::a".parse::<Ipv6Addr>().unwrap());
                self.next_v6 += 1;
                Ipv6Addr::from(base + self.next_v6 - 1).to_string()
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct Cluster {
    pub ip_family: IpFamily,
    pub nodes: Vec<String>,
    /// Extra labels of each node's Node object.
    pub node_labels: BTreeMap<String, BTreeMap<String, String>>,
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pub pods: Vec<Pod>,
    /// User objects in file order (allocated and substituted).
    pub objects: Vec<(ObjKey, Value)>,
    alloc: Alloc,
}

fn key_of(v: &Value) -> ObjKey {
    let s = |p: &str| {
        v.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let kind = s("/kind");
    let ns = if matches!(kind.as_str(), "Namespace" | "Node") {
        String::new()
    } else {
        v.pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string()
    };
    (kind, ns, s("/metadata/name"))
}

fn str_at<'a>(v: &'a Value, p: &str) -> Option<&'a str> {
    v.pointer(p).and_then(Value::as_str)
}

impl Cluster {
    pub fn new(s: &Scenario) -> Self {
        let nodes = s.node_names();
        let mut per_node = vec![0usize; nodes.len()];
        let mut pods = Vec::new();
        for (i, p) in s.pods.iter().enumerate() {
            let node = p.node.as_ref().map_or(i % nodes.len(), |n| {
                nodes.iter().position(|x| x == n).unwrap_or(0)
            });
            pods.push(Pod {
                spec: p.clone(),
                node,
                slot: per_node[node],
            });
            per_node[node] += 1;
        }
        Self {
            ip_family: s.ip_family,
            nodes,
            node_labels: s.node_labels.clone(),
            namespaces: s.namespaces.clone(),
            pods,
            objects: Vec::new(),
            alloc: Alloc::default(),
        }
    }

    pub fn families(&self) -> Vec<Family> {
        self.ip_family.families()
    }

    pub fn pod(&self, id: &str) -> Option<&Pod> {
        self.pods.iter().find(|p| p.id() == id)
    }

    /// A node's `topology.kubernetes.io/zone` label.
    pub fn zone_of(&self, node: &str) -> Option<&str> {
        self.node_labels
            .get(node)
            .and_then(|l| l.get("topology.kubernetes.io/zone"))
            .map(String::as_str)
            .filter(|z| !z.is_empty())
    }

    pub fn node_index(&self, n: &str) -> Option<usize> {
        self.nodes.iter().position(|x| x == n)
    }

    pub fn object(&self, kind: &str, ns: &str, name: &str) -> Option<&Value> {
        self.objects
            .iter()
            .find(|(k, _)| k.0 == kind && k.1 == ns && k.2 == name)
            .map(|(_, v)| v)
    }

    /// Replaces `${podIP:ns/name}`, `${podIP6:ns/name}`, `${nodeIP:NODE}`.
    fn substitute(&self, text: &str, at: &str) -> Result<String, Invalid> {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let end = rest[start..]
                .find('}')
                .ok_or_else(|| Invalid(format!("{at}: unterminated `${{`")))?
                + start;
            let inner = &rest[start + 2..end];
            let (what, arg) = inner
                .split_once(':')
                .ok_or_else(|| Invalid(format!("{at}: unknown substitution `${{{inner}}}`")))?;
            let value = match what {
                "podIP" | "podIP6" => {
                    let pod = self
                        .pod(arg)
                        .ok_or_else(|| Invalid(format!("{at}: `${{{inner}}}` names no pod")))?;
                    pod.ip(if what == "podIP" {
                        Family::IPv4
                    } else {
                        Family::IPv6
                    })
                    .to_string()
                }
                "nodeIP" => {
                    let k = self
                        .node_index(arg)
                        .ok_or_else(|| Invalid(format!("{at}: `${{{inner}}}` names no node")))?;
                    node_ip(
                        k,
                        if self.ip_family == IpFamily::IPv6 {
                            Family::IPv6
                        } else {
                            Family::IPv4
                        },
                    )
                    .to_string()
                }
                _ => {
                    return Err(Invalid(format!(
                        "{at}: unknown substitution `${{{inner}}}`"
                    )));
                }
            };
            out.push_str(&value);
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// Applies one step's changes (not its probes).
    pub fn apply(&mut self, step: &Step, at: &str) -> Result<(), Invalid> {
        for (ns, labels) in &step.namespaces {
            self.namespaces.insert(ns.clone(), labels.clone());
        }
        for (i, u) in step.pods.iter().enumerate() {
            let id = format!("{}/{}", u.namespace, u.name);
            let pod = self
                .pods
                .iter_mut()
                .find(|p| p.id() == id)
                .ok_or_else(|| Invalid(format!("{at}pods[{i}]: no pod {id}")))?;
            if let Some(l) = &u.labels {
                pod.spec.labels = l.clone();
            }
            if let Some(r) = u.ready {
                pod.spec.ready = r;
            }
            if let Some(t) = u.terminating {
                pod.spec.terminating = t;
            }
        }
        for (i, d) in step.delete.iter().enumerate() {
            let ns = d.namespace.clone().unwrap_or_else(|| {
                if matches!(d.kind.as_str(), "Namespace" | "Node") {
                    String::new()
                } else {
                    "default".into()
                }
            });
            let before = self.objects.len();
            self.objects
                .retain(|(k, _)| !(k.0 == d.kind && k.1 == ns && k.2 == d.name));
            if self.objects.len() == before {
                return Err(Invalid(format!(
                    "{at}delete[{i}]: no {} {ns}/{} to delete",
                    d.kind, d.name
                )));
            }
        }
        for (i, o) in step.objects.iter().enumerate() {
            let field = format!("{at}objects[{i}]");
            let text = serde_json::to_string(o).expect("json");
            let o: Value = serde_json::from_str(&self.substitute(&text, &field)?).expect("json");
            let mut o = o;
            if !o.is_object() {
                return Err(Invalid(format!("{field}: not a Kubernetes object")));
            }
            if o.pointer("/metadata/namespace").is_none()
                && !matches!(str_at(&o, "/kind"), Some("Namespace" | "Node"))
            {
                o["metadata"]["namespace"] = json!("default");
            }
            lb_agent::source::manifest::parse_object(&o)
                .map_err(|e| Invalid(format!("{field}: {e}")))?;
            if str_at(&o, "/kind") == Some("Service") {
                self.allocate(&mut o);
            }
            let key = key_of(&o);
            match self.objects.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = o,
                None => self.objects.push((key, o)),
            }
        }
        Ok(())
    }

    /// What the API server fills in: ClusterIPs, families, nodePorts,
    /// healthCheckNodePort. A replaced Service keeps what it had.
    fn allocate(&mut self, svc: &mut Value) {
        let ns = str_at(svc, "/metadata/namespace")
            .unwrap_or("default")
            .to_string();
        let name = str_at(svc, "/metadata/name")
            .unwrap_or_default()
            .to_string();
        let id = (ns, name);
        let spec = svc
            .as_object_mut()
            .expect("object")
            .entry("spec")
            .or_insert_with(|| json!({}));
        let Some(spec) = spec.as_object_mut() else {
            return;
        };
        let ty = spec
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
            .to_string();
        if ty == "ExternalName" {
            return;
        }
        let given: Vec<String> = match spec.get("clusterIPs").and_then(Value::as_array) {
            Some(a) if !a.is_empty() => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            _ => spec
                .get("clusterIP")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(|s| vec![s.to_string()])
                .unwrap_or_default(),
        };
        let ips = if !given.is_empty() {
            given
        } else if let Some(prev) = self.alloc.cluster_ips.get(&id) {
            prev.clone()
        } else {
            let policy = spec
                .get("ipFamilyPolicy")
                .and_then(Value::as_str)
                .unwrap_or("");
            let fams: Vec<Family> = match spec.get("ipFamilies").and_then(Value::as_array) {
                Some(a) if !a.is_empty() => families_in(a),
                // A DualStack lab gives Services both families unless asked
                // for one (so every probe family has a ClusterIP).
                _ if policy == "SingleStack" => self.families().into_iter().take(1).collect(),
                _ => self.families(),
            };
            fams.into_iter().map(|f| self.alloc.ip(f)).collect()
        };
        self.alloc.cluster_ips.insert(id.clone(), ips.clone());
        if ips.first().map(String::as_str) != Some("None") {
            let fams: Vec<&str> = ips
                .iter()
                .map(|i| if i.contains(':') { "IPv6" } else { "IPv4" })
                .collect();
            spec.insert("ipFamilies".into(), json!(fams));
            if !spec.contains_key("ipFamilyPolicy") {
                spec.insert(
                    "ipFamilyPolicy".into(),
                    json!(if ips.len() > 1 {
                        "PreferDualStack"
                    } else {
                        "SingleStack"
                    }),
                );
            }
        }
        spec.insert("clusterIP".into(), json!(ips[0]));
        spec.insert("clusterIPs".into(), json!(ips));
        if ty == "NodePort" || ty == "LoadBalancer" {
            let n = spec
                .get("ports")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            for i in 0..n {
                let given = spec["ports"][i]
                    .get("nodePort")
                    .and_then(Value::as_u64)
                    .map(|p| p as u16);
                let p = match given.or_else(|| {
                    self.alloc
                        .node_ports
                        .get(&(id.0.clone(), id.1.clone(), i))
                        .copied()
                }) {
                    Some(p) => {
                        self.alloc.used_ports.insert(p);
                        p
                    }
                    None => self.alloc.port(),
                };
                self.alloc
                    .node_ports
                    .insert((id.0.clone(), id.1.clone(), i), p);
                spec["ports"][i]["nodePort"] = json!(p);
            }
        }
        if ty == "LoadBalancer"
            && spec.get("externalTrafficPolicy").and_then(Value::as_str) == Some("Local")
            && spec.get("healthCheckNodePort").is_none()
        {
            let p = match self.alloc.hc_ports.get(&id) {
                Some(p) => *p,
                None => self.alloc.port(),
            };
            self.alloc.hc_ports.insert(id, p);
            spec.insert("healthCheckNodePort".into(), json!(p));
        }
    }

    /// Namespaces: declared ones, and those pods or objects use.
    fn all_namespaces(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        let mut m = self.namespaces.clone();
        for p in &self.pods {
            m.entry(p.spec.namespace.clone()).or_default();
        }
        for (k, _) in &self.objects {
            if !k.1.is_empty() {
                m.entry(k.1.clone()).or_default();
            }
        }
        for (n, labels) in m.iter_mut() {
            labels.insert("kubernetes.io/metadata.name".into(), n.clone());
        }
        m
    }

    /// Every object the agents read, one file each, by file name.
    pub fn render(&self) -> BTreeMap<String, String> {
        let mut files = BTreeMap::new();
        let mut put = |name: String, v: &Value| {
            files.insert(
                format!("{name}.yaml"),
                serde_json::to_string_pretty(v).expect("json") + "\n",
            );
        };
        for (ns, labels) in self.all_namespaces() {
            put(
                format!("namespace-{ns}"),
                &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}}),
            );
        }
        for (k, n) in self.nodes.iter().enumerate() {
            let mut addrs = Vec::new();
            let mut cidrs = Vec::new();
            for f in [Family::IPv4, Family::IPv6] {
                addrs.push(json!({"type": "InternalIP", "address": node_ip(k, f).to_string()}));
            }
            if self.families().contains(&Family::IPv4) {
                cidrs.push(format!("10.244.{}.0/24", k + 1));
            }
            if self.families().contains(&Family::IPv6) {
                cidrs.push(format!("fd00:244:{:x}::/64", k + 1));
            }
            let mut labels = self.node_labels.get(n).cloned().unwrap_or_default();
            labels.insert("kubernetes.io/hostname".into(), n.clone());
            put(
                format!("node-{n}"),
                &json!({
                    "apiVersion": "v1", "kind": "Node", "metadata": {"name": n, "labels": labels},
                    "spec": {"podCIDR": cidrs[0], "podCIDRs": cidrs},
                    "status": {"addresses": addrs}
                }),
            );
        }
        for p in &self.pods {
            put(
                format!("pod-{}-{}", p.spec.namespace, p.spec.name),
                &self.pod_object(p),
            );
        }
        for (k, v) in &self.objects {
            put(
                format!(
                    "{}-{}-{}",
                    k.0.to_lowercase(),
                    if k.1.is_empty() { "_" } else { &k.1 },
                    k.2
                ),
                v,
            );
            if k.0 == "Service" {
                for (i, s) in self.slices(v).iter().enumerate() {
                    put(format!("endpointslice-{}-{}-{i}", k.1, k.2), s);
                }
            }
        }
        files
    }

    fn pod_object(&self, p: &Pod) -> Value {
        let ips: Vec<Value> = self
            .families()
            .iter()
            .map(|f| json!({"ip": p.ip(*f).to_string()}))
            .collect();
        let ports: Vec<Value> = p
            .spec
            .ports
            .iter()
            .map(|pp| {
                let mut v = json!({"containerPort": pp.port, "protocol": pp.protocol.as_str()});
                if let Some(n) = &pp.name {
                    v["name"] = json!(n);
                }
                v
            })
            .collect();
        let mut meta =
            json!({"name": p.spec.name, "namespace": p.spec.namespace, "labels": p.spec.labels});
        if p.spec.terminating {
            meta["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"nodeName": self.nodes[p.node], "containers": [{"name": "app", "image": "lab", "ports": ports}]},
            "status": {"phase": "Running", "podIP": ips[0]["ip"], "podIPs": ips,
                       "conditions": [{"type": "Ready", "status": if p.spec.ready && !p.spec.terminating { "True" } else { "False" }}]}
        })
    }

    /// The endpoints controller's slices for a Service: one per family (and
    /// per distinct resolution of named ports), conditions from readiness
    /// and termination.
    pub fn slices(&self, svc: &Value) -> Vec<Value> {
        let ns = str_at(svc, "/metadata/namespace").unwrap_or("default");
        let name = str_at(svc, "/metadata/name").unwrap_or_default();
        if str_at(svc, "/spec/type") == Some("ExternalName") {
            return vec![];
        }
        let Some(selector) = svc
            .pointer("/spec/selector")
            .and_then(Value::as_object)
            .filter(|s| !s.is_empty())
        else {
            return vec![];
        };
        let fams: Vec<Family> = match svc.pointer("/spec/ipFamilies").and_then(Value::as_array) {
            Some(a) => families_in(a),
            None => self.families(),
        };
        let distribution = str_at(svc, "/spec/trafficDistribution");
        let sports: Vec<&Value> = svc
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default();
        let pods: Vec<&Pod> = self
            .pods
            .iter()
            .filter(|p| {
                p.spec.namespace == ns
                    && selector
                        .iter()
                        .all(|(k, v)| p.spec.labels.get(k).map(String::as_str) == v.as_str())
            })
            .collect();
        let mut out = Vec::new();
        for f in fams {
            // resolved ports per pod -> pods
            let mut groups: BTreeMap<Vec<Option<u16>>, Vec<&Pod>> = BTreeMap::new();
            for p in &pods {
                let resolved: Vec<Option<u16>> =
                    sports.iter().map(|sp| resolve_port(sp, p)).collect();
                groups.entry(resolved).or_default().push(p);
            }
            if groups.is_empty() {
                groups.insert(
                    sports
                        .iter()
                        .map(|sp| sp.get("port").and_then(Value::as_u64).map(|p| p as u16))
                        .collect(),
                    vec![],
                );
            }
            for (resolved, members) in groups {
                let ports: Vec<Value> = sports
                    .iter()
                    .zip(&resolved)
                    .filter_map(|(sp, r)| {
                        r.map(|port| json!({"name": sp.get("name").and_then(Value::as_str).unwrap_or(""), "port": port, "protocol": sp.get("protocol").and_then(Value::as_str).unwrap_or("TCP")}))
                    })
                    .collect();
                let eps: Vec<Value> = members
                    .iter()
                    .map(|p| {
                        let ready = p.spec.ready && !p.spec.terminating;
                        let node = &self.nodes[p.node];
                        let mut ep = json!({
                            "addresses": [p.ip(f).to_string()],
                            "conditions": {"ready": ready, "serving": p.spec.ready, "terminating": p.spec.terminating},
                            "nodeName": node,
                            "targetRef": {"kind": "Pod", "namespace": p.spec.namespace, "name": p.spec.name}
                        });
                        let zone = self.zone_of(node);
                        if let Some(z) = zone {
                            ep["zone"] = json!(z);
                        }
                        // The EndpointSlice controller's hints for
                        // trafficDistribution: ready endpoints only, for
                        // their own zone (and node, for PreferSameNode).
                        if ready && matches!(distribution, Some("PreferClose" | "PreferSameZone" | "PreferSameNode")) {
                            let mut hints = serde_json::Map::new();
                            if let Some(z) = zone {
                                hints.insert("forZones".into(), json!([{"name": z}]));
                            }
                            if distribution == Some("PreferSameNode") {
                                hints.insert("forNodes".into(), json!([{"name": node}]));
                            }
                            if !hints.is_empty() {
                                ep["hints"] = Value::Object(hints);
                            }
                        }
                        ep
                    })
                    .collect();
                let n = out.len();
                out.push(json!({
                    "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": format!("{name}-{}-{n}", f.as_str().to_lowercase()), "namespace": ns,
                                 "labels": {"kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by": "lab"}},
                    "addressType": f.as_str(), "endpoints": eps, "ports": ports
                }));
            }
        }
        out
    }
}

/// `spec.ipFamilies` as families (unknown names ignored: the API refuses them).
fn families_in(list: &[Value]) -> Vec<Family> {
    list.iter()
        .filter_map(|f| match f.as_str() {
            Some("IPv4") => Some(Family::IPv4),
            Some("IPv6") => Some(Family::IPv6),
            _ => None,
        })
        .collect()
}

/// A Service port's target on one pod: a number, or the pod's container
/// port of that name and protocol (None when the pod has no such port).
fn resolve_port(sp: &Value, p: &Pod) -> Option<u16> {
    let proto = match sp.get("protocol").and_then(Value::as_str) {
        Some("UDP") => Protocol::UDP,
        _ => Protocol::TCP,
    };
    match sp.get("targetPort") {
        Some(Value::Number(n)) => n.as_u64().map(|n| n as u16),
        Some(Value::String(s)) => match s.parse::<u16>() {
            Ok(n) => Some(n),
            Err(_) => p
                .spec
                .ports
                .iter()
                .find(|pp| pp.name.as_deref() == Some(s) && pp.protocol == proto)
                .map(|pp| pp.port),
        },
        _ => sp.get("port").and_then(Value::as_u64).map(|n| n as u16),
    }
}

#[cfg(test)]
mod tests {
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
}
