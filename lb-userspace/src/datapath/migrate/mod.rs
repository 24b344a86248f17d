//! Carrying pinned maps into this agent's maps at start, so neither a new
//! size (`--max-*`) nor an upgrade that changed a map's layout drops a
//! connection or a programmed Service.
//!
//! A pinned map whose size or layout differs from this agent's is moved
//! aside (`NAME_PREVIOUS`; bpffs names cannot hold dots); the loader then
//! creates and pins this agent's map, which gets every entry of the old
//! one before any program of this agent runs. A value that grew keeps its
//! old bytes and gets zeros for the fields added at its end (the one way
//! layouts change: new fields go last, zero meaning "not known"). The
//! running programs of the earlier agent keep their maps until this agent
//! swaps its programs in under their links; maps those programs write
//! (conntrack, policy conntrack, affinity) are copied once more after
//! that, without replacing anything, so flows they made meanwhile come
//! along. Until then this agent's programs find those entries on a miss in
//! the old map itself (`bridge`: `LB_CT_CARRIED` and its likes), so a
//! handshake that began under the earlier programs completes under these.
//! Then the old pin goes. An agent that dies in between leaves `NAME_PREVIOUS`, and
//! the next one starts the copy again from it.
//!
//! What cannot be carried is refused by name with the way out: another key,
//! a value that shrank, another map type, socket storage. The Maglev map
//! of maps is carried into another size with the same inner maps (its
//! tables are kept). Statistics (per-CPU
//! counters) of another shape start again from zero.

mod bridge;
mod copy;
mod finish;

pub use bridge::bridge;
use copy::copy;
pub use finish::finish;

use std::{
    os::fd::{AsFd as _, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use aya::maps::{MapInfo, MapType};
use lb_common::{MAP_BACKENDS, MAP_COUNTERS, MAP_CT, MAP_POL_COUNT, MAP_SERVICES, MAP_SOCK_REV};

use super::{MapSpec, sys};

/// Where a carried map's old pin is while the carry is open.
pub fn old_pin(pin_dir: &Path, name: &str) -> PathBuf {
    pin_dir.join(format!("{name}_PREVIOUS"))
}

/// The flag that sizes `map`, if one does.
fn flag(map: &str) -> Option<&'static str> {
    match map {
        MAP_SERVICES => Some("--max-services"),
        MAP_BACKENDS => Some("--max-backends"),
        MAP_CT => Some("--max-ct"),
        lb_common::MAP_POL_CT => Some("--max-policy-ct"),
        lb_common::MAP_AFFINITY => Some("--max-affinity"),
        MAP_SOCK_REV => Some("--max-sock-rev"),
        lb_common::MAP_MAGLEV => Some("--max-maglev-tables"),
        _ => None,
    }
}

/// A map's type, key and value sizes, and capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Layout {
    pub map_type: Option<MapType>,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

impl Layout {
    fn of(spec: &MapSpec) -> Self {
        Self {
            map_type: Some(spec.map_type),
            key_size: spec.key_size,
            value_size: spec.value_size,
            max_entries: spec.max_entries,
        }
    }

    fn of_pin(path: &Path) -> anyhow::Result<Self> {
        let info = MapInfo::from_pin(path)
            .with_context(|| format!("opening pinned map {}", path.display()))?;
        Ok(Self {
            map_type: info.map_type().ok(),
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
        })
    }
}

/// How a pinned map becomes this agent's.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// Reused as it is (or absent: the loader creates it).
    Reuse,
    /// Statistics of another shape: the pin goes, counting starts again.
    Restart,
    /// Copied into a map of this agent's layout.
    Carry,
    /// Not carried: the reason.
    Refuse(String),
}

