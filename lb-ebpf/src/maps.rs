//! The maps, by concern. Sizes here are defaults; the agent sets the real
//! ones at load time (`--max-services` and friends).

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap},
};
use lb_common::{
    Backend, DEFAULT_BACKENDS_MAX, DEFAULT_SERVICES_MAX, DEFAULT_SOCK_REV_MAX, ServiceKey,
    ServiceValue, SockRevKey, SockRevValue, Status,
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
