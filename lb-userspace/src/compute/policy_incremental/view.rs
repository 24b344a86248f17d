//! The cluster as the kept state holds it, as policy rules read it
//! (`PeerView`).

use std::collections::{BTreeSet, HashMap};

use crate::{
    compute::{identity::Identities, policy::PeerView},
    model::{
        policy::{Labels, PodInfo},
        snapshot::{ObjRef, Snapshot},
    },
};

/// The cluster as the kept state holds it.
pub(super) struct EngineView<'a> {
    pub(super) snap: &'a Snapshot,
    pub(super) ids: &'a Identities,
    pub(super) members: &'a HashMap<u32, BTreeSet<ObjRef>>,
    pub(super) ns_ids: &'a HashMap<String, BTreeSet<u32>>,
}

impl PeerView for EngineView<'_> {
    fn each_pod(&self, f: &mut dyn FnMut(&PodInfo)) {
        for p in self.snap.pods.values().filter(|p| p.is_endpoint()) {
            f(p);
        }
    }

    fn each_namespace(&self, f: &mut dyn FnMut(&str, &Labels)) {
        for (ns, ids) in self.ns_ids {
            if let Some(k) = ids.first().and_then(|id| self.ids.key(*id)) {
                f(ns, &k.ns_labels);
            }
        }
    }

    fn each_identity_in(&self, ns: &str, f: &mut dyn FnMut(u32, &Labels)) {
        for id in self.ns_ids.get(ns).into_iter().flatten() {
            if let Some(k) = self.ids.key(*id) {
                f(*id, &k.pod_labels);
            }
        }
    }

    fn each_pod_of(&self, id: u32, f: &mut dyn FnMut(&PodInfo)) {
        for k in self.members.get(&id).into_iter().flatten() {
            if let Some(p) = self.snap.pods.get(k) {
                f(p);
            }
        }
    }
}
