//! Turns change sets into map writes: applies changes to the snapshot,
//! recomputes only the Services they touch, diffs those against the mirror
//! and hands the ops to the writer. A full batch (a complete listing) also
//! removes frontends that no Service claims any more.
//!
//! Split by job: `capacity` checks a Service fits the maps before any
//! write; `frontends` settles who holds a frontend (contests, refused
//! externalIPs, NodePort addresses); `service` syncs one Service.

mod capacity;
mod frontends;
mod problem;
mod service;
#[cfg(test)]
mod tests;

pub use capacity::{Capacity, NotProgrammed};
pub use problem::Problem;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use lb_common::ServiceKey;

use crate::{
    compute::plan::{Mirror, Op},
    compute::{policy::PolicyMaps, policy_plan::PolicyOp, policy_sync::PolicySync},
    model::snapshot::{Change, ObjRef, Snapshot},
    serve::health_check::Check,
    source::{
        RejectKind, Rejected,
        file::{ObjId, describe_id, known_kind, object_id},
    },
};

/// Where ops go: the kernel maps, or a fake in tests.
pub trait Writer {
    /// The capacity of the maps `apply` writes (default: no limit).
    fn capacity(&self) -> Capacity {
        Capacity::default()
    }
    /// The capacity of the NetworkPolicy maps (default: the defaults).
    fn policy_capacity(&self) -> crate::compute::policy::Capacity {
        crate::compute::policy::Capacity::default()
    }
    /// Room for a policy state that needs `wanted`, made before it is
    /// written: the new capacity, or None when nothing grew (default).
    fn grow_policy(
        &mut self,
        _wanted: &crate::compute::policy::Capacity,
    ) -> Option<crate::compute::policy::Capacity> {
        None
    }
    fn apply(&mut self, ops: &[Op]) -> anyhow::Result<()>;
    fn read_mirror(&self) -> anyhow::Result<Mirror>;
    fn apply_policy(&mut self, ops: &[PolicyOp]) -> anyhow::Result<()>;
    fn read_policy(&self) -> anyhow::Result<PolicyMaps>;
}

pub struct Reconciler {
    pub snapshot: Snapshot,
    mirror: Mirror,
    /// Frontends each Service wants (whether it holds them or lost them to
    /// another Service), and who holds each, so a change costs only what it
    /// touches and two Services never both write one frontend.
    claimed: HashMap<ObjRef, Vec<ServiceKey>>,
    owner: HashMap<ServiceKey, ObjRef>,
    /// Contested frontends only: the Services that want one another holds,
    /// recomputed when the holder lets it go.
    contenders: HashMap<ServiceKey, BTreeSet<ObjRef>>,
    /// healthCheckNodePort -> what it reports, kept per touched Service.
    pub health_checks: BTreeMap<u16, Check>,
    /// `--nodeport-addresses`: which of the node's addresses serve
    /// NodePorts (empty: all of them).
    pub node_port_cidrs: Vec<crate::model::cidr::Cidr>,
    /// `--external-ip-cidrs`: the only addresses externalIPs may use
    /// (empty: any but this node's addresses and Services' ClusterIPs).
    pub external_ip_cidrs: Vec<crate::model::cidr::Cidr>,
    /// The cluster's Service CIDRs: closed to externalIPs (empty: only
    /// allocated ClusterIPs are).
    pub service_cidrs: Vec<crate::model::cidr::Cidr>,
    pub policy: PolicySync,
    /// Services the maps cannot take (whole), checked before any write:
    /// skipped, kept at their previous state when they had one, and tried
    /// again when a change set frees entries.
    pub not_programmed: BTreeMap<ObjRef, NotProgrammed>,
    /// Objects the snapshot refused (invalid) or took only in part (a
    /// NetworkPolicy it cannot represent), until fixed or deleted.
    pub rejected: BTreeMap<ObjId, Rejected>,
    /// The writer's capacity, as of the change set being applied.
    capacity: Capacity,
    /// Gathered while syncing, handed out in the Outcome.
    newly_not_programmed: Vec<NotProgrammed>,
    programmed_again: Vec<ObjRef>,
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub ops: usize,
    pub errors: Vec<Problem>,
    /// The policy state was recomputed (its report is new).
    pub policy_changed: bool,
    /// Services found not to fit in this change set (new, or short by
    /// another amount than before): to be said once.
    pub not_programmed: Vec<NotProgrammed>,
    /// Services skipped before that are programmed now.
    pub programmed_again: Vec<ObjRef>,
}

/// Work one round of Service syncs leaves for later in the same change set:
/// Services to recompute because a frontend they want was let go, and the
/// frontends let go (removed unless one of them takes it).
#[derive(Default)]
struct Pending {
    requeue: BTreeSet<ObjRef>,
    released: Vec<ServiceKey>,
    /// Each applied Service gets an info line of its own (else debug, and
    /// the change set one line for all: a cold start of 100,000 Services
    /// is not 100,000 lines).
    say_each: bool,
    /// Services whose datapath entries changed.
    applied: usize,
}

