//! A pod's policies into its allow entries: each rule's peers (matched
//! once per computation) and ports.

use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet, HashMap},
    rc::Rc,
};

use lb_common::{
    DIR_EGRESS, DIR_INGRESS, EP_F_EGRESS_ISOLATED, EP_F_INGRESS_ISOLATED, ID_ANY,
    POLICY_PREFIX_ANY_PROTO,
};

use crate::model::policy::{Labels, Peer, PodInfo, PolicyInfo, PortRef, PortSpec, Rule};

use super::{
    peers::PeerView,
    prefixes::{Block, CidrRule, Prefix, V4_MAPPED, host_prefix, spec_blocks},
};

/// Everything computed for one local endpoint.
pub(super) struct EndpointPlan {
    pub(super) flags: u32,
    /// entry -> rules it came from.
    pub(super) entries: BTreeMap<(u32, u8, Block), BTreeSet<String>>,
    pub(super) cidr_rules: [Vec<CidrRule>; 2],
}

/// (peer, policy namespace) -> the identities it selects.
type Matched<'a> = HashMap<(*const Peer, &'a str), Rc<Vec<u32>>>;

pub(crate) struct Ctx<'a> {
    view: &'a dyn PeerView,
    /// Each peer is matched once per computation, however many endpoints
    /// its policy selects.
    matched: RefCell<Matched<'a>>,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(view: &'a dyn PeerView) -> Self {
        Self {
            view,
            matched: RefCell::new(HashMap::new()),
        }
    }

    /// The identities a `Pods` peer of a policy in `policy_ns` selects.
    fn peer_identities(&self, peer: &Peer, policy_ns: &'a str) -> Rc<Vec<u32>> {
        let key = (peer as *const Peer, policy_ns);
        if let Some(m) = self.matched.borrow().get(&key) {
            return m.clone();
        }
        let mut found = Vec::new();
        if let Peer::Pods { pods, namespaces } = peer {
            let mut take = |id: u32, labels: &Labels| {
                if pods.matches(labels) {
                    found.push(id);
                }
            };
            // Namespaces first: a peer looks at the identities of the
            // namespaces it selects only.
            match namespaces {
                None => self.view.each_identity_in(policy_ns, &mut take),
                Some(sel) => self.view.each_namespace(&mut |ns, ns_labels| {
                    if sel.matches(ns_labels) {
                        self.view.each_identity_in(ns, &mut take);
                    }
                }),
            }
        }
        let found = Rc::new(found);
        self.matched.borrow_mut().insert(key, found.clone());
        found
    }

    pub(super) fn endpoint(&self, pod: &PodInfo, policies: &[&'a PolicyInfo]) -> EndpointPlan {
        let mut plan = EndpointPlan {
            flags: 0,
            entries: BTreeMap::new(),
            cidr_rules: [vec![], vec![]],
        };
        for pol in policies.iter().filter(|p| p.selects(pod)) {
            for (dir, rules) in [(DIR_INGRESS, &pol.ingress), (DIR_EGRESS, &pol.egress)] {
                let Some(rules) = rules else { continue };
                plan.flags |= if dir == DIR_INGRESS {
                    EP_F_INGRESS_ISOLATED
                } else {
                    EP_F_EGRESS_ISOLATED
                };
                for (i, rule) in rules.iter().enumerate() {
                    let from = format!(
                        "{}/{} {}[{i}]",
                        pol.key.namespace,
                        pol.key.name,
                        if dir == DIR_INGRESS {
                            "ingress"
                        } else {
                            "egress"
                        }
                    );
                    self.rule(pod, dir, rule, &pol.key.namespace, &from, &mut plan);
                }
            }
        }
        plan
    }

    fn rule(
        &self,
        pod: &PodInfo,
        dir: u8,
        rule: &Rule,
        policy_ns: &'a str,
        from: &str,
        plan: &mut EndpointPlan,
    ) {
        let add = |peer: u32, blocks: Vec<Block>, plan: &mut EndpointPlan| {
            for b in blocks {
                plan.entries
                    .entry((peer, dir, b))
                    .or_default()
                    .insert(from.to_string());
            }
        };
        let is_named = |s: &&PortSpec| matches!(s.port, Some(PortRef::Name(_)));
        // An egress named port is the port of whichever pod is reached, so
        // it cannot be an identity's: pods sharing labels may number it
        // differently. Those specs become per-address entries of the pods
        // the rule reaches; the rest of the rule is resolved as usual.
        let (named, ports): (Vec<&PortSpec>, Vec<&PortSpec>) = if dir == DIR_EGRESS {
            rule.ports.iter().partition(is_named)
        } else {
            (vec![], rule.ports.iter().collect())
        };
        let blocks = if rule.ports.is_empty() {
            vec![(0, 0, POLICY_PREFIX_ANY_PROTO)]
        } else {
            // Ingress named ports are the endpoint's own.
            ports
                .iter()
                .flat_map(|s| spec_blocks(s, |n, pr| pod.named_port(n, pr)))
                .collect()
        };
        let d = if dir == DIR_INGRESS { 0 } else { 1 };
        let named_to = |p: &PodInfo, inside: &dyn Fn(&Prefix) -> bool, plan: &mut EndpointPlan| {
            if named.is_empty() {
                return;
            }
            let b: Vec<Block> = named
                .iter()
                .flat_map(|s| spec_blocks(s, |n, pr| p.named_port(n, pr)))
                .collect();
            if b.is_empty() {
                return;
            }
            for ip in &p.ips {
                let a = host_prefix(*ip);
                if inside(&a) {
                    plan.cidr_rules[d].push(CidrRule {
                        cidr: a,
                        except: vec![],
                        blocks: b.clone(),
                        from: from.to_string(),
                    });
                }
            }
        };
        if rule.peers.is_empty() {
            if !named.is_empty() {
                self.view.each_pod(&mut |p| named_to(p, &|_| true, plan));
            }
            if !blocks.is_empty() {
                add(ID_ANY, blocks, plan);
            }
            return;
        }
        for peer in &rule.peers {
            match peer {
                Peer::Pods { .. } => {
                    for &id in self.peer_identities(peer, policy_ns).iter() {
                        if !named.is_empty() {
                            self.view
                                .each_pod_of(id, &mut |p| named_to(p, &|_| true, plan));
                        }
                        if !blocks.is_empty() {
                            add(id, blocks.clone(), plan);
                        }
                    }
                }
                Peer::IpBlock { cidr, except } => {
                    let cidr_p = Prefix::of(cidr);
                    let mut except: Vec<Prefix> = except.iter().map(Prefix::of).collect();
                    if !cidr.addr.is_ipv4() && cidr_p.contains(&V4_MAPPED) {
                        except.push(V4_MAPPED);
                    }
                    // Named ports exist only on pods: those in the block.
                    let inside =
                        |a: &Prefix| cidr_p.contains(a) && !except.iter().any(|e| e.contains(a));
                    if !named.is_empty() {
                        self.view.each_pod(&mut |p| named_to(p, &inside, plan));
                    }
                    if blocks.is_empty() {
                        continue;
                    }
                    plan.cidr_rules[d].push(CidrRule {
                        cidr: cidr_p,
                        except,
                        blocks: blocks.clone(),
                        from: from.to_string(),
                    });
                }
            }
        }
    }
}
