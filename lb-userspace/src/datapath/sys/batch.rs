//! Batch reads of whole maps (BPF_MAP_LOOKUP_BATCH) and batch writes
//! (BPF_MAP_UPDATE_BATCH): a few system calls for a million entries, or
//! one for an array, instead of one per entry.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::{Attr, BPF_MAP_DELETE_BATCH, BPF_MAP_LOOKUP_BATCH, BPF_MAP_UPDATE_BATCH, bpf};

/// Room the kernel writes whole entries into, end to end: a vector of a
/// map's own key or value type, or `Raw` bytes of a size known at run time
/// (a pinned map of an earlier layout).
pub trait Entries {
    fn count(&self) -> usize;
    /// Room for `n` more entries: where the next one goes.
    fn room(&mut self, n: usize) -> *mut u8;
    /// # Safety
    /// The kernel wrote `n` whole entries into `room`'s space.
    unsafe fn wrote(&mut self, n: usize);
}

impl<T: aya::Pod> Entries for Vec<T> {
    fn count(&self) -> usize {
        self.len()
    }
    fn room(&mut self, n: usize) -> *mut u8 {
        self.reserve(n);
        self.spare_capacity_mut().as_mut_ptr().cast()
    }
    unsafe fn wrote(&mut self, n: usize) {
        // SAFETY: the caller's promise: `n` whole entries past the length,
        // inside the room reserved; any bytes are a valid `T` (Pod).
        unsafe { self.set_len(self.len() + n) }
    }
}

/// Entries of `size` bytes each, end to end.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Raw {
    pub bytes: Vec<u8>,
    pub size: usize,
}

impl Raw {
    pub fn new(size: usize) -> Self {
        Self {
            bytes: Vec::new(),
            size: size.max(1),
        }
    }
}

impl Entries for Raw {
    fn count(&self) -> usize {
        self.bytes.len() / self.size
    }
    fn room(&mut self, n: usize) -> *mut u8 {
        self.bytes.room(n * self.size)
    }
    unsafe fn wrote(&mut self, n: usize) {
        // SAFETY: the caller's promise, in bytes.
        unsafe { self.bytes.wrote(n * self.size) }
    }
}

/// A walk of a hash map with BPF_MAP_LOOKUP_BATCH, resumed call after
/// call from where the kernel stopped. A map being written may show an
/// entry twice or miss one, as a walk would.
#[derive(Default)]
pub struct BatchWalk {
    token: [u64; 8],
    started: bool,
    /// After ENOSPC (one bucket holds more than the call had room for): at
    /// least this much room, even past what was asked.
    floor: usize,
    over: bool,
}

impl BatchWalk {
    /// Appends about `want` more entries (more when one bucket holds more)
    /// to `keys` and `values`; false once the walk is over.
    pub fn next(
        &mut self,
        map: BorrowedFd<'_>,
        want: usize,
        keys: &mut impl Entries,
        values: &mut impl Entries,
    ) -> io::Result<bool> {
        while !self.over {
            let want = want.max(self.floor).max(1);
            // The kernel fills the room it is given: nothing to zero first.
            let (kp, vp) = (keys.room(want), values.room(want));
            let mut next = [0u64; 8];
            let mut a = Attr::new();
            if self.started {
                a.put_u64(0, self.token.as_ptr() as u64);
            }
            a.put_u64(8, next.as_mut_ptr() as u64);
            a.put_u64(16, kp as u64);
            a.put_u64(24, vp as u64);
            a.put_u32(32, want as u32);
            a.put_u32(36, map.as_raw_fd() as u32);
            let r = bpf(BPF_MAP_LOOKUP_BATCH, &mut a);
            // The kernel writes the count back once it walks; an error
            // before (an old kernel without the command, a refused map)
            // leaves ours.
            let walked = match &r {
                Ok(_) => true,
                Err(e) => matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOSPC)),
            };
            let n = if walked {
                (u32::from_ne_bytes(a.0[32..36].try_into().expect("4 bytes")) as usize).min(want)
            } else {
                0
            };
            // SAFETY: after a walk the kernel wrote `n` whole entries (the
            // count it returns) into the room just made; otherwise `n` is 0.
            unsafe {
                keys.wrote(n);
                values.wrote(n);
            }
            match r {
                Ok(_) => self.floor = 0,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => self.over = true,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && n == 0 && want < 1 << 22 => {
                    self.floor = want * 4;
                    continue;
                }
                Err(e) => return Err(e),
            }
            self.token = next;
            self.started = true;
            return Ok(!self.over);
        }
        Ok(false)
    }
}

