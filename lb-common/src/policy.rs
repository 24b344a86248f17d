//! NetworkPolicy maps: identities, local endpoints, allow entries, CIDR
//! sets and the policy's own conntrack. Layout notes:
//!
//! - LPM keys match bits in memory order. Identity and endpoint fields are
//!   always matched whole, so their byte order does not matter; ports are
//!   big-endian so that a prefix over them is an aligned port block.
//! - IPv4 addresses are stored IPv4-mapped, like every other map here.

use crate::addr::{BeU16, NetAddr};

/// Address -> identity (LPM; every pod of the cluster, this node's
/// addresses). A miss is `ID_WORLD`.
pub const MAP_IPCACHE: &str = "LB_IPCACHE_V1";
/// Local pod address -> its endpoint (id, identity, isolation).
pub const MAP_POL_EP: &str = "LB_POL_EP_V1";
/// (endpoint, peer identity, direction, protocol, port prefix) -> allow.
pub const MAP_POLICY: &str = "LB_POLICY_V1";
/// (endpoint, direction, peer address prefix) -> CIDR-set identity, for
/// `ipBlock` peers (with `except`) on any address, pods' included.
pub const MAP_POL_CIDR: &str = "LB_POL_CIDR_V1";
/// Flows a policy allowed, by endpoint and direction. Kernel-written.
pub const MAP_POL_CT: &str = "LB_POL_CT_V1";
/// Slot 0: the policy conntrack map being carried from an earlier agent,
/// looked up on a miss until the carry ends (an array of maps, per object).
pub const MAP_POL_CT_CARRIED: &str = "LB_POL_CT_CARRIED";
/// The policy revision (one entry). Agent-owned.
pub const MAP_POL_STATE: &str = "LB_POL_STATE_V1";
/// Verdicts per endpoint and reason (per-CPU u64, `ep_id * POL_REASONS + reason`).
pub const MAP_POL_COUNT: &str = "LB_POL_COUNT_V1";
/// Pod interface (host side ifindex) -> its endpoint id: a packet from it
/// whose source is not its pod's address is spoofed.
pub const MAP_POL_IF: &str = "LB_POL_IF_V1";

pub const DEFAULT_IPCACHE_MAX: u32 = 65536;
pub const DEFAULT_POL_EP_MAX: u32 = 4096;
pub const DEFAULT_POLICY_MAX: u32 = 65536;
pub const DEFAULT_POL_CIDR_MAX: u32 = 16384;
pub const DEFAULT_POL_CT_MAX: u32 = 262144;
/// Endpoint ids are below this (the counters array is sized from it).
pub const POL_EP_ID_MAX: u32 = 4096;

/// Reserved identities. 0 in an allow entry means "any peer".
pub const ID_ANY: u32 = 0;
/// This node (its addresses): always reaches its pods.
pub const ID_HOST: u32 = 1;
/// Anything the ipcache does not know.
pub const ID_WORLD: u32 = 2;
/// Identities of label sets start here.
pub const ID_FIRST_LABELS: u32 = 256;
/// CIDR-set identities (local to one endpoint and direction) start here.
pub const ID_FIRST_CIDR: u32 = 0x4000_0000;

pub const DIR_INGRESS: u8 = 1;
pub const DIR_EGRESS: u8 = 2;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_SCTP: u8 = 132;
pub const PROTO_ICMPV6: u8 = 58;

/// `PolEndpoint.flags`: a policy with Ingress (Egress) in its policyTypes
/// selects the pod.
pub const EP_F_INGRESS_ISOLATED: u32 = 1 << 0;
pub const EP_F_EGRESS_ISOLATED: u32 = 1 << 1;

/// Value of `LB_POL_EP_V1` (key: the pod's address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolEndpoint {
    pub ep_id: u32,
    pub identity: u32,
    pub flags: u32,
    /// The host side of the pod's interface (0: not known yet): a packet
    /// with this source arriving on another interface is spoofed.
    pub ifindex: u32,
}

