//! The maps' names, keys and values. A changed layout gets a new versioned
//! name (`_V2`), so an agent never reinterprets a pinned map of the old shape.

use crate::addr::{BeU16, NetAddr};

pub const MAP_SERVICES: &str = "LB_SERVICES_V1";
pub const MAP_BACKENDS: &str = "LB_BACKENDS_V1";
pub const MAP_SOCK_REV: &str = "LB_SOCK_REV_V1";
/// Socket-local reverse translations (BPF_MAP_TYPE_SK_STORAGE).
pub const MAP_SOCK_NAT: &str = "LB_SOCK_NAT_V1";
pub const MAP_STATUS: &str = "LB_STATUS_V1";
pub const MAP_CT: &str = "LB_CT_V1";
pub const MAP_CONFIG: &str = "LB_CONFIG_V1";
pub const MAP_COUNTERS: &str = "LB_COUNTERS_V3";
/// Maps of the object that are not pinned: each loaded object has its own.
pub const UNPINNED_MAPS: &[&str] = &[
    "LB_ICMP_BUDGET",
    "LB_FRAG",
    MAP_CT_CARRIED,
    MAP_AFFINITY_CARRIED,
    crate::policy::MAP_POL_CT_CARRIED,
];
/// Slot 0: the affinity map being carried from an earlier agent, looked up
/// on a miss until the carry ends (as `MAP_CT_CARRIED`).
pub const MAP_AFFINITY_CARRIED: &str = "LB_AFFINITY_CARRIED";
/// Slot 0: the conntrack map being carried from an earlier agent, looked
/// up on a miss until the carry ends (an array of maps, per object).
pub const MAP_CT_CARRIED: &str = "LB_CT_CARRIED";
/// The counters map of earlier agents (16 slots), removed at load.
pub const MAP_COUNTERS_OLD: &str = "LB_COUNTERS_V2";
pub const MAP_AFFINITY: &str = "LB_AFFINITY_V1";
pub const MAP_SRC_RANGES: &str = "LB_SRCRANGE_V1";
/// One u64: the network namespace cookie of the node's host namespace
/// (where the agent runs). Loopback NodePorts are translated for sockets
/// of that namespace only (0: not known yet, so for none).
pub const MAP_HOSTNS: &str = "LB_HOSTNS_V1";
pub const DEFAULT_SRC_RANGES_MAX: u32 = 16384;
/// Frontend service id -> Maglev table (an array of slot numbers).
pub const MAP_MAGLEV: &str = "LB_MAGLEV_V2";
/// The Maglev map of earlier agents (tables not mmapable), removed at load:
/// this agent writes every table into its own map before its packet
/// programs replace theirs.
pub const MAP_MAGLEV_OLD: &str = "LB_MAGLEV_V1";
/// How many frontends can have a Maglev table (outer map capacity).
pub const DEFAULT_MAGLEV_MAX: u32 = 65536;
/// Cilium's default: prime, and > 100 x a typical backend count.
pub const DEFAULT_MAGLEV_TABLE_SIZE: u32 = 16381;
/// The inner maps' flag: lets tables of any size stand in for the
/// template (kernel 5.10+); every inner map carries it too.
pub const BPF_F_INNER_MAP: u32 = 1 << 12;
/// Lets the agent write a whole Maglev table with one copy through a
/// shared mapping instead of a syscall's per-entry updates (kernel 5.5+).
pub const BPF_F_MMAPABLE: u32 = 1 << 10;
/// The flags of every Maglev table and of the template (they must match).
pub const MAGLEV_TABLE_FLAGS: u32 = BPF_F_INNER_MAP | BPF_F_MMAPABLE;

/// Data of an `LB_SRCRANGE_V1` LPM key: a LoadBalancer frontend and a
/// client prefix. The prefix length covers the frontend (160 bits) plus
/// the client bits (IPv4 ranges are stored IPv4-mapped: 96 + length).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SrcRangeData {
    pub front: NetAddr,
    pub port: BeU16,
    pub proto: u8,
    pub _pad: u8,
    pub client: NetAddr,
}

/// Bits of `SrcRangeData` before the client address.
pub const SRC_RANGE_FRONT_BITS: u32 = 160;
pub const DEFAULT_AFFINITY_MAX: u32 = 65536;

/// Affinity owners: a client network namespace (socket hooks, keyed by its
/// cookie) or a client address (packets from outside).
pub const AFF_NETNS: u32 = 1;
pub const AFF_CLIENT: u32 = 2;

/// Key of `LB_AFFINITY_V1` (sessionAffinity: ClientIP): the client (netns
/// cookie in the first two words, or its address) and the frontend's
/// service id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub client: NetAddr,
    pub service_id: u32,
    pub kind: u32,
}

