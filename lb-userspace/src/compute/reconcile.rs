//! Turns change sets into map writes: applies changes to the snapshot,
//! recomputes only the Services they touch, diffs those against the mirror
//! and hands the ops to the writer. A full batch (a complete listing) also
//! removes frontends that no Service claims any more.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use lb_common::{SVC_FLAG_ADDR_ONLY, ServiceKey};

use crate::{
    compute::desired::{self, Frontend, ip_of},
    compute::plan::{Mirror, Op},
    compute::{policy::PolicyMaps, policy_plan::PolicyOp, policy_sync::PolicySync},
    model::snapshot::{Change, ObjRef, Snapshot},
    serve::health_check::Check,
    source::file::{ObjId, Rejected, describe_id, object_id},
};

/// How many entries each map the plan writes can hold (None: no limit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capacity {
    pub services: Option<u32>,
    pub backends: Option<u32>,
    pub maglev: Option<u32>,
}

/// A Service the maps cannot take whole, and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NotProgrammed {
    /// `namespace/name`.
    pub service: String,
    /// The map that is short.
    pub map: String,
    /// Entries of that map the Service needs beyond what it holds there.
    pub needed: u64,
    /// Free entries of the map when the Service was tried.
    pub free: u64,
    pub capacity: u64,
    /// What the map holds, in words.
    pub holds: String,
    /// What an operator can do.
    pub remedy: String,
    /// The Service was in the maps before: that state stays (whole).
    pub previous_state_kept: bool,
}

impl NotProgrammed {
    /// The same trouble (what is logged once): the map and the need.
    fn same(&self, other: &Self) -> bool {
        (&self.map, self.needed, self.previous_state_kept)
            == (&other.map, other.needed, other.previous_state_kept)
    }
}

impl std::fmt::Display for NotProgrammed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = if self.previous_state_kept {
            "its update"
        } else {
            "the Service"
        };
        write!(
            f,
            "Service {} not programmed: map {} ({}) is full: {what} needs {} entries and {} of its {} are free; ",
            self.service, self.map, self.holds, self.needed, self.free, self.capacity,
        )?;
        if self.previous_state_kept {
            f.write_str("its previous state stays programmed; ")?;
        }
        write!(
            f,
            "{} (the agent tries again when entries free up)",
            self.remedy
        )
    }
}

/// Entries one Service's frontends need beyond what the maps hold for them.
#[derive(Default, Debug)]
struct Need {
    services: u64,
    backends: u64,
    maglev: u64,
}

/// Where ops go: the kernel maps, or a fake in tests.
pub trait Writer {
    /// The capacity of the maps `apply` writes (default: no limit).
    fn capacity(&self) -> Capacity {
        Capacity::default()
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
    pub errors: Vec<String>,
    /// The policy state was recomputed (its report is new).
    pub policy_changed: bool,
    /// Services found not to fit in this change set (new, or short by
    /// another amount than before): to be said once.
    pub not_programmed: Vec<NotProgrammed>,
    /// Services skipped before that are programmed now.
    pub programmed_again: Vec<ObjRef>,
}

fn describe_key(k: &ServiceKey) -> String {
    let ip = ip_of(&k.addr);
    let proto = match k.proto {
        6 => "TCP",
        17 => "UDP",
        _ => "any",
    };
    match ip {
        std::net::IpAddr::V4(v4) => format!("{v4}:{}/{proto}", k.port.to_host()),
        std::net::IpAddr::V6(v6) => format!("[{v6}]:{}/{proto}", k.port.to_host()),
    }
}

/// Who wins a frontend two Services claim, smallest first: a ClusterIP
/// always; then the oldest Service (creationTimestamp; one without sorts
/// last); then namespace/name. The same on every node, whatever the order
/// changes arrive in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Rank<'a> {
    /// 0: the frontend is on one of the Service's ClusterIPs; 1: any other
    /// claim; 2: a Service no longer in the snapshot.
    class: u8,
    created: i64,
    service: &'a ObjRef,
}

impl Rank<'_> {
    fn why(&self, loser: &Rank) -> &'static str {
        if self.class < loser.class {
            "a ClusterIP wins over any other claim"
        } else if self.created < loser.created {
            "the older Service wins"
        } else {
            "created at the same time; the first by namespace/name wins"
        }
    }
}

