//! The Kubernetes source: one kube-rs watcher per kind the agent reads,
//! its objects trimmed as they arrive and turned into the same change sets
//! as the file source (the snapshot keeps what it reads of them; nothing
//! here keeps the objects).
//!
//! Restart rule: nothing is handed to the reconciler until Services,
//! EndpointSlices and this node's Node have each been listed completely, so
//! an agent restarting in a running cluster never applies a half-known state
//! (a Service without its slices would lose its backends). Every complete
//! listing (the first and each relist after an error or 410 Gone) is diffed
//! against what that kind held before: an object that vanished meanwhile
//! becomes a delete, and one that still exists is never dropped on the way.

use std::{
    collections::{BTreeMap, HashSet},
    path::PathBuf,
    sync::Arc,
};

use anyhow::Context as _;
use futures::{StreamExt as _, stream::BoxStream};
use k8s_openapi::{
    api::{
        core::v1::{Namespace, Node, Pod, Service},
        discovery::v1::EndpointSlice,
        networking::v1::NetworkPolicy,
    },
    serde::de::DeserializeOwned,
};
use kube::{
    Api, Client, Resource,
    runtime::{WatchStreamExt as _, watcher},
};
use tokio::sync::mpsc;

use crate::{
    model::snapshot::{Change, ObjRef},
    serve::health::Health,
    source::file::{Batch, object_id},
    source::manifest::Object,
};

/// What the agent watches, as (API group, resource): the ClusterRole in
/// deploy/ grants get/list/watch on exactly these.
pub const WATCHED: &[(&str, &str)] = &[
    ("", "services"),
    ("discovery.k8s.io", "endpointslices"),
    ("", "nodes"),
    ("", "pods"),
    ("", "namespaces"),
    ("networking.k8s.io", "networkpolicies"),
];

/// The verbs a watcher needs.
pub const VERBS: &[&str] = &["get", "list", "watch"];

/// Kinds that must be listed before the first change set: without them the
/// reconciler would compute frontends, or policies, from a partial view (a
/// missing NetworkPolicy opens a pod, a missing Pod drops its peers).
const NEEDED_FOR_SYNC: &[&str] = &[
    "Service",
    "EndpointSlice",
    "Node",
    "Pod",
    "Namespace",
    "NetworkPolicy",
];

pub struct KubeOptions {
    pub kubeconfig: Option<PathBuf>,
    pub api_server: Option<String>,
}

/// The client: `--kubeconfig` (or KUBECONFIG), else the in-cluster service
/// account; `--api-server` replaces only the address, keeping the token and
/// CA (no kube-proxy serves the `kubernetes` Service before this agent runs).
/// Also returns the API server's URL, for `lb-agent status`.
pub async fn client(opts: &KubeOptions) -> anyhow::Result<(Client, String)> {
    let mut config = match &opts.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("--kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .with_context(|| format!("--kubeconfig {}", path.display()))?
        }
        // KUBERNETES_SERVICE_HOST is what kube-proxy-less clusters lack; the
        // service account's files are still there.
        None if opts.api_server.is_some() => kube::Config::incluster_dns()
            .context("in-cluster service account (token and CA) for --api-server")?,
        None => kube::Config::infer()
            .await
            .context("no --kubeconfig/KUBECONFIG and no in-cluster service account")?,
    };
    if let Some(url) = &opts.api_server {
        config.cluster_url = url
            .parse()
            .with_context(|| format!("--api-server: `{url}` is not a URL"))?;
    }
    let url = config.cluster_url.to_string();
    let client = Client::try_from(config).context("building the Kubernetes client")?;
    Ok((client, url))
}

/// What one kind's watcher has delivered so far.
#[derive(Default)]
struct KindState {
    /// A complete listing has been seen.
    listed: bool,
    keys: HashSet<ObjRef>,
    /// Keys seen since the current listing began.
    relisting: Option<HashSet<ObjRef>>,
}

/// Folds watcher events into change sets (pure: tested without an API).
#[derive(Default)]
pub struct Assembler {
    kinds: BTreeMap<&'static str, KindState>,
    pending: Vec<Change>,
    /// A Service or EndpointSlice listing completed since the last batch:
    /// the batch is a full reconcile.
    full: bool,
    synced_once: bool,
}

