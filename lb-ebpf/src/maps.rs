//! The maps, by concern. Sizes here are defaults; the agent sets the real
//! ones at load time (`--max-services` and friends).

use aya_ebpf::{
    btf_maps::{self, ArrayOfMaps, HashOfMaps},
    macros::{btf_map, map},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use lb_common::{
    AffinityKey, AffinityValue, Backend, CONFIG_HAS_IP4, CONFIG_HAS_IP6, COUNTER_SLOTS, Config,
    CtKey, CtValue, DEFAULT_AFFINITY_MAX, DEFAULT_BACKENDS_MAX, DEFAULT_CT_MAX,
    DEFAULT_IPCACHE_MAX, DEFAULT_MAGLEV_MAX, DEFAULT_POL_CIDR_MAX, DEFAULT_POL_CT_MAX,
    DEFAULT_POL_EP_MAX, DEFAULT_POLICY_MAX, DEFAULT_SERVICES_MAX, DEFAULT_SOCK_REV_MAX,
    DEFAULT_SRC_RANGES_MAX, IpcacheData, MAGLEV_TABLE_FLAGS, NetAddr, POL_EP_ID_MAX, POL_REASONS,
    PolCidrData, PolCtKey, PolCtValue, PolEndpoint, PolicyData, PolicyState, Reason, ServiceKey,
    ServiceValue, SockRevKey, SockRevValue, SrcRangeData, Status,
};

/// Frontends (slot 0) and their backend slots (1..=count). Agent-owned.
#[map]
pub static LB_SERVICES_V1: HashMap<ServiceKey, ServiceValue> =
    HashMap::pinned(DEFAULT_SERVICES_MAX, 0);

/// Backend id -> address. Agent-owned.
#[map]
pub static LB_BACKENDS_V1: HashMap<u32, Backend> = HashMap::pinned(DEFAULT_BACKENDS_MAX, 0);

/// (socket cookie, backend) -> frontend, for getpeername and UDP recvmsg.
/// Kernel-written; LRU so it can never fill up with dead sockets.
#[map]
pub static LB_SOCK_REV_V1: LruHashMap<SockRevKey, SockRevValue> =
    LruHashMap::pinned(DEFAULT_SOCK_REV_MAX, 0);

/// The agent's sync status; the kernel never touches it. Declared here so it
/// is pinned beside the others and readable by `lb-agent status`.
#[map]
pub static LB_STATUS_V1: Array<Status> = Array::pinned(1, 0);

/// Conntrack of packet-level flows. Kernel-written; the agent reads (`ct
/// list`) and deletes.
#[map]
pub static LB_CT_V1: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(DEFAULT_CT_MAX, 0);

/// While the agent carries an earlier agent's conntrack map of another
/// size into `LB_CT_V1`: that map, in slot 0, so a flow the earlier
/// programs made after the first copy is found on a miss (empty
/// otherwise). Not pinned: each loaded object has its own.
#[btf_map]
pub static LB_CT_CARRIED: ArrayOfMaps<btf_maps::LruHashMap<CtKey, CtValue, 1>, 1> =
    ArrayOfMaps::new();

/// The host network namespace's cookie (loopback NodePorts exist there
/// only). Agent-owned.
#[map]
pub static LB_HOSTNS_V1: Array<u64> = Array::pinned(1, 0);

/// This node's addresses (SNAT source). Agent-owned.
#[map]
pub static LB_CONFIG_V1: Array<Config> = Array::pinned(1, 0);

/// This node's address of a family (the source SNAT gives), if it has one.
#[inline(always)]
pub fn node_addr(v6: bool) -> Option<NetAddr> {
    let c = LB_CONFIG_V1.get(0)?;
    match v6 {
        true if c.flags & CONFIG_HAS_IP6 != 0 => Some(c.node_ip6),
        false if c.flags & CONFIG_HAS_IP4 != 0 => Some(c.node_ip4),
        _ => None,
    }
}

/// What the packet programs did, per CPU, by `C_*` index.
#[map]
pub static LB_COUNTERS_V3: PerCpuArray<u64> = PerCpuArray::pinned(COUNTER_SLOTS, 0);

#[inline(always)]
pub fn count(r: Reason) {
    if let Some(p) = LB_COUNTERS_V3.get_ptr_mut(r as u32) {
        // SAFETY: a per-CPU slot: no other CPU writes it; the pointer is valid
        // for this program run.
        unsafe { *p += 1 };
    }
}

/// Every drop of the packet path goes through here, counted under its
/// reason: TC's verdict (TC_ACT_SHOT); XDP's through `xdp_drop`.
#[inline(always)]
pub fn drop(r: Reason) -> i32 {
    count(r);
    aya_ebpf::bindings::TC_ACT_SHOT
}

/// `drop`, with XDP's verdict.
#[inline(always)]
pub fn xdp_drop(r: Reason) -> u32 {
    drop(r);
    aya_ebpf::bindings::xdp_action::XDP_DROP
}

/// Ports of first fragments, for the later ones (see `frag`). Not pinned:
/// a datagram's fragments arrive within moments.
#[map]
pub static LB_FRAG: LruHashMap<lb_common::FragKey, lb_common::FragPorts> =
    LruHashMap::with_max_entries(lb_common::FRAG_MAX, 0);

/// The node's budget of ICMP errors it builds: ns of credit, and when it
/// was last topped up. Not pinned: a fresh budget per loaded object.
#[map]
pub static LB_ICMP_BUDGET: Array<[u64; 2]> = Array::with_max_entries(1, 0);

/// sessionAffinity: ClientIP choices. Kernel-written.
#[map]
pub static LB_AFFINITY_V1: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::pinned(DEFAULT_AFFINITY_MAX, 0);

/// While the agent carries an earlier agent's affinity map of another
/// size: that map, in slot 0, so a client the earlier programs remembered
/// after the first copy keeps its backend (as `LB_CT_CARRIED`). Not pinned.
#[btf_map]
pub static LB_AFFINITY_CARRIED: ArrayOfMaps<
    btf_maps::LruHashMap<AffinityKey, AffinityValue, 1>,
    1,
> = ArrayOfMaps::new();

/// loadBalancerSourceRanges: (LoadBalancer frontend, client prefix). Agent-owned.
#[map]
pub static LB_SRCRANGE_V1: LpmTrie<SrcRangeData, u8> = LpmTrie::pinned(DEFAULT_SRC_RANGES_MAX, 0);

/// Reverse translations of each socket the socket hooks translated, in
/// the socket's own storage (freed with it). Pinned by path, as a BTF map.
#[btf_map]
pub static LB_SOCK_NAT_V1: btf_maps::SkStorage<lb_common::SockNat> = btf_maps::SkStorage::new();

/// Maglev tables by frontend service id, swapped in whole by the agent:
/// each inner array maps `flow hash % maglev_size` to a slot number. The
/// template's size is a placeholder: BPF_F_INNER_MAP lets the agent's
/// tables have `--maglev-table-size` entries; BPF_F_MMAPABLE lets it write
/// one with a single copy.
#[btf_map]
pub static LB_MAGLEV_V2: HashOfMaps<
    u32,
    btf_maps::Array<u32, 1, { MAGLEV_TABLE_FLAGS as usize }>,
    { DEFAULT_MAGLEV_MAX as usize },
> = HashOfMaps::new();

/// Address -> identity: every pod of the cluster, this node's addresses.
/// Agent-owned.
#[map]
pub static LB_IPCACHE_V1: LpmTrie<IpcacheData, u32> = LpmTrie::pinned(DEFAULT_IPCACHE_MAX, 0);

/// Local pod address -> endpoint (id, identity, isolation). Agent-owned.
#[map]
pub static LB_POL_EP_V1: HashMap<NetAddr, PolEndpoint> = HashMap::pinned(DEFAULT_POL_EP_MAX, 0);

/// Allow entries by endpoint, peer identity, direction, protocol and port
/// prefix. Agent-owned.
#[map]
pub static LB_POLICY_V1: LpmTrie<PolicyData, u32> = LpmTrie::pinned(DEFAULT_POLICY_MAX, 0);

/// ipBlock peers: (endpoint, direction, address prefix) -> CIDR-set
/// identity, `except` blocks already carved out. Agent-owned.
#[map]
pub static LB_POL_CIDR_V1: LpmTrie<PolCidrData, u32> = LpmTrie::pinned(DEFAULT_POL_CIDR_MAX, 0);

/// Flows the policy allowed. Kernel-written; the agent sweeps it.
#[map]
pub static LB_POL_CT_V1: LruHashMap<PolCtKey, PolCtValue> =
    LruHashMap::pinned(DEFAULT_POL_CT_MAX, 0);

/// While the agent carries an earlier agent's policy conntrack map of
/// another size: that map, in slot 0, so a flow the earlier programs
/// allowed after the first copy is known here on a miss (as
/// `LB_CT_CARRIED`). Not pinned.
#[btf_map]
pub static LB_POL_CT_CARRIED: ArrayOfMaps<btf_maps::LruHashMap<PolCtKey, PolCtValue, 1>, 1> =
    ArrayOfMaps::new();

/// The policy revision and flags. Agent-owned.
#[map]
pub static LB_POL_STATE_V1: Array<PolicyState> = Array::pinned(1, 0);

/// Pod interface ifindex -> endpoint id (source validation). Agent-owned.
#[map]
pub static LB_POL_IF_V1: HashMap<u32, u32> = HashMap::pinned(DEFAULT_POL_EP_MAX, 0);

/// Policy verdicts per endpoint and reason, per CPU.
#[map]
pub static LB_POL_COUNT_V1: PerCpuArray<u64> = PerCpuArray::pinned(POL_EP_ID_MAX * POL_REASONS, 0);
