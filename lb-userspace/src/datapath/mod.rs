//! Everything that touches the kernel through aya: loading and adopting the
//! object, its pins and links, writing plans into the maps and reading them
//! back. No other module imports aya.

pub mod host;
pub mod policy;
mod resize;
mod sys;
#[cfg(test)]
mod test_run;
#[cfg(test)]
mod test_run_conntrack;
#[cfg(test)]
mod test_run_draining;
#[cfg(test)]
mod test_run_fuzz;
#[cfg(test)]
mod test_run_policy;
#[cfg(test)]
mod test_run_ranges;

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, HashOfMaps, Map, MapData, MapInfo, MapType, PerCpuArray,
        lpm_trie::{Key as LpmKey, LpmTrie},
    },
    programs::{
        CgroupAttachMode, CgroupSockAddr, LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::FdLink, tc::TcAttachOptions,
    },
};
use lb_common::{
    Backend, COUNTERS, Config, CtKey, CtValue, MAP_AFFINITY, MAP_BACKENDS, MAP_CONFIG,
    MAP_COUNTERS, MAP_CT, MAP_MAGLEV, MAP_SERVICES, MAP_SOCK_REV, MAP_STATUS, ServiceKey,
    ServiceValue, SockRevKey, SockRevValue, SrcRangeData, Status,
};

use crate::compute::plan::{Mirror, Op};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

/// A lone XDP_PASS program (no maps), for veth peers in native XDP set-ups.
pub static XDP_PASS_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-xdp-pass"));

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

/// The clsact filter slot the agent owns: a fixed priority and handle, so
/// a restarted agent finds (and replaces in place) its predecessor's
/// filter, and `reset` removes it.
const NL_PRIORITY: u16 = 0x1b;
const NL_HANDLE: aya::programs::tc::TcHandle = aya::programs::tc::TcHandle::new(0, 0x1b);

/// Attaches XDP_PASS to `ifaces` of the calling thread's network namespace
/// (native mode); the programs stay while the returned object lives.
pub fn xdp_pass_on(ifaces: &[String]) -> anyhow::Result<Ebpf> {
    let mut ebpf = Ebpf::load(XDP_PASS_OBJECT).context("loading the XDP_PASS object")?;
    let prog: &mut Xdp = ebpf
        .program_mut("lb_xdp_pass")
        .ok_or_else(|| anyhow!("lb_xdp_pass missing"))?
        .try_into()?;
    prog.load()?;
    for i in ifaces {
        prog.attach(i, XdpMode::Driver)
            .with_context(|| format!("attaching XDP_PASS to {i}"))?;
    }
    Ok(ebpf)
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

#[derive(Clone, Copy, Debug)]
pub struct MapSizes {
    pub services: u32,
    pub backends: u32,
    pub sock_rev: u32,
    pub ct: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            services: lb_common::DEFAULT_SERVICES_MAX,
            backends: lb_common::DEFAULT_BACKENDS_MAX,
            sock_rev: lb_common::DEFAULT_SOCK_REV_MAX,
            ct: lb_common::DEFAULT_CT_MAX,
        }
    }
}

/// What a map must look like for this agent to reuse a pinned one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MapSpec {
    pub name: &'static str,
    pub map_type: MapType,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

