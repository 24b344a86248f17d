//! Copying a map's entries into a map of another size or layout.

use std::os::fd::BorrowedFd;

use anyhow::Context as _;
use aya::maps::MapType;

use super::{Layout, sys};

/// Copies every entry of `old` into `new`, values zero-extended to the new
/// layout; with BPF_NOEXIST entries already there are kept. Hash maps are
/// copied with batch calls (a million conntrack entries took 5 s one
/// entry at a time, three system calls each); the others, and kernels
/// without batch calls, entry by entry.
pub(super) fn copy(
    old: BorrowedFd<'_>,
    new: BorrowedFd<'_>,
    from: Layout,
    to: Layout,
    flags: u64,
) -> anyhow::Result<usize> {
    if from.map_type == Some(MapType::HashOfMaps) {
        return copy_inner_maps(old, new, from, flags);
    }
    if matches!(from.map_type, Some(MapType::Hash | MapType::LruHash)) {
        match copy_batched(old, new, from, to, flags) {
            Ok(n) => return Ok(n),
            // Nothing written yet: the first call found no batch command.
            Err(Batched::Unsupported) => {}
            Err(Batched::Failed(e)) => return Err(e),
        }
    }
    copy_each(old, new, from, to, flags)
}

/// What the kernel answers for a map type without batch calls (its own
/// ENOTSUPP, which libc does not name).
const ENOTSUPP: i32 = 524;

enum Batched {
    Unsupported,
    Failed(anyhow::Error),
}

/// [`copy`] with batch calls, a chunk at a time (memory for a chunk, not
/// the whole map).
fn copy_batched(
    old: BorrowedFd<'_>,
    new: BorrowedFd<'_>,
    from: Layout,
    to: Layout,
    flags: u64,
) -> Result<usize, Batched> {
    let mut walk = sys::BatchWalk::default();
    let mut keys = sys::Raw::new(from.key_size as usize);
    let mut read = sys::Raw::new(from.value_size as usize);
    let mut wide = sys::Raw::new(to.value_size as usize);
    let (mut copied, mut first) = (0, true);
    loop {
        keys.bytes.clear();
        read.bytes.clear();
        let more = match walk.next(old, sys::CHUNK, &mut keys, &mut read) {
            Ok(more) => more,
            Err(e) if first && unsupported(&e) => return Err(Batched::Unsupported),
            Err(e) => return Err(Batched::Failed(anyhow::Error::new(e).context("reading"))),
        };
        first = false;
        // Zero-extended to the new layout, when it changed.
        let values = if wide.size == read.size {
            &read
        } else {
            wide.bytes.clear();
            for v in read.bytes.chunks_exact(read.size) {
                wide.bytes.extend_from_slice(v);
                wide.bytes
                    .resize(wide.bytes.len() + wide.size - read.size, 0);
            }
            &wide
        };
        copied += if flags == sys::BPF_NOEXIST {
            // Batch writes take no BPF_NOEXIST (only BPF_F_LOCK), and
            // entries the new programs made since must stay: one call each
            // (about as fast as reading the new map's keys first to skip
            // them, measured at a million entries).
            write_absent(new, &keys, values).map_err(Batched::Failed)?
        } else {
            sys::update_batch_raw(new, &keys, values, flags)
                .map_err(|w| Batched::Failed(anyhow::Error::new(w.error).context("writing")))?
        };
        if !more {
            return Ok(copied);
        }
    }
}

fn unsupported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | ENOTSUPP | libc::EOPNOTSUPP)
    )
}

/// Each entry written into `new` unless there; returns how many were.
fn write_absent(new: BorrowedFd<'_>, keys: &sys::Raw, values: &sys::Raw) -> anyhow::Result<usize> {
    let mut n = 0;
    for (k, v) in keys
        .bytes
        .chunks_exact(keys.size)
        .zip(values.bytes.chunks_exact(values.size))
    {
        if write(new, k, v, sys::BPF_NOEXIST).context("writing")? {
            n += 1;
        }
    }
    Ok(n)
}

/// A map of maps into another of its kind: each key gets the same inner
/// map (the Maglev tables are kept, not rebuilt), one entry at a time.
fn copy_inner_maps(
    old: BorrowedFd<'_>,
    new: BorrowedFd<'_>,
    from: Layout,
    flags: u64,
) -> anyhow::Result<usize> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    each_entry(old, from, from.value_size as usize, |key, value| {
        // A lookup from user space answers with the inner map's id; an
        // update takes an fd.
        let id = u32::from_ne_bytes(value.try_into().context("an inner map id of 4 bytes")?);
        let inner = match aya::maps::MapData::from_id(id) {
            Ok(m) => m,
            // Freed since the lookup: its key left the old map too.
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                return Ok(false);
            }
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("opening inner map id {id} (key {key:02x?})")));
            }
        };
        let fd = inner.fd().as_fd().as_raw_fd().to_ne_bytes();
        write(new, key, &fd, flags)
            .with_context(|| format!("writing inner map id {id} (key {key:02x?})"))
    })
}

/// [`copy`] one entry at a time.
fn copy_each(
    old: BorrowedFd<'_>,
    new: BorrowedFd<'_>,
    from: Layout,
    to: Layout,
    flags: u64,
) -> anyhow::Result<usize> {
    each_entry(old, from, to.value_size as usize, |key, value| {
        Ok(write(new, key, value, flags)?)
    })
}

