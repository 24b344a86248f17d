//! Everything that touches the kernel through aya: loading and adopting the
//! object, its pins and links, writing plans into the maps and reading them
//! back. No other module imports aya.

mod background_growth;
mod btf;
mod carry;
mod grow;
pub mod host;
#[cfg(feature = "lab")]
mod lab;
mod links;
mod maglev_tables;
mod migrate;
pub mod packet_cost;
mod pinned;
pub mod policy;
mod sock_destroy;
mod specs;
mod stale_links;
mod sweep;
mod sweeper;
mod sys;
mod writer;

pub use grow::{GROW_MAX, Kept, Wanted, ct_grown, grown, nearly_full};
#[cfg(feature = "lab")]
pub use lab::xdp_pass_on;
use links::{CLSACT_RECORD, adopt_link, detach_netlink_filters};
pub use pinned::{MapFill, Pinned, reset};
pub use specs::{MapSizes, MapSpec, map_specs};
pub use sweeper::{SweepReport, Sweeper};
#[cfg(test)]
mod test_run;
#[cfg(test)]
mod test_run_affinity;
#[cfg(test)]
mod test_run_carry;
#[cfg(test)]
mod test_run_conntrack;
#[cfg(test)]
mod test_run_draining;
#[cfg(test)]
mod test_run_frag;
#[cfg(test)]
mod test_run_fuzz;
#[cfg(test)]
mod test_run_icmp;
#[cfg(test)]
mod test_run_icmp_options;
#[cfg(test)]
mod test_run_policy;
#[cfg(test)]
mod test_run_ranges;
#[cfg(test)]
mod test_run_stack;

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, HashOfMaps, IterableMap as _, Map, MapData, MapInfo, MapType, PerCpuArray,
        lpm_trie::{Key as LpmKey, LpmTrie},
    },
    programs::{
        CgroupAttachMode, CgroupSockAddr, LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::FdLink, tc::TcAttachOptions,
    },
};
use lb_common::{
    Backend, Config, CtKey, CtValue, MAP_AFFINITY, MAP_BACKENDS, MAP_CONFIG, MAP_COUNTERS, MAP_CT,
    MAP_MAGLEV, MAP_SERVICES, MAP_SOCK_REV, MAP_STATUS, ServiceKey, ServiceValue, SockRevKey,
    SockRevValue, SrcRangeData, Status,
};

use crate::compute::plan::{Mirror, Op};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

/// How the XDP fast path is attached (`--xdp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum XdpAttach {
    #[default]
    Off,
    Native,
    Generic,
}

/// How the TC programs are attached (`--tc-attach`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TcAttach {
    /// tcx links where the kernel has them (6.6+), else clsact filters.
    #[default]
    Auto,
    Tcx,
    /// cls_bpf filters on a clsact qdisc (kernels without tcx).
    Netlink,
}

/// The socket programs and the attach types (enum bpf_attach_type) they need.
pub const SOCK_PROGRAMS: &[(&str, u32)] = &[
    ("lb_connect4", 10),
    ("lb_connect6", 11),
    ("lb_sendmsg4", 14),
    ("lb_sendmsg6", 15),
    ("lb_recvmsg4", 19),
    ("lb_recvmsg6", 20),
    ("lb_getpeer4", 29),
    ("lb_getpeer6", 30),
];

pub struct LoadOptions {
    pub pin_dir: PathBuf,
    /// Entries per Maglev table, a prime (0: no tables).
    pub maglev_size: u32,
    pub cgroup: PathBuf,
    pub sizes: MapSizes,
    pub xdp: XdpAttach,
    pub tc_attach: TcAttach,
}