pub fn map_specs(sizes: MapSizes) -> [MapSpec; 19] {
    use std::mem::size_of;
    [
        MapSpec {
            name: lb_common::MAP_IPCACHE,
            map_type: MapType::LpmTrie,
            key_size: 4 + size_of::<lb_common::IpcacheData>() as u32,
            value_size: 4,
            max_entries: lb_common::DEFAULT_IPCACHE_MAX,
        },
        MapSpec {
            name: lb_common::MAP_POL_EP,
            map_type: MapType::Hash,
            key_size: 16,
            value_size: size_of::<lb_common::PolEndpoint>() as u32,
            max_entries: lb_common::DEFAULT_POL_EP_MAX,
        },
        MapSpec {
            name: lb_common::MAP_POLICY,
            map_type: MapType::LpmTrie,
            key_size: 4 + size_of::<lb_common::PolicyData>() as u32,
            value_size: 4,
            max_entries: lb_common::DEFAULT_POLICY_MAX,
        },
        MapSpec {
            name: lb_common::MAP_POL_CIDR,
            map_type: MapType::LpmTrie,
            key_size: 4 + size_of::<lb_common::PolCidrData>() as u32,
            value_size: 4,
            max_entries: lb_common::DEFAULT_POL_CIDR_MAX,
        },
        MapSpec {
            name: lb_common::MAP_POL_CT,
            map_type: MapType::LruHash,
            key_size: size_of::<lb_common::PolCtKey>() as u32,
            value_size: size_of::<lb_common::PolCtValue>() as u32,
            max_entries: lb_common::DEFAULT_POL_CT_MAX,
        },
        MapSpec {
            name: lb_common::MAP_POL_STATE,
            map_type: MapType::Array,
            key_size: 4,
            value_size: size_of::<lb_common::PolicyState>() as u32,
            max_entries: 1,
        },
        MapSpec {
            name: lb_common::MAP_POL_IF,
            map_type: MapType::Hash,
            key_size: 4,
            value_size: 4,
            max_entries: lb_common::DEFAULT_POL_EP_MAX,
        },
        MapSpec {
            name: lb_common::MAP_POL_COUNT,
            map_type: MapType::PerCpuArray,
            key_size: 4,
            value_size: 8,
            max_entries: lb_common::POL_EP_ID_MAX * lb_common::POL_REASONS,
        },
        MapSpec {
            name: MAP_MAGLEV,
            map_type: MapType::HashOfMaps,
            key_size: 4,
            value_size: 4,
            max_entries: lb_common::DEFAULT_MAGLEV_MAX,
        },
        MapSpec {
            name: MAP_SERVICES,
            map_type: MapType::Hash,
            key_size: size_of::<ServiceKey>() as u32,
            value_size: size_of::<ServiceValue>() as u32,
            max_entries: sizes.services,
        },
        MapSpec {
            name: MAP_BACKENDS,
            map_type: MapType::Hash,
            key_size: 4,
            value_size: size_of::<Backend>() as u32,
            max_entries: sizes.backends,
        },
        MapSpec {
            name: MAP_SOCK_REV,
            map_type: MapType::LruHash,
            key_size: size_of::<SockRevKey>() as u32,
            value_size: size_of::<SockRevValue>() as u32,
            max_entries: sizes.sock_rev,
        },
        MapSpec {
            name: MAP_STATUS,
            map_type: MapType::Array,
            key_size: 4,
            value_size: size_of::<Status>() as u32,
            max_entries: 1,
        },
        MapSpec {
            name: MAP_CT,
            map_type: MapType::LruHash,
            key_size: size_of::<CtKey>() as u32,
            value_size: size_of::<CtValue>() as u32,
            max_entries: sizes.ct,
        },
        MapSpec {
            name: MAP_CONFIG,
            map_type: MapType::Array,
            key_size: 4,
            value_size: size_of::<Config>() as u32,
            max_entries: 1,
        },
        MapSpec {
            name: lb_common::MAP_HOSTNS,
            map_type: MapType::Array,
            key_size: 4,
            value_size: 8,
            max_entries: 1,
        },
        MapSpec {
            name: MAP_AFFINITY,
            map_type: MapType::LruHash,
            key_size: size_of::<lb_common::AffinityKey>() as u32,
            value_size: size_of::<lb_common::AffinityValue>() as u32,
            max_entries: lb_common::DEFAULT_AFFINITY_MAX,
        },
        MapSpec {
            name: lb_common::MAP_SRC_RANGES,
            map_type: MapType::LpmTrie,
            key_size: 4 + size_of::<SrcRangeData>() as u32,
            value_size: 1,
            max_entries: lb_common::DEFAULT_SRC_RANGES_MAX,
        },
        MapSpec {
            name: MAP_COUNTERS,
            map_type: MapType::PerCpuArray,
            key_size: 4,
            value_size: 8,
            max_entries: COUNTERS,
        },
    ]
}

