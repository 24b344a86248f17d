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
//! becomes a delete, and one that still exists is never dropped on the way
//! (`assembler`, with its tests; `gather_tests` times the change sets).

use std::{path::PathBuf, sync::Arc};

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

use crate::{serve::health::Health, source::Batch, source::manifest::Object};

mod assembler;

pub use assembler::{Assembler, Ev};

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
mod gather_tests;

#[cfg(test)]
mod tests {
    use super::*;

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
}
