//! Read-only access to the pins for the inspection subcommands, and
//! `reset`.

use super::*;

/// Read-only access to the pins, for the inspection subcommands.
pub struct Pinned {
    pub pin_dir: PathBuf,
}

pub(super) fn open_pinned(pin_dir: &Path, name: &str) -> anyhow::Result<Map> {
    open_pinned_sized(pin_dir, name).map(|(m, _)| m)
}

/// The pinned map `name` and its capacity. While the agent grows or
/// carries it (milliseconds) the pin is the moved-aside `NAME_PREVIOUS`
/// until the new map is pinned: that one is read meanwhile.
pub(super) fn open_pinned_sized(pin_dir: &Path, name: &str) -> anyhow::Result<(Map, u32)> {
    let path = pin_dir.join(name);
    let data = MapData::from_pin(&path)
        .or_else(|e| MapData::from_pin(super::migrate::old_pin(pin_dir, name)).map_err(|_| e))
        .with_context(|| {
            format!(
                "opening {} (is an agent running with --pin-dir {}?)",
                path.display(),
                pin_dir.display()
            )
        })?;
    let max_entries = data.info()?.max_entries();
    Ok((Map::from_map_data(data)?, max_entries))
}

pub struct MapFill {
    pub name: &'static str,
    pub entries: usize,
    pub max_entries: u32,
}

impl Pinned {
    pub fn status(&self) -> anyhow::Result<Status> {
        let a: Array<_, Status> = Array::try_from(open_pinned(&self.pin_dir, MAP_STATUS)?)?;
        Ok(a.get(&0, 0)?)
    }

    pub fn services(&self) -> anyhow::Result<Vec<(ServiceKey, ServiceValue)>> {
        let m: HashMap<_, ServiceKey, ServiceValue> =
            HashMap::try_from(open_pinned(&self.pin_dir, MAP_SERVICES)?)?;
        Ok(m.iter().collect::<Result<_, _>>()?)
    }

    /// The status map itself, kept open to read it often.
    pub fn status_map(&self) -> anyhow::Result<Array<MapData, Status>> {
        Ok(Array::try_from(open_pinned(&self.pin_dir, MAP_STATUS)?)?)
    }

    /// The services map itself, kept open to look entries up.
    pub fn services_map(&self) -> anyhow::Result<HashMap<MapData, ServiceKey, ServiceValue>> {
        Ok(HashMap::try_from(open_pinned(
            &self.pin_dir,
            MAP_SERVICES,
        )?)?)
    }

    /// Frontend service ids that have a Maglev table.
    pub fn maglev_ids(&self) -> anyhow::Result<std::collections::BTreeSet<u32>> {
        let m: HashOfMaps<_, u32, MapData> =
            HashOfMaps::try_from(open_pinned(&self.pin_dir, MAP_MAGLEV)?)?;
        Ok(m.keys().collect::<Result<_, _>>()?)
    }

    pub fn backends(&self) -> anyhow::Result<Vec<(u32, Backend)>> {
        let m: HashMap<_, u32, Backend> =
            HashMap::try_from(open_pinned(&self.pin_dir, MAP_BACKENDS)?)?;
        Ok(m.iter().collect::<Result<_, _>>()?)
    }