/// Checks a pinned map against what this agent expects (aya reuses a pin by
/// name without looking at it).
fn check_pinned(pin_dir: &Path, spec: &MapSpec) -> anyhow::Result<()> {
    let path = pin_dir.join(spec.name);
    if !path.exists() {
        return Ok(());
    }
    let info = MapInfo::from_pin(&path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    let found = (
        info.map_type().ok(),
        info.key_size(),
        info.value_size(),
        info.max_entries(),
    );
    let want = (
        Some(spec.map_type),
        spec.key_size,
        spec.value_size,
        spec.max_entries,
    );
    if found != want {
        bail!(
            "pinned map {} has type/key/value/max_entries {:?} but this agent needs {:?}; \
             run `lb-agent reset --pin-dir {}` (drops established translations) or start with the sizes it was created with",
            path.display(),
            found,
            want,
            pin_dir.display()
        );
    }
    Ok(())
}

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
    links_dir: PathBuf,
    devices: Vec<String>,
    /// Pod interfaces with TC programs, by name -> ifindex.
    pod_ifaces: std::collections::HashMap<String, u32>,
    xdp: XdpAttach,
    tc_attach: TcAttach,
    ct_max: u32,
    /// The sizes the maps were loaded (or resized) with.
    sizes: MapSizes,
    /// The NetworkPolicy maps.
    pub policy: policy::PolicyIo,
}

/// The packet programs of external devices, with their direction.
pub const TC_PROGRAMS: &[(&str, &str)] =
    &[("lb_tc_ingress", "ingress"), ("lb_tc_egress", "egress")];

/// The programs of pod interfaces: the same translation, plus
/// NetworkPolicy (TC ingress there is the pod's egress).
pub const POD_PROGRAMS: &[(&str, &str)] = &[("lb_pod_from", "ingress"), ("lb_pod_to", "egress")];

pub fn load(opts: &LoadOptions) -> anyhow::Result<Datapath> {
    crate::datapath::host::check_kernel()?;
    crate::datapath::host::ensure_pin_dir(&opts.pin_dir)?;
    let links_dir = opts.pin_dir.join("links");
    std::fs::create_dir_all(&links_dir)
        .with_context(|| format!("creating {}", links_dir.display()))?;
    let mut resizes = Vec::new();
    for spec in map_specs(opts.sizes) {
        if resize::RESIZABLE.contains(&spec.name) {
            if let Some(r) = resize::prepare(&opts.pin_dir, &spec)? {
                resizes.push(r);
                continue;
            }
        }
        check_pinned(&opts.pin_dir, &spec)?;
    }
    let maglev_pin = opts.pin_dir.join(MAP_MAGLEV);
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(&opts.pin_dir)
        // A BTF map: pinned by path, not by the legacy pinning attribute.
        .map_pin_path(MAP_MAGLEV, maglev_pin.as_path())
        .map_max_entries(MAP_SERVICES, opts.sizes.services)
        .map_max_entries(MAP_BACKENDS, opts.sizes.backends)
        .map_max_entries(MAP_SOCK_REV, opts.sizes.sock_rev)
        .map_max_entries(MAP_CT, opts.sizes.ct)
        .load(OBJECT)
        .context("loading the eBPF object")?;
    // Before any program of this object runs: the resized maps hold
    // everything the old ones did.
    for r in &resizes {
        resize::fill(&mut ebpf, r)?;
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
    for r in &resizes {
        resize::finish(r);
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
        links_dir,
        devices: vec![],
        pod_ifaces: Default::default(),
        xdp: opts.xdp,
        tc_attach: opts.tc_attach,
        ct_max: opts.sizes.ct,
        sizes: opts.sizes,
        policy,
    })
}

