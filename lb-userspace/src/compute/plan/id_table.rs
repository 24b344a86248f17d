//! Values by backend id. The ids are small and dense (handed out from 1,
//! freed ids reused first), so a vector indexed by id holds them: at 1M
//! backends a hash map spent 2M buckets on the same entries.

use std::ops::Index;

#[derive(Clone, Debug)]
pub struct IdTable<T> {
    slots: Vec<Option<T>>,
    len: usize,
}

impl<T> Default for IdTable<T> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            len: 0,
        }
    }
}

impl<T> IdTable<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, id: &u32) -> Option<&T> {
        self.slots.get(*id as usize)?.as_ref()
    }

    pub fn get_mut(&mut self, id: &u32) -> Option<&mut T> {
        self.slots.get_mut(*id as usize)?.as_mut()
    }

    pub fn contains_key(&self, id: &u32) -> bool {
        self.get(id).is_some()
    }

    /// `id`'s value, a default one put in first when it has none.
    pub fn get_or_zero(&mut self, id: u32) -> &mut T
    where
        T: Default,
    {
        if !self.contains_key(&id) {
            self.insert(id, T::default());
        }
        self.get_mut(&id).expect("just put in")
    }

    /// The value `id` held before, if any.
    pub fn insert(&mut self, id: u32, value: T) -> Option<T> {
        let i = id as usize;
        if i >= self.slots.len() {
            self.slots.resize_with(i + 1, || None);
        }
        let old = self.slots[i].replace(value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    pub fn remove(&mut self, id: &u32) -> Option<T> {
        let old = self.slots.get_mut(*id as usize)?.take();
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// In id order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, v)| Some((i as u32, v.as_ref()?)))
    }

    pub fn keys(&self) -> impl Iterator<Item = u32> + '_ {
        self.iter().map(|(id, _)| id)
    }
}

/// Reference counts by id.
impl IdTable<u32> {
    /// One reference fewer; an id counted down to zero is no longer held.
    pub fn unref(&mut self, id: u32) {
        if let Some(r) = self.get_mut(&id) {
            *r -= 1;
            if *r == 0 {
                self.remove(&id);
            }
        }
    }
}

impl<T> Index<&u32> for IdTable<T> {
    type Output = T;

    fn index(&self, id: &u32) -> &T {
        self.get(id).expect("an id the table holds")
    }
}

/// Equal when they hold the same values under the same ids, however far
/// each has grown.
impl<T: PartialEq> PartialEq for IdTable<T> {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl<T> FromIterator<(u32, T)> for IdTable<T> {
    fn from_iter<I: IntoIterator<Item = (u32, T)>>(iter: I) -> Self {
        let mut t = Self::default();
        for (id, v) in iter {
            t.insert(id, v);
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::IdTable;

    #[derive(Debug, Clone)]
    enum Step {
        Insert(u32, u8),
        Remove(u32),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u32..64, any::<u8>()).prop_map(|(id, v)| Step::Insert(id, v)),
            (0u32..64).prop_map(Step::Remove),
        ]
    }

    proptest! {
        #[test]
        fn holds_what_a_map_would(steps in proptest::collection::vec(step(), 0..200)) {
            let mut t = IdTable::default();
            let mut m = BTreeMap::new();
            for s in steps {
                match s {
                    Step::Insert(id, v) => prop_assert_eq!(t.insert(id, v), m.insert(id, v)),
                    Step::Remove(id) => prop_assert_eq!(t.remove(&id), m.remove(&id)),
                }
                prop_assert_eq!(t.len(), m.len());
            }
            let got: Vec<(u32, u8)> = t.iter().map(|(id, v)| (id, *v)).collect();
            let want: Vec<(u32, u8)> = m.iter().map(|(id, v)| (*id, *v)).collect();
            prop_assert_eq!(&got, &want);
            for id in 0..70 {
                prop_assert_eq!(t.get(&id), m.get(&id));
            }
            // Grown further and emptied again, it still equals one that never grew.
            let mut grown = t.clone();
            grown.insert(1000, 0);
            grown.remove(&1000);
            prop_assert!(grown == t);
        }
    }
}