/// The backend a client sticks to: its slot is checked on use, so a backend
/// no longer in that slot is a miss (reselect), never a drop.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityValue {
    pub backend_id: u32,
    pub slot: u16,
    pub _pad: u16,
    pub last_used_s: u32,
    /// The Service's `timeoutSeconds` when the entry was last used, so the
    /// agent's sweep knows when it expired (0 from programs before this
    /// field: [`AFFINITY_TIMEOUT_MAX`]).
    pub timeout_s: u32,
}

/// The longest `sessionAffinityConfig.clientIP.timeoutSeconds` the API
/// accepts (one day).
pub const AFFINITY_TIMEOUT_MAX: u32 = 86400;

pub const DEFAULT_SERVICES_MAX: u32 = 65536;
pub const DEFAULT_BACKENDS_MAX: u32 = 65536;
pub const DEFAULT_SOCK_REV_MAX: u32 = 65536;
pub const DEFAULT_CT_MAX: u32 = 262144;

/// Backend flag: the endpoint runs on this node (no SNAT needed to reach it
/// and get its replies back).
pub const BACKEND_LOCAL: u8 = 1 << 0;
/// Backend flag: the endpoint is still listed in an EndpointSlice of its
/// Service but no longer usable (not ready, terminating, its pod gone), so
/// it is in no slot. Established TCP flows of the packet path keep going
/// to it (they drain); a SYN or a UDP datagram on its conntrack entry is a
/// miss and picks a usable backend. Not part of a backend's identity: the
/// agent flips it in place, under the same id.
pub const BACKEND_DRAINING: u8 = 1 << 1;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Scope of a service entry: the backend set clients inside the cluster use.
pub const SCOPE_INTERNAL: u8 = 0;
/// Reserved for externalTrafficPolicy: Local (node-local backends only).
pub const SCOPE_EXTERNAL: u8 = 1;

/// Slot 0 of (address, port 0, protocol 0) marks an address as a service
/// address: a port there that no service entry matches is refused.
pub const SVC_FLAG_ADDR_ONLY: u8 = 1 << 0;
/// Reachable from outside the node (NodePort on a node address, LoadBalancer
/// IP, externalIP): the packet-level programs translate it.
pub const SVC_FLAG_EXTERNAL: u8 = 1 << 1;
/// A NodePort frontend (loopback ones too).
pub const SVC_FLAG_NODEPORT: u8 = 1 << 2;
/// externalTrafficPolicy: Local: packets from outside use the entry of
/// scope `SCOPE_EXTERNAL` (this node's endpoints) and are dropped when it
/// has none.
pub const SVC_FLAG_EXT_LOCAL: u8 = 1 << 3;
/// loadBalancerSourceRanges: clients not in `LB_SRCRANGE_V1` are dropped.
pub const SVC_FLAG_SOURCE_RANGES: u8 = 1 << 4;
/// internalTrafficPolicy: Local, on a ClusterIP frontend: its slots hold
/// this node's endpoints only, and when it has none while other nodes have
/// some, the socket hooks drop (the syscall fails with EPERM) instead of
/// refusing. The agent leaves the flag off while the Service has no
/// endpoint anywhere, which is refused as usual.
pub const SVC_FLAG_INT_LOCAL: u8 = 1 << 5;

/// Key of `LB_SERVICES_V1`. Slot 0 is the frontend; slots 1..=count hold
/// backend ids, so choosing a backend is one hash lookup after the frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub addr: NetAddr,
    pub port: BeU16,
    pub proto: u8,
    pub scope: u8,
    pub slot: u16,
    pub _pad: [u8; 2],
}

impl ServiceKey {
    pub const fn frontend(addr: NetAddr, port: BeU16, proto: u8, scope: u8) -> Self {
        Self {
            addr,
            port,
            proto,
            scope,
            slot: 0,
            _pad: [0; 2],
        }
    }
    pub const fn with_slot(&self, slot: u16) -> Self {
        Self { slot, ..*self }
    }
    /// The entry that marks `addr` as a service address.
    pub const fn addr_only(addr: NetAddr) -> Self {
        Self::frontend(addr, BeU16(0), 0, SCOPE_INTERNAL)
    }
}

/// Value of `LB_SERVICES_V1`: at slot 0 `count`, `flags`, `service_id`,
/// `affinity_timeout`; at slots >= 1 `backend_id`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceValue {
    pub backend_id: u32,
    pub count: u16,
    pub flags: u8,
    pub _pad: u8,
    pub service_id: u32,
    pub affinity_timeout: u32,
}