fn take(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<Map> {
    ebpf.take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the object"))
}

/// Reuses a pinned link: the running program is swapped for the one just
/// loaded (BPF_LINK_UPDATE), so an upgrade never detaches and never leaves a
/// second link beside the first. A link pinned for another cgroup is
/// removed (the attach point changed) and `false` returned.
fn adopt_link(
    pin: &Path,
    prog: &CgroupSockAddr,
    cgroup_id: u64,
    attach_type: u32,
) -> anyhow::Result<bool> {
    if !pin.exists() {
        return Ok(false);
    }
    let link =
        sys::obj_get(pin).with_context(|| format!("opening pinned link {}", pin.display()))?;
    let info = sys::cgroup_link_info(link.as_fd())
        .with_context(|| format!("reading link {}", pin.display()))?;
    if info.link_type != sys::BPF_LINK_TYPE_CGROUP
        || info.attach_type != attach_type
        || info.cgroup_id != cgroup_id
    {
        tracing::warn!(link = %pin.display(), ?info, "pinned link is attached elsewhere; replacing it");
        std::fs::remove_file(pin).with_context(|| format!("removing {}", pin.display()))?;
        return Ok(false);
    }
    let prog_fd = prog.fd()?;
    sys::link_update(link.as_fd(), prog_fd.as_fd()).with_context(|| {
        format!(
            "updating the program of link {} (fd {})",
            pin.display(),
            link.as_raw_fd()
        )
    })?;
    tracing::info!(link = %pin.display(), "adopted pinned link");
    Ok(true)
}

/// What a map write was doing, in words (for errors: never a dump of it).
fn describe_op(op: &Op, sizes: &MapSizes) -> String {
    use crate::compute::desired::ip_of;
    let at = |a: &lb_common::NetAddr, port: lb_common::BeU16| match ip_of(a) {
        std::net::IpAddr::V4(v4) => format!("{v4}:{}", port.to_host()),
        std::net::IpAddr::V6(v6) => format!("[{v6}]:{}", port.to_host()),
    };
    let front = |k: &ServiceKey| {
        let proto = match k.proto {
            6 => "TCP",
            17 => "UDP",
            _ => "any protocol",
        };
        format!("frontend {} {proto}", at(&k.addr, k.port))
    };
    let entry = |k: &ServiceKey| {
        if k.slot == 0 {
            front(k)
        } else {
            format!("backend slot {} of {}", k.slot, front(k))
        }
    };
    match op {
        Op::PutBackend { id, backend } => format!(
            "writing backend {} (id {id}) into {MAP_BACKENDS} ({} entries)",
            at(&backend.addr, backend.port),
            sizes.backends
        ),
        Op::DelBackend { id } => format!("removing backend id {id} from {MAP_BACKENDS}"),
        Op::PutService { key, .. } => format!(
            "writing the {} into {MAP_SERVICES} ({} entries)",
            entry(key),
            sizes.services
        ),
        Op::DelService { key } => format!("removing the {} from {MAP_SERVICES}", entry(key)),
        Op::PutRange { data, .. } => format!(
            "writing a loadBalancerSourceRanges entry of {} into {}",
            at(&data.front, data.port),
            lb_common::MAP_SRC_RANGES
        ),
        Op::DelRange { data, .. } => format!(
            "removing a loadBalancerSourceRanges entry of {} from {}",
            at(&data.front, data.port),
            lb_common::MAP_SRC_RANGES
        ),
        Op::PutMaglev { service_id, table } => format!(
            "writing the Maglev table ({} entries) of service id {service_id} into {MAP_MAGLEV} ({} tables)",
            table.len(),
            lb_common::DEFAULT_MAGLEV_MAX
        ),
        Op::DelMaglev { service_id } => {
            format!("removing the Maglev table of service id {service_id} from {MAP_MAGLEV}")
        }
    }
}

impl Datapath {
    /// How many entries the maps the plan writes hold.
    pub fn capacity(&self) -> crate::compute::reconcile::Capacity {
        crate::compute::reconcile::Capacity {
            services: Some(self.sizes.services),
            backends: Some(self.sizes.backends),
            maglev: Some(lb_common::DEFAULT_MAGLEV_MAX),
        }
    }

    pub fn set_config(&mut self, mut config: Config) -> anyhow::Result<()> {
        config.maglev_size = self.maglev_size;
        self.config.set(0, config, 0).context("writing config map")
    }

    /// Attaches the packet programs (tcx links, pinned) to `devices`, once
    /// each; a pinned link of an earlier agent gets the new program instead.
    pub fn attach_devices(&mut self, devices: &[String]) -> anyhow::Result<()> {
        for dev in devices {
            if self.devices.contains(dev) {
                continue;
            }
            self.attach_tc(dev, TC_PROGRAMS)?;
            if self.xdp != XdpAttach::Off {
                self.attach_xdp(dev)?;
            }
            self.devices.push(dev.clone());
        }
        Ok(())
    }

    /// Keeps the TC programs on exactly the pod interfaces `present` (name,
    /// ifindex): new ones get them, links of vanished ones (or of a name
    /// now held by another interface) are unpinned. Pins of interfaces that
    /// no longer exist, left by an earlier agent, go too.
    pub fn sync_pod_ifaces(&mut self, present: &[(String, u32)]) -> anyhow::Result<()> {
        let gone: Vec<String> = self
            .pod_ifaces
            .iter()
            .filter(|(n, i)| !present.iter().any(|(pn, pi)| pn == *n && pi == *i))
            .map(|(n, _)| n.clone())
            .collect();
        for n in gone {
            self.pod_ifaces.remove(&n);
            self.unpin_tc(&n);
        }
        for entry in std::fs::read_dir(&self.links_dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            let dev = name
                .strip_prefix("tc-ingress-")
                .or_else(|| name.strip_prefix("tc-egress-"));
            if let Some(dev) = dev.filter(|d| !crate::datapath::host::interface_exists(d)) {
                tracing::info!(
                    interface = dev,
                    "unpinning the links of a vanished interface"
                );
                let _ = std::fs::remove_file(self.links_dir.join(&name));
            }
            let gone_record = name
                .strip_prefix(CLSACT_RECORD)
                .is_some_and(|d| !crate::datapath::host::interface_exists(d));
            if gone_record {
                let _ = std::fs::remove_dir(self.links_dir.join(&name));
            }
        }
        for (n, i) in present {
            if self.pod_ifaces.contains_key(n) || self.devices.contains(n) {
                continue;
            }
            match self.attach_tc(n, POD_PROGRAMS) {
                Ok(()) => {
                    self.pod_ifaces.insert(n.clone(), *i);
                }
                // A pod interface can vanish between listing and attaching.
                Err(e) => tracing::warn!(interface = %n, "pod interface: {e:#}"),
            }
        }
        Ok(())
    }

    fn unpin_tc(&self, dev: &str) {
        for (_, dir) in TC_PROGRAMS {
            let _ = std::fs::remove_file(self.links_dir.join(format!("tc-{dir}-{dev}")));
        }
    }

    /// The TC programs on `dev` (ingress and egress), as pinned tcx links;
    /// a pinned link of an earlier agent gets the new program instead.
    fn attach_tc(&mut self, dev: &str, programs: &[(&str, &str)]) -> anyhow::Result<()> {
        for (name, dir) in programs {
            let pin = self.links_dir.join(format!("tc-{dir}-{dev}"));
            let prog: &mut SchedClassifier = self
                .ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing"))?
                .try_into()?;
            if pin.exists() {
                let link = sys::obj_get(&pin)
                    .with_context(|| format!("opening pinned link {}", pin.display()))?;
                let prog_fd = prog.fd()?;
                if sys::link_update(link.as_fd(), prog_fd.as_fd()).is_ok() {
                    tracing::info!(link = %pin.display(), "adopted pinned link");
                    continue;
                }
                tracing::warn!(link = %pin.display(), "pinned link is stale; replacing it");
                std::fs::remove_file(&pin)?;
            }
            let attach = if *dir == "ingress" {
                TcAttachType::Ingress
            } else {
                TcAttachType::Egress
            };
            let tcx = match self.tc_attach {
                TcAttach::Netlink => None,
                mode => match prog.attach_with_options(
                    dev,
                    attach,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                ) {
                    Ok(id) => Some(id),
                    Err(e) if mode == TcAttach::Auto => {
                        tracing::info!(device = dev, "no tcx ({e}); using a clsact filter");
                        None
                    }
                    Err(e) => {
                        return Err(e)
                            .with_context(|| format!("attaching {name} to {dev} ({dir})"));
                    }
                },
            };
            let Some(id) = tcx else {
                attach_netlink(prog, dev, attach).with_context(|| {
                    format!("attaching {name} to {dev} ({dir}) as a clsact filter")
                })?;
                record_clsact(&self.links_dir, dev)?;
                tracing::info!(program = name, device = dev, "attached (clsact)");
                continue;
            };
            let link: FdLink = prog
                .take_link(id)?
                .try_into()
                .context("tcx link is not an fd link")?;
            link.pin(&pin)
                .with_context(|| format!("pinning link {}", pin.display()))?;
            tracing::info!(program = name, device = dev, "attached");
        }
        Ok(())
    }

    fn attach_xdp(&mut self, dev: &str) -> anyhow::Result<()> {
        let pin = self.links_dir.join(format!("xdp-{dev}"));
        let prog: &mut Xdp = self
            .ebpf
            .program_mut("lb_xdp")
            .ok_or_else(|| anyhow!("lb_xdp missing"))?
            .try_into()?;
        if pin.exists() {
            let link = sys::obj_get(&pin)
                .with_context(|| format!("opening pinned link {}", pin.display()))?;
            if sys::link_update(link.as_fd(), prog.fd()?.as_fd()).is_ok() {
                tracing::info!(link = %pin.display(), "adopted pinned link");
                return Ok(());
            }
            std::fs::remove_file(&pin)?;
        }
        let mode = if self.xdp == XdpAttach::Native {
            XdpMode::Driver
        } else {
            XdpMode::Skb
        };
        let id = prog
            .attach(dev, mode)
            .with_context(|| format!("attaching lb_xdp to {dev} ({:?})", self.xdp))?;
        let link: FdLink = prog
            .take_link(id)?
            .try_into()
            .context("XDP link is not an fd link")?;
        link.pin(&pin)
            .with_context(|| format!("pinning link {}", pin.display()))?;
        tracing::info!(device = dev, mode = ?self.xdp, "attached lb_xdp");
        Ok(())
    }

    /// The maps' contents as a plan mirror.
    pub fn read_mirror(&self) -> anyhow::Result<Mirror> {
        let services = self
            .services
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .context("reading services map")?;
        let backends = self
            .backends
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .context("reading backends map")?;
        let ranges = self
            .ranges
            .keys()
            .map(|k| k.map(|k| (k.prefix_len(), k.data())))
            .collect::<Result<Vec<_>, _>>()
            .context("reading source ranges map")?;
        let tables = if self.maglev_valid {
            self.maglev
                .keys()
                .collect::<Result<Vec<u32>, _>>()
                .context("reading Maglev map")?
        } else {
            vec![]
        };
        Ok(Mirror::from_entries(services, backends)
            .with_ranges(ranges)
            .with_maglev(self.maglev_size as usize, tables))
    }

    /// Applies ops in order; stops at the first failure, which the caller
    /// answers with a reload of the mirror.
    pub fn apply(&mut self, ops: &[Op]) -> anyhow::Result<()> {
        // Tables the plan shares (one Service's frontends on several
        // addresses) become one inner map under several keys.
        let mut made: Vec<(crate::compute::plan::MaglevTable, MapData)> = Vec::new();
        for op in ops {
            match op {
                Op::PutBackend { id, backend } => self.backends.insert(id, backend, 0),
                Op::PutService { key, value } => self.services.insert(key, value, 0),
                Op::DelService { key } => self.services.remove(key),
                Op::DelBackend { id } => self.backends.remove(id),
                Op::PutRange { len, data } => self.ranges.insert(&LpmKey::new(*len, *data), 1, 0),
                Op::DelRange { len, data } => self.ranges.remove(&LpmKey::new(*len, *data)),
                Op::PutMaglev { service_id, table } => {
                    let i = match made.iter().position(|(t, _)| t.same(table)) {
                        Some(i) => i,
                        None => {
                            let inner = maglev_table(table).with_context(|| {
                                format!("building the Maglev table of service id {service_id}")
                            })?;
                            made.push((table.clone(), inner));
                            made.len() - 1
                        }
                    };
                    // The swap: the datapath sees the old table or the new
                    // one, never a mix.
                    self.maglev.insert(service_id, &made[i].1, 0)
                }
                Op::DelMaglev { service_id } => match self.maglev.remove(service_id) {
                    // Already gone is what was wanted.
                    Err(aya::maps::MapError::KeyNotFound) => Ok(()),
                    r => r,
                },
            }
            .map_err(|e| {
                let full = matches!(&e, aya::maps::MapError::SyscallError(s)
                    if matches!(s.io_error.raw_os_error(), Some(libc::E2BIG | libc::ENOSPC)));
                let what = describe_op(op, &self.sizes);
                anyhow::Error::new(e).context(if full {
                    format!("{what}: the map is full")
                } else {
                    what
                })
            })?;
        }
        Ok(())
    }

    /// One conntrack sweep: removes what `compute::conntrack_gc::expired` says, walking
    /// at most the map's size of keys (a walk over an LRU being written can
    /// restart). Returns how many entries went, and how many it saw.
    pub fn ct_gc(
        &mut self,
        backends: &std::collections::HashMap<u32, Backend>,
        t: &crate::compute::conntrack_gc::Timeouts,
    ) -> anyhow::Result<(usize, usize)> {
        let now = crate::datapath::host::monotonic_s();
        let map = self
            .ebpf
            .map_mut(MAP_CT)
            .ok_or_else(|| anyhow!("map {MAP_CT} missing"))?;
        let mut ct: HashMap<_, CtKey, CtValue> = HashMap::try_from(map)?;
        let max = self.ct_max as usize;
        let entries: Vec<(CtKey, CtValue)> = ct.iter().take(max).filter_map(Result::ok).collect();
        let seen = entries.len();
        let walked: std::collections::HashMap<CtKey, u32> =
            entries.iter().map(|(k, v)| (*k, v.last_seen)).collect();
        let doomed = crate::compute::ct_sweep::doomed(&entries, now, backends, t);
        let mut n = 0;
        for k in &doomed {
            // Only what nothing touched since the walk: its flow may have
            // come back (a new connection on the tuple) meanwhile.
            match ct.get(k, 0) {
                Ok(v) if walked.get(k) == Some(&v.last_seen) => {
                    // Gone already (evicted, or its flow ended) is fine.
                    if ct.remove(k).is_ok() {
                        n += 1;
                    }
                }
                _ => {}
            }
        }
        Ok((n, seen - n))
    }

    /// The same sweep over the policy conntrack: idle entries go.
    pub fn policy_ct_gc(
        &mut self,
        t: &crate::compute::conntrack_gc::Timeouts,
    ) -> anyhow::Result<(usize, usize)> {
        use lb_common::{PolCtKey, PolCtValue};
        let now = crate::datapath::host::monotonic_s();
        let map = self
            .ebpf
            .map_mut(lb_common::MAP_POL_CT)
            .ok_or_else(|| anyhow!("map {} missing", lb_common::MAP_POL_CT))?;
        let mut ct: HashMap<_, PolCtKey, PolCtValue> = HashMap::try_from(map)?;
        let mut seen = 0;
        let doomed: Vec<PolCtKey> = ct
            .iter()
            .take(lb_common::DEFAULT_POL_CT_MAX as usize)
            .filter_map(Result::ok)
            .inspect(|_| seen += 1)
            .filter(|(k, v)| crate::compute::conntrack_gc::policy_expired(k, v, now, t))
            .map(|(k, _)| k)
            .collect();
        let n = doomed
            .iter()
            .filter(|k| {
                ct.get(k, 0)
                    .is_ok_and(|v| crate::compute::conntrack_gc::policy_expired(k, &v, now, t))
                    && ct.remove(k).is_ok()
            })
            .count();
        Ok((n, seen - n))
    }

    pub fn set_status(&mut self, status: Status) -> anyhow::Result<()> {
        self.status.set(0, status, 0).context("writing status map")
    }

    pub fn status(&self) -> anyhow::Result<Status> {
        self.status.get(&0, 0).context("reading status map")
    }
}

/// The program as the agent's clsact filter on `dev`: created, or put in
/// place of an earlier agent's filter in the same slot (no gap). The link
/// is forgotten, not dropped: dropping it would detach the filter, which
/// must outlive this process as pinned tcx links do.
fn attach_netlink(
    prog: &mut SchedClassifier,
    dev: &str,
    attach: TcAttachType,
) -> anyhow::Result<()> {
    use aya::programs::tc::{NlOptions, SchedClassifierLink};
    match aya::programs::tc::qdisc_add_clsact(dev) {
        Ok(()) => {}
        // Already there (an earlier agent, or another tool's programs).
        Err(aya::programs::tc::TcError::NetlinkError(e))
            if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(e).context("adding the clsact qdisc"),
    }
    let opts = TcAttachOptions::Netlink(NlOptions {
        priority: NL_PRIORITY,
        handle: NL_HANDLE,
        ..Default::default()
    });
    let id = match prog.attach_with_options(dev, attach, opts) {
        Ok(id) => id,
        Err(_) => {
            let old = SchedClassifierLink::attached(dev, attach, NL_PRIORITY, NL_HANDLE, None)?;
            prog.attach_to_link(old)
                .context("replacing the earlier filter")?
        }
    };
    std::mem::forget(prog.take_link(id)?);
    Ok(())
}

/// The pin directory's record of a device that got clsact filters (tcx
/// links are pins of their own; filters are not, and bpffs holds no plain
/// files, so the record is an empty directory).
const CLSACT_RECORD: &str = "clsact-";

fn record_clsact(links_dir: &Path, dev: &str) -> anyhow::Result<()> {
    let p = links_dir.join(format!("{CLSACT_RECORD}{dev}"));
    match std::fs::create_dir(&p) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            Err(e).with_context(|| format!("recording {}", p.display()))
        }
        _ => Ok(()),
    }
}

