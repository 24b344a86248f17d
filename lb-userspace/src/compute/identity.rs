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
        // FNV-1a over an unambiguous rendering (NUL and SOH separators).
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |b: &[u8]| {
            for x in b {
                h ^= *x as u64;
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        eat(self.namespace.as_bytes());
        for (tag, labels) in [(1u8, &self.ns_labels), (2u8, &self.pod_labels)] {
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

#[derive(Debug, Default)]
pub struct Identities {
    by_key: HashMap<IdentityKey, u32>,
    by_id: BTreeMap<u32, IdentityKey>,
}

impl Identities {
    pub fn get_or_alloc(&mut self, key: &IdentityKey) -> u32 {
        if let Some(id) = self.by_key.get(key) {
            return *id;
        }
        let mut id = key.hash();
        while self.by_id.contains_key(&id) {
            id = if id + 1 >= ID_FIRST_CIDR {
                ID_FIRST_LABELS
            } else {
                id + 1
            };
        }
        self.by_key.insert(key.clone(), id);
        self.by_id.insert(id, key.clone());
        id
    }

    /// Forgets identities no pod holds any more.
    pub fn retain(&mut self, live: &std::collections::HashSet<u32>) {
        self.by_id.retain(|id, _| live.contains(id));
        self.by_key.retain(|_, id| live.contains(id));
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
}