/// Every entry of a hash map (`K`, `V` its exact key and value types), at
/// most `max`, read with BPF_MAP_LOOKUP_BATCH into `keys` and `values`
/// (emptied first): a few system calls for a million entries instead of
/// two per entry. The keys, and the values in the same order: the kernel
/// writes straight into them. A caller reading the same map again keeps
/// the vectors: fresh pages for a million entries cost more to fault in
/// than the kernel's walk.
pub fn lookup_batch_into<K: aya::Pod, V: aya::Pod>(
    map: BorrowedFd<'_>,
    max: usize,
    keys: &mut Vec<K>,
    values: &mut Vec<V>,
) -> io::Result<()> {
    keys.clear();
    values.clear();
    let mut walk = BatchWalk::default();
    // Big calls: each one costs the kernel an allocation of its size and a
    // walk of the buckets since the last, whatever it finds.
    while keys.len() < max && walk.next(map, CHUNK.min(max - keys.len()), keys, values)? {}
    keys.truncate(max);
    values.truncate(max);
    Ok(())
}

/// Entries per batch call.
pub const CHUNK: usize = 1 << 16;

/// The sums over CPUs of each of the first `len` entries of a per-CPU
/// array of u64, in one batch read (the verdict counters of thousands of
/// endpoints, read every tick on the sync loop).
pub fn percpu_u64_sums(map: BorrowedFd<'_>, len: usize) -> io::Result<Vec<u64>> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    let mut keys = vec![0u32; len];
    let mut values = vec![0u64; len * cpus];
    let mut next = 0u32;
    let mut a = Attr::new();
    a.put_u64(8, (&mut next as *mut u32) as u64);
    a.put_u64(16, keys.as_mut_ptr() as u64);
    a.put_u64(24, values.as_mut_ptr() as u64);
    a.put_u32(32, len as u32);
    a.put_u32(36, map.as_raw_fd() as u32);
    match bpf(BPF_MAP_LOOKUP_BATCH, &mut a) {
        Ok(_) => {}
        // The array ended before `len` entries.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        Err(e) => return Err(e),
    }
    let n = (u32::from_ne_bytes(a.0[32..36].try_into().expect("4 bytes")) as usize).min(len);
    let mut sums = vec![0u64; len];
    for (i, k) in keys.iter().take(n).enumerate() {
        if let Some(s) = sums.get_mut(*k as usize) {
            *s = values[i * cpus..(i + 1) * cpus].iter().sum();
        }
    }
    Ok(sums)
}

/// How far a batch write got before it failed.
#[derive(Debug)]
pub struct PartialWrite {
    /// Entries written, in order, before the one that failed.
    pub written: usize,
    pub error: io::Error,
}