/// Removes the agent's clsact filters from `dev` (its fixed slot only).
fn detach_netlink_filters(dev: &str) {
    use aya::programs::links::Link as _;
    use aya::programs::tc::SchedClassifierLink;
    for attach in [TcAttachType::Ingress, TcAttachType::Egress] {
        if let Ok(l) = SchedClassifierLink::attached(dev, attach, NL_PRIORITY, NL_HANDLE, None) {
            // Absent is fine: the device may have gone or been reset.
            let _ = l.detach();
        }
    }
}

/// A new inner map holding `table` whole, ready to be swapped in.
fn maglev_table(table: &[u32]) -> anyhow::Result<MapData> {
    let obj = aya_obj::Map::new_from_params(
        aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_ARRAY as u32,
        4,
        4,
        table.len() as u32,
        lb_common::BPF_F_INNER_MAP,
    );
    let inner = MapData::create(obj, "lb_maglev", None).context("creating a table")?;
    let keys: Vec<u32> = (0..table.len() as u32).collect();
    sys::update_batch_u32(inner.fd().as_fd(), &keys, table).context("filling the table")?;
    Ok(inner)
}

/// Read-only access to the pins, for the inspection subcommands.
pub struct Pinned {
    pub pin_dir: PathBuf,
}

fn open_pinned(pin_dir: &Path, name: &str) -> anyhow::Result<Map> {
    let path = pin_dir.join(name);
    let data = MapData::from_pin(&path).with_context(|| {
        format!(
            "opening {} (is an agent running with --pin-dir {}?)",
            path.display(),
            pin_dir.display()
        )
    })?;
    Ok(Map::from_map_data(data)?)
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
        fn count<K: aya::Pod, V: aya::Pod>(
            pin_dir: &Path,
            name: &'static str,
        ) -> anyhow::Result<MapFill> {
            let max_entries = MapInfo::from_pin(pin_dir.join(name))?.max_entries();
            let m: HashMap<_, K, V> = HashMap::try_from(open_pinned(pin_dir, name)?)?;
            // Bounded: a key walk over an LRU being written can restart.
            let entries = m
                .keys()
                .take(max_entries as usize)
                .filter(Result::is_ok)
                .count();
            Ok(MapFill {
                name,
                entries,
                max_entries,
            })
        }
        Ok(vec![
            count::<ServiceKey, ServiceValue>(&self.pin_dir, MAP_SERVICES)?,
            count::<u32, Backend>(&self.pin_dir, MAP_BACKENDS)?,
            count::<SockRevKey, SockRevValue>(&self.pin_dir, MAP_SOCK_REV)?,
            count::<CtKey, CtValue>(&self.pin_dir, MAP_CT)?,
            MapFill {
                name: MAP_MAGLEV,
                entries: self.maglev_ids()?.len(),
                max_entries: lb_common::DEFAULT_MAGLEV_MAX,
            },
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
        let max = MapInfo::from_pin(self.pin_dir.join(MAP_CT))?.max_entries() as usize;
        let m: HashMap<_, CtKey, CtValue> = HashMap::try_from(open_pinned(&self.pin_dir, MAP_CT)?)?;
        Ok(m.iter().take(max).filter_map(Result::ok).collect())
    }

    /// Datapath counters summed over CPUs, by name.
    /// Policy verdicts per endpoint id (summed over CPUs), by
    /// `POL_REASON_NAMES` index; endpoint 0 holds the unknown-pod drops.
    pub fn policy_counts(
        &self,
    ) -> anyhow::Result<std::collections::BTreeMap<u32, [u64; lb_common::POL_REASONS as usize]>>
    {
        use lb_common::POL_REASONS;
        let m: PerCpuArray<_, u64> =
            PerCpuArray::try_from(open_pinned(&self.pin_dir, lb_common::MAP_POL_COUNT)?)?;
        let mut out = std::collections::BTreeMap::new();
        for ep in 0..lb_common::POL_EP_ID_MAX {
            let mut row = [0u64; POL_REASONS as usize];
            for (r, slot) in row.iter_mut().enumerate() {
                *slot = m.get(&(ep * POL_REASONS + r as u32), 0)?.iter().sum();
            }
            if row.iter().any(|v| *v != 0) {
                out.insert(ep, row);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The object's maps must have exactly the shapes the agent checks pins
    /// against (and that lb-common's types give).
    #[test]
    fn object_maps_match_the_rust_types() {
        assert_eq!(
            crate::datapath::host::is_root(),
            true,
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
            .load(OBJECT)
            .expect("load object");
        let mut names: Vec<&str> = ebpf.maps().map(|(n, _)| n).collect();
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