/// Up to this many Services in a change set are logged one by one.
const SAY_EACH_MAX: usize = 100;

impl Reconciler {
    pub fn new(mirror: Mirror, node_name: Option<String>) -> Self {
        Self {
            snapshot: Snapshot::for_node(node_name),
            mirror,
            claimed: HashMap::new(),
            owner: HashMap::new(),
            contenders: HashMap::new(),
            health_checks: BTreeMap::new(),
            node_port_cidrs: Vec::new(),
            external_ip_cidrs: Vec::new(),
            service_cidrs: Vec::new(),
            policy: PolicySync::default(),
            not_programmed: BTreeMap::new(),
            rejected: BTreeMap::new(),
            capacity: Capacity::default(),
            newly_not_programmed: Vec::new(),
            programmed_again: Vec::new(),
        }
    }

    pub fn mirror(&self) -> &Mirror {
        &self.mirror
    }

    /// UDP backends that left a frontend since the last call (see
    /// `Mirror::take_left_udp`).
    pub fn take_left_udp(&mut self) -> Vec<lb_common::SockDoomedKey> {
        self.mirror.take_left_udp()
    }

    /// Backend ids deleted since the last call (see
    /// `Mirror::take_left_backends`).
    pub fn take_left_backends(&mut self) -> Vec<u32> {
        self.mirror.take_left_backends()
    }

    /// The maps as the kernel holds them, keeping what the old mirror
    /// noted and nobody took yet.
    fn reread_mirror(&mut self, w: &mut dyn Writer) -> anyhow::Result<()> {
        let left = self.mirror.take_left_udp();
        let gone = self.mirror.take_left_backends();
        self.mirror = w.read_mirror()?;
        self.mirror.note_left_udp(left);
        self.mirror.note_left_backends(gone);
        Ok(())
    }

    pub fn apply(
        &mut self,
        changes: &[Change],
        full: bool,
        w: &mut dyn Writer,
    ) -> anyhow::Result<Outcome> {
        self.apply_from(changes.to_vec(), &[], full, w)
    }

    /// `apply`, with the file each change came from (`files[i]` for
    /// `changes[i]`; shorter or empty when unknown) to name in rejections.
    pub fn apply_from(
        &mut self,
        changes: Vec<Change>,
        files: &[Option<std::sync::Arc<str>>],
        full: bool,
        w: &mut dyn Writer,
    ) -> anyhow::Result<Outcome> {
        let mut out = Outcome::default();
        let mut touched = BTreeSet::new();
        for (i, c) in changes.into_iter().enumerate() {
            let (id, upsert) = match &c {
                Change::Upsert(o) => (object_id(o), true),
                Change::Delete { kind, key } => (known_kind(kind).map(|k| (k, key.clone())), false),
            };
            let warned = self.snapshot.warnings.len();
            let res = self.snapshot.apply(c);
            let Some(id) = id else {
                match res {
                    Ok(t) => touched.extend(t),
                    Err(e) => out.errors.push(Problem::Invalid(e)),
                }
                continue;
            };
            self.rejected.remove(&id);
            let reason = match res {
                Ok(t) => {
                    touched.extend(t);
                    (self.snapshot.warnings.len() > warned).then(|| {
                        let said: Vec<String> = self.snapshot.warnings[warned..]
                            .iter()
                            .map(ToString::to_string)
                            .collect();
                        said.join("; ")
                    })
                }
                Err(e) => {
                    let reason = format!("{e}; keeping its previous state, if any");
                    out.errors.push(Problem::Invalid(e));
                    Some(reason)
                }
            };
            if let (Some(reason), true) = (reason, upsert) {
                let object = describe_id(&id);
                let reason = reason
                    .strip_prefix(&format!("{object}: "))
                    .map(str::to_string)
                    .unwrap_or(reason);
                let file = files.get(i).cloned().flatten().map(|f| f.to_string());
                self.rejected.insert(
                    id,
                    Rejected {
                        file,
                        object: Some(object),
                        kind: RejectKind::Invalid,
                        reason,
                    },
                );
            }
        }
        self.capacity = w.capacity();
        if self.policy.set_capacity(w.policy_capacity()) {
            self.snapshot.policy_dirty = true;
        }
        let mut ops = Vec::new();
        self.sync_services(touched, &mut ops, &mut out.errors);
        if full {
            self.remove_unclaimed(&mut ops);
        }
        self.retry_not_programmed(&mut ops, &mut out.errors);
        out.not_programmed = std::mem::take(&mut self.newly_not_programmed);
        out.programmed_again = std::mem::take(&mut self.programmed_again);
        out.ops = ops.len();
        if let Err(e) = w.apply(&ops) {
            // The kernel holds something between the old and new state: read
            // it back and let the next full resync converge.
            self.reread_mirror(w)?;
            return Err(e);
        }
        out.errors.extend(
            self.snapshot
                .warnings
                .drain(..)
                .map(|b| Problem::Policy(b.into())),
        );
        if self.snapshot.policy_dirty || full {
            out.ops += self.sync_policy_into(w, &mut out.errors, full)?;
            out.policy_changed = true;
        }
        Ok(out)
    }

