//! The restart rule of the kube source: watcher events folded into change
//! sets, nothing handed on until every kind the reconciler needs has been
//! listed completely, and each complete listing diffed against what its
//! kind held before (pure: tested without an API).

use std::collections::{BTreeMap, HashSet};

use crate::{
    model::snapshot::{Change, ObjRef},
    source::manifest::Object,
    source::{
        Batch,
        file::{KINDS, object_id},
    },
};

/// Kinds that must be listed before the first change set: every kind the
/// agent reads. Without them the reconciler would compute frontends, or
/// policies, from a partial view (a missing NetworkPolicy opens a pod, a
/// missing Pod drops its peers).
pub(super) const NEEDED_FOR_SYNC: &[&str] = &KINDS;

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
                self.pending.push(Change::Upsert(o.compact()));
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

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Node, Service};

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
            b.changes.iter().any(
                |c| matches!(c, Change::Upsert(Object::ServiceInfo(s)) if &*s.key.name == "a")
            ),
            "the Service that still exists comes as an upsert, held in the snapshot's form"
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
