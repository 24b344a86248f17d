//! Resizing the maps the agent alone writes (`--max-services`,
//! `--max-backends`) at start: an agent whose flags ask for another size
//! than the pinned maps have copies them into maps of the new size before
//! its programs, which use the new maps, are swapped in under the pinned
//! links. Until then the running programs keep the old maps, so no lookup
//! misses on the way (what a restart with a bigger `--max-services`
//! needs to program the Services a full map left out).
//!
//! The old pin is moved aside first (`NAME_PREVIOUS`; bpffs names cannot
//! hold dots) and removed once the programs use the new map: an agent that
//! dies in between leaves it, and the next one starts the copy again from
//! it.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, Pod,
    maps::{HashMap, Map, MapData, MapInfo},
};
use lb_common::{Backend, MAP_BACKENDS, MAP_SERVICES, ServiceKey, ServiceValue};

use super::MapSpec;

/// The maps resized this way: only the agent writes them (the programs
/// read them), so a copy taken at start is complete.
pub const RESIZABLE: [&str; 2] = [MAP_SERVICES, MAP_BACKENDS];

fn old_pin(pin_dir: &Path, name: &str) -> PathBuf {
    pin_dir.join(format!("{name}_PREVIOUS"))
}

/// The flag that sizes `map`.
fn flag(map: &str) -> &'static str {
    if map == MAP_SERVICES {
        "--max-services"
    } else {
        "--max-backends"
    }
}

/// A map being resized.
pub struct Resize {
    pub name: &'static str,
    old: PathBuf,
    pub from: u32,
    pub to: u32,
}

fn entries_of(path: &Path, name: &str) -> anyhow::Result<usize> {
    fn count<K: Pod, V: Pod>(path: &Path) -> anyhow::Result<usize> {
        let m: HashMap<_, K, V> = HashMap::try_from(Map::from_map_data(MapData::from_pin(path)?)?)?;
        Ok(m.keys().filter(Result::is_ok).count())
    }
    if name == MAP_SERVICES {
        count::<ServiceKey, ServiceValue>(path)
    } else {
        count::<u32, Backend>(path)
    }
}

/// Before the object is loaded: a pinned map of `spec`'s layout but
/// another size is moved aside, so the loader creates (and pins) one of
/// the new size; a resize an earlier agent left unfinished starts again
/// from the map it moved aside. None: nothing to resize (a map of another
/// layout is left for `check_pinned` to refuse).
pub fn prepare(pin_dir: &Path, spec: &MapSpec) -> anyhow::Result<Option<Resize>> {
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
    let info = MapInfo::from_pin(source)
        .with_context(|| format!("opening pinned map {}", source.display()))?;
    let same_layout = (info.map_type().ok(), info.key_size(), info.value_size())
        == (Some(spec.map_type), spec.key_size, spec.value_size);
    if !same_layout {
        if interrupted {
            bail!(
                "{} (left by an interrupted resize) has another layout than this agent's {}; run `lb-agent reset --pin-dir {}`",
                old.display(),
                spec.name,
                pin_dir.display()
            );
        }
        return Ok(None);
    }
    let from = info.max_entries();
    if !interrupted && from == spec.max_entries {
        return Ok(None);
    }
    let held = entries_of(source, spec.name)?;
    if held > spec.max_entries as usize {
        bail!(
            "pinned map {} holds {held} entries, more than the {} that {} {} gives it: start with {} {held} or more (a smaller map would drop programmed Services)",
            spec.name,
            spec.max_entries,
            flag(spec.name),
            spec.max_entries,
            flag(spec.name)
        );
    }
    if interrupted {
        if path.exists() {
            // The copy the earlier agent was making: made again.
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    } else {
        std::fs::rename(&path, &old).with_context(|| format!("moving {} aside", path.display()))?;
    }
    Ok(Some(Resize {
        name: spec.name,
        old,
        from,
        to: spec.max_entries,
    }))
}

fn copy<K: Pod, V: Pod>(old: Map, new: &mut Map) -> anyhow::Result<usize> {
    let old: HashMap<_, K, V> = HashMap::try_from(old)?;
    let mut new: HashMap<&mut MapData, K, V> = HashMap::try_from(new)?;
    let mut n = 0;
    for kv in old.iter() {
        let (k, v) = kv?;
        new.insert(k, v, 0)?;
        n += 1;
    }
    Ok(n)
}

/// After the object is loaded (the new map created and pinned), before any
/// program is swapped in: the new map gets every entry of the old one.
pub fn fill(ebpf: &mut Ebpf, r: &Resize) -> anyhow::Result<()> {
    let old = Map::from_map_data(
        MapData::from_pin(&r.old).with_context(|| format!("opening {}", r.old.display()))?,
    )?;
    let new = ebpf
        .map_mut(r.name)
        .ok_or_else(|| anyhow!("map {} missing from the object", r.name))?;
    let n = if r.name == MAP_SERVICES {
        copy::<ServiceKey, ServiceValue>(old, new)
    } else {
        copy::<u32, Backend>(old, new)
    }
    .with_context(|| format!("copying {} into its new map of {} entries", r.name, r.to))?;
    tracing::info!(
        "map {} {} from {} to {} entries ({}): {n} entries copied; the programs switch to the new map as their links are adopted",
        r.name,
        match r.to.cmp(&r.from) {
            std::cmp::Ordering::Greater => "grown",
            std::cmp::Ordering::Less => "shrunk",
            // An earlier agent's resize, interrupted: done again.
            std::cmp::Ordering::Equal => "copied again (a resize was interrupted)",
        },
        r.from,
        r.to,
        flag(r.name),
    );
    Ok(())
}

/// Once the programs use the new map: the old one's pin goes (the map
/// itself lives while a program of the previous agent still holds it).
pub fn finish(r: &Resize) {
    if let Err(e) = std::fs::remove_file(&r.old) {
        tracing::warn!("removing {}: {e}", r.old.display());
    }
}
