//! A walk's partner entries (reverse, SNAT) by key, for pairing them with
//! their forward entries. Eight-byte slots (a tag from the key's hash and
//! the entry's index) in open addressing at most half full: at a million
//! entries the table is 8 MiB, so a probe mostly hits the cache, and a key
//! is read only when its tag matches. A table holding the keys themselves
//! was six times bigger and missed the cache on nearly every probe.

use lb_common::{CT_FWD, CtKey};

pub(super) struct Partners {
    /// `tag << 32 | index + 1`; 0 is an empty slot.
    slots: Vec<u64>,
    mask: usize,
}

fn tag(h: u64) -> u64 {
    h >> 32
}

impl Partners {
    /// Every entry of `keys` but the forward ones, `hash` its hash.
    pub(super) fn of(keys: &[CtKey], hash: impl Fn(&CtKey) -> u64) -> Self {
        // Indices are 32 bits: a BPF map holds at most u32::MAX entries.
        assert!(
            keys.len() < u32::MAX as usize,
            "at most u32::MAX - 1 entries"
        );
        let partners = keys.iter().filter(|k| k.kind != CT_FWD).count();
        let len = (partners * 2).max(16).next_power_of_two();
        let mask = len - 1;
        let mut slots = vec![0u64; len];
        for (i, k) in keys.iter().enumerate().filter(|(_, k)| k.kind != CT_FWD) {
            let h = hash(k);
            let mut s = h as usize & mask;
            while slots[s] != 0 {
                s = (s + 1) & mask;
            }
            slots[s] = tag(h) << 32 | (i as u64 + 1);
        }
        Self { slots, mask }
    }

    /// Asks the CPU for the first slot of a key whose hash is `h`, which
    /// [`Partners::find`] reads a little later.
    pub(super) fn prefetch(&self, h: u64) {
        prefetch(&self.slots[h as usize & self.mask]);
    }

    /// Asks the CPU for the key and value of the entry whose hash is `h`
    /// (the first its tag matches), once its slot is in the cache.
    pub(super) fn prefetch_entry<V>(&self, keys: &[CtKey], values: &[V], h: u64) {
        let mut s = h as usize & self.mask;
        loop {
            let e = self.slots[s];
            if e == 0 {
                return;
            }
            if e >> 32 == tag(h) {
                let i = (e as u32 - 1) as usize;
                prefetch(&keys[i]);
                prefetch(&values[i]);
                return;
            }
            s = (s + 1) & self.mask;
        }
    }

    /// The index of the entry whose key is `k` (`h` its hash), if any.
    pub(super) fn find(&self, keys: &[CtKey], h: u64, k: &CtKey) -> Option<u32> {
        let mut s = h as usize & self.mask;
        loop {
            let e = self.slots[s];
            if e == 0 {
                return None;
            }
            if e >> 32 == tag(h) {
                let i = (e as u32) - 1;
                if keys[i as usize] == *k {
                    return Some(i);
                }
            }
            s = (s + 1) & self.mask;
        }
    }
}

/// Asks the CPU for the cache line of `p`, to be read a little later.
#[cfg_attr(
    target_arch = "x86_64",
    expect(unsafe_code, reason = "the prefetch intrinsic takes a raw pointer")
)]
fn prefetch<T>(p: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch only hints the cache, and `p` is a reference.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch((p as *const T).cast::<i8>(), _MM_HINT_T0)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16, kind: u8) -> CtKey {
        CtKey {
            sport: lb_common::BeU16::from_host(port),
            kind,
            ..Default::default()
        }
    }

    #[test]
    fn every_partner_is_found_by_its_key_whatever_its_hash_shares() {
        let keys: Vec<CtKey> = (0..40u16)
            .map(|p| {
                key(
                    p,
                    if p % 4 == 0 {
                        CT_FWD
                    } else {
                        lb_common::CT_REV
                    },
                )
            })
            .collect();
        // Hashes that share their slot (all of them), their tag (pairs) or
        // nothing: probing and the key compare must tell them apart.
        for hash in [
            (|_: &CtKey| 7u64) as fn(&CtKey) -> u64,
            |k| u64::from(k.sport.to_host() / 2) << 32 | 3,
            |k| u64::from(k.sport.to_host()).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        ] {
            let index = Partners::of(&keys, hash);
            for (i, k) in keys.iter().enumerate() {
                let want = (k.kind != CT_FWD).then_some(i as u32);
                assert_eq!(index.find(&keys, hash(k), k), want, "{k:?}");
                index.prefetch(hash(k));
                index.prefetch_entry(&keys, &keys, hash(k));
            }
            let absent = key(99, lb_common::CT_REV);
            assert_eq!(index.find(&keys, hash(&absent), &absent), None);
        }
    }
}
