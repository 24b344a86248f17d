//! Which local endpoints each policy selects, kept per policy and per
//! endpoint, and the policy flags.

use std::collections::{BTreeSet, HashMap};

use lb_common::{POL_F_ANY_EGRESS, POL_F_ANY_INGRESS};

use crate::model::snapshot::{ObjRef, PolicyChanges, Snapshot};

use super::{Active, Engine};

/// `ep` is no longer selected by `pk`.
pub(super) fn unselect(pol_eps: &mut HashMap<ObjRef, Active>, pk: &ObjRef, ep: &ObjRef) {
    if let Some(a) = pol_eps.get_mut(pk) {
        a.eps.remove(ep);
        if a.eps.is_empty() {
            pol_eps.remove(pk);
        }
    }
}

fn ns_start(ns: &str) -> ObjRef {
    ObjRef::new(ns, "")
}

impl Engine {
    /// Policies: who they select (the changed ones, every one on a
    /// rebuild), then the policies selecting the local pods recomputed;
    /// the endpoints affected go into `dirty`. Returns the flags before.
    pub(super) fn reselect(
        &mut self,
        snap: &Snapshot,
        changes: Option<&PolicyChanges>,
        rebuild: bool,
        local_changed: Vec<&ObjRef>,
        dirty: &mut BTreeSet<ObjRef>,
    ) -> u32 {
        let changed_policies: Vec<&ObjRef> = match changes {
            None => snap.policies.keys().collect(),
            Some(c) => c.policies.iter().collect(),
        };
        for &pk in &changed_policies {
            if let Some(a) = self.pol_eps.remove(pk) {
                for e in a.eps {
                    if let Some(st) = self.eps.get_mut(&e) {
                        st.policies.remove(pk);
                    }
                    dirty.insert(e);
                }
            }
            let here = self
                .ns_policies
                .entry(pk.namespace.to_string())
                .or_default();
            here.remove(pk);
            if let Some(pol) = snap.policies.get(pk) {
                here.insert(pk.clone());
                if !rebuild {
                    // (A rebuild finds each endpoint's policies below.)
                    let mut sel = BTreeSet::new();
                    for (e, st) in self
                        .eps
                        .range_mut(ns_start(&pk.namespace)..)
                        .take_while(|(e, _)| e.namespace == pk.namespace)
                    {
                        if pol.selects(&snap.pods[e]) {
                            st.policies.insert(pk.clone());
                            sel.insert(e.clone());
                        }
                    }
                    dirty.extend(sel.iter().cloned());
                    if !sel.is_empty() {
                        let policy = pol.clone();
                        self.pol_eps.insert(pk.clone(), Active { eps: sel, policy });
                    }
                }
            } else if here.is_empty() {
                self.ns_policies.remove(&*pk.namespace);
            }
        }
        let old_flags = self.flags;
        if !changed_policies.is_empty() {
            self.flags = 0;
            for pol in snap.policies.values() {
                if pol.ingress.is_some() {
                    self.flags |= POL_F_ANY_INGRESS;
                }
                if pol.egress.is_some() {
                    self.flags |= POL_F_ANY_EGRESS;
                }
            }
        }

        // Local pods recomputed: the policies selecting them.
        for &key in &local_changed {
            let pod = &snap.pods[key];
            let now: BTreeSet<ObjRef> = self
                .ns_policies
                .get(&*key.namespace)
                .into_iter()
                .flatten()
                .filter(|pk| snap.policies[*pk].selects(pod))
                .cloned()
                .collect();
            let st = self.eps.get_mut(key).expect("a local pod is an endpoint");
            for pk in st.policies.difference(&now) {
                unselect(&mut self.pol_eps, pk, key);
            }
            for pk in now.difference(&st.policies) {
                self.pol_eps
                    .entry(pk.clone())
                    .or_insert_with(|| Active {
                        eps: BTreeSet::new(),
                        policy: snap.policies[pk].clone(),
                    })
                    .eps
                    .insert(key.clone());
            }
            st.policies = now;
            dirty.insert(key.clone());
        }
        old_flags
    }
}