/// Value of `LB_BACKENDS_V1` (key: backend id, u32).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    pub addr: NetAddr,
    pub port: BeU16,
    pub proto: u8,
    pub flags: u8,
}

/// A backend that left a frontend, as the agent's UDP socket pass looks it
/// up: `service_id` of the frontend (as in `SockRevValue`), then the
/// backend's port and address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockDoomedKey {
    pub service_id: u32,
    pub port: BeU16,
    pub _pad: u16,
    pub addr: NetAddr,
}

/// Key of `LB_FRAG`: a datagram's fragments as one hook sees them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub saddr: NetAddr,
    pub daddr: NetAddr,
    pub id: u32,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Value of `LB_FRAG`: the ports the datagram's first fragment carried.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragPorts {
    pub sport: BeU16,
    pub dport: BeU16,
}

/// Datagrams in flight as fragments that the packet programs remember.
pub const FRAG_MAX: u32 = 8192;

/// One reverse translation a socket needs: the backend its packets go to
/// and the frontend it asked for (`service_id` of that frontend).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockNatEntry {
    pub backend: NetAddr,
    pub backend_port: BeU16,
    pub front_port: BeU16,
    pub front: NetAddr,
    pub service_id: u32,
}

/// Entries per socket in `LB_SOCK_NAT_V1`: slot 0 is a connected socket's
/// (written at connect); an unconnected UDP socket's datagrams to several
/// Services take slots 1.. (a DNS forwarder's upstreams).
pub const SOCK_NAT_SLOTS: usize = 4;

/// Value of `LB_SOCK_NAT_V1`, socket-local storage: it lives exactly as
/// long as its socket, so no churn of other sockets can evict it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockNat {
    pub entries: [SockNatEntry; SOCK_NAT_SLOTS],
}

/// Key of `LB_SOCK_REV_V1` (read only, for sockets connected before the
/// socket-local storage; no agent of this version writes it): which frontend a socket reached a backend through.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevKey {
    pub cookie: u64,
    pub addr: NetAddr,
    pub port: BeU16,
    pub _pad: [u8; 6],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevValue {
    pub addr: NetAddr,
    pub port: BeU16,
    pub _pad: [u8; 2],
    pub service_id: u32,
}

/// Conntrack entry kinds: one flow through a frontend has a forward entry
/// (client -> frontend), a reverse one (backend -> client, for replies), and
/// when the backend is on another node an SNAT pair (client -> backend at
/// egress, backend -> node at ingress). The kind is part of the key, so a
/// flow to a pod directly never shares an entry with one through a frontend.
///
/// An SNAT'd flow has a node port of its own (`CtValue::snat_port` of its
/// forward entry), unique towards its backend. Ingress puts it in the
/// source port of the flow's packets in both directions (client ->
/// backend after DNAT, backend -> client after reverse SNAT), so its SNAT
/// entry is keyed `client:snat_port -> backend` and its reverse entry
/// `backend:snat_port -> client`: two flows of one client port through two
/// frontends to one backend never share an entry. A flow to a local
/// backend whose reverse key another frontend's flow holds (the backend
/// would see one tuple for both) is SNAT'd the same way, as netfilter NAT
/// picks another source port on a clash.
pub const CT_FWD: u8 = 1;
pub const CT_REV: u8 = 2;
pub const CT_SNAT: u8 = 3;
pub const CT_RSNAT: u8 = 4;

/// `CtValue.flags` bit: a FIN or RST went through; the entry may go soon.
/// (The low bits of a forward entry hold the backend's flags.)
pub const CT_F_CLOSING: u8 = 1 << 7;
/// A TCP packet other than a bare SYN went through: the handshake got an
/// answer. Without it an entry lives only the short SYN timeout.
pub const CT_F_ESTABLISHED: u8 = 1 << 6;
/// On a reverse SNAT entry: its flow's packets carry the SNAT port as
/// source port between ingress and egress (entries of earlier agents do
/// not, and keep working as they were made).
pub const CT_F_PORT_KEYED: u8 = 1 << 5;

/// Key of `LB_CT_V1` (an LRU the kernel writes; the agent only reads and deletes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub saddr: NetAddr,
    pub daddr: NetAddr,
    pub sport: BeU16,
    pub dport: BeU16,
    pub proto: u8,
    pub kind: u8,
    pub _pad: [u8; 2],
}

/// The translation an entry applies: FWD -> backend (DNAT), REV -> frontend
/// (source of replies), SNAT -> node address and port, RSNAT -> client.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtValue {
    pub addr: NetAddr,
    pub port: BeU16,
    pub flags: u8,
    pub _pad: u8,
    pub backend_id: u32,
    /// Seconds of CLOCK_MONOTONIC (bpf_ktime_get_ns / 1e9) at the last packet.
    pub last_seen: u32,
    /// Forward entries of SNAT'd flows: the flow's node port (0: none).
    pub snat_port: BeU16,
    pub _pad2: u16,
}