/// The loaded datapath: typed handles on the agent-owned maps.
pub struct Datapath {
    ebpf: Ebpf,
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, u32, Backend>,
    status: Array<MapData, Status>,
    config: Array<MapData, Config>,
    ranges: LpmTrie<MapData, SrcRangeData, u8>,
    maglev: HashOfMaps<MapData, u32, MapData>,
    maglev_size: u32,
    /// The pinned tables were built with `maglev_size` entries (false after
    /// the size changed: every table is rebuilt).
    maglev_valid: bool,
    /// The tables this agent made, and their users (rewritten in place).
    maglev_tables: maglev_tables::Tables,
    /// The Maglev map's own fd, for the batch calls aya lacks.
    maglev_fd: std::os::fd::OwnedFd,
    links_dir: PathBuf,
    devices: Vec<String>,
    /// Pod interfaces with TC programs, by name -> ifindex.
    pod_ifaces: std::collections::HashMap<String, u32>,
    /// Pod interfaces refused (no Ethernet header), said once each.
    refused_ifaces: std::collections::HashSet<String>,
    xdp: XdpAttach,
    tc_attach: TcAttach,
    /// The sizes the maps were loaded (or resized) with.
    sizes: MapSizes,
    /// The NetworkPolicy maps.
    pub policy: policy::PolicyIo,
    /// Where the socket programs are attached: whose processes' sockets
    /// they translate.
    cgroup: PathBuf,
    /// Maps carried from an earlier agent's pins, finished once this
    /// agent's programs run under every link (`finish_carry`).
    carried: Vec<migrate::Carry>,
    /// Why the carry is still open (the links running other programs),
    /// as last said: said again only when it changes.
    carry_held: String,
    /// Every pinned link ran this agent's programs at the last look: with
    /// nothing carried, nothing to look at again.
    links_settled: bool,
    pin_dir: PathBuf,
    /// Time spent writing plans into the maps since `take_write_time`.
    write_time: std::time::Duration,
    /// A growth of the maps the programs write, loading on a thread.
    loading: Option<background_growth::Loading>,
}

/// The packet programs of external devices, with their direction, in the
/// order their links are swapped: the hook that answers (egress, where a
/// backend's reply leaves) before the one that starts flows, so a flow is
/// never started by a new program and answered by an old one, which would
/// not find its entry in a carried conntrack map (the other way round the
/// new program looks in the old map: `LB_CT_CARRIED`).
pub const TC_PROGRAMS: &[(&str, &str)] =
    &[("lb_tc_egress", "egress"), ("lb_tc_ingress", "ingress")];

/// The programs of pod interfaces: the same translation, plus
/// NetworkPolicy (TC ingress there is the pod's egress); answers first,
/// as above.
pub const POD_PROGRAMS: &[(&str, &str)] = &[("lb_pod_to", "egress"), ("lb_pod_from", "ingress")];

pub fn load(opts: &LoadOptions) -> anyhow::Result<Datapath> {
    load_with(opts, &[], Fill::Now)
}

/// When a carried map the new programs look up on a miss (`bridge`) gets
/// the old one's entries.
#[derive(Clone, Copy, PartialEq)]
enum Fill {
    /// Before any program of the object runs, and again after the swap
    /// (a restart: no change set has been written yet).
    Now,
    /// After the swap only, on a thread of its own (a growth while
    /// running: the sync loop does not wait for a million entries).
    AfterSwap,
}