pub enum Ev {
    Init,
    Upsert(Object),
    Delete(Object),
    InitDone,
}

impl Assembler {
    pub fn event(&mut self, kind: &'static str, ev: Ev) {
        let st = self.kinds.entry(kind).or_default();
        match ev {
            Ev::Init => st.relisting = Some(HashSet::new()),
            Ev::Upsert(o) => {
                let Some((_, key)) = object_id(&o) else {
                    tracing::error!("{kind} without metadata.name from the API; ignored");
                    return;
                };
                if let Some(seen) = &mut st.relisting {
                    seen.insert(key.clone());
                }
                st.keys.insert(key);
                self.pending.push(Change::Upsert(o));
            }
            Ev::Delete(o) => {
                let Some((_, key)) = object_id(&o) else {
                    return;
                };
                st.keys.remove(&key);
                self.pending.push(Change::Delete {
                    kind: kind.into(),
                    key,
                });
            }
            Ev::InitDone => {
                let seen = st.relisting.take().unwrap_or_default();
                for key in st.keys.difference(&seen) {
                    self.pending.push(Change::Delete {
                        kind: kind.into(),
                        key: key.clone(),
                    });
                }
                st.keys = seen;
                st.listed = true;
                if kind == "Service" || kind == "EndpointSlice" {
                    self.full = true;
                }
            }
        }
    }

    /// Every kind the first change set needs has been listed.
    pub fn ready(&self) -> bool {
        NEEDED_FOR_SYNC
            .iter()
            .all(|k| self.kinds.get(k).is_some_and(|s| s.listed))
    }

    /// Something to send: changes, a completed listing, or the first sync.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty() || self.full || (!self.synced_once && self.ready())
    }

    /// The next change set, once the needed kinds are listed.
    pub fn take(&mut self) -> Option<Batch> {
        if !self.ready() || !self.has_pending() {
            return None;
        }
        let full = self.full || !self.synced_once;
        self.synced_once = true;
        self.full = false;
        Some(Batch {
            changes: std::mem::take(&mut self.pending),
            files: Vec::new(),
            generation: None,
            errors: Vec::new(),
            rejected: None,
            full,
            // `gather` fills this in.
            counts: None,
        })
    }

    /// Keys held per kind (what a relist is compared with).
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.kinds
            .iter()
            .map(|(k, s)| (k.to_string(), s.keys.len() as u64))
            .collect()
    }
}

type Events = BoxStream<'static, (&'static str, Result<Ev, watcher::Error>)>;

/// Managed fields and annotations are dropped as objects arrive: nothing
/// reads them, and at 100k Services they would dominate memory.
fn trim<K: Resource>(o: &mut K) {
    let m = o.meta_mut();
    m.managed_fields = None;
    m.annotations = None;
}

/// A Pod keeps what locality and policy read: labels, node, addresses,
/// phase, host networking and its containers' named ports; the rest of
/// its containers and its volumes go.
fn trim_pod(p: &mut Pod) {
    trim(p);
    if let Some(spec) = &mut p.spec {
        let containers = std::mem::take(&mut spec.containers)
            .into_iter()
            .filter(|c| c.ports.as_ref().is_some_and(|p| !p.is_empty()))
            .map(|c| k8s_openapi::api::core::v1::Container {
                name: c.name,
                ports: c.ports,
                ..Default::default()
            })
            .collect();
        *spec = k8s_openapi::api::core::v1::PodSpec {
            node_name: spec.node_name.take(),
            host_network: spec.host_network,
            containers,
            ..Default::default()
        };
    }
    if let Some(st) = &mut p.status {
        *st = k8s_openapi::api::core::v1::PodStatus {
            phase: st.phase.take(),
            pod_ip: st.pod_ip.take(),
            pod_ips: st.pod_ips.take(),
            ..Default::default()
        };
    }
}

fn watch<K>(
    api: Api<K>,
    cfg: watcher::Config,
    kind: &'static str,
    trim: fn(&mut K),
    wrap: fn(K) -> Object,
) -> Events
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    watcher(api, cfg)
        .default_backoff()
        .modify(trim)
        .map(move |r| {
            let ev = r.map(|e| match e {
                watcher::Event::Init => Ev::Init,
                watcher::Event::InitDone => Ev::InitDone,
                watcher::Event::InitApply(o) | watcher::Event::Apply(o) => Ev::Upsert(wrap(o)),
                watcher::Event::Delete(o) => Ev::Delete(wrap(o)),
            });
            (kind, ev)
        })
        .boxed()
}

