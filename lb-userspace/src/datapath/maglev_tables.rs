//! Which Maglev tables (inner maps) this agent made and which frontends
//! use each. Swapping a new table in under a frontend costs the kernel an
//! RCU grace period per outer-map update (several ms: longer than the
//! whole rest of an EndpointSlice change), so a table that only the
//! frontends of this change set use, all getting the same new content,
//! is rewritten in place through its mapping instead. A packet then reads
//! each entry old or new, a slot the datapath checks against the
//! frontend's count as it does between a swap and the services writes.
//! Tables an earlier agent made are not known here: they are swapped.

use std::collections::{HashMap, HashSet};

use crate::compute::plan::{MaglevTable, Op};

#[derive(Default)]
pub struct Tables {
    /// Frontend service id -> the inner map id of its table.
    table_of: HashMap<u32, u32>,
    /// Inner map id -> how many frontends use it.
    users: HashMap<u32, u32>,
}

impl Tables {
    /// The tables `ops` may rewrite in place, those whose every user gets
    /// the same new content in `ops`: inner map id -> the index of the last
    /// of those ops, where it is rewritten (every user's slots are written
    /// by then: a user reading the new table against its old slots could
    /// send a new flow to a backend that left).
    pub fn rewritable(&self, ops: &[Op]) -> HashMap<u32, usize> {
        let mut puts: HashMap<u32, (u32, &MaglevTable, usize)> = HashMap::new();
        let mut mixed = HashSet::new();
        for (i, op) in ops.iter().enumerate() {
            let (service_id, table) = match op {
                Op::PutMaglev { service_id, table } => (service_id, table),
                // A user that loses its table (its id may come back in the
                // same change set, for another frontend): swapped.
                Op::DelMaglev { service_id } => {
                    if let Some(&id) = self.table_of.get(service_id) {
                        mixed.insert(id);
                    }
                    continue;
                }
                _ => continue,
            };
            let Some(&id) = self.table_of.get(service_id) else {
                continue;
            };
            let e = puts.entry(id).or_insert((0, table, i));
            e.0 += 1;
            e.2 = i;
            if e.1[..] != table[..] {
                mixed.insert(id);
            }
        }
        puts.into_iter()
            .filter(|(id, (n, _, _))| !mixed.contains(id) && self.users.get(id) == Some(n))
            .map(|(id, (_, _, last))| (id, last))
            .collect()
    }

    /// The inner map id of `service_id`'s table, when this agent made it.
    pub fn table_of(&self, service_id: u32) -> Option<u32> {
        self.table_of.get(&service_id).copied()
    }

    /// `service_id` now uses the table `id` (swapped in).
    pub fn swapped(&mut self, service_id: u32, id: u32) {
        if let Some(old) = self.table_of.insert(service_id, id) {
            self.drop_user(old);
        }
        *self.users.entry(id).or_default() += 1;
    }

    /// `service_id` has no table any more.
    pub fn removed(&mut self, service_id: u32) {
        if let Some(old) = self.table_of.remove(&service_id) {
            self.drop_user(old);
        }
    }

    fn drop_user(&mut self, id: u32) {
        if let Some(n) = self.users.get_mut(&id) {
            *n -= 1;
            if *n == 0 {
                self.users.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(service_id: u32, table: &[u32]) -> Op {
        Op::PutMaglev {
            service_id,
            table: MaglevTable(table.into()),
        }
    }

    #[test]
    fn a_shared_table_is_rewritten_at_its_last_users_op() {
        let mut t = Tables::default();
        t.swapped(1, 10);
        t.swapped(2, 10);
        let ops = [put(1, &[1, 2]), put(7, &[3]), put(2, &[1, 2])];
        assert_eq!(t.rewritable(&ops), [(10, 2)].into());
        // Frontend 2's id freed and taken again by a new frontend in one
        // change set: its table is not the new frontend's to rewrite.
        let ops = [
            Op::DelMaglev { service_id: 2 },
            put(1, &[1, 2]),
            put(2, &[1, 2]),
        ];
        assert_eq!(t.rewritable(&ops), HashMap::new());
    }

    fn ids(t: &Tables, ops: &[Op]) -> Vec<u32> {
        let mut v: Vec<u32> = t.rewritable(ops).into_keys().collect();
        v.sort();
        v
    }

    #[test]
    fn a_table_is_rewritten_in_place_only_when_all_its_users_get_the_same_content() {
        let mut t = Tables::default();
        // Frontends 1 and 2 share table 10 (one change set made it once);
        // frontend 3 has table 11 alone.
        t.swapped(1, 10);
        t.swapped(2, 10);
        t.swapped(3, 11);
        assert_eq!(ids(&t, &[put(3, &[1, 2])]), [11], "its only user");
        assert_eq!(
            ids(&t, &[put(1, &[1, 2])]),
            Vec::<u32>::new(),
            "frontend 2 still reads table 10"
        );
        assert_eq!(ids(&t, &[put(1, &[1, 2]), put(2, &[1, 2])]), [10]);
        assert_eq!(
            ids(&t, &[put(1, &[1, 2]), put(2, &[2, 1])]),
            Vec::<u32>::new(),
            "its users want different tables"
        );
        assert_eq!(
            ids(&t, &[put(4, &[1, 2])]),
            Vec::<u32>::new(),
            "a frontend without a known table gets one swapped in"
        );
        // Frontend 2 moves to a table of its own: 10 is frontend 1's alone.
        t.swapped(2, 12);
        assert_eq!(ids(&t, &[put(1, &[1, 2])]), [10]);
        t.removed(1);
        assert_eq!(t.table_of(1), None);
        assert_eq!(ids(&t, &[put(1, &[1, 2])]), Vec::<u32>::new());
        assert!(!t.users.contains_key(&10), "table 10 has no user left");
        assert_eq!(t.table_of(2), Some(12));
    }
}