/// `load`, but the maps named in `under_way` are being carried by this
/// agent already (see `grow`): their pins are this agent's maps, reused as
/// they are, not a carry an earlier agent left to start again.
fn load_with(opts: &LoadOptions, under_way: &[&str], fill: Fill) -> anyhow::Result<Datapath> {
    crate::datapath::host::check_kernel()?;
    crate::datapath::host::ensure_pin_dir(&opts.pin_dir)?;
    let links_dir = opts.pin_dir.join("links");
    std::fs::create_dir_all(&links_dir)
        .with_context(|| format!("creating {}", links_dir.display()))?;
    // Statistics only, and no program of this agent reads it: an earlier
    // agent's counters pin goes (its programs keep the map while they run).
    let _ = std::fs::remove_file(opts.pin_dir.join(lb_common::MAP_COUNTERS_OLD));
    // The same for an earlier agent's Maglev map: this agent's map starts
    // empty and gets every table in the first change set (a new flow meets
    // no table until then and hashes over the slots). A map of this
    // agent's name beside it is older still (an upgrade, a downgrade, this
    // upgrade again): its tables may name Services that changed since.
    let old_maglev = opts.pin_dir.join(lb_common::MAP_MAGLEV_OLD);
    if old_maglev.exists() {
        let _ = std::fs::remove_file(opts.pin_dir.join(MAP_MAGLEV));
        let _ = std::fs::remove_file(&old_maglev);
    }
    let mut carried = Vec::new();
    for spec in map_specs(opts.sizes) {
        if under_way.contains(&spec.name) {
            continue;
        }
        // A pin of another shape is carried or refused by name here (aya
        // reuses a pin by name without looking at it).
        if let Some(c) = migrate::prepare(&opts.pin_dir, &spec)? {
            carried.push(c);
        }
    }
    let maglev_pin = opts.pin_dir.join(MAP_MAGLEV);
    let sock_nat_pin = opts.pin_dir.join(lb_common::MAP_SOCK_NAT);
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(&opts.pin_dir)
        // BTF maps: pinned by path, not by the legacy pinning attribute.
        .map_pin_path(MAP_MAGLEV, maglev_pin.as_path())
        .map_pin_path(lb_common::MAP_SOCK_NAT, sock_nat_pin.as_path())
        .map_max_entries(MAP_SERVICES, opts.sizes.services)
        .map_max_entries(MAP_BACKENDS, opts.sizes.backends)
        .map_max_entries(MAP_SOCK_REV, opts.sizes.sock_rev)
        .map_max_entries(MAP_CT, opts.sizes.ct)
        .map_max_entries(lb_common::MAP_SRC_RANGES, opts.sizes.ranges)
        .map_max_entries(lb_common::MAP_POL_CT, opts.sizes.pol_ct)
        .map_max_entries(MAP_AFFINITY, opts.sizes.affinity)
        .map_max_entries(MAP_MAGLEV, opts.sizes.maglev)
        .map_max_entries(lb_common::MAP_IPCACHE, opts.sizes.ipcache)
        .map_max_entries(lb_common::MAP_POLICY, opts.sizes.pol_entries)
        .map_max_entries(lb_common::MAP_POL_CIDR, opts.sizes.pol_cidrs)
        .load(OBJECT)
        .context("loading the eBPF object")?;
    // Before any program of this object runs: the carried maps hold
    // everything the old ones did, or find it there on a miss.
    for c in &mut carried {
        if let Err(e) = migrate::bridge(&ebpf, c) {
            tracing::warn!(
                map = c.name,
                "{e:#}: flows the earlier programs start before the swap come with the second copy"
            );
        }
        // A kept map's copy (no entry replaced) is one call an entry: for
        // a bridged one, after the swap on its thread like a growth's.
        if !(c.bridged() && (fill == Fill::AfterSwap || c.kept())) {
            migrate::fill(&opts.pin_dir, c)?;
        }
    }

    let cgroup = std::fs::File::open(&opts.cgroup)
        .with_context(|| format!("opening cgroup {}", opts.cgroup.display()))?;
    let cgroup_id = crate::datapath::host::cgroup_id(&opts.cgroup)?;
    for (name, attach_type) in SOCK_PROGRAMS {
        let prog: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the object"))?
            .try_into()?;
        prog.load()
            .with_context(|| format!("loading program {name}"))?;
        let pin = links_dir.join(name);
        if adopt_link(&pin, prog, cgroup_id, *attach_type)? {
            continue;
        }
        let id = prog
            .attach(&cgroup, CgroupAttachMode::Single)
            .with_context(|| format!("attaching {name} to {}", opts.cgroup.display()))?;
        let link: FdLink = prog
            .take_link(id)?
            .try_into()
            .context("link is not an fd link")?;
        link.pin(&pin)
            .with_context(|| format!("pinning link {}", pin.display()))?;
        tracing::info!(program = name, cgroup = %opts.cgroup.display(), "attached");
    }

    for name in TC_PROGRAMS.iter().chain(POD_PROGRAMS).map(|(n, _)| n) {
        let prog: &mut SchedClassifier = ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the object"))?
            .try_into()?;
        prog.load()
            .with_context(|| format!("loading program {name}"))?;
    }
    if opts.xdp != XdpAttach::Off {
        let prog: &mut Xdp = ebpf
            .program_mut("lb_xdp")
            .ok_or_else(|| anyhow!("program lb_xdp missing"))?
            .try_into()?;
        prog.load().context("loading program lb_xdp")?;
    }
    let services = HashMap::try_from(take(&mut ebpf, MAP_SERVICES)?)?;
    let backends = HashMap::try_from(take(&mut ebpf, MAP_BACKENDS)?)?;
    let status = Array::try_from(take(&mut ebpf, MAP_STATUS)?)?;
    let config = Array::try_from(take(&mut ebpf, MAP_CONFIG)?)?;
    let ranges = LpmTrie::try_from(take(&mut ebpf, lb_common::MAP_SRC_RANGES)?)?;
    let maglev = HashOfMaps::try_from(take(&mut ebpf, MAP_MAGLEV)?)?;
    let maglev_fd =
        sys::obj_get(&maglev_pin).with_context(|| format!("opening {}", maglev_pin.display()))?;
    let policy = policy::PolicyIo::take(&mut ebpf)?;
    let mut config: Array<MapData, Config> = config;
    let mut cfg = config.get(&0, 0).context("reading config map")?;
    let maglev_valid = cfg.maglev_size == opts.maglev_size;
    if !maglev_valid {
        // New flows fall back to hashing over the slots for entries the
        // old tables lack, until each table is rebuilt at the new size.
        cfg.maglev_size = opts.maglev_size;
        config.set(0, cfg, 0).context("writing config map")?;
    }
    // Loopback NodePorts are this namespace's (the node's, where the agent
    // runs), never a pod's.
    let mut hostns: Array<MapData, u64> = Array::try_from(take(&mut ebpf, lb_common::MAP_HOSTNS)?)?;
    let cookie = sys::netns_cookie().context("reading this network namespace's cookie")?;
    hostns
        .set(0, cookie, 0)
        .context("writing the host network namespace map")?;
    Ok(Datapath {
        ebpf,
        services,
        backends,
        status,
        config,
        ranges,
        maglev,
        maglev_size: opts.maglev_size,
        maglev_valid,
        maglev_tables: Default::default(),
        maglev_fd,
        links_dir,
        devices: vec![],
        pod_ifaces: Default::default(),
        refused_ifaces: Default::default(),
        xdp: opts.xdp,
        tc_attach: opts.tc_attach,
        sizes: opts.sizes,
        policy,
        cgroup: opts.cgroup.clone(),
        carried,
        carry_held: String::new(),
        links_settled: false,
        pin_dir: opts.pin_dir.clone(),
        write_time: Default::default(),
        loading: None,
    })
}