    /// Syncs `services`, then those waiting for a frontend one of them let
    /// go, then removes what nobody took.
    fn sync_services(
        &mut self,
        services: BTreeSet<ObjRef>,
        ops: &mut Vec<Op>,
        errors: &mut Vec<Problem>,
    ) {
        let mut pending = Pending {
            say_each: services.len() <= SAY_EACH_MAX,
            ..Pending::default()
        };
        let before = ops.len();
        for svc in &services {
            self.sync_service(svc, ops, errors, &mut pending);
        }
        // A round follows the frontends let go in the one before. The
        // snapshot does not change meanwhile, so a Service synced again
        // claims what it claimed and lets nothing go: the second round is
        // the last. The bound is a guard.
        for _ in 0..4 {
            let round = std::mem::take(&mut pending.requeue);
            if round.is_empty() {
                break;
            }
            for svc in &round {
                self.sync_service(svc, ops, errors, &mut pending);
            }
        }
        // Let go and taken by nobody (its contenders no longer want it).
        for k in std::mem::take(&mut pending.released) {
            if !self.owner.contains_key(&k) {
                self.mirror.remove(&k, ops);
            }
        }
        if !pending.say_each && pending.applied > 0 {
            tracing::info!(
                services = pending.applied,
                ops = ops.len() - before,
                "applied (each Service at debug level)"
            );
        }
    }

    /// Recomputes the policy state alone (host facts changed: a pod's
    /// interface or route) and writes what changed; errors are logged.
    pub fn sync_policy(&mut self, w: &mut dyn Writer) -> anyhow::Result<usize> {
        let mut errors = Vec::new();
        let n = self.sync_policy_into(w, &mut errors, false)?;
        for e in errors {
            tracing::error!("{e}");
        }
        Ok(n)
    }

    /// Recomputes the policy state (what changed since the last time, or
    /// everything when `full`) and writes what changed.
    fn sync_policy_into(
        &mut self,
        w: &mut dyn Writer,
        errors: &mut Vec<Problem>,
        full: bool,
    ) -> anyhow::Result<usize> {
        self.snapshot.policy_dirty = false;
        let changes = std::mem::take(&mut self.snapshot.policy_changes);
        let mut said = Vec::new();
        let mut ops = self
            .policy
            .plan_changes(&self.snapshot, &changes, full, &mut said);
        // Nothing is written yet: with the room made, no pod is isolated
        // (or peer seen as world) for want of it. What a pod that did not
        // fit shows of the others is a floor: a round may not be enough.
        for _ in 0..3 {
            let Some(wanted) = self.policy.capacity.wanted(&said) else {
                break;
            };
            let Some(cap) = w.grow_policy(&wanted) else {
                break;
            };
            self.policy.set_capacity(cap);
            said.clear();
            ops = self.policy.plan_changes(
                &self.snapshot,
                &crate::model::snapshot::PolicyChanges::default(),
                true,
                &mut said,
            );
        }
        errors.extend(said.into_iter().map(Problem::Policy));
        if let Err(e) = w.apply_policy(&ops) {
            self.policy.reload(w.read_policy()?);
            // Computed again at the next resync.
            self.snapshot.policy_dirty = true;
            return Err(e);
        }
        self.policy.applied(&ops);
        Ok(ops.len())
    }

    /// Recomputes every Service against a fresh read of the maps.
    pub fn resync(&mut self, w: &mut dyn Writer) -> anyhow::Result<Outcome> {
        self.reread_mirror(w)?;
        self.claimed.clear();
        self.owner.clear();
        self.contenders.clear();
        let all: BTreeSet<ObjRef> = self.snapshot.services().map(|s| s.key.clone()).collect();
        let mut out = Outcome::default();
        let mut ops = Vec::new();
        self.capacity = w.capacity();
        self.policy.set_capacity(w.policy_capacity());
        self.sync_services(all, &mut ops, &mut out.errors);
        self.remove_unclaimed(&mut ops);
        self.retry_not_programmed(&mut ops, &mut out.errors);
        out.not_programmed = std::mem::take(&mut self.newly_not_programmed);
        out.programmed_again = std::mem::take(&mut self.programmed_again);
        out.ops = ops.len();
        w.apply(&ops)?;
        self.policy.reload(w.read_policy()?);
        out.ops += self.sync_policy_into(w, &mut out.errors, true)?;
        out.policy_changed = true;
        Ok(out)
    }
}