/// Work one round of Service syncs leaves for later in the same change set:
/// Services to recompute because a frontend they want was let go, and the
/// frontends let go (removed unless one of them takes it).
#[derive(Default)]
struct Pending {
    requeue: BTreeSet<ObjRef>,
    released: Vec<ServiceKey>,
}

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

    /// The maps as the kernel holds them, keeping what the old mirror
    /// noted and nobody took yet.
    fn reread_mirror(&mut self, w: &mut dyn Writer) -> anyhow::Result<()> {
        let left = self.mirror.take_left_udp();
        self.mirror = w.read_mirror()?;
        self.mirror.note_left_udp(left);
        Ok(())
    }

    pub fn apply(
        &mut self,
        changes: &[Change],
        full: bool,
        w: &mut dyn Writer,
    ) -> anyhow::Result<Outcome> {
        self.apply_from(changes, &[], full, w)
    }

    /// `apply`, with the file each change came from (`files[i]` for
    /// `changes[i]`; shorter or empty when unknown) to name in rejections.
    pub fn apply_from(
        &mut self,
        changes: &[Change],
        files: &[Option<std::sync::Arc<str>>],
        full: bool,
        w: &mut dyn Writer,
    ) -> anyhow::Result<Outcome> {
        let mut out = Outcome::default();
        let mut touched = BTreeSet::new();
        for (i, c) in changes.iter().enumerate() {
            let id = match c {
                Change::Upsert(o) => object_id(o),
                Change::Delete { kind, key } => Some((kind.clone(), key.clone())),
            };
            let warned = self.snapshot.warnings.len();
            let res = self.snapshot.apply(c);
            let Some(id) = id else {
                match res {
                    Ok(t) => touched.extend(t),
                    Err(e) => out.errors.push(format!("{e}; keeping its previous state")),
                }
                continue;
            };
            self.rejected.remove(&id);
            let reason = match res {
                Ok(t) => {
                    touched.extend(t);
                    (self.snapshot.warnings.len() > warned)
                        .then(|| self.snapshot.warnings[warned..].join("; "))
                }
                Err(e) => {
                    out.errors.push(format!("{e}; keeping its previous state"));
                    Some(format!("{e}; keeping its previous state, if any"))
                }
            };
            if let (Some(reason), Change::Upsert(_)) = (reason, c) {
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
                        reason,
                    },
                );
            }
        }
        self.capacity = w.capacity();
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
        out.errors.append(&mut self.snapshot.warnings);
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
        errors: &mut Vec<String>,
    ) {
        let mut pending = Pending::default();
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
        errors: &mut Vec<String>,
        full: bool,
    ) -> anyhow::Result<usize> {
        self.snapshot.policy_dirty = false;
        let changes = std::mem::take(&mut self.snapshot.policy_changes);
        let ops = self
            .policy
            .plan_changes(&self.snapshot, &changes, full, errors);
        if let Err(e) = w.apply_policy(&ops) {
            self.policy.reload(w.read_policy()?);
            // Computed again at the next resync.
            self.snapshot.policy_dirty = true;
            return Err(e);
        }
        self.policy.applied(&ops);
        Ok(ops.len())
    }

    /// Services skipped for want of room whose shortfall the maps can now
    /// cover are tried again (in name order; each is checked again whole).
    fn retry_not_programmed(&mut self, ops: &mut Vec<Op>, errors: &mut Vec<String>) {
        let free = |cap: Option<u32>, used: usize| {
            cap.map_or(u64::MAX, |c| (c as u64).saturating_sub(used as u64))
        };
        let m = &self.mirror;
        let (fs, fb, fm) = (
            free(self.capacity.services, m.services().len()),
            free(self.capacity.backends, m.backends().len()),
            free(self.capacity.maglev, m.maglev_tables()),
        );
        let ready: BTreeSet<ObjRef> = self
            .not_programmed
            .iter()
            .filter(|(_, np)| {
                let room = match np.map.as_str() {
                    lb_common::MAP_SERVICES => fs,
                    lb_common::MAP_BACKENDS => fb,
                    _ => fm,
                };
                np.needed <= room
            })
            .map(|(k, _)| k.clone())
            .collect();
        if !ready.is_empty() {
            self.sync_services(ready, ops, errors);
        }
    }

    /// What the frontends `fes` need beyond what the maps hold for them. A
    /// write of a Service's frontend adds its new slots before dropping
    /// surplus ones, so the need is counted per frontend, never netted
    /// against what another frontend lets go.
    fn need<'a>(&self, fes: impl Iterator<Item = &'a Frontend>) -> Need {
        let m = &self.mirror;
        let mut need = Need::default();
        let mut new_backends = std::collections::HashSet::new();
        for fe in fes {
            let old = m.services().get(&fe.key);
            let have = old.map_or(0, |v| 1 + v.count as u64);
            need.services += (1 + fe.backends.len() as u64).saturating_sub(have);
            for b in fe.backends.iter().chain(&fe.draining) {
                if !m.holds_backend(b) && new_backends.insert(*b) {
                    need.backends += 1;
                }
            }
            let wants_table = m.maglev_size() > 0
                && fe.flags & lb_common::SVC_FLAG_EXTERNAL != 0
                && fe.flags & SVC_FLAG_ADDR_ONLY == 0
                && !fe.backends.is_empty();
            if wants_table && !old.is_some_and(|v| v.service_id != 0 && m.has_maglev(v.service_id))
            {
                need.maglev += 1;
            }
        }
        need
    }

    /// The first map that cannot take `need`, as a report for `svc`.
    fn shortfall(&self, svc: &ObjRef, need: &Need, kept: bool) -> Option<NotProgrammed> {
        let m = &self.mirror;
        let maps = [
            (
                lb_common::MAP_SERVICES,
                need.services,
                m.services().len(),
                self.capacity.services,
                "frontends and one entry per backend slot",
                "raise --max-services",
            ),
            (
                lb_common::MAP_BACKENDS,
                need.backends,
                m.backends().len(),
                self.capacity.backends,
                "one entry per distinct backend address and port",
                "raise --max-backends",
            ),
            (
                lb_common::MAP_MAGLEV,
                need.maglev,
                m.maglev_tables(),
                self.capacity.maglev,
                "one Maglev table per external frontend with backends",
                "its size is fixed; --maglev-table-size 0 does without tables",
            ),
        ];
        maps.into_iter()
            .find_map(|(map, needed, used, cap, holds, remedy)| {
                let cap = cap? as u64;
                let free = cap.saturating_sub(used as u64);
                (needed > free).then(|| NotProgrammed {
                    service: svc.to_string(),
                    map: map.to_string(),
                    needed,
                    free,
                    capacity: cap,
                    holds: holds.to_string(),
                    remedy: remedy.to_string(),
                    previous_state_kept: kept,
                })
            })
    }

    /// After a complete listing: frontends the maps hold that no Service
    /// claims any more (deleted while nobody watched) go.
    fn remove_unclaimed(&mut self, ops: &mut Vec<Op>) {
        let stale: Vec<ServiceKey> = self
            .mirror
            .frontends()
            .filter(|k| !self.owner.contains_key(k))
            .copied()
            .collect();
        for k in stale {
            tracing::info!(frontend = %describe_key(&k), "removing frontend no Service claims");
            self.mirror.remove(&k, ops);
        }
        // Backends an earlier agent kept draining for frontends since gone.
        self.mirror.remove_unreferenced(ops);
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

    /// This node's addresses that serve NodePorts, loopback (127.0.0.1,
    /// ::1) included unless `--nodeport-addresses` leaves it out.
    pub fn node_port_addrs(&self) -> Vec<std::net::IpAddr> {
        let mut addrs = self.snapshot.node.addrs.clone();
        addrs.extend([
            std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ]);
        if self.node_port_cidrs.is_empty() {
            return addrs;
        }
        addrs
            .into_iter()
            .filter(|a| self.node_port_cidrs.iter().any(|c| c.contains(a)))
            .collect()
    }

    /// Why the externalIP `ip` may not be programmed, if it may not: outside
    /// `--external-ip-cidrs` when given; otherwise an address of this node
    /// or a Service's ClusterIP (CVE-2020-8554: an externalIP intercepts
    /// whatever the node sends to that address).
    fn refuse_external_ip(&self, ip: &std::net::IpAddr) -> Option<String> {
        if !self.external_ip_cidrs.is_empty() {
            return (!self.external_ip_cidrs.iter().any(|c| c.contains(ip)))
                .then(|| "is outside --external-ip-cidrs".to_string());
        }
        if ip.is_loopback() || ip.is_unspecified() || self.snapshot.node.addrs.contains(ip) {
            return Some(
                "is an address of this node (allow it with --external-ip-cidrs)".to_string(),
            );
        }
        if self.snapshot.is_cluster_ip(ip) {
            let whose = match self.snapshot.cluster_ip_owner(ip) {
                Some(o) => format!("the ClusterIP of Service {o}"),
                None => "a ClusterIP".to_string(),
            };
            return Some(format!("is {whose} (allow it with --external-ip-cidrs)"));
        }
        if let Some(c) = self.service_cidrs.iter().find(|c| c.contains(ip)) {
            return Some(format!(
                "is inside the Service CIDR {c} (allow it with --external-ip-cidrs)"
            ));
        }
        None
    }

    fn rank<'a>(&'a self, svc: &'a ObjRef, key: &ServiceKey) -> Rank<'a> {
        match self.snapshot.service(svc) {
            Some(info) => Rank {
                class: if key.scope == lb_common::SCOPE_INTERNAL
                    && info.cluster_ips.contains(&ip_of(&key.addr))
                {
                    0
                } else {
                    1
                },
                created: info.created.unwrap_or(i64::MAX),
                service: svc,
            },
            None => Rank {
                class: 2,
                created: i64::MAX,
                service: svc,
            },
        }
    }

    fn sync_service(
        &mut self,
        svc: &ObjRef,
        ops: &mut Vec<Op>,
        errors: &mut Vec<String>,
        pending: &mut Pending,
    ) {
        let want = match self.snapshot.service(svc) {
            Some(info) => {
                if let Some(why) = info.skip {
                    tracing::debug!(service = %svc, "no datapath entries: {why}");
                }
                let mut refused = Vec::new();
                for (i, ip) in info.external_ips.iter().enumerate() {
                    if let Some(why) = self.refuse_external_ip(ip) {
                        errors.push(format!(
                            "Service {svc}: spec.externalIPs[{i}] {ip} {why}; not programmed"
                        ));
                        refused.push(*ip);
                    }
                }
                let slices = self.snapshot.slices_of(svc);
                let node = desired::Here {
                    node: self.snapshot.node_name.as_deref(),
                    zone: self.snapshot.node.zone.as_deref(),
                };
                let addrs = self.node_port_addrs();
                if refused.is_empty() {
                    desired::frontends_here(info, &slices, node, &addrs)
                } else {
                    let mut info = info.clone();
                    info.external_ips.retain(|ip| !refused.contains(ip));
                    desired::frontends_here(&info, &slices, node, &addrs)
                }
            }
            None => vec![],
        };
        // Room for the frontends it would hold, checked before any write:
        // a Service goes in whole or keeps what it had.
        let takes = |fe: &&Frontend| match self.owner.get(&fe.key) {
            None => true,
            Some(o) if o == svc => true,
            Some(o) => self.rank(svc, &fe.key) < self.rank(o, &fe.key),
        };
        let need = self.need(want.iter().filter(takes));
        // What it holds already: its claims, or (an agent that adopted
        // the maps) the unowned frontends it wants that the maps hold.
        let mut held: Vec<ServiceKey> = self.claimed.get(svc).cloned().unwrap_or_default();
        for fe in &want {
            if !self.owner.contains_key(&fe.key)
                && self.mirror.services().contains_key(&fe.key)
                && !held.contains(&fe.key)
            {
                held.push(fe.key);
            }
        }
        let held = held
            .into_iter()
            .filter(|k| self.mirror.services().contains_key(k))
            .collect::<Vec<_>>();
        // (Claims include frontends it lost to another Service.)
        let kept = held
            .iter()
            .any(|k| self.owner.get(k).is_none_or(|o| o == svc));
        if let Some(np) = self.shortfall(svc, &need, kept) {
            if !self.not_programmed.get(svc).is_some_and(|o| o.same(&np)) {
                self.newly_not_programmed.push(np.clone());
            }
            self.not_programmed.insert(svc.clone(), np);
            if !kept {
                self.health_checks.retain(|_, c| &c.service != svc);
            }
            // Its previous state stays whole: nothing a remove of
            // unclaimed frontends could take.
            for k in &held {
                self.owner.entry(*k).or_insert_with(|| svc.clone());
            }
            if !held.is_empty() {
                self.claimed.insert(svc.clone(), held);
            }
            return;
        }
        if self.not_programmed.remove(svc).is_some() && !want.is_empty() {
            self.programmed_again.push(svc.clone());
        }
        self.health_checks.retain(|_, c| &c.service != svc);
        if let Some(info) = self.snapshot.service(svc).filter(|i| i.skip.is_none()) {
            if let Some(port) = info.health_check_node_port {
                let local = desired::local_ready_endpoints(
                    &self.snapshot.slices_of(svc),
                    self.snapshot.node_name.as_deref(),
                );
                match self.health_checks.get(&port) {
                    Some(other) => errors.push(format!(
                        "Service {svc}: spec.healthCheckNodePort {port} already belongs to Service {}",
                        other.service
                    )),
                    None => {
                        self.health_checks.insert(port, Check { service: svc.clone(), local_endpoints: local });
                    }
                }
            }
        }
        let old = self.claimed.remove(svc).unwrap_or_default();
        let mut claimed = Vec::with_capacity(want.len());
        let before = ops.len();
        for fe in &want {
            claimed.push(fe.key);
            let take = match self.owner.get(&fe.key) {
                None => true,
                Some(o) if o == svc => true,
                Some(o) => {
                    let (mine, theirs) = (self.rank(svc, &fe.key), self.rank(o, &fe.key));
                    let (winner, loser, why) = if mine < theirs {
                        (svc, o, mine.why(&theirs))
                    } else {
                        (o, svc, theirs.why(&mine))
                    };
                    // (A holder already deleted, synced later in this
                    // change set, is no conflict worth a report.)
                    if theirs.class < 2 {
                        errors.push(format!(
                            "Service {loser}: frontend {} belongs to Service {winner} ({why}); not programmed for {loser}",
                            describe_key(&fe.key)
                        ));
                    }
                    let (take, loser) = (mine < theirs, loser.clone());
                    self.contenders.entry(fe.key).or_default().insert(loser);
                    take
                }
            };
            if take {
                if let Some(set) = self.contenders.get_mut(&fe.key) {
                    set.remove(svc);
                    if set.is_empty() {
                        self.contenders.remove(&fe.key);
                    }
                }
                self.mirror.upsert(fe, ops);
                self.owner.insert(fe.key, svc.clone());
            }
        }
        let wanted: std::collections::HashSet<&ServiceKey> = claimed.iter().collect();
        for k in old.iter().filter(|k| !wanted.contains(k)) {
            if self.owner.get(k) == Some(svc) {
                self.owner.remove(k);
                match self.contenders.get(k) {
                    // Another Service wants it: it takes the frontend over
                    // in place (no instant without an entry), or it goes.
                    Some(set) if !set.is_empty() => {
                        pending.requeue.extend(set.iter().cloned());
                        pending.released.push(*k);
                    }
                    _ => self.mirror.remove(k, ops),
                }
            } else if let Some(set) = self.contenders.get_mut(k) {
                set.remove(svc);
                if set.is_empty() {
                    self.contenders.remove(k);
                }
            }
        }
        if ops.len() != before {
            let ports: Vec<String> = want
                .iter()
                .filter(|f| f.flags & SVC_FLAG_ADDR_ONLY == 0)
                .map(|f| format!("{}->{}", describe_key(&f.key), f.backends.len()))
                .collect();
            tracing::info!(service = %svc, frontends = ?ports, ops = ops.len() - before, "applied");
        }
        if !claimed.is_empty() {
            self.claimed.insert(svc.clone(), claimed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::manifest::{Object, parse_documents};

    #[derive(Default)]
    struct Fake {
        mirror: Mirror,
        applied: Vec<Op>,
        policy: PolicyMaps,
        capacity: Capacity,
    }
    impl Writer for Fake {
        fn capacity(&self) -> Capacity {
            self.capacity
        }
        fn apply(&mut self, ops: &[Op]) -> anyhow::Result<()> {
            self.applied.extend_from_slice(ops);
            Ok(())
        }
        fn read_mirror(&self) -> anyhow::Result<Mirror> {
            Ok(self.mirror.clone())
        }
        fn apply_policy(&mut self, ops: &[PolicyOp]) -> anyhow::Result<()> {
            crate::compute::policy_plan::apply(&mut self.policy, ops);
            Ok(())
        }
        fn read_policy(&self) -> anyhow::Result<PolicyMaps> {
            Ok(self.policy.clone())
        }
    }

    fn objs(y: &str) -> Vec<Change> {
        parse_documents(y)
            .unwrap()
            .into_iter()
            .map(|o| Change::Upsert(o.unwrap()))
            .collect()
    }

    fn svc(name: &str, ip: &str, extra: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: x{extra}}}\nspec: {{clusterIP: {ip}, ports: [{{port: 80}}]}}\n---\n"
        )
    }

    /// Service `name` on ClusterIP `ip` port 80, with one EndpointSlice
    /// of `backends` (ready, port 8080).
    fn svc_eps(name: &str, ip: &str, backends: &[&str]) -> String {
        let eps: Vec<String> = backends
            .iter()
            .map(|b| format!("{{addresses: [{b}], conditions: {{ready: true}}}}"))
            .collect();
        format!(
            "{}apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: x, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nendpoints: [{}]\nports: [{{port: 8080}}]\n---\n",
            svc(name, ip, ""),
            eps.join(", ")
        )
    }

    fn writes_to(ops: &[Op], ip: &str) -> bool {
        let a = crate::compute::desired::net_addr(ip.parse().unwrap());
        ops.iter().any(|o| match o {
            Op::PutService { key, .. } | Op::DelService { key } => key.addr == a,
            _ => false,
        })
    }

    #[test]
    fn services_that_do_not_fit_are_skipped_whole_and_retried_when_room_frees() {
        // Each Service: its ClusterIP marker, the port's frontend and one
        // slot per backend. 7 entries hold two of three one-backend ones.
        let mut r = Reconciler::new(Mirror::from_entries([], []), None);
        let mut w = Fake {
            capacity: Capacity {
                services: Some(7),
                ..Default::default()
            },
            ..Default::default()
        };
        let y = svc_eps("a", "10.96.0.10", &["10.244.0.1"])
            + &svc_eps("b", "10.96.0.11", &["10.244.0.2"])
            + &svc_eps("c", "10.96.0.12", &["10.244.0.3"]);
        let out = r.apply(&objs(&y), true, &mut w).unwrap();
        assert!(!writes_to(&w.applied, "10.96.0.12"), "{:?}", w.applied);
        assert_eq!(r.mirror().services().len(), 6);
        let np: Vec<&NotProgrammed> = out.not_programmed.iter().collect();
        assert_eq!(np.len(), 1, "{np:?}");
        assert_eq!(
            (np[0].service.as_str(), np[0].map.as_str()),
            ("x/c", lb_common::MAP_SERVICES)
        );
        assert_eq!((np[0].needed, np[0].free, np[0].capacity), (3, 1, 7));
        assert!(!np[0].previous_state_kept);
        let msg = np[0].to_string();
        for words in [
            "Service x/c not programmed",
            "needs 3 entries",
            "1 of its 7",
            "--max-services",
        ] {
            assert!(msg.contains(words), "`{words}` in: {msg}");
        }
        assert_eq!(r.not_programmed.len(), 1);
        // Other change sets: c stays out, and is not reported again.
        let out = r
            .apply(
                &objs(&svc_eps("a", "10.96.0.10", &["10.244.0.9"])),
                false,
                &mut w,
            )
            .unwrap();
        assert!(out.not_programmed.is_empty(), "{:?}", out.not_programmed);
        assert!(r.not_programmed.contains_key(&ObjRef::new("x", "c")));
        // a goes: room for c, programmed whole.
        w.applied.clear();
        let del = Change::Delete {
            kind: "Service".into(),
            key: ObjRef::new("x", "a"),
        };
        let out = r.apply(&[del], false, &mut w).unwrap();
        assert_eq!(out.programmed_again, [ObjRef::new("x", "c")]);
        assert!(r.not_programmed.is_empty());
        assert!(writes_to(&w.applied, "10.96.0.12"));
        assert_eq!(r.mirror().services().len(), 6);

        // An update that does not fit keeps the Service's previous state.
        w.applied.clear();
        let out = r
            .apply(
                &objs(&svc_eps(
                    "b",
                    "10.96.0.11",
                    &["10.244.0.2", "10.244.0.4", "10.244.0.5"],
                )),
                false,
                &mut w,
            )
            .unwrap();
        assert!(!writes_to(&w.applied, "10.96.0.11"), "{:?}", w.applied);
        assert_eq!(out.not_programmed.len(), 1);
        assert_eq!(out.not_programmed[0].needed, 2);
        assert!(out.not_programmed[0].previous_state_kept);
        assert!(
            out.not_programmed[0].to_string().contains("previous"),
            "{}",
            out.not_programmed[0]
        );
        assert_eq!(r.mirror().services().len(), 6);

        // The backends map the same way.
        let mut r = Reconciler::new(Mirror::from_entries([], []), None);
        let mut w = Fake {
            capacity: Capacity {
                backends: Some(3),
                ..Default::default()
            },
            ..Default::default()
        };
        let y = svc_eps("a", "10.96.0.10", &["10.244.0.1", "10.244.0.2"])
            + &svc_eps("b", "10.96.0.11", &["10.244.0.1", "10.244.0.3"])
            + &svc_eps("c", "10.96.0.12", &["10.244.0.4", "10.244.0.5"]);
        let out = r.apply(&objs(&y), true, &mut w).unwrap();
        assert_eq!(r.mirror().backends().len(), 3, "b shares a backend with a");
        assert_eq!(out.not_programmed.len(), 1);
        let np = &out.not_programmed[0];
        assert_eq!(
            (np.service.as_str(), np.map.as_str(), np.needed, np.free),
            ("x/c", lb_common::MAP_BACKENDS, 2, 0)
        );
        assert!(np.to_string().contains("--max-backends"), "{np}");
        assert!(!writes_to(&w.applied, "10.96.0.12"));
    }

    #[test]
    fn invalid_objects_stay_rejected_until_fixed_or_deleted() {
        let mut r = Reconciler::new(Mirror::from_entries([], []), None);
        let mut w = Fake::default();
        let file: Option<std::sync::Arc<str>> = Some("/m/f.yaml".into());
        r.apply_from(
            &objs(&svc("a", "10.96.0.300", "")),
            std::slice::from_ref(&file),
            false,
            &mut w,
        )
        .unwrap();
        let rej: Vec<&Rejected> = r.rejected.values().collect();
        assert_eq!(rej.len(), 1);
        assert_eq!(rej[0].file.as_deref(), Some("/m/f.yaml"));
        assert_eq!(rej[0].object.as_deref(), Some("Service x/a"));
        assert!(
            rej[0].reason.starts_with("spec.clusterIPs[0]"),
            "{}",
            rej[0].reason
        );
        // another object's change leaves it listed
        r.apply(&objs(&svc("b", "10.96.0.11", "")), false, &mut w)
            .unwrap();
        assert_eq!(r.rejected.len(), 1);
        // fixed: gone from the list
        r.apply(&objs(&svc("a", "10.96.0.10", "")), false, &mut w)
            .unwrap();
        assert!(r.rejected.is_empty());
        // broken again, then deleted: gone too
        r.apply(&objs(&svc("a", "10.96.0.300", "")), false, &mut w)
            .unwrap();
        assert_eq!(r.rejected.len(), 1);
        let del = Change::Delete {
            kind: "Service".into(),
            key: ObjRef::new("x", "a"),
        };
        r.apply(&[del], false, &mut w).unwrap();
        assert!(r.rejected.is_empty());
    }

    #[test]
    fn conflicting_cluster_ip_is_reported_and_first_owner_kept() {
        let mut r = Reconciler::new(Mirror::from_entries([], []), None);
        let mut w = Fake::default();
        let out = r
            .apply(
                &objs(&(svc("a", "10.96.0.10", "") + &svc("b", "10.96.0.10", ""))),
                true,
                &mut w,
            )
            .unwrap();
        assert_eq!(out.errors.len(), 2, "{:?}", out.errors); // marker and port
        assert!(out.errors[0].contains("Service x/b") && out.errors[0].contains("Service x/a"));
        assert_eq!(r.mirror().frontends().count(), 2);
    }

    #[test]
    fn full_batch_removes_unclaimed_frontends_and_partial_does_not() {
        let mut r = Reconciler::new(Mirror::from_entries([], []), None);
        let mut w = Fake::default();
        r.apply(&objs(&svc("a", "10.96.0.10", "")), true, &mut w)
            .unwrap();
        // an agent restarted: mirror from the maps, a snapshot without `a`
        let mut r2 = Reconciler::new(r.mirror().clone(), None);
        r2.apply(&objs(&svc("b", "10.96.0.11", "")), false, &mut w)
            .unwrap();
        assert_eq!(r2.mirror().frontends().count(), 4);
        r2.apply(&[], true, &mut w).unwrap();
        assert_eq!(r2.mirror().frontends().count(), 2);
    }

    #[test]
    fn one_slice_change_rewrites_only_its_service() {
        let slice = |name: &str, svc: &str, ip: &str| {
            format!(
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: x, labels: {{kubernetes.io/service-name: {svc}}}}}\naddressType: IPv4\nendpoints: [{{addresses: [{ip}], conditions: {{ready: true}}}}]\nports: [{{port: 8080}}]\n---\n"
            )
        };
        let mut r = Reconciler::new(Mirror::from_entries([], []), None);
        let mut w = Fake::default();
        let mut y = String::new();
        for i in 0..50 {
            y += &svc(&format!("s{i}"), &format!("10.96.1.{i}"), "");
            y += &slice(
                &format!("s{i}-a"),
                &format!("s{i}"),
                &format!("10.244.1.{i}"),
            );
        }
        r.apply(&objs(&y), true, &mut w).unwrap();
        w.applied.clear();
        let out = r
            .apply(&objs(&slice("s7-a", "s7", "10.244.2.7")), false, &mut w)
            .unwrap();
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        let s7 = crate::compute::desired::net_addr("10.96.1.7".parse().unwrap());
        for op in &w.applied {
            match op {
                Op::PutService { key, .. } | Op::DelService { key } => {
                    assert_eq!(key.addr, s7, "only s7's frontend is written: {op:?}")
                }
                Op::PutBackend { .. } | Op::DelBackend { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        // new backend, slot rewritten, old backend dropped: a handful of ops
        assert!((1..=4).contains(&w.applied.len()), "{:?}", w.applied);
    }

    #[test]
    fn labelled_and_headless_services_get_nothing() {
        let mut r = Reconciler::new(Mirror::from_entries([], []), None);
        let mut w = Fake::default();
        let y = svc(
            "a",
            "10.96.0.10",
            ", labels: {service.kubernetes.io/headless: ''}",
        ) + &svc(
            "b",
            "10.96.0.11",
            ", labels: {service.kubernetes.io/service-proxy-name: other}",
        ) + &svc("c", "None", "")
            + "apiVersion: v1\nkind: Service\nmetadata: {name: d, namespace: x}\nspec: {type: ExternalName, externalName: example.com}\n";
        let out = r.apply(&objs(&y), true, &mut w).unwrap();
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        assert_eq!(r.mirror().frontends().count(), 0);
        assert!(w.applied.is_empty());
    }

    #[test]
    fn this_nodes_addresses_become_node_port_frontends() {
        let mut r = Reconciler::new(Mirror::from_entries([], []), Some("n1".into()));
        let mut w = Fake::default();
        let y = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: x}\nspec: {type: NodePort, clusterIP: 10.96.0.10, ports: [{port: 80, nodePort: 30000}]}\n---\n\
                 apiVersion: v1\nkind: Node\nmetadata: {name: n2}\nstatus: {addresses: [{type: InternalIP, address: 10.100.0.2}]}\n";
        r.apply(&objs(y), true, &mut w).unwrap();
        // ClusterIP marker + port, and loopback NodePort; not node n2's address
        assert_eq!(r.mirror().frontends().count(), 3);
        let n1 = "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nstatus: {addresses: [{type: InternalIP, address: 10.100.0.1}, {type: Hostname, address: n1}]}\n";
        r.apply(&objs(n1), false, &mut w).unwrap();
        let keys: Vec<String> = r.mirror().frontends().map(describe_key).collect();
        assert!(
            keys.contains(&"10.100.0.1:30000/TCP".to_string()),
            "{keys:?}"
        );
        assert_eq!(keys.len(), 4);
        r.apply(
            &[Change::Delete {
                kind: "Node".into(),
                key: ObjRef::new("", "n1"),
            }],
            false,
            &mut w,
        )
        .unwrap();
        assert_eq!(r.mirror().frontends().count(), 3);
    }

    #[test]
    fn nodeport_addresses_pick_which_node_addresses_serve() {
        let mut r = Reconciler::new(Mirror::from_entries([], []), Some("n1".into()));
        r.node_port_cidrs = vec!["10.100.0.0/24".parse().unwrap()];
        let mut w = Fake::default();
        let y = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: x}\nspec: {type: NodePort, clusterIP: 10.96.0.10, ports: [{port: 80, nodePort: 30000}]}\n---\n\
                 apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nstatus: {addresses: [{type: InternalIP, address: 10.100.0.1}, {type: ExternalIP, address: 192.0.2.1}]}\n";
        r.apply(&objs(y), true, &mut w).unwrap();
        let keys: Vec<String> = r.mirror().frontends().map(describe_key).collect();
        assert!(
            keys.contains(&"10.100.0.1:30000/TCP".to_string()),
            "{keys:?}"
        );
        assert!(
            !keys.contains(&"192.0.2.1:30000/TCP".to_string()),
            "{keys:?}"
        );
        // Loopback serves NodePorts only where the CIDRs allow it (and by
        // default, without --nodeport-addresses).
        for (cidrs, loopback) in [
            ("10.100.0.0/24", false),
            ("10.100.0.0/24,127.0.0.0/8", true),
            ("", true),
        ] {
            let mut r = Reconciler::new(Mirror::from_entries([], []), Some("n1".into()));
            r.node_port_cidrs = cidrs
                .split(',')
                .filter(|c| !c.is_empty())
                .map(|c| c.parse().unwrap())
                .collect();
            r.apply(&objs(y), true, &mut Fake::default()).unwrap();
            let keys: Vec<String> = r.mirror().frontends().map(describe_key).collect();
            assert_eq!(
                keys.contains(&"127.0.0.1:30000/TCP".to_string()),
                loopback,
                "--nodeport-addresses {cidrs}: {keys:?}"
            );
        }
    }

    /// A Service with `externalIPs` at port 80 (its ClusterIP `cip`),
    /// created `created` (None: no timestamp).
    fn ext_svc(name: &str, cip: &str, ext: &str, created: Option<&str>) -> String {
        let ts = created
            .map(|t| format!(", creationTimestamp: '{t}'"))
            .unwrap_or_default();
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: x{ts}}}\nspec: {{clusterIP: {cip}, externalIPs: [{ext}], ports: [{{port: 80}}]}}\n---\n"
        )
    }

    fn fkey(ip: &str, port: u16) -> ServiceKey {
        ServiceKey::frontend(
            desired::net_addr(ip.parse().unwrap()),
            lb_common::BeU16::from_host(port),
            lb_common::PROTO_TCP,
            lb_common::SCOPE_INTERNAL,
        )
    }

    fn holder(r: &Reconciler, k: &ServiceKey) -> Option<String> {
        assert_eq!(
            r.owner.contains_key(k),
            r.mirror().services().contains_key(k),
            "owned frontends and only they are in the maps"
        );
        r.owner.get(k).map(|o| o.to_string())
    }

    #[test]
    fn contested_external_ip_goes_to_the_oldest_service_in_any_order_and_after_restarts() {
        let new = ext_svc(
            "a-new",
            "10.96.0.1",
            "10.200.0.9",
            Some("2024-01-01T00:00:00Z"),
        );
        let old = ext_svc(
            "b-old",
            "10.96.0.2",
            "10.200.0.9",
            Some("2020-01-01T00:00:00Z"),
        );
        let ext = fkey("10.200.0.9", 80);
        // (change sets in order)
        let orders: Vec<Vec<String>> = vec![
            vec![new.clone() + &old],
            vec![old.clone() + &new],
            vec![new.clone(), old.clone()],
            vec![old.clone(), new.clone()],
        ];
        for order in &orders {
            let mut r = Reconciler::new(Mirror::from_entries([], []), None);
            let mut w = Fake::default();
            let mut errors = vec![];
            for y in order {
                errors.extend(r.apply(&objs(y), true, &mut w).unwrap().errors);
            }
            assert_eq!(holder(&r, &ext).as_deref(), Some("x/b-old"), "{order:?}");
            // the loser is reported, naming both
            assert!(
                errors.iter().any(|e| e.contains("Service x/a-new")
                    && e.contains("Service x/b-old")
                    && e.contains("10.200.0.9:80/TCP")),
                "{errors:?}"
            );
            // a restarted agent (its mirror from the maps, objects in
            // another order), and a full resync, keep the same holder
            let mut w2 = Fake {
                mirror: r.mirror().clone(),
                ..Default::default()
            };
            let mut r2 = Reconciler::new(r.mirror().clone(), None);
            r2.apply(&objs(&(old.clone() + &new)), true, &mut w2)
                .unwrap();
            assert_eq!(holder(&r2, &ext).as_deref(), Some("x/b-old"));
            r2.resync(&mut w2).unwrap();
            assert_eq!(holder(&r2, &ext).as_deref(), Some("x/b-old"));
            // the winner goes: the other takes the frontend over in place
            // (no removal in between); it comes back: it wins it again
            w.applied.clear();
            let del = Change::Delete {
                kind: "Service".into(),
                key: ObjRef::new("x", "b-old"),
            };
            r.apply(&[del], false, &mut w).unwrap();
            assert_eq!(holder(&r, &ext).as_deref(), Some("x/a-new"));
            assert!(
                !w.applied
                    .iter()
                    .any(|o| matches!(o, Op::DelService { key } if *key == ext)),
                "{:?}",
                w.applied
            );
            r.apply(&objs(&old), false, &mut w).unwrap();
            assert_eq!(holder(&r, &ext).as_deref(), Some("x/b-old"));
            // the loser stops wanting it: nothing changes for the holder
            let moved = ext_svc(
                "a-new",
                "10.96.0.1",
                "10.200.0.10",
                Some("2024-01-01T00:00:00Z"),
            );
            r.apply(&objs(&moved), false, &mut w).unwrap();
            assert_eq!(holder(&r, &ext).as_deref(), Some("x/b-old"));
            assert!(r.contenders.is_empty(), "{:?}", r.contenders);
        }
        // Same age, or no timestamps: namespace/name decides.
        for (a, b) in [
            (
                ext_svc("a", "10.96.0.1", "10.200.0.9", Some("2024-01-01T00:00:00Z")),
                ext_svc("b", "10.96.0.2", "10.200.0.9", Some("2024-01-01T00:00:00Z")),
            ),
            (
                ext_svc("a", "10.96.0.1", "10.200.0.9", None),
                ext_svc("b", "10.96.0.2", "10.200.0.9", None),
            ),
        ] {
            for y in [a.clone() + &b, b.clone() + &a] {
                let mut r = Reconciler::new(Mirror::from_entries([], []), None);
                r.apply(&objs(&y), true, &mut Fake::default()).unwrap();
                assert_eq!(holder(&r, &ext).as_deref(), Some("x/a"));
            }
        }
    }

    #[test]
    fn a_cluster_ip_always_wins_over_an_external_ip() {
        // The thief is older, and --external-ip-cidrs lets its externalIP in.
        let thief = ext_svc(
            "a-thief",
            "10.96.0.1",
            "10.96.0.50",
            Some("2000-01-01T00:00:00Z"),
        );
        let dns = svc(
            "z-dns",
            "10.96.0.50",
            ", creationTimestamp: '2024-01-01T00:00:00Z'",
        );
        let k = fkey("10.96.0.50", 80);
        for order in [
            vec![thief.clone() + &dns],
            vec![thief.clone(), dns.clone()],
            vec![dns.clone(), thief.clone()],
        ] {
            let mut r = Reconciler::new(Mirror::from_entries([], []), None);
            r.external_ip_cidrs = vec!["0.0.0.0/0".parse().unwrap()];
            let mut w = Fake::default();
            let mut errors = vec![];
            for y in &order {
                errors.extend(r.apply(&objs(y), true, &mut w).unwrap().errors);
            }
            assert_eq!(holder(&r, &k).as_deref(), Some("x/z-dns"), "{order:?}");
            assert!(
                errors.iter().any(|e| e.contains("Service x/a-thief")
                    && e.contains("Service x/z-dns")
                    && e.contains("ClusterIP")),
                "{errors:?}"
            );
        }
    }

    #[test]
    fn external_ips_on_node_addresses_or_cluster_ips_are_refused_unless_allowed() {
        let node = "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nstatus: {addresses: [{type: InternalIP, address: 10.100.0.1}]}\n---\n";
        let other = svc("c", "10.96.0.10", "");
        // (--external-ip-cidrs, externalIP, refused with a message containing)
        let cases: Vec<(&str, &str, Option<&str>)> = vec![
            ("", "10.100.0.1", Some("address of this node")),
            ("", "127.0.0.1", Some("address of this node")),
            ("", "10.96.0.10", Some("ClusterIP of Service x/c")),
            ("", "10.200.0.5", None),
            (
                "",
                "10.96.5.5",
                Some("inside the Service CIDR 10.96.0.0/16"),
            ),
            ("10.96.0.0/16", "10.96.5.5", None),
            ("10.100.0.0/24", "10.100.0.1", None),
            ("10.96.0.0/16,10.200.0.0/16", "10.96.0.10", None),
            (
                "10.100.0.0/24",
                "10.200.0.5",
                Some("outside --external-ip-cidrs"),
            ),
        ];
        for (allow, ip, refused) in cases {
            let mut r = Reconciler::new(Mirror::from_entries([], []), Some("n1".into()));
            // The Service range closes 10.96.0.0/16 (here: an unallocated
            // 10.96.5.5) but not 10.200.0.0/16.
            r.service_cidrs = vec!["10.96.0.0/16".parse().unwrap()];
            r.external_ip_cidrs = allow
                .split(',')
                .filter(|c| !c.is_empty())
                .map(|c| c.parse().unwrap())
                .collect();
            let y = format!(
                "{node}{other}{}",
                ext_svc("e", "10.96.0.20", ip, None).replace("port: 80", "port: 8080")
            );
            let out = r.apply(&objs(&y), true, &mut Fake::default()).unwrap();
            let programmed = holder(&r, &fkey(ip, 8080)).is_some();
            match refused {
                Some(why) => {
                    assert!(!programmed, "{allow} {ip}");
                    assert!(
                        out.errors.iter().any(|e| e.contains("Service x/e")
                            && e.contains("spec.externalIPs[0]")
                            && e.contains(why)),
                        "{allow} {ip}: {:?}",
                        out.errors
                    );
                }
                None => {
                    assert!(programmed, "{allow} {ip}");
                    assert!(out.errors.is_empty(), "{allow} {ip}: {:?}", out.errors);
                }
            }
        }
        // Refusal follows the addresses: a ClusterIP or node address that
        // appears later takes the externalIP out; gone, it comes back.
        let mut r = Reconciler::new(Mirror::from_entries([], []), Some("n1".into()));
        let mut w = Fake::default();
        let e = ext_svc("e", "10.96.0.20", "10.96.0.77", None).replace("port: 80", "port: 8080");
        r.apply(&objs(&e), true, &mut w).unwrap();
        let k = fkey("10.96.0.77", 8080);
        assert!(holder(&r, &k).is_some());
        r.apply(&objs(&svc("f", "10.96.0.77", "")), false, &mut w)
            .unwrap();
        assert!(holder(&r, &k).is_none());
        let del = Change::Delete {
            kind: "Service".into(),
            key: ObjRef::new("x", "f"),
        };
        r.apply(&[del], false, &mut w).unwrap();
        assert!(holder(&r, &k).is_some());
        let n = "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nstatus: {addresses: [{type: InternalIP, address: 10.96.0.77}]}\n";
        r.apply(&objs(n), false, &mut w).unwrap();
        assert!(holder(&r, &k).is_none());
    }

    #[test]
    fn internal_traffic_policy_local_is_read_from_the_service() {
        let y = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: x}\nspec: {clusterIP: 10.96.0.10, internalTrafficPolicy: Local, ports: [{port: 80}]}\n---\n\
                 apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: a-1, namespace: x, labels: {kubernetes.io/service-name: a}}\naddressType: IPv4\nendpoints: [{addresses: [10.244.1.10], nodeName: n1}, {addresses: [10.244.2.10], nodeName: n2}]\nports: [{port: 8080}]\n";
        for (node, count, flags) in [
            ("n1", 1, lb_common::SVC_FLAG_INT_LOCAL),
            ("n3", 0, lb_common::SVC_FLAG_INT_LOCAL),
        ] {
            let mut r = Reconciler::new(Mirror::from_entries([], []), Some(node.into()));
            r.apply(&objs(y), true, &mut Fake::default()).unwrap();
            let v = r.mirror().services()[&fkey("10.96.0.10", 80)];
            assert_eq!((v.count, v.flags), (count, flags), "{node}");
        }
    }

    #[test]
    fn invalid_object_keeps_previous_state() {
        let mut r = Reconciler::new(Mirror::from_entries([], []), None);
        let mut w = Fake::default();
        r.apply(&objs(&svc("a", "10.96.0.10", "")), true, &mut w)
            .unwrap();
        let bad = objs(&svc("a", "10.96.0.300", ""));
        let out = r.apply(&bad, false, &mut w).unwrap();
        assert!(
            out.errors[0].contains("Service x/a") && out.errors[0].contains("spec.clusterIPs[0]"),
            "{:?}",
            out.errors
        );
        assert_eq!(r.mirror().frontends().count(), 2);
        let _ = Object::Service(Box::default());
    }
}