impl Datapath {
    /// Destroys the connected UDP sockets that reach one of `doomed`'s
    /// backends through its frontend; returns how many.
    pub fn destroy_udp_sockets(&self, doomed: &[lb_common::SockDoomedKey]) -> anyhow::Result<u64> {
        let Some(Map::LruHashMap(rev)) = self.ebpf.map(MAP_SOCK_REV) else {
            bail!("map {MAP_SOCK_REV} missing from the object");
        };
        let Some(Map::SkStorage(nat)) = self.ebpf.map(lb_common::MAP_SOCK_NAT) else {
            bail!("map {} missing from the object", lb_common::MAP_SOCK_NAT);
        };
        let maps = sock_destroy::SockMaps {
            nat: nat.fd().as_fd(),
            rev: rev.fd().as_fd(),
        };
        sock_destroy::destroy_udp(&maps, doomed, &self.cgroup)
    }
}

/// The capacity of the pinned map `name` in `pin_dir`, or of the map an
/// interrupted carry moved aside if that is bigger: a map that grew keeps
/// its size across restarts, a growth cut short by a crash included.
pub fn pinned_max_entries(pin_dir: &Path, name: &str) -> Option<u32> {
    [migrate::old_pin(pin_dir, name), pin_dir.join(name)]
        .iter()
        .filter_map(|p| MapInfo::from_pin(p).ok())
        .map(|i| i.max_entries())
        .max()
}

fn take(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<Map> {
    ebpf.take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the object"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The object's maps must have exactly the shapes the agent checks pins
    /// against (and that lb-common's types give).
    #[test]
    fn object_maps_match_the_rust_types() {
        assert!(
            crate::datapath::host::is_root(),
            "loading BPF maps needs root: run through `cargo xtask test`"
        );
        let dir = PathBuf::from(format!("/sys/fs/bpf/lbt{}-objcheck", std::process::id()));
        crate::datapath::host::ensure_pin_dir(&dir).expect("bpffs");
        struct Cleanup(PathBuf);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = reset(&self.0);
            }
        }
        let _c = Cleanup(dir.clone());
        let maglev_pin = dir.join(MAP_MAGLEV);
        let ebpf = EbpfLoader::new()
            .default_map_pin_directory(&dir)
            .map_pin_path(MAP_MAGLEV, maglev_pin.as_path())
            .map_pin_path(lb_common::MAP_SOCK_NAT, dir.join(lb_common::MAP_SOCK_NAT))
            .load(OBJECT)
            .expect("load object");
        let mut names: Vec<&str> = ebpf
            .maps()
            .map(|(n, _)| n)
            .filter(|n| !lb_common::UNPINNED_MAPS.contains(n))
            .collect();
        names.sort();
        let mut want: Vec<&str> = map_specs(MapSizes::default())
            .iter()
            .map(|s| s.name)
            .collect();
        want.sort();
        assert_eq!(names, want, "maps in the object vs the agent's table");
        for spec in map_specs(MapSizes::default()) {
            let info = MapInfo::from_pin(dir.join(spec.name)).expect("pinned");
            assert_eq!(
                (
                    info.map_type().ok(),
                    info.key_size(),
                    info.value_size(),
                    info.max_entries()
                ),
                (
                    Some(spec.map_type),
                    spec.key_size,
                    spec.value_size,
                    spec.max_entries
                ),
                "map {}",
                spec.name
            );
        }
        for name in SOCK_PROGRAMS
            .iter()
            .map(|p| p.0)
            .chain(TC_PROGRAMS.iter().map(|p| p.0))
        {
            assert!(ebpf.program(name).is_some(), "program {name} missing");
        }
    }
}