/// BPF_MAP_UPDATE_BATCH (BPF_ANY): `keys[i]` set to `values[i]` in order, in
/// a few calls instead of one per entry. The kernel may take fewer than
/// asked (it reports how many); the rest goes in the next call.
pub fn update_batch<K: aya::Pod, V: aya::Pod>(
    map: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> Result<(), PartialWrite> {
    assert_eq!(keys.len(), values.len());
    let keys = Strided::of(keys);
    write_in_batches(
        map,
        BPF_MAP_UPDATE_BATCH,
        keys,
        Some(Strided::of(values)),
        0,
        None,
    )
    .map(drop)
}

/// [`update_batch`] of entries of sizes known at run time, with the
/// kernel's `elem_flags` (it takes BPF_F_LOCK only). Returns how many were
/// written.
pub fn update_batch_raw(
    map: BorrowedFd<'_>,
    keys: &Raw,
    values: &Raw,
    elem_flags: u64,
) -> Result<usize, PartialWrite> {
    let n = keys.count();
    assert_eq!(n, values.count());
    let strided = |r: &Raw| Strided {
        at: r.bytes.as_ptr(),
        size: r.size,
        len: n,
    };
    write_in_batches(
        map,
        BPF_MAP_UPDATE_BATCH,
        strided(keys),
        Some(strided(values)),
        elem_flags,
        None,
    )?;
    Ok(n)
}

/// BPF_MAP_DELETE_BATCH: `keys` deleted in order, in a few calls. A key
/// that is not there stops the kernel's pass; it is skipped, as deleting
/// it was meant to leave it absent, and the pass goes on after it.
pub fn delete_batch<K: aya::Pod>(map: BorrowedFd<'_>, keys: &[K]) -> Result<(), PartialWrite> {
    write_in_batches(
        map,
        BPF_MAP_DELETE_BATCH,
        Strided::of(keys),
        None,
        0,
        Some(libc::ENOENT),
    )
    .map(drop)
}

/// `len` entries of `size` bytes from `at`, end to end, borrowed.
#[derive(Clone, Copy)]
struct Strided {
    at: *const u8,
    size: usize,
    len: usize,
}

impl Strided {
    fn of<T>(s: &[T]) -> Self {
        Self {
            at: s.as_ptr().cast(),
            size: size_of::<T>(),
            len: s.len(),
        }
    }
    fn from(self, i: usize) -> u64 {
        self.at.wrapping_add(i * self.size) as u64
    }
}

/// The calls of a batch write `cmd`, each from where the kernel stopped:
/// a call it interrupted goes on after what it took, an entry failing with
/// `skip` is passed over, any other error ends the write. Returns how many
/// were passed over.
fn write_in_batches(
    map: BorrowedFd<'_>,
    cmd: libc::c_long,
    keys: Strided,
    values: Option<Strided>,
    elem_flags: u64,
    skip: Option<i32>,
) -> Result<usize, PartialWrite> {
    let (mut done, mut passed) = (0, 0);
    while done < keys.len {
        let mut a = Attr::new();
        a.put_u64(16, keys.from(done));
        if let Some(v) = values {
            a.put_u64(24, v.from(done));
        }
        a.put_u32(32, (keys.len - done) as u32);
        a.put_u32(36, map.as_raw_fd() as u32);
        a.put_u64(40, elem_flags);
        let r = bpf(cmd, &mut a);
        let n = u32::from_ne_bytes(a.0[32..36].try_into().expect("4 bytes")) as usize;
        match r {
            Ok(_) => return Ok(passed),
            Err(e) if skip.is_some() && e.raw_os_error() == skip => {
                done += n + 1;
                passed += 1;
            }
            Err(e) if n > 0 && e.kind() == io::ErrorKind::Interrupted => done += n,
            Err(error) => {
                return Err(PartialWrite {
                    written: done + n,
                    error,
                });
            }
        }
    }
    Ok(passed)
}

/// [`lookup_batch_into`] into new vectors.
#[cfg(test)]
fn lookup_batch<K: aya::Pod + Default, V: aya::Pod + Default>(
    map: BorrowedFd<'_>,
    max: usize,
) -> io::Result<(Vec<K>, Vec<V>)> {
    let (mut keys, mut values) = (Vec::new(), Vec::new());
    lookup_batch_into(map, max, &mut keys, &mut values)?;
    Ok((keys, values))
}

#[cfg(test)]
mod tests {
    use super::super::{map_create, map_update};
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn batch_lookups_read_every_entry_of_a_conntrack_sized_map() {
        assert!(
            crate::datapath::host::is_root(),
            "creating a BPF map needs root: run through `cargo xtask test`"
        );
        let (k, v) = (
            size_of::<lb_common::CtKey>(),
            size_of::<lb_common::CtValue>(),
        );
        let map = map_create(9, k as u32, v as u32, 20_000).expect("an LRU map");
        for i in 0..10_000u32 {
            let mut key = lb_common::CtKey {
                proto: 6,
                kind: lb_common::CT_FWD,
                ..Default::default()
            };
            key.saddr.0[3] = i;
            let value = lb_common::CtValue {
                backend_id: i,
                ..Default::default()
            };
            // SAFETY: both are repr(C) Pod values of the map's sizes.
            let (kb, vb) = unsafe {
                (
                    std::slice::from_raw_parts((&key as *const lb_common::CtKey).cast::<u8>(), k),
                    std::slice::from_raw_parts(
                        (&value as *const lb_common::CtValue).cast::<u8>(),
                        v,
                    ),
                )
            };
            map_update(map.as_fd(), kb, vb).unwrap();
        }
        let (keys, values): (Vec<lb_common::CtKey>, Vec<lb_common::CtValue>) =
            lookup_batch(map.as_fd(), usize::MAX).expect("batch lookups");
        assert_eq!((keys.len(), values.len()), (10_000, 10_000));
        let ids: std::collections::BTreeSet<u32> = values.iter().map(|v| v.backend_id).collect();
        assert_eq!(ids.len(), 10_000, "every entry once");
        assert!(
            keys.iter()
                .zip(&values)
                .all(|(k, v)| k.saddr.0[3] == v.backend_id),
            "keys with their values"
        );
        let (some, _): (Vec<lb_common::CtKey>, Vec<lb_common::CtValue>) =
            lookup_batch(map.as_fd(), 5_000).unwrap();
        assert_eq!(some.len(), 5_000, "at most `max`");
        // Read again into the vectors of a read: their memory serves again.
        let (mut again_k, mut again_v) = (Vec::new(), Vec::new());
        lookup_batch_into(map.as_fd(), usize::MAX, &mut again_k, &mut again_v).unwrap();
        let at = (again_k.as_ptr(), again_v.as_ptr());
        lookup_batch_into(map.as_fd(), usize::MAX, &mut again_k, &mut again_v).unwrap();
        assert_eq!((again_k.as_ptr(), again_v.as_ptr()), at, "no new memory");
        assert_eq!((again_k, again_v), (keys, values), "the same walk");
    }

    #[test]
    fn a_batch_write_goes_in_order_and_says_how_far_it_got() {
        assert!(
            crate::datapath::host::is_root(),
            "creating a BPF map needs root: run through `cargo xtask test`"
        );
        const HASH: u32 = 1;
        let map = map_create(HASH, 4, 4, 4).expect("a hash map of 4 entries");
        // Key 1 twice: the later value stays. Key 5 is the fifth key of a
        // map of four.
        let keys = [1u32, 2, 1, 3, 4, 5, 6];
        let values = [10u32, 20, 11, 30, 40, 50, 60];
        let e = update_batch(map.as_fd(), &keys, &values).expect_err("the map is full");
        assert_eq!(e.written, 5, "{e:?}");
        assert_eq!(e.error.raw_os_error(), Some(libc::E2BIG), "{e:?}");
        let (k, v): (Vec<u32>, Vec<u32>) = lookup_batch(map.as_fd(), usize::MAX).unwrap();
        let held: std::collections::BTreeMap<u32, u32> = k.into_iter().zip(v).collect();
        assert_eq!(held, [(1, 11), (2, 20), (3, 30), (4, 40)].into());
        update_batch(map.as_fd(), &[4u32, 2], &[41u32, 21]).expect("room for replacements");
        let (k, v): (Vec<u32>, Vec<u32>) = lookup_batch(map.as_fd(), usize::MAX).unwrap();
        let held: std::collections::BTreeMap<u32, u32> = k.into_iter().zip(v).collect();
        assert_eq!(held, [(1, 11), (2, 21), (3, 30), (4, 41)].into());
        // Deletes in a batch: the keys not there (7, 9) are passed over.
        delete_batch(map.as_fd(), &[7u32, 1, 9, 4]).expect("deleted");
        let (k, _): (Vec<u32>, Vec<u32>) = lookup_batch(map.as_fd(), usize::MAX).unwrap();
        let held: std::collections::BTreeSet<u32> = k.into_iter().collect();
        assert_eq!(held, [2, 3].into());
    }

    #[test]
    fn one_batch_read_sums_a_per_cpu_array() {
        assert!(
            crate::datapath::host::is_root(),
            "creating a BPF map needs root: run through `cargo xtask test`"
        );
        const PERCPU_ARRAY: u32 = 6;
        let cpus = aya::util::nr_cpus().unwrap();
        let map = map_create(PERCPU_ARRAY, 4, 8, 100).expect("a per-CPU array");
        for k in [3u32, 99] {
            let per_cpu: Vec<u64> = (0..cpus as u64).map(|c| u64::from(k) * 10 + c).collect();
            // SAFETY: u64s as the bytes the kernel reads, one per CPU.
            let bytes = unsafe {
                std::slice::from_raw_parts(per_cpu.as_ptr().cast::<u8>(), per_cpu.len() * 8)
            };
            map_update(map.as_fd(), &k.to_ne_bytes(), bytes).unwrap();
        }
        let sums = percpu_u64_sums(map.as_fd(), 100).expect("one batch read");
        let want = |k: u64| (0..cpus as u64).map(|c| k * 10 + c).sum::<u64>();
        assert_eq!(sums.len(), 100);
        assert_eq!((sums[3], sums[99]), (want(3), want(99)));
        assert_eq!(sums.iter().filter(|v| **v != 0).count(), 2, "{sums:?}");
    }
}
