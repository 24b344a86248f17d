//! The end of a carry (see `migrate`): the copy after the swap, on a
//! thread of its own, then the old pin goes.

use std::{
    os::fd::{AsFd as _, BorrowedFd},
    path::Path,
};

use anyhow::Context as _;
use aya::Ebpf;

use super::{Carry, Layout, bridge, copy, sys};

/// Once this agent's programs run under every link: what the earlier
/// agent's programs wrote since the copy comes along (never replacing an
/// entry), this agent's programs stop looking in the old map, and the old
/// pin goes (the map itself lives while a program of the earlier agent
/// still holds it). The copy runs on a thread of its own (a million
/// entries take seconds the sync loop must not wait out; a bridged map's
/// programs find the old entries meanwhile): the carry comes back while it
/// runs, to be finished again later.
pub fn finish(pin_dir: &Path, ebpf: &Ebpf, mut c: Carry) -> Option<Carry> {
    if c.written_by_programs() {
        let copied = match c.second.take() {
            Some(t) if !t.is_finished() => {
                c.second = Some(t);
                return Some(c);
            }
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the copy's thread panicked"))),
            None => match second_copy(pin_dir, &c) {
                Ok(t) => {
                    c.second = Some(t);
                    return Some(c);
                }
                Err(e) => Err(e),
            },
        };
        match copied {
            Ok(Copied { entries, took }) => tracing::info!(
                map = c.name,
                took_ms = took.as_secs_f64() * 1e3,
                "{entries} entries of the earlier map copied after the swap (none replacing one of this agent's)"
            ),
            // The programs still find the old entries through the bridge:
            // the carry stays open and the copy is tried again.
            Err(e) if c.bridged => {
                if !c.copy_failed {
                    c.copy_failed = true;
                    tracing::warn!(
                        map = c.name,
                        "copying the earlier map's entries after the swap: {e:#}; the carry stays open (the old map looked up on a miss), the copy tried again every periodic tick"
                    );
                }
                return Some(c);
            }
            Err(e) => tracing::warn!(
                map = c.name,
                "copying the entries made during the swap: {e:#}"
            ),
        }
    }
    // After the copy: a flow found in the old map until now is in the new
    // one.
    if let Err(e) = bridge::unbridge(ebpf, c.name) {
        tracing::warn!(map = c.name, "{e:#}");
    }
    if let Err(e) = std::fs::remove_file(&c.old) {
        tracing::warn!("removing {}: {e}", c.old.display());
    }
    None
}

/// What a copy after the swap did.
pub(super) struct Copied {
    entries: usize,
    took: std::time::Duration,
}

/// Every entry of the old map this agent's lacks, one call each
/// (BPF_NOEXIST: a batch write takes no such flag).
fn copy_missing(
    pin_dir: &Path,
    name: &str,
    old: BorrowedFd<'_>,
    from: Layout,
    to: Layout,
) -> anyhow::Result<Copied> {
    let started = std::time::Instant::now();
    let new_pin = pin_dir.join(name);
    let new = sys::obj_get(&new_pin).with_context(|| format!("opening {}", new_pin.display()))?;
    let entries = copy(old, new.as_fd(), from, to, sys::BPF_NOEXIST)?;
    Ok(Copied {
        entries,
        took: started.elapsed(),
    })
}

/// `copy_missing` on a thread of its own.
fn second_copy(
    pin_dir: &Path,
    c: &Carry,
) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<Copied>>> {
    let old = c
        .old_fd
        .try_clone()
        .context("duplicating the old map's fd")?;
    let (dir, name, from, to) = (pin_dir.to_path_buf(), c.name, c.from, c.to);
    if c.bridged {
        tracing::info!(
            map = name,
            "copying the earlier map's entries on a thread of their own; the programs look them up there meanwhile"
        );
    } else {
        tracing::info!(
            map = name,
            "copying the earlier map's entries on a thread of their own; what the earlier programs wrote there since the first copy is missing here until it ends"
        );
    }
    std::thread::Builder::new()
        .name("carry-copy".into())
        .spawn(move || copy_missing(&dir, name, old.as_fd(), from, to))
        .context("starting the copy's thread")
}
