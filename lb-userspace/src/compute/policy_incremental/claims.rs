//! Keys several owners may claim (an address two pods hold): who holds
//! each, and what changed since the maps were last written.

use std::{collections::HashMap, hash::Hash};

/// Keys several owners may claim (two pods holding one address): the
/// greatest claimant holds the key, as in the full computation, whose last
/// write (in claimant order) wins. Remembers the holder each touched key
/// had before its first change since the last `take_changes`.
#[derive(Debug)]
pub(super) struct Claims<K, C, V> {
    map: HashMap<K, Vec<(C, V)>>,
    before: HashMap<K, Option<V>>,
}

impl<K, C, V> Default for Claims<K, C, V> {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
            before: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq + Ord + Copy, C: Ord, V: Copy + PartialEq> Claims<K, C, V> {
    fn holder(&self, k: &K) -> Option<V> {
        self.map
            .get(k)?
            .iter()
            .max_by(|a, b| a.0.cmp(&b.0))
            .map(|(_, v)| *v)
    }

    fn touch(&mut self, k: K) {
        if !self.before.contains_key(&k) {
            let h = self.holder(&k);
            self.before.insert(k, h);
        }
    }

    pub(super) fn add(&mut self, k: K, c: C, v: V) {
        self.touch(k);
        let list = self.map.entry(k).or_default();
        match list.iter_mut().find(|x| x.0 == c) {
            Some(x) => x.1 = v,
            None => list.push((c, v)),
        }
    }

    pub(super) fn remove(&mut self, k: K, is: impl Fn(&C) -> bool) {
        self.touch(k);
        if let Some(list) = self.map.get_mut(&k) {
            list.retain(|x| !is(&x.0));
            if list.is_empty() {
                self.map.remove(&k);
            }
        }
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// The keys whose holder changed since the last call: (writes,
    /// removals), each in key order.
    pub(super) fn take_changes(&mut self) -> (Vec<(K, V)>, Vec<K>) {
        let (mut puts, mut dels) = (Vec::new(), Vec::new());
        for (k, before) in std::mem::take(&mut self.before) {
            match self.holder(&k) {
                Some(v) if before != Some(v) => puts.push((k, v)),
                None if before.is_some() => dels.push(k),
                _ => {}
            }
        }
        puts.sort_unstable_by_key(|a| a.0);
        dels.sort_unstable();
        (puts, dels)
    }

    pub(super) fn holders(&self) -> impl Iterator<Item = (K, V)> + '_ {
        self.map.keys().filter_map(|k| Some((*k, self.holder(k)?)))
    }
}
