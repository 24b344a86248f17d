//! Endpoint ids of local pods: kept while a pod lives, reused after.

use std::collections::{HashMap, HashSet};

use lb_common::{NetAddr, POL_EP_ID_MAX};

use crate::model::snapshot::ObjRef;

use super::PolicyMaps;

/// Endpoint ids of local pods: kept for a pod as long as it lives (and
/// across restarts, read back from the endpoint map by address).
#[derive(Clone, Debug, Default)]
pub struct EpIds {
    by_pod: HashMap<ObjRef, u32>,
    /// From the maps at start: address -> id, claimed by the first pod
    /// that holds the address.
    adopted: HashMap<NetAddr, u32>,
}

impl EpIds {
    pub fn adopt(maps: &PolicyMaps) -> Self {
        Self {
            by_pod: HashMap::new(),
            adopted: maps.endpoints.iter().map(|(a, e)| (*a, e.ep_id)).collect(),
        }
    }

    /// The endpoint id of a local pod (after `assign`).
    pub(crate) fn get(&self, pod: &ObjRef) -> Option<u32> {
        self.by_pod.get(pod).copied()
    }

    pub(crate) fn assign(
        &mut self,
        live: &[(&ObjRef, Vec<NetAddr>)],
    ) -> Result<(), super::PolicyProblem> {
        let keep: HashSet<&ObjRef> = live.iter().map(|(k, _)| *k).collect();
        self.by_pod.retain(|k, _| keep.contains(k));
        let mut used: HashSet<u32> = self.by_pod.values().copied().collect();
        for (pod, addrs) in live {
            if self.by_pod.contains_key(*pod) {
                continue;
            }
            if let Some(id) = addrs
                .iter()
                .filter_map(|a| self.adopted.get(a))
                .find(|id| !used.contains(id))
            {
                used.insert(*id);
                self.by_pod.insert((*pod).clone(), *id);
            }
        }
        let mut next = 1;
        for (pod, _) in live {
            if self.by_pod.contains_key(*pod) {
                continue;
            }
            while used.contains(&next) {
                next += 1;
            }
            if next >= POL_EP_ID_MAX {
                return Err(super::PolicyProblem::NoEndpointId {
                    pod: (*pod).clone(),
                    max: POL_EP_ID_MAX - 1,
                });
            }
            used.insert(next);
            self.by_pod.insert((*pod).clone(), next);
        }
        self.adopted.clear();
        Ok(())
    }
}