/// One entry written into `new`; false when BPF_NOEXIST found it there.
fn write(new: BorrowedFd<'_>, key: &[u8], value: &[u8], flags: u64) -> std::io::Result<bool> {
    match sys::map_update_flags(new, key, value, flags) {
        Ok(()) => Ok(true),
        Err(e) if flags == sys::BPF_NOEXIST && e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Every entry of `old`, its value zero-extended to `value_len` bytes,
/// given to `put`, which says whether it wrote it; returns how many it
/// did. A hash map written meanwhile can make the walk start over: it is
/// bounded by twice the old map's capacity.
fn each_entry(
    old: BorrowedFd<'_>,
    from: Layout,
    value_len: usize,
    mut put: impl FnMut(&[u8], &[u8]) -> anyhow::Result<bool>,
) -> anyhow::Result<usize> {
    let (mut key, mut next) = (
        vec![0u8; from.key_size as usize],
        vec![0u8; from.key_size as usize],
    );
    let mut value = vec![0u8; value_len];
    let (mut copied, mut walked) = (0, 0u64);
    let limit = 2 * u64::from(from.max_entries.max(1));
    while walked < limit
        && sys::map_next_key(old, (walked > 0).then_some(&key[..]), &mut next)
            .context("walking the old map's keys")?
    {
        std::mem::swap(&mut key, &mut next);
        walked += 1;
        value.fill(0);
        let found = sys::map_lookup_raw(old, &key, &mut value[..from.value_size as usize])
            .context("reading the old map")?;
        if found && put(&key, &value)? {
            copied += 1;
        }
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd as _;

    fn layout(map_type: MapType, value_size: u32, max_entries: u32) -> Layout {
        Layout {
            map_type: Some(map_type),
            key_size: 8,
            value_size,
            max_entries,
        }
    }

    fn entries(map: BorrowedFd<'_>, value_size: usize) -> std::collections::BTreeMap<u64, Vec<u8>> {
        let (mut keys, mut values) = (sys::Raw::new(8), sys::Raw::new(value_size));
        let mut walk = sys::BatchWalk::default();
        while walk.next(map, 1000, &mut keys, &mut values).unwrap() {}
        keys.bytes
            .chunks_exact(8)
            .map(|k| u64::from_ne_bytes(k.try_into().unwrap()))
            .zip(values.bytes.chunks_exact(value_size).map(<[u8]>::to_vec))
            .collect()
    }

    /// Hash maps in batches of a chunk (more entries than one), into a
    /// layout whose values grew; the second copy keeps what is there and
    /// adds only what is new; another map type entry by entry.
    #[test]
    fn every_entry_is_copied_zero_extended_and_a_second_copy_keeps_what_is_there() {
        assert!(
            crate::datapath::host::is_root(),
            "creating a BPF map needs root: run through `cargo xtask test`"
        );
        const HASH: u32 = 1;
        const LRU_HASH: u32 = 9;
        const ARRAY: u32 = 2;
        let n = sys::CHUNK as u64 + 1000;
        for (t, map_type) in [(HASH, MapType::Hash), (LRU_HASH, MapType::LruHash)] {
            let old = sys::map_create(t, 8, 4, 2 * n as u32).unwrap();
            let new = sys::map_create(t, 8, 8, 4 * n as u32).unwrap();
            for k in 0..n {
                sys::map_update(old.as_fd(), &k.to_ne_bytes(), &(k as u32 + 1).to_ne_bytes())
                    .unwrap();
            }
            let (from, to) = (
                layout(map_type, 4, 2 * n as u32),
                layout(map_type, 8, 4 * n as u32),
            );
            assert_eq!(
                copy(old.as_fd(), new.as_fd(), from, to, 0).unwrap(),
                n as usize
            );
            let got = entries(new.as_fd(), 8);
            assert_eq!(got.len(), n as usize, "{map_type:?}");
            assert!(
                got.iter()
                    .all(|(k, v)| v[..4] == (*k as u32 + 1).to_ne_bytes() && v[4..] == [0; 4]),
                "{map_type:?}: each value, zero-extended"
            );
            // Changed in the new map since, and one more in the old.
            sys::map_update(new.as_fd(), &7u64.to_ne_bytes(), &[9; 8]).unwrap();
            sys::map_update(old.as_fd(), &n.to_ne_bytes(), &[1; 4]).unwrap();
            assert_eq!(
                copy(old.as_fd(), new.as_fd(), from, to, sys::BPF_NOEXIST).unwrap(),
                1
            );
            let got = entries(new.as_fd(), 8);
            assert_eq!(got.len(), n as usize + 1);
            assert_eq!(got[&7], [9; 8], "kept");
            assert_eq!(got[&n], [1, 1, 1, 1, 0, 0, 0, 0], "added");
            // Another size only (values as they are).
            let same = sys::map_create(t, 8, 4, 4 * n as u32).unwrap();
            let to = layout(map_type, 4, 4 * n as u32);
            assert_eq!(
                copy(old.as_fd(), same.as_fd(), from, to, 0).unwrap(),
                n as usize + 1
            );
            let got = entries(same.as_fd(), 4);
            assert_eq!(got[&n], [1; 4]);
            assert_eq!(got[&3], 4u32.to_ne_bytes());
        }
        let old = sys::map_create(ARRAY, 4, 4, 10).unwrap();
        let new = sys::map_create(ARRAY, 4, 8, 10).unwrap();
        sys::map_update(old.as_fd(), &3u32.to_ne_bytes(), &[5; 4]).unwrap();
        let l = |v, m| Layout {
            key_size: 4,
            ..layout(MapType::Array, v, m)
        };
        assert_eq!(
            copy(old.as_fd(), new.as_fd(), l(4, 10), l(8, 10), 0).unwrap(),
            10
        );
        let mut v = [0u8; 8];
        assert!(sys::map_lookup_raw(new.as_fd(), &3u32.to_ne_bytes(), &mut v).unwrap());
        assert_eq!(v, [5, 5, 5, 5, 0, 0, 0, 0]);
    }
}
