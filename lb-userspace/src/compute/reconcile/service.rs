//! One Service's sync: its desired frontends, the room they need, the
//! frontends it takes or loses to another claimant, its
//! healthCheckNodePort.

use lb_common::{SVC_FLAG_ADDR_ONLY, ServiceKey};

use super::{Pending, Reconciler, frontends::describe_key};
use crate::{
    compute::desired::{self, Frontend},
    compute::plan::Op,
    model::snapshot::ObjRef,
    serve::health_check::Check,
};

impl Reconciler {
    pub(super) fn sync_service(
        &mut self,
        svc: &ObjRef,
        ops: &mut Vec<Op>,
        errors: &mut Vec<super::Problem>,
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
                        errors.push(super::Problem::ExternalIpRefused {
                            service: svc.clone(),
                            index: i,
                            ip: *ip,
                            why,
                        });
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
        if let Some(info) = self.snapshot.service(svc).filter(|i| i.skip.is_none())
            && let Some(port) = info.health_check_node_port
        {
            let local = desired::local_ready_endpoints(
                &self.snapshot.slices_of(svc),
                self.snapshot.node_name.as_deref(),
            );
            match self.health_checks.get(&port) {
                Some(other) => errors.push(super::Problem::HealthCheckPortTaken {
                    service: svc.clone(),
                    port,
                    holder: other.service.clone(),
                }),
                None => {
                    self.health_checks.insert(
                        port,
                        Check {
                            service: svc.clone(),
                            local_endpoints: local,
                        },
                    );
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
                        errors.push(super::Problem::FrontendTaken {
                            loser: loser.clone(),
                            winner: winner.clone(),
                            frontend: describe_key(&fe.key),
                            why,
                        });
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
            pending.applied += 1;
            let level_on = if pending.say_each {
                tracing::enabled!(tracing::Level::INFO)
            } else {
                tracing::enabled!(tracing::Level::DEBUG)
            };
            if level_on {
                let ports: Vec<String> = want
                    .iter()
                    .filter(|f| f.flags & SVC_FLAG_ADDR_ONLY == 0)
                    .map(|f| format!("{}->{}", describe_key(&f.key), f.backends.len()))
                    .collect();
                let n = ops.len() - before;
                if pending.say_each {
                    tracing::info!(service = %svc, frontends = ?ports, ops = n, "applied");
                } else {
                    tracing::debug!(service = %svc, frontends = ?ports, ops = n, "applied");
                }
            }
        }
        if !claimed.is_empty() {
            self.claimed.insert(svc.clone(), claimed);
        }
    }
}