fn streams(client: &Client, node_name: &str) -> Events {
    let all = watcher::Config::default;
    let s1 = watch(
        Api::<Service>::all(client.clone()),
        all(),
        "Service",
        trim,
        |o| Object::Service(Box::new(o)),
    );
    let s2 = watch(
        Api::<EndpointSlice>::all(client.clone()),
        all(),
        "EndpointSlice",
        trim,
        |o| Object::EndpointSlice(Box::new(o)),
    );
    let s3 = watch(
        Api::<Node>::all(client.clone()),
        all().fields(&format!("metadata.name={node_name}")),
        "Node",
        trim,
        |o| Object::Node(Box::new(o)),
    );
    let s4 = watch(
        Api::<Pod>::all(client.clone()),
        all(),
        "Pod",
        trim_pod,
        |o| Object::Pod(Box::new(o)),
    );
    let s5 = watch(
        Api::<Namespace>::all(client.clone()),
        all(),
        "Namespace",
        trim,
        |o| Object::Namespace(Box::new(o)),
    );
    let s6 = watch(
        Api::<NetworkPolicy>::all(client.clone()),
        all(),
        "NetworkPolicy",
        trim,
        |o| Object::NetworkPolicy(Box::new(o)),
    );
    futures::stream::select_all([s1, s2, s3, s4, s5, s6]).boxed()
}

/// Runs the watchers until `tx` closes, sending change sets as the sync
/// loop takes them.
pub async fn run(client: Client, node_name: String, health: Arc<Health>, tx: mpsc::Sender<Batch>) {
    gather(streams(&client, &node_name), &health, tx).await;
}

