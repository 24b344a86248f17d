//! Identities: one number per distinct (namespace, namespace labels, pod
//! labels). Numbers are derived from a hash of the label set, so a
//! restarted agent gives every set the number it had (no window while maps
//! are rewritten); the rare collision takes the next free number.

use std::collections::{BTreeMap, HashMap};

use lb_common::{ID_FIRST_CIDR, ID_FIRST_LABELS};

use crate::model::policy::Labels;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentityKey {
    pub namespace: String,
    pub ns_labels: Labels,
    pub pod_labels: Labels,
}

impl IdentityKey {
    fn hash(&self) -> u32 {
        derive(&self.namespace, &self.ns_labels, &self.pod_labels)
    }

    fn is(&self, namespace: &str, ns_labels: &Labels, pod_labels: &Labels) -> bool {
        self.namespace == namespace
            && &self.ns_labels == ns_labels
            && &self.pod_labels == pod_labels
    }
}

/// The preferred number of a label set.
fn derive(namespace: &str, ns_labels: &Labels, pod_labels: &Labels) -> u32 {
    {
        // FNV-1a over an unambiguous rendering (NUL and SOH separators).
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |b: &[u8]| {
            for x in b {
                h ^= *x as u64;
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        eat(namespace.as_bytes());
        for (tag, labels) in [(1u8, ns_labels), (2u8, pod_labels)] {
            eat(&[tag]);
            for (k, v) in labels {
                eat(k.as_bytes());
                eat(&[0]);
                eat(v.as_bytes());
                eat(&[0]);
            }
        }
        let span = (ID_FIRST_CIDR - ID_FIRST_LABELS) as u64;
        ID_FIRST_LABELS + (h % span) as u32
    }
}

/// The number after `id` in the label-set range, wrapping.
fn next(id: u32) -> u32 {
    if id + 1 >= ID_FIRST_CIDR {
        ID_FIRST_LABELS
    } else {
        id + 1
    }
}

#[derive(Clone, Debug, Default)]
pub struct Identities {
    by_key: HashMap<IdentityKey, u32>,
    by_id: BTreeMap<u32, IdentityKey>,
    /// Preferred number -> the identities allocated for sets that prefer
    /// it (a collision puts one elsewhere): lookups without building a key.
    by_derived: HashMap<u32, Vec<u32>>,
}

impl Identities {
    /// The identity of a label set, allocated on first sight; a set seen
    /// before costs a hash and comparisons, no allocation.
    pub fn id_for(&mut self, namespace: &str, ns_labels: &Labels, pod_labels: &Labels) -> u32 {
        let derived = derive(namespace, ns_labels, pod_labels);
        for id in self.by_derived.get(&derived).into_iter().flatten() {
            if self.by_id[id].is(namespace, ns_labels, pod_labels) {
                return *id;
            }
        }
        self.get_or_alloc(&IdentityKey {
            namespace: namespace.to_string(),
            ns_labels: ns_labels.clone(),
            pod_labels: pod_labels.clone(),
        })
    }

    pub fn get_or_alloc(&mut self, key: &IdentityKey) -> u32 {
        if let Some(id) = self.by_key.get(key) {
            return *id;
        }
        let mut id = key.hash();
        while self.by_id.contains_key(&id) {
            id = next(id);
        }
        self.by_key.insert(key.clone(), id);
        self.by_id.insert(id, key.clone());
        self.by_derived.entry(key.hash()).or_default().push(id);
        id
    }

    /// Forgets identities no pod holds any more.
    pub fn retain(&mut self, live: &std::collections::HashSet<u32>) {
        self.by_id.retain(|id, _| live.contains(id));
        self.by_key.retain(|_, id| live.contains(id));
        self.by_derived.retain(|_, ids| {
            ids.retain(|id| live.contains(id));
            !ids.is_empty()
        });
    }

    /// Forgets one identity (its last pod went): what `retain` does for
    /// one number, without a pass over the others.
    pub fn release(&mut self, id: u32) {
        let Some(key) = self.by_id.remove(&id) else {
            return;
        };
        self.by_key.remove(&key);
        let derived = key.hash();
        if let Some(ids) = self.by_derived.get_mut(&derived) {
            ids.retain(|x| *x != id);
            if ids.is_empty() {
                self.by_derived.remove(&derived);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&u32, &IdentityKey)> {
        self.by_id.iter()
    }

    pub fn key(&self, id: u32) -> Option<&IdentityKey> {
        self.by_id.get(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ns: &str, pod: &[(&str, &str)]) -> IdentityKey {
        IdentityKey {
            namespace: ns.into(),
            ns_labels: Labels::new(),
            pod_labels: pod
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn same_labels_same_number_across_agents_and_distinct_sets_differ() {
        let (mut a, mut b) = (Identities::default(), Identities::default());
        let x = key("x", &[("app", "web")]);
        let y = key("y", &[("app", "web")]);
        assert_eq!(a.get_or_alloc(&x), b.get_or_alloc(&x));
        assert_ne!(a.get_or_alloc(&x), a.get_or_alloc(&y));
        assert!(a.get_or_alloc(&y) >= ID_FIRST_LABELS && a.get_or_alloc(&y) < ID_FIRST_CIDR);
    }

    #[test]
    fn a_collision_takes_the_next_free_number() {
        let mut ids = Identities::default();
        let x = key("x", &[]);
        let taken = x.hash();
        ids.by_id.insert(taken, key("other", &[("z", "z")]));
        assert_eq!(ids.get_or_alloc(&x), taken + 1);
    }

    #[test]
    fn release_forgets_one_identity_as_retain_would() {
        let mut a = Identities::default();
        let (x, y) = (key("x", &[("app", "web")]), key("y", &[]));
        let (ix, iy) = (a.get_or_alloc(&x), a.get_or_alloc(&y));
        let mut b = a.clone();
        a.release(ix);
        b.retain(&[iy].into());
        assert_eq!(a.by_id, b.by_id);
        assert_eq!(a.by_key, b.by_key);
        assert_eq!(a.by_derived, b.by_derived);
        a.release(ix);
        assert_eq!(a.len(), 1, "releasing twice is harmless");
    }

    #[test]
    fn a_set_moved_by_a_collision_keeps_its_number_when_the_blocker_goes() {
        let mut ids = Identities::default();
        let x = key("x", &[("app", "web")]);
        let blocker = key("other", &[("z", "z")]);
        let taken = x.hash();
        ids.by_id.insert(taken, blocker.clone());
        ids.by_key.insert(blocker, taken);
        let moved = ids.id_for(&x.namespace, &x.ns_labels, &x.pod_labels);
        assert_eq!(moved, taken + 1);
        ids.retain(&[moved].into());
        assert_eq!(ids.id_for(&x.namespace, &x.ns_labels, &x.pod_labels), moved);
        assert_eq!(ids.iter().count(), 1, "no second number for the same set");
    }
}