/// Data of an `LB_IPCACHE_V1` LPM key (prefix over the 128 address bits;
/// IPv4: 96 + length).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpcacheData {
    pub addr: NetAddr,
}

/// Data of an `LB_POLICY_V1` LPM key. Prefix lengths: 72 any protocol and
/// port, 80 one protocol (any port), 80 + n a port block of 2^(16-n).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyData {
    pub ep_id: u32,
    pub identity: u32,
    pub dir: u8,
    pub proto: u8,
    pub port: BeU16,
}

pub const POLICY_PREFIX_ANY_PROTO: u32 = 72;
pub const POLICY_PREFIX_PROTO: u32 = 80;
pub const POLICY_PREFIX_FULL: u32 = 96;

/// Data of an `LB_POL_CIDR_V1` LPM key: the endpoint and direction (64
/// bits, padding included) then the peer address prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolCidrData {
    pub ep_id: u32,
    pub dir: u8,
    pub _pad: [u8; 3],
    pub addr: NetAddr,
}

pub const POL_CIDR_FIXED_BITS: u32 = 64;

/// Key of `LB_POL_CT_V1`: a flow as the endpoint first saw it (`dir`
/// ingress: the peer is the source; egress: the pod is), so a reply is
/// found by reversing its tuple.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolCtKey {
    pub saddr: NetAddr,
    pub daddr: NetAddr,
    pub sport: BeU16,
    pub dport: BeU16,
    pub proto: u8,
    pub dir: u8,
    pub _pad: [u8; 2],
    pub ep_id: u32,
}

/// The policy revision a flow was last allowed under: a packet of a flow
/// allowed under an older one is judged again (revoked access ends).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolCtValue {
    pub revision: u32,
    pub last_seen: u32,
    pub flags: u32,
    pub _pad: u32,
}

/// The one entry of `LB_POL_STATE_V1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyState {
    /// Bumped by the agent after every change of the policy maps.
    pub revision: u32,
    /// `POL_F_*`.
    pub flags: u32,
}

/// `PolicyState.flags`: some NetworkPolicy of the cluster isolates pods for
/// ingress (egress), so an interface whose pod the datapath does not know
/// yet is closed in that direction.
pub const POL_F_ANY_INGRESS: u32 = 1 << 0;
pub const POL_F_ANY_EGRESS: u32 = 1 << 1;

/// Verdict reasons counted per endpoint.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolReason {
    AllowedIngress = 0,
    AllowedEgress = 1,
    DeniedIngress = 2,
    DeniedEgress = 3,
    /// A packet on a pod interface whose pod the datapath does not know.
    UnknownEndpoint = 4,
    /// A packet leaving a pod with a source address that is not its own.
    SpoofedSource = 5,
}

pub const POL_REASONS: u32 = 6;
pub const POL_REASON_NAMES: [&str; POL_REASONS as usize] = [
    "policy-allowed-ingress",
    "policy-allowed-egress",
    "policy-denied-ingress",
    "policy-denied-egress",
    "policy-unknown-endpoint",
    "policy-spoofed-source",
];

const _: () = {
    assert!(core::mem::size_of::<PolEndpoint>() == 16);
    assert!(core::mem::size_of::<IpcacheData>() == 16);
    assert!(core::mem::size_of::<PolicyData>() == 12);
    assert!(core::mem::size_of::<PolCidrData>() == 24);
    assert!(core::mem::size_of::<PolCtKey>() == 44);
    assert!(core::mem::size_of::<PolCtValue>() == 16);
    assert!(core::mem::size_of::<PolicyState>() == 8);
};

#[cfg(feature = "user")]
#[expect(
    unsafe_code,
    reason = "aya::Pod is an unsafe trait: these types hold any bit pattern"
)]
mod pod {
    pod!(
        super::PolEndpoint,
        super::IpcacheData,
        super::PolicyData,
        super::PolCidrData,
        super::PolCtKey,
        super::PolCtValue,
        super::PolicyState,
        super::NetAddr,
    );
}
