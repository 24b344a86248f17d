//! What an endpoint's rules read of the rest of the cluster (`PeerView`):
//! the full computation's view, built from the snapshot.

use std::collections::{BTreeMap, HashMap};

use crate::model::{
    policy::{Labels, Peer, PodInfo},
    snapshot::ObjRef,
};

/// What an endpoint's rules read of the rest of the cluster: its pods
/// (those that take part in policy) and their identities. The full
/// computation builds one from the snapshot; the incremental one keeps one.
pub(crate) trait PeerView {
    /// Every pod that takes part in policy, in any order.
    fn each_pod(&self, f: &mut dyn FnMut(&PodInfo));
    /// Every namespace where some pod holds an identity, with its labels.
    fn each_namespace(&self, f: &mut dyn FnMut(&str, &Labels));
    /// The identities of namespace `ns`: (number, pod labels).
    fn each_identity_in(&self, ns: &str, f: &mut dyn FnMut(u32, &Labels));
    /// The pods holding identity `id`, in any order.
    fn each_pod_of(&self, id: u32, f: &mut dyn FnMut(&PodInfo));
}

/// `peer` (a `Pods` peer of a policy in `policy_ns`) selects the pods of
/// the identity (`namespace`, `ns_labels`, `labels`).
pub(crate) fn peer_selects(
    peer: &Peer,
    policy_ns: &str,
    namespace: &str,
    ns_labels: &Labels,
    labels: &Labels,
) -> bool {
    let Peer::Pods { pods, namespaces } = peer else {
        return false;
    };
    (match namespaces {
        None => namespace == policy_ns,
        Some(sel) => sel.matches(ns_labels),
    }) && pods.matches(labels)
}

/// The pods of one identity: selectors are matched once per identity.
struct IdentityPods<'a> {
    id: u32,
    namespace: &'a str,
    labels: &'a Labels,
    pods: Vec<&'a PodInfo>,
}

/// The cluster as one full computation sees it.
pub(super) struct FullView<'a> {
    pods: &'a [&'a PodInfo],
    ns_cache: &'a HashMap<&'a str, Labels>,
    /// By number.
    identities: Vec<IdentityPods<'a>>,
    /// Namespace -> indexes into `identities`.
    by_ns: HashMap<&'a str, Vec<usize>>,
}

impl<'a> FullView<'a> {
    pub(super) fn new(
        pods: &'a [&'a PodInfo],
        pod_ids: &HashMap<&'a ObjRef, u32>,
        ns_cache: &'a HashMap<&'a str, Labels>,
    ) -> Self {
        let mut by_id: BTreeMap<u32, IdentityPods<'a>> = BTreeMap::new();
        for p in pods {
            let id = pod_ids[&p.key];
            by_id
                .entry(id)
                .or_insert_with(|| IdentityPods {
                    id,
                    namespace: &p.key.namespace,
                    labels: &p.labels,
                    pods: vec![],
                })
                .pods
                .push(p);
        }
        let identities: Vec<IdentityPods<'a>> = by_id.into_values().collect();
        let mut by_ns: HashMap<&'a str, Vec<usize>> = HashMap::new();
        for (n, i) in identities.iter().enumerate() {
            by_ns.entry(i.namespace).or_default().push(n);
        }
        Self {
            pods,
            ns_cache,
            identities,
            by_ns,
        }
    }
}

impl PeerView for FullView<'_> {
    fn each_pod(&self, f: &mut dyn FnMut(&PodInfo)) {
        for p in self.pods {
            f(p);
        }
    }

    fn each_namespace(&self, f: &mut dyn FnMut(&str, &Labels)) {
        for ns in self.by_ns.keys() {
            // Every pod's namespace is in the cache.
            f(ns, &self.ns_cache[ns]);
        }
    }

    fn each_identity_in(&self, ns: &str, f: &mut dyn FnMut(u32, &Labels)) {
        for &n in self.by_ns.get(ns).into_iter().flatten() {
            let i = &self.identities[n];
            f(i.id, i.labels);
        }
    }

    fn each_pod_of(&self, id: u32, f: &mut dyn FnMut(&PodInfo)) {
        if let Ok(n) = self.identities.binary_search_by_key(&id, |i| i.id) {
            for p in &self.identities[n].pods {
                f(p);
            }
        }
    }
}