    pub fn fill(&self) -> anyhow::Result<Vec<MapFill>> {
        fn hash<K: aya::Pod, V: aya::Pod>(m: Map, max: usize) -> anyhow::Result<usize> {
            Ok(bounded(HashMap::<_, K, V>::try_from(m)?.keys(), max))
        }
        fn trie<K: aya::Pod, V: aya::Pod>(m: Map, max: usize) -> anyhow::Result<usize> {
            Ok(bounded(LpmTrie::<_, K, V>::try_from(m)?.keys(), max))
        }
        fn of_maps(m: Map, max: usize) -> anyhow::Result<usize> {
            Ok(bounded(
                HashOfMaps::<_, u32, MapData>::try_from(m)?.keys(),
                max,
            ))
        }
        let fill = |name: &'static str, count: fn(Map, usize) -> anyhow::Result<usize>| {
            let (map, max_entries) = open_pinned_sized(&self.pin_dir, name)?;
            let entries = count(map, max_entries as usize)?;
            anyhow::Ok(MapFill {
                name,
                entries,
                max_entries,
            })
        };
        Ok(vec![
            fill(MAP_SERVICES, hash::<ServiceKey, ServiceValue>)?,
            fill(MAP_BACKENDS, hash::<u32, Backend>)?,
            fill(MAP_SOCK_REV, hash::<SockRevKey, SockRevValue>)?,
            fill(MAP_CT, hash::<CtKey, CtValue>)?,
            fill(
                lb_common::MAP_POL_CT,
                hash::<lb_common::PolCtKey, lb_common::PolCtValue>,
            )?,
            fill(
                lb_common::MAP_AFFINITY,
                hash::<lb_common::AffinityKey, lb_common::AffinityValue>,
            )?,
            fill(MAP_MAGLEV, of_maps)?,
            fill(lb_common::MAP_SRC_RANGES, trie::<SrcRangeData, u8>)?,
            fill(lb_common::MAP_IPCACHE, trie::<lb_common::IpcacheData, u32>)?,
            fill(lb_common::MAP_POLICY, trie::<lb_common::PolicyData, u32>)?,
            fill(lb_common::MAP_POL_CIDR, trie::<lb_common::PolCidrData, u32>)?,
        ])
    }

    /// The links this agent pinned, each with whether it is still attached.
    pub fn links(&self) -> Vec<(String, bool)> {
        let mut out: Vec<(String, bool)> = SOCK_PROGRAMS
            .iter()
            .map(|(name, _)| {
                let ok = sys::obj_get(&self.pin_dir.join("links").join(name))
                    .and_then(|fd| sys::cgroup_link_info(fd.as_fd()))
                    .is_ok_and(|i| i.cgroup_id != 0);
                (name.to_string(), ok)
            })
            .collect();
        if let Ok(rd) = std::fs::read_dir(self.pin_dir.join("links")) {
            let mut tc: Vec<(String, bool)> = rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.starts_with("tc-") || n.starts_with("xdp-"))
                .map(|n| {
                    let ok = sys::obj_get(&self.pin_dir.join("links").join(&n)).is_ok();
                    (n, ok)
                })
                .collect();
            tc.sort();
            out.extend(tc);
        }
        out
    }

    /// Conntrack entries, bounded by the map's size (a key walk over an LRU
    /// being written can restart).
    pub fn conntrack(&self) -> anyhow::Result<Vec<(CtKey, CtValue)>> {
        let (map, max) = open_pinned_sized(&self.pin_dir, MAP_CT)?;
        let m: HashMap<_, CtKey, CtValue> = HashMap::try_from(map)?;
        Ok(m.iter().take(max as usize).filter_map(Result::ok).collect())
    }

    /// Datapath counters summed over CPUs, by name.
    /// Policy verdicts per endpoint id (summed over CPUs), by
    /// `POL_REASON_NAMES` index; endpoint 0 holds the unknown-pod drops.
    pub fn policy_counts(
        &self,
    ) -> anyhow::Result<std::collections::BTreeMap<u32, [u64; lb_common::POL_REASONS as usize]>>
    {
        use lb_common::POL_REASONS;
        let map = open_pinned(&self.pin_dir, lb_common::MAP_POL_COUNT)?;
        let Map::PerCpuArray(data) = &map else {
            bail!("{} is not a per-CPU array", lb_common::MAP_POL_COUNT);
        };
        // One batch read: this runs on the sync loop every tick, and an
        // entry at a time was 24,576 system calls.
        let len = (lb_common::POL_EP_ID_MAX * POL_REASONS) as usize;
        let sums = super::sys::percpu_u64_sums(data.fd().as_fd(), len)?;
        let mut out = std::collections::BTreeMap::new();
        for (ep, chunk) in sums.chunks_exact(POL_REASONS as usize).enumerate() {
            if chunk.iter().any(|v| *v != 0) {
                let row: [u64; POL_REASONS as usize] = chunk.try_into().expect("a row");
                out.insert(ep as u32, row);
            }
        }
        Ok(out)
    }

    pub fn counters(&self) -> anyhow::Result<Vec<(&'static str, u64)>> {
        let m: PerCpuArray<_, u64> =
            PerCpuArray::try_from(open_pinned(&self.pin_dir, MAP_COUNTERS)?)?;
        let mut out = Vec::new();
        for (i, name) in lb_common::COUNTER_NAMES.iter().enumerate() {
            let v = m.get(&(i as u32), 0)?;
            out.push((*name, v.iter().sum()));
        }
        Ok(out)
    }
}

/// Removes everything the agent installed under `pin_dir`: links first
/// (removing the last reference detaches the programs), then the maps.
pub fn reset(pin_dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    crate::serve::report::remove(pin_dir);
    let links = pin_dir.join("links");
    if links.exists() {
        for e in std::fs::read_dir(&links)? {
            let p = e?.path();
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            // Only the devices this pin directory recorded lose their filters.
            if let Some(dev) = name.as_deref().and_then(|n| n.strip_prefix(CLSACT_RECORD)) {
                detach_netlink_filters(dev);
                std::fs::remove_dir(&p).with_context(|| format!("removing {}", p.display()))?;
            } else {
                std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            }
            removed.push(p);
        }
        std::fs::remove_dir(&links)?;
    }
    if pin_dir.exists() {
        for e in std::fs::read_dir(pin_dir)? {
            let p = e?.path();
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            removed.push(p);
        }
        std::fs::remove_dir(pin_dir).with_context(|| format!("removing {}", pin_dir.display()))?;
    }
    Ok(removed)
}

/// The keys a walk yields, at most `max`: a key walk over an LRU being
/// written can restart.
fn bounded<T, E>(keys: impl Iterator<Item = Result<T, E>>, max: usize) -> usize {
    keys.take(max).filter(Result::is_ok).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The few milliseconds a grown or carried map's pin is its
    /// moved-aside name: readers (`lb-agent status`, the sweeper) open that.
    #[test]
    fn a_map_being_carried_is_read_from_its_moved_aside_pin() {
        assert!(
            crate::datapath::host::is_root(),
            "pinning a BPF map needs root: run through `cargo xtask test`"
        );
        struct Remove(PathBuf);
        impl Drop for Remove {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let dir = Remove(PathBuf::from(format!(
            "/sys/fs/bpf/lbt-pinned-{}",
            std::process::id()
        )));
        std::fs::create_dir_all(&dir.0).expect("a directory in bpffs");
        let made = std::process::Command::new("bpftool")
            .args(["map", "create"])
            .arg(dir.0.join("LB_X_PREVIOUS"))
            .args([
                "type", "hash", "key", "4", "value", "4", "entries", "8", "name", "x",
            ])
            .status()
            .expect("bpftool");
        assert!(made.success());
        let (_, max) = open_pinned_sized(&dir.0, "LB_X").expect("the moved-aside pin");
        assert_eq!(max, 8);
        let e = open_pinned_sized(&dir.0, "LB_Y").expect_err("neither pin");
        assert!(format!("{e:#}").contains("LB_Y"), "{e:#}");
    }
}
