//! What the packet programs do with a packet, as one list: each action or
//! drop reason is a `Reason`, a `C_*` index into the per-CPU counters map
//! (`LB_COUNTERS_V3`) and a metric name.

/// Declares `Reason`, its metric names and the `C_*` index constants in
/// one list, so a counter can neither lack a name nor share an index.
macro_rules! reasons {
    ($($(#[$doc:meta])* $variant:ident = $n:literal, $konst:ident, $name:literal;)*) => {
        /// What the packet programs did with a packet: an action or a drop
        /// reason, counted per CPU in `LB_COUNTERS_V3` at its value.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Reason {
            $($(#[$doc])* $variant = $n,)*
        }
        $(pub const $konst: Reason = Reason::$variant;)*
        impl Reason {
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];
            /// Its name in `/metrics` (`datapath_packets{reason}`) and status.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Reason::$variant => $name,)*
                }
            }
        }
        /// Counter names by index.
        pub const COUNTER_NAMES: [&str; COUNTERS as usize] = [$($name,)*];
    };
}

reasons! {
    TcDnat = 0, C_TC_DNAT, "tc_dnat";
    TcReverseSnat = 1, C_TC_RSNAT, "tc_reverse_snat";
    TcSnat = 2, C_TC_SNAT, "tc_snat";
    TcReverseDnat = 3, C_TC_REVDNAT, "tc_reverse_dnat";
    /// A frontend without a usable backend (a non-opening packet; an
    /// opening one is answered, `icmp_port_unreachable_sent`).
    DropNoBackend = 4, C_DROP_NO_BACKEND, "drop_no_backend";
    PassUnparsed = 5, C_PASS_UNPARSED, "pass_unparsed";
    CtCreated = 6, C_CT_CREATE, "ct_created";
    CtStaleBackend = 7, C_CT_STALE_BACKEND, "ct_stale_backend";
    IcmpPortUnreachableSent = 8, C_ICMP_UNREACH, "icmp_port_unreachable_sent";
    DropNoLocalBackend = 9, C_DROP_NO_LOCAL, "drop_no_local_backend";
    DropSourceRange = 10, C_DROP_SOURCE_RANGE, "drop_source_range";
    XdpDnat = 11, C_XDP_DNAT, "xdp_dnat";
    XdpPass = 12, C_XDP_PASS, "xdp_pass";
    /// A forward hit made its flow's entries again (a reused tuple, or a
    /// partner entry lost to LRU eviction).
    CtRestored = 13, C_CT_RESTORED, "ct_restored";
    /// No free SNAT port towards the backend: the new flow is dropped.
    DropSnatPortsExhausted = 14, C_DROP_SNAT_EXHAUSTED, "drop_snat_ports_exhausted";
    /// From outside the node with a source address of one of its pods.
    DropSpoofedPodSource = 15, C_DROP_SPOOFED, "drop_spoofed_pod_source";
    /// A port unreachable the node would have sent beyond its ICMP budget.
    DropIcmpRateLimited = 16, C_DROP_ICMP_RATE, "drop_icmp_rate_limited";
    /// An ICMP error about a translated flow, translated to its other side.
    IcmpErrorTranslated = 17, C_ICMP_ERR_TRANSLATED, "icmp_error_translated";
    /// A conntrack entry made under a key that had none (not a
    /// replacement): with the sweep's counts, what the LRU evicted.
    CtEntriesNew = 18, C_CT_ENTRY_NEW, "ct_entries_new";
    /// A backend slot naming no backend entry (a write in flight).
    DropBackendMissing = 19, C_DROP_BACKEND_MISSING, "drop_backend_missing";
    /// A translation a helper failed to write: the packet went on as it was.
    PassRewriteFailed = 20, C_PASS_REWRITE_FAILED, "pass_rewrite_failed";
    /// A new flow needs SNAT (a backend on another node, a pod reaching
    /// itself) and this node has no address of its family: dropped.
    DropNoNodeAddress = 21, C_DROP_NO_NODE_ADDR, "drop_no_node_address";
}

/// Counters in use (`Reason`'s values).
pub const COUNTERS: u32 = Reason::ALL.len() as u32;
/// Slots of the counters map: room for new counters without changing the
/// pinned map's shape.
pub const COUNTER_SLOTS: u32 = 64;

const _: () = {
    // Every reason's value is its place in the list (the names' index).
    let mut i = 0;
    while i < Reason::ALL.len() {
        assert!(Reason::ALL[i] as usize == i);
        i += 1;
    }
};