/// The one entry of `LB_CONFIG_V1`: this node's addresses, the source of
/// SNAT towards backends on other nodes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub node_ip4: NetAddr,
    pub node_ip6: NetAddr,
    pub flags: u32,
    /// Entries of every Maglev table (`--maglev-table-size`, a prime; 0:
    /// no tables, new flows hash over the slots).
    pub maglev_size: u32,
}

pub const CONFIG_HAS_IP4: u32 = 1 << 0;
pub const CONFIG_HAS_IP6: u32 = 1 << 1;

/// TCP header flag bits (the byte at offset 13).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// The node ports SNAT hands out towards backends on other nodes: 1024-29999
/// and 61000-65535, outside Linux's default ephemeral range (32768-60999,
/// so no socket the node connects from holds the same tuple) and the
/// default NodePort range (30000-32767). The agent warns when
/// ip_local_port_range reaches into them.
pub const SNAT_LOW_MIN: u16 = 1024;
pub const SNAT_LOW_MAX: u16 = 29999;
pub const SNAT_PORT_MIN: u16 = 61000;
pub const SNAT_PORT_MAX: u16 = 65535;

/// 1 when `port` is one SNAT may hand out.
pub const fn is_snat_port(port: u16) -> bool {
    (port >= SNAT_LOW_MIN && port <= SNAT_LOW_MAX) || port >= SNAT_PORT_MIN
}

/// The one entry of `LB_STATUS_V1`, written by the agent only.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    pub synced_generation: u64,
    pub synced_at_unix_ms: u64,
    pub agent_pid: u32,
    /// The port the agent's health endpoint is bound to (0: off).
    pub health_port: u32,
    /// Where the agent reads the cluster from (`kube URL`, `file:DIR`),
    /// UTF-8, NUL-padded, cut at 64 bytes.
    pub source: [u8; 64],
}

impl Default for Status {
    fn default() -> Self {
        Self {
            synced_generation: 0,
            synced_at_unix_ms: 0,
            agent_pid: 0,
            health_port: 0,
            source: [0; 64],
        }
    }
}

impl Status {
    pub fn set_source(&mut self, s: &str) {
        self.source = [0; 64];
        // Cut on a character boundary so the text stays valid UTF-8.
        let mut n = s.len().min(64);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        self.source[..n].copy_from_slice(&s.as_bytes()[..n]);
    }

    pub fn source_str(&self) -> &str {
        let n = self.source.iter().position(|b| *b == 0).unwrap_or(64);
        core::str::from_utf8(&self.source[..n]).unwrap_or("?")
    }
}

const _: () = {
    assert!(core::mem::size_of::<ServiceKey>() == 24);
    assert!(core::mem::align_of::<ServiceKey>() == 4);
    assert!(core::mem::size_of::<ServiceValue>() == 16);
    assert!(core::mem::size_of::<Backend>() == 20);
    assert!(core::mem::size_of::<SockRevKey>() == 32);
    assert!(core::mem::size_of::<SockRevValue>() == 24);
    assert!(core::mem::size_of::<SockDoomedKey>() == 24);
    assert!(core::mem::size_of::<SockNatEntry>() == 40);
    assert!(core::mem::size_of::<FragKey>() == 40);
    assert!(core::mem::offset_of!(SockNatEntry, service_id) == 36);
    assert!(core::mem::offset_of!(SockRevValue, service_id) == 20);
    assert!(core::mem::size_of::<Status>() == 88);
    assert!(core::mem::size_of::<CtKey>() == 40);
    assert!(core::mem::size_of::<CtValue>() == 32);
    assert!(core::mem::size_of::<Config>() == 40);
    assert!(core::mem::size_of::<AffinityKey>() == 24);
    assert!(core::mem::size_of::<AffinityValue>() == 16);
    assert!(core::mem::size_of::<SrcRangeData>() == 36);
};

#[cfg(feature = "user")]
#[expect(
    unsafe_code,
    reason = "aya::Pod is an unsafe trait: these types hold any bit pattern"
)]
mod pod {
    pod!(
        super::ServiceKey,
        super::ServiceValue,
        super::Backend,
        super::SockRevKey,
        super::SockRevValue,
        super::SockNat,
        super::Status,
        super::CtKey,
        super::CtValue,
        super::Config,
        super::AffinityKey,
        super::AffinityValue,
        super::SrcRangeData,
    );
}