/// Folds `events` into change sets until either end closes. A change set
/// leaves as soon as the sync loop has room for it (`tx` holds
/// [`super::QUEUED`]): an idle agent applies an event the moment it comes,
/// and what comes while it applies gathers into the next set, so a burst
/// costs a few change sets and never a wait.
async fn gather<E: std::fmt::Display>(
    mut events: impl futures::Stream<Item = (&'static str, Result<Ev, E>)> + Unpin,
    health: &Health,
    tx: mpsc::Sender<Batch>,
) {
    let mut asm = Assembler::default();
    let mut waiting_logged = false;
    loop {
        let sendable = asm.ready() && asm.has_pending();
        tokio::select! {
            next = events.next() => {
                let Some((kind, ev)) = next else { return };
                match ev {
                    Ok(ev) => asm.event(kind, ev),
                    Err(e) => {
                        health.metrics.watch_restarts.inc();
                        tracing::warn!(kind, "watch failed, retrying with backoff: {e}");
                        continue;
                    }
                }
                if !asm.ready() && !waiting_logged {
                    waiting_logged = true;
                    tracing::info!("waiting for complete listings of Services, EndpointSlices, this Node, Pods, Namespaces and NetworkPolicies before touching the maps");
                }
            }
            permit = tx.reserve(), if sendable => {
                let Ok(permit) = permit else { return };
                if let Some(mut batch) = asm.take() {
                    batch.counts = Some(asm.counts());
                    permit.send(batch);
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "kube_gather_tests.rs"]
mod gather_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str) -> Object {
        let mut s = Service::default();
        s.metadata.name = Some(name.into());
        s.metadata.namespace = Some("default".into());
        Object::Service(Box::new(s))
    }

    fn node(name: &str) -> Object {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        Object::Node(Box::new(n))
    }

    fn list(asm: &mut Assembler, kind: &'static str, objs: Vec<Object>) {
        asm.event(kind, Ev::Init);
        for o in objs {
            asm.event(kind, Ev::Upsert(o));
        }
        asm.event(kind, Ev::InitDone);
    }

    fn deletes(b: &Batch) -> Vec<String> {
        b.changes
            .iter()
            .filter_map(|c| match c {
                Change::Delete { kind, key } => Some(format!("{kind} {}", key.name)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn stored_objects_are_trimmed_to_what_is_read() {
        let mut p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "x", "labels": {"app": "web"},
                         "annotations": {"big": "x"}, "managedFields": [{"manager": "m"}]},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running", "podIP": "10.244.1.5",
                       "podIPs": [{"ip": "10.244.1.5"}], "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        trim_pod(&mut p);
        assert!(p.metadata.annotations.is_none() && p.metadata.managed_fields.is_none());
        assert_eq!(p.metadata.labels.as_ref().unwrap()["app"], "web");
        let spec = p.spec.unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("n1"));
        assert!(spec.containers.is_empty());
        let st = p.status.unwrap();
        assert_eq!(st.pod_ip.as_deref(), Some("10.244.1.5"));
        assert!(st.conditions.is_none());
    }

    #[test]
    fn nothing_is_sent_until_every_kind_is_listed() {
        let mut asm = Assembler::default();
        list(&mut asm, "Service", vec![svc("a"), svc("b")]);
        list(&mut asm, "Pod", vec![]);
        assert!(
            asm.take().is_none(),
            "EndpointSlices and Node not listed yet"
        );
        // A first page arrived, then the listing failed: still not listed.
        asm.event("EndpointSlice", Ev::Init);
        list(&mut asm, "Node", vec![node("n1")]);
        list(&mut asm, "Namespace", vec![]);
        assert!(asm.take().is_none(), "EndpointSlices only half listed");
        asm.event("EndpointSlice", Ev::InitDone);
        assert!(
            asm.take().is_none(),
            "NetworkPolicies not listed: a pod they isolate would be open"
        );
        list(&mut asm, "NetworkPolicy", vec![]);
        let b = asm.take().expect("all needed kinds listed");
        assert!(b.full, "the first change set is a full reconcile");
        assert_eq!(b.changes.len(), 3);
        assert_eq!(asm.counts()["Service"], 2);
        assert!(asm.take().is_none(), "nothing new");
    }

    #[test]
    fn a_relist_deletes_what_vanished_and_keeps_what_exists() {
        let mut asm = Assembler::default();
        list(&mut asm, "Service", vec![svc("a"), svc("b")]);
        list(&mut asm, "EndpointSlice", vec![]);
        list(&mut asm, "Node", vec![node("n1")]);
        for kind in ["Pod", "Namespace", "NetworkPolicy"] {
            list(&mut asm, kind, vec![]);
        }
        asm.take().unwrap();
        // After a 410: `b` was deleted while the watch was away.
        list(&mut asm, "Service", vec![svc("a")]);
        let b = asm.take().unwrap();
        assert_eq!(deletes(&b), ["Service b"]);
        assert!(b.full, "a Service relist is a full reconcile");
        assert!(
            b.changes
                .iter()
                .any(|c| matches!(c, Change::Upsert(Object::Service(s)) if s.metadata.name.as_deref() == Some("a"))),
            "the Service that still exists comes as an upsert"
        );
        // Watch events after the listing.
        asm.event("Service", Ev::Delete(svc("a")));
        asm.event("Service", Ev::Upsert(svc("c")));
        let b = asm.take().unwrap();
        assert_eq!(deletes(&b), ["Service a"]);
        assert!(!b.full, "plain watch events are incremental");
        assert_eq!(asm.counts()["Service"], 1);
    }

    #[test]
    fn an_interrupted_relist_deletes_nothing() {
        let mut asm = Assembler::default();
        list(&mut asm, "Service", vec![svc("a"), svc("b")]);
        list(&mut asm, "EndpointSlice", vec![]);
        list(&mut asm, "Node", vec![node("n1")]);
        for kind in ["Pod", "Namespace", "NetworkPolicy"] {
            list(&mut asm, kind, vec![]);
        }
        asm.take().unwrap();
        asm.event("Service", Ev::Init);
        asm.event("Service", Ev::Upsert(svc("a")));
        // The listing failed; the watcher starts over.
        asm.event("Service", Ev::Init);
        asm.event("Service", Ev::Upsert(svc("b")));
        let b = asm.take().unwrap();
        assert!(
            deletes(&b).is_empty(),
            "no delete before a listing completes"
        );
        asm.event("Service", Ev::Upsert(svc("a")));
        asm.event("Service", Ev::InitDone);
        assert!(deletes(&asm.take().unwrap()).is_empty());
    }
}
