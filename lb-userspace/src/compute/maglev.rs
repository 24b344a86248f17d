//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table
//! of prime size M in which each backend owns about M/N entries, built from
//! the backends' own addresses so every node builds the same table, and
//! changing by little more than the share of a backend that comes or goes.
//!
//! Pure: plan/maglev.rs turns tables into slot numbers per external
//! frontend and the kernel module swaps them into a map-of-maps whole.

use std::net::SocketAddr;

/// The default table size, a prime (64 KiB of u32 per frontend).
pub const DEFAULT_TABLE_SIZE: usize = lb_common::DEFAULT_MAGLEV_TABLE_SIZE as usize;

fn fnv1a(seed: u64, data: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // final avalanche so nearby addresses spread
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

pub fn is_prime(n: usize) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// The table: for each of `size` entries, an index into `backends` as
/// given. Backends are ordered by address first, so the result does not
/// depend on the order they come in or on ids local to one agent.
pub fn table(backends: &[SocketAddr], size: usize) -> Vec<usize> {
    assert!(is_prime(size), "the Maglev table size must be prime");
    if backends.is_empty() {
        return vec![];
    }
    let mut order: Vec<usize> = (0..backends.len()).collect();
    order.sort_by_key(|i| backends[*i]);
    order.dedup_by_key(|i| backends[*i]);
    let perms: Vec<(usize, usize)> = order
        .iter()
        .map(|i| {
            let name = backends[*i].to_string();
            let offset = (fnv1a(0x5bd1_e995, name.as_bytes()) % size as u64) as usize;
            let skip = (fnv1a(0x9747_b28c, name.as_bytes()) % (size as u64 - 1)) as usize + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0usize; order.len()];
    let mut entry = vec![usize::MAX; size];
    let mut filled = 0;
    'fill: loop {
        for (k, (offset, skip)) in perms.iter().enumerate() {
            let mut c = (offset + next[k] * skip) % size;
            while entry[c] != usize::MAX {
                next[k] += 1;
                c = (offset + next[k] * skip) % size;
            }
            entry[c] = order[k];
            next[k] += 1;
            filled += 1;
            if filled == size {
                break 'fill;
            }
        }
    }
    entry
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(n: usize) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| {
                format!("10.244.{}.{}:8080", i / 200, i % 200 + 10)
                    .parse()
                    .unwrap()
            })
            .collect()
    }

    fn names(t: &[usize], b: &[SocketAddr]) -> Vec<SocketAddr> {
        t.iter().map(|i| b[*i]).collect()
    }

    #[test]
    fn same_backends_in_any_order_give_the_same_table() {
        let b = backends(7);
        let mut shuffled = b.clone();
        shuffled.reverse();
        shuffled.swap(1, 4);
        assert_eq!(
            names(&table(&b, 251), &b),
            names(&table(&shuffled, 251), &shuffled)
        );
        assert_eq!(
            names(&table(&b, DEFAULT_TABLE_SIZE), &b),
            names(&table(&shuffled, DEFAULT_TABLE_SIZE), &shuffled)
        );
    }

    #[test]
    fn every_backend_gets_about_its_share() {
        let b = backends(10);
        let t = table(&b, DEFAULT_TABLE_SIZE);
        for i in 0..b.len() {
            let n = t.iter().filter(|x| **x == i).count();
            let share = DEFAULT_TABLE_SIZE / b.len();
            assert!(
                n.abs_diff(share) <= share / 10,
                "backend {i} owns {n} entries, share {share}"
            );
        }
    }

    #[test]
    fn removing_one_of_n_moves_at_most_a_share_plus_three_percent() {
        for n in [2, 3, 5, 10, 33] {
            let b = backends(n);
            let before = names(&table(&b, DEFAULT_TABLE_SIZE), &b);
            for gone in [0, n / 2, n - 1] {
                let mut rest = b.clone();
                rest.remove(gone);
                let after = names(&table(&rest, DEFAULT_TABLE_SIZE), &rest);
                let moved = before.iter().zip(&after).filter(|(x, y)| x != y).count();
                let bound = DEFAULT_TABLE_SIZE as f64 * (1.0 / n as f64 + 0.03);
                assert!(
                    (moved as f64) <= bound,
                    "n={n} removing {gone}: {moved} entries moved, bound {bound:.0}"
                );
            }
        }
    }

    #[test]
    fn sizes_must_be_prime_and_empty_is_empty() {
        assert!(is_prime(DEFAULT_TABLE_SIZE) && is_prime(251) && !is_prime(16384));
        assert!(table(&[], 251).is_empty());
    }
}
