//! What a change set touches beyond the endpoints it names: peers
//! selecting identities that appeared or went, egress named ports
//! reaching recomputed pods, changed interfaces.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use crate::{
    compute::{
        identity::{Identities, IdentityKey},
        policy::{self},
    },
    model::{
        policy::{Peer, PolicyInfo, PortRef, Rule},
        snapshot::ObjRef,
    },
};

use super::{Active, Engine, Inputs, Moved};

fn has_named_port(r: &Rule) -> bool {
    r.ports
        .iter()
        .any(|s| matches!(s.port, Some(PortRef::Name(_))))
}

/// `rule` (of a policy in `policy_ns`) may reach a pod of identity `key`
/// with addresses `ips` (ipBlock excepts aside: over-approximated).
fn reaches(rule: &Rule, policy_ns: &str, key: &IdentityKey, ips: &[IpAddr]) -> bool {
    rule.peers.is_empty()
        || rule.peers.iter().any(|peer| match peer {
            Peer::Pods { .. } => policy::peer_selects(
                peer,
                policy_ns,
                &key.namespace,
                &key.ns_labels,
                &key.pod_labels,
            ),
            Peer::IpBlock { cidr, .. } => ips.iter().any(|ip| policy::block_holds(cidr, *ip)),
        })
}

fn rules(pol: &PolicyInfo) -> impl Iterator<Item = &Rule> {
    pol.ingress.iter().chain(&pol.egress).flatten()
}

impl Engine {
    /// The endpoints a change set touches through their policies' peers
    /// and named ports, and those whose interface changed (into `dirty`).
    pub(super) fn touched(
        &self,
        inp: &Inputs,
        ids: &Identities,
        held_before: &BTreeMap<u32, bool>,
        moved: &[Moved],
        dirty: &mut BTreeSet<ObjRef>,
    ) {
        let snap = inp.snap;
        // Identities that appeared or went: the endpoints whose
        // policies have a peer selecting one.
        let flipped: Vec<&IdentityKey> = held_before
            .iter()
            .filter(|(id, before)| **before != self.members.get(id).is_some_and(|m| !m.is_empty()))
            .filter_map(|(id, _)| ids.key(*id))
            .collect();
        // The pods recomputed, before and after.
        let versions: Vec<(&IdentityKey, &[IpAddr])> = moved
            .iter()
            .flat_map(|m| {
                let old = m
                    .old
                    .as_ref()
                    .and_then(|(id, ips)| Some((ids.key(*id)?, ips.as_slice())));
                let new = m
                    .new
                    .and_then(|(id, p)| Some((ids.key(id)?, p.ips.as_slice())));
                old.into_iter().chain(new)
            })
            .collect();
        if !flipped.is_empty() || !versions.is_empty() {
            for (
                pk,
                Active {
                    eps: sel,
                    policy: pol,
                },
            ) in &self.pol_eps
            {
                let ns = &*pk.namespace;
                // A peer selecting an identity that appeared or went.
                let hit = !flipped.is_empty()
                    && rules(pol).flat_map(|r| &r.peers).any(|peer| {
                        flipped.iter().any(|k| {
                            policy::peer_selects(
                                peer,
                                ns,
                                &k.namespace,
                                &k.ns_labels,
                                &k.pod_labels,
                            )
                        })
                    });
                // Egress named ports are the ports of the pods reached.
                let hit = hit
                    || pol
                        .egress
                        .iter()
                        .flatten()
                        .filter(|r| has_named_port(r))
                        .any(|r| versions.iter().any(|(k, ips)| reaches(r, ns, k, ips)));
                if hit {
                    dirty.extend(sel.iter().cloned());
                }
            }
        }
        // Interfaces that appeared, went or changed.
        for (k, st) in &self.eps {
            if st.share.as_ref().is_some_and(|sh| {
                policy::ifindex_for(&snap.pods[k], inp.ifindex_of) != sh.ep.ifindex
            }) {
                dirty.insert(k.clone());
            }
        }
    }
}