/// What happens to a pinned map of layout `from` when this agent needs `to`
/// (pure: the table `migrate::tests` checks).
pub fn verdict(name: &str, from: Layout, to: Layout) -> Verdict {
    if from == to {
        return Verdict::Reuse;
    }
    if matches!(name, MAP_COUNTERS | MAP_POL_COUNT) {
        return Verdict::Restart;
    }
    let copyable = matches!(
        to.map_type,
        Some(
            MapType::Hash
                | MapType::LruHash
                | MapType::Array
                | MapType::LpmTrie
                | MapType::HashOfMaps
        )
    );
    if from.map_type != to.map_type {
        return Verdict::Refuse(format!(
            "its type is {:?}, this agent's is {:?}",
            from.map_type, to.map_type
        ));
    }
    if !copyable {
        return Verdict::Refuse(format!(
            "a {:?} map's entries cannot be copied",
            to.map_type
        ));
    }
    if from.key_size != to.key_size {
        return Verdict::Refuse(format!(
            "its keys are {} bytes, this agent's {}",
            from.key_size, to.key_size
        ));
    }
    if to.map_type == Some(MapType::HashOfMaps) && from.value_size != to.value_size {
        return Verdict::Refuse(format!(
            "its values are {} bytes, this agent's {} (a map of maps holds map ids)",
            from.value_size, to.value_size
        ));
    }
    if from.value_size > to.value_size {
        return Verdict::Refuse(format!(
            "its values are {} bytes, more than this agent's {} (a newer agent's layout)",
            from.value_size, to.value_size
        ));
    }
    if to.map_type == Some(MapType::Array) && from.max_entries > to.max_entries {
        return Verdict::Refuse(format!(
            "it has {} slots, more than this agent's {}",
            from.max_entries, to.max_entries
        ));
    }
    Verdict::Carry
}

/// A map being carried: the old map's pin and fd, the two layouts.
pub struct Carry {
    pub name: &'static str,
    old: PathBuf,
    old_fd: OwnedFd,
    pub from: Layout,
    pub to: Layout,
    /// This agent's programs look the old map up on a miss (`bridge`).
    bridged: bool,
    /// The copy after the swap, on a thread of its own: a million entries
    /// take seconds the sync loop must not wait out (and a bridged map
    /// misses nothing meanwhile).
    second: Option<std::thread::JoinHandle<anyhow::Result<finish::Copied>>>,
    /// That copy failed once (said once; tried again).
    copy_failed: bool,
    /// This agent's map is one an interrupted carry left: it may hold
    /// entries newer than the old map's, so no copy replaces any.
    kept: bool,
}

impl Carry {
    /// Maps the programs write: what they add after the first copy is
    /// copied again once they are gone.
    pub fn written_by_programs(&self) -> bool {
        self.to.map_type == Some(MapType::LruHash)
    }

    /// Its programs find every entry of the old map on a miss, so its
    /// first copy may wait for the second (`Fill::AfterSwap`).
    pub fn bridged(&self) -> bool {
        self.bridged
    }

    /// This agent's map is one an interrupted carry left (see `prepare`).
    pub fn kept(&self) -> bool {
        self.kept
    }

    /// The copy after the swap ran on its thread: `finish` ends the carry.
    pub fn copied(&self) -> bool {
        self.second.as_ref().is_some_and(|t| t.is_finished())
    }

    /// The copy after the swap runs (or ran) on its thread.
    pub fn copying(&self) -> bool {
        self.second.is_some()
    }
}

