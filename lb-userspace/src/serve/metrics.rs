//! What `/metrics` counts: the label sets and the metrics the agent
//! updates (the registry that encodes them is the health endpoint's).

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabel {
    pub map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabel {
    pub pod: String,
    pub reason: String,
}

/// Everything `/metrics` shows.
pub struct Metrics {
    pub sync_duration_seconds: Histogram,
    pub last_sync_timestamp_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub objects: Family<KindLabel, Gauge>,
    pub map_entries: Family<MapLabel, Gauge>,
    pub map_capacity: Family<MapLabel, Gauge>,
    pub conntrack_entries: Gauge,
    pub conntrack_flows: Family<StateLabel, Gauge>,
    pub conntrack_orphan_entries: Gauge,
    pub conntrack_evicted_entries: Gauge,
    pub conntrack_evicted_answered_flows: Gauge,
    pub policy_conntrack_entries: Gauge,
    pub affinity_entries: Gauge,
    pub watch_restarts: Counter,
    /// What change sets could not do, by kind (`Problem::label`).
    pub sync_problems: Family<KindLabel, Counter>,
    /// Input the source could not take, by kind (`RejectKind::label`).
    pub source_rejected: Family<KindLabel, Counter>,
    pub udp_sockets_destroyed: Counter,
    pub datapath_packets: Family<ReasonLabel, Gauge>,
    pub policy_verdicts: Family<PolicyLabel, Gauge>,
    pub services_not_programmed: Gauge,
    pub rejected_objects: Gauge,
}

impl Metrics {
    /// The flows one conntrack sweep saw.
    pub fn conntrack(&self, s: &crate::compute::ct_sweep::CtStats) {
        for (state, n) in [
            ("all", s.flows),
            ("unanswered", s.unanswered),
            ("closing", s.closing),
        ] {
            self.conntrack_flows
                .get_or_create(&StateLabel {
                    state: state.into(),
                })
                .set(n as i64);
        }
        self.conntrack_orphan_entries.set(s.orphans as i64);
    }

    /// Logs and counts what a change set could not do.
    pub fn problems(&self, problems: &[crate::compute::reconcile::Problem]) {
        for p in problems {
            tracing::error!("{p}");
            self.sync_problems
                .get_or_create(&KindLabel {
                    kind: p.label().into(),
                })
                .inc();
        }
    }

    /// Logs and counts the input a source read could not take.
    pub fn rejected(&self, rejected: &[crate::source::Rejected]) {
        for r in rejected {
            tracing::error!("{r}");
            self.source_rejected
                .get_or_create(&KindLabel {
                    kind: r.kind.label().into(),
                })
                .inc();
        }
    }

    /// What a conntrack sweep found: entries, flows, and what the LRU
    /// evicted since the agent started.
    pub fn swept(&self, r: &crate::datapath::SweepReport) {
        self.conntrack_entries.set(r.kept as i64);
        self.conntrack(&r.flows);
        self.conntrack_evicted_entries
            .set(r.evicted_entries_total as i64);
        self.conntrack_evicted_answered_flows
            .set(r.evicted_answered_flows_total as i64);
        self.policy_conntrack_entries.set(r.policy_kept as i64);
        self.affinity_entries.set(r.affinity_kept as i64);
        if r.removed + r.policy_removed + r.affinity_removed > 0 {
            tracing::debug!(
                removed = r.removed,
                kept = r.kept,
                policy_removed = r.policy_removed,
                policy_kept = r.policy_kept,
                affinity_removed = r.affinity_removed,
                affinity_kept = r.affinity_kept,
                took_ms = r.took.as_millis() as u64,
                "conntrack sweep"
            );
        }
    }
}
