//! Strings many objects hold (endpoints' node names), held once.

/// One allocation per distinct string, however many objects hold it; a
/// string nobody holds any more goes when the set has doubled since the
/// last look (so the look costs O(1) a string, amortized).
#[derive(Debug, Default)]
pub(super) struct Interner {
    pub(super) set: std::collections::HashSet<std::sync::Arc<str>>,
    pruned_at: usize,
}

impl Interner {
    pub(super) fn intern(&mut self, s: &mut std::sync::Arc<str>) {
        match self.set.get(&**s) {
            Some(held) => *s = held.clone(),
            None => {
                if self.set.len() >= 2 * self.pruned_at.max(64) {
                    self.set.retain(|h| std::sync::Arc::strong_count(h) > 1);
                    self.pruned_at = self.set.len();
                }
                self.set.insert(s.clone());
            }
        }
    }
}
