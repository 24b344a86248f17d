//! The maps' shapes: sizes from the flags, and what a pinned map must look
//! like for this agent to reuse it (`migrate::prepare` compares the pins
//! with these and carries or refuses the ones that differ).

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    pub services: u32,
    pub backends: u32,
    pub sock_rev: u32,
    pub ct: u32,
    /// The services map is sized from the cluster (no `--max-services`):
    /// it grows while the agent runs when Services need more room.
    pub grow_services: bool,
    /// The same for the backends map (no `--max-backends`).
    pub grow_backends: bool,
    /// The loadBalancerSourceRanges trie, and whether it grows.
    pub ranges: u32,
    pub grow_ranges: bool,
    /// The conntrack map grows while the agent runs when a sweep finds it
    /// more than three quarters full (no `--max-ct`).
    pub grow_ct: bool,
    /// The policy conntrack (flows a policy allowed), which the programs
    /// write: it grows as the conntrack map does (no `--max-policy-ct`).
    pub pol_ct: u32,
    pub grow_pol_ct: bool,
    /// The sessionAffinity map (a client's backend per Service), which the
    /// programs write: it grows as the conntrack map does (no
    /// `--max-affinity`).
    pub affinity: u32,
    pub grow_affinity: bool,
    /// Maglev tables, one per external frontend with backends: the map
    /// of maps grows like the services map (no `--max-maglev-tables`),
    /// its inner maps carried, so every table stays as it is.
    pub maglev: u32,
    pub grow_maglev: bool,
    /// The NetworkPolicy maps the agent alone writes: the ipcache (pod
    /// addresses), the allow entries and the CIDR entries of this node's
    /// pods. No flag sizes them: they start at their defaults (or what
    /// they grew to) and grow when the policy state needs more room.
    pub ipcache: u32,
    pub pol_entries: u32,
    pub pol_cidrs: u32,
    pub grow_policy: bool,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            services: lb_common::DEFAULT_SERVICES_MAX,
            backends: lb_common::DEFAULT_BACKENDS_MAX,
            sock_rev: lb_common::DEFAULT_SOCK_REV_MAX,
            ct: lb_common::DEFAULT_CT_MAX,
            grow_services: false,
            grow_backends: false,
            ranges: lb_common::DEFAULT_SRC_RANGES_MAX,
            grow_ranges: false,
            grow_ct: false,
            pol_ct: lb_common::DEFAULT_POL_CT_MAX,
            grow_pol_ct: false,
            affinity: lb_common::DEFAULT_AFFINITY_MAX,
            grow_affinity: false,
            maglev: lb_common::DEFAULT_MAGLEV_MAX,
            grow_maglev: false,
            ipcache: lb_common::DEFAULT_IPCACHE_MAX,
            pol_entries: lb_common::DEFAULT_POLICY_MAX,
            pol_cidrs: lb_common::DEFAULT_POL_CIDR_MAX,
            grow_policy: false,
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

pub fn map_specs(sizes: MapSizes) -> [MapSpec; 20] {
    use std::mem::size_of;
    [
        MapSpec {
            name: lb_common::MAP_IPCACHE,
            map_type: MapType::LpmTrie,
            key_size: 4 + size_of::<lb_common::IpcacheData>() as u32,
            value_size: 4,
            max_entries: sizes.ipcache,
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
            max_entries: sizes.pol_entries,
        },
        MapSpec {
            name: lb_common::MAP_POL_CIDR,
            map_type: MapType::LpmTrie,
            key_size: 4 + size_of::<lb_common::PolCidrData>() as u32,
            value_size: 4,
            max_entries: sizes.pol_cidrs,
        },
        MapSpec {
            name: lb_common::MAP_POL_CT,
            map_type: MapType::LruHash,
            key_size: size_of::<lb_common::PolCtKey>() as u32,
            value_size: size_of::<lb_common::PolCtValue>() as u32,
            max_entries: sizes.pol_ct,
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
            name: lb_common::MAP_SOCK_NAT,
            map_type: MapType::SkStorage,
            key_size: 4,
            value_size: size_of::<lb_common::SockNat>() as u32,
            max_entries: 0,
        },
        MapSpec {
            name: MAP_MAGLEV,
            map_type: MapType::HashOfMaps,
            key_size: 4,
            value_size: 4,
            max_entries: sizes.maglev,
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
            max_entries: sizes.affinity,
        },
        MapSpec {
            name: lb_common::MAP_SRC_RANGES,
            map_type: MapType::LpmTrie,
            key_size: 4 + size_of::<SrcRangeData>() as u32,
            value_size: 1,
            max_entries: sizes.ranges,
        },
        MapSpec {
            name: MAP_COUNTERS,
            map_type: MapType::PerCpuArray,
            key_size: 4,
            value_size: 8,
            max_entries: lb_common::COUNTER_SLOTS,
        },
    ]
}