/// Before the object is loaded: a pinned map of another size or layout is
/// moved aside so the loader creates this agent's; a carry an earlier agent
/// left unfinished starts again from the map it moved aside.
pub fn prepare(pin_dir: &Path, spec: &MapSpec) -> anyhow::Result<Option<Carry>> {
    let path = pin_dir.join(spec.name);
    let old = old_pin(pin_dir, spec.name);
    let interrupted = old.exists();
    let source = if interrupted {
        &old
    } else if path.exists() {
        &path
    } else {
        return Ok(None);
    };
    let from = Layout::of_pin(source)?;
    let to = Layout::of(spec);
    match verdict(spec.name, from, to) {
        Verdict::Reuse if !interrupted => return Ok(None),
        Verdict::Reuse | Verdict::Carry => {}
        Verdict::Restart => {
            tracing::info!(
                map = spec.name,
                ?from,
                ?to,
                "statistics map of another shape: counting starts again"
            );
            std::fs::remove_file(source)
                .with_context(|| format!("removing {}", source.display()))?;
            // The map an interrupted agent pinned in its place is checked
            // in turn: nothing of another shape is left for the loader.
            return if interrupted {
                prepare(pin_dir, spec)
            } else {
                Ok(None)
            };
        }
        Verdict::Refuse(why) => bail!(
            "pinned map {} cannot be carried into this agent's layout: {why} (found {from:?}, this agent needs {to:?}); \
             run `lb-agent reset --pin-dir {}` (drops established translations){}",
            source.display(),
            pin_dir.display(),
            flag(spec.name).map_or(String::new(), |f| format!(
                " or start with the {f} it was created with"
            )),
        ),
    }
    if matches!(to.map_type, Some(MapType::Hash | MapType::HashOfMaps)) {
        let fd = sys::obj_get(source).with_context(|| format!("opening {}", source.display()))?;
        let held = count(fd.as_fd(), from.key_size)?;
        if held > to.max_entries as usize {
            let f = flag(spec.name).unwrap_or("a bigger size");
            bail!(
                "pinned map {} holds {held} entries, more than the {} this agent gives it: start with {f} {held} or more (a smaller map would drop programmed Services)",
                spec.name,
                to.max_entries,
            );
        }
    }
    let mut kept = false;
    if interrupted && path.exists() {
        // A map the programs write, of this agent's layout, that an
        // interrupted carry or growth left (its programs may have run on
        // it since their swap: entries newer than the old map's) is kept,
        // the old entries merged in without replacing any; any other is
        // the copy the earlier agent was making, made again.
        kept = to.map_type == Some(MapType::LruHash) && Layout::of_pin(&path).ok() == Some(to);
        if kept {
            tracing::info!(
                map = spec.name,
                "kept the map an interrupted carry left in place; the old map's entries are merged in, none replacing one of it"
            );
        } else {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    } else if !interrupted {
        std::fs::rename(&path, &old).with_context(|| format!("moving {} aside", path.display()))?;
    }
    let old_fd = sys::obj_get(&old).with_context(|| format!("opening {}", old.display()))?;
    Ok(Some(Carry {
        name: spec.name,
        old,
        old_fd,
        from,
        to,
        bridged: false,
        second: None,
        copy_failed: false,
        kept,
    }))
}

fn count(map: BorrowedFd<'_>, key_size: u32) -> anyhow::Result<usize> {
    let (mut key, mut next) = (vec![0u8; key_size as usize], vec![0u8; key_size as usize]);
    let mut n = 0;
    while sys::map_next_key(map, (n > 0).then_some(&key[..]), &mut next)? {
        std::mem::swap(&mut key, &mut next);
        n += 1;
    }
    Ok(n)
}

/// After the object is loaded (this agent's map created and pinned),
/// before any of its programs runs: the new map gets every entry.
pub fn fill(pin_dir: &Path, c: &Carry) -> anyhow::Result<()> {
    let new_pin = pin_dir.join(c.name);
    let new = sys::obj_get(&new_pin).with_context(|| format!("opening {}", new_pin.display()))?;
    let flags = if c.kept { sys::BPF_NOEXIST } else { 0 };
    let n = copy(c.old_fd.as_fd(), new.as_fd(), c.from, c.to, flags)
        .with_context(|| format!("copying {} into this agent's map", c.name))?;
    let what = if c.from.value_size != c.to.value_size {
        format!(
            "carried into this agent's layout (values of {} bytes, now {})",
            c.from.value_size, c.to.value_size
        )
    } else {
        match c.to.max_entries.cmp(&c.from.max_entries) {
            std::cmp::Ordering::Greater => "grown".into(),
            std::cmp::Ordering::Less => "shrunk".into(),
            std::cmp::Ordering::Equal => {
                "copied again (an earlier agent's copy was interrupted)".into()
            }
        }
    };
    tracing::info!(
        "map {} {what} from {} to {} entries{}: {n} entries copied; the programs switch to the new map as their links are adopted",
        c.name,
        c.from.max_entries,
        c.to.max_entries,
        flag(c.name).map_or(String::new(), |f| format!(" ({f})")),
    );
    Ok(())
}

/// After a load that failed past `prepare`: the map moved aside goes back
/// in place, so the datapath still running keeps its pins.
pub fn undo(pin_dir: &Path, name: &str) {
    let (path, old) = (pin_dir.join(name), old_pin(pin_dir, name));
    if old.exists() {
        let _ = std::fs::remove_file(&path);
        if let Err(e) = std::fs::rename(&old, &path) {
            tracing::warn!("putting {} back: {e}", old.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(map_type: MapType, key_size: u32, value_size: u32, max_entries: u32) -> Layout {
        Layout {
            map_type: Some(map_type),
            key_size,
            value_size,
            max_entries,
        }
    }

    #[test]
    fn what_is_carried_and_what_is_refused() {
        use MapType::*;
        use Verdict::*;
        let cases = [
            (
                "LB_CT_V1",
                l(LruHash, 40, 32, 1000),
                l(LruHash, 40, 32, 1000),
                Reuse,
            ),
            (
                "LB_CT_V1",
                l(LruHash, 40, 32, 1000),
                l(LruHash, 40, 32, 9000),
                Carry,
            ),
            (
                "LB_CT_V1",
                l(LruHash, 40, 32, 9000),
                l(LruHash, 40, 32, 1000),
                Carry,
            ),
            // A field added at the end of the status value.
            (
                "LB_STATUS_V1",
                l(Array, 4, 24, 1),
                l(Array, 4, 88, 1),
                Carry,
            ),
            (
                "LB_STATUS_V1",
                l(Array, 4, 88, 1),
                l(Array, 4, 24, 1),
                Refuse(String::new()),
            ),
            (
                "LB_STATUS_V1",
                l(Array, 4, 24, 2),
                l(Array, 4, 24, 1),
                Refuse(String::new()),
            ),
            (
                "LB_SERVICES_V1",
                l(Hash, 24, 16, 10),
                l(Hash, 28, 16, 10),
                Refuse(String::new()),
            ),
            (
                "LB_SERVICES_V1",
                l(Hash, 24, 16, 10),
                l(LruHash, 24, 16, 10),
                Refuse(String::new()),
            ),
            (
                "LB_SOCK_NAT_V1",
                l(SkStorage, 4, 64, 0),
                l(SkStorage, 4, 80, 0),
                Refuse(String::new()),
            ),
            (
                "LB_MAGLEV_V2",
                l(HashOfMaps, 4, 4, 10),
                l(HashOfMaps, 4, 4, 20),
                Carry,
            ),
            (
                "LB_MAGLEV_V2",
                l(HashOfMaps, 4, 4, 10),
                l(HashOfMaps, 4, 8, 10),
                Refuse(String::new()),
            ),
            (
                "LB_POLICY_V1",
                l(LpmTrie, 12, 4, 10),
                l(LpmTrie, 12, 4, 20),
                Carry,
            ),
            (
                MAP_COUNTERS,
                l(PerCpuArray, 4, 8, 32),
                l(PerCpuArray, 4, 8, 64),
                Restart,
            ),
        ];
        for (name, from, to, want) in cases {
            let got = verdict(name, from, to);
            let same = match (&got, &want) {
                (Refuse(_), Refuse(_)) => true,
                (g, w) => g == w,
            };
            assert!(same, "{name} {from:?} -> {to:?}: {got:?}, want {want:?}");
        }
    }
}
