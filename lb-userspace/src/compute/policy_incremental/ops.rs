//! The step's shares into the kept totals and claims, the capacity
//! check, and the ops in `policy_plan::diff`'s order.

use std::collections::{HashMap, HashSet};

use lb_common::{PolCidrData, PolicyData};

use crate::{compute::policy_plan::PolicyOp, model::snapshot::ObjRef};

use super::{Engine, Inputs, Share};

impl Engine {
    /// Old shares out (`gone`, and what `redone` replaced), new ones in;
    /// Err when near capacity; the ops that write the difference (none on
    /// a rebuild).
    pub(super) fn share_ops(
        &mut self,
        inp: &Inputs,
        gone: Vec<(ObjRef, Share)>,
        redone: Vec<(ObjRef, Option<Share>)>,
        rebuild: bool,
        old_flags: u32,
    ) -> Result<Vec<PolicyOp>, String> {
        // Old shares out, new ones in.
        let mut old_entries: HashSet<(PolicyData, u32)> = HashSet::new();
        let mut new_entries: HashSet<(PolicyData, u32)> = HashSet::new();
        let mut old_cidrs: HashMap<(PolCidrData, u32), u32> = HashMap::new();
        let mut new_cidrs: HashMap<(PolCidrData, u32), u32> = HashMap::new();
        let olds = gone
            .iter()
            .map(|(k, sh)| (k, sh))
            .chain(redone.iter().filter_map(|(k, sh)| Some((k, sh.as_ref()?))));
        for (key, sh) in olds {
            self.n_entries -= sh.entries.len();
            self.n_cidrs -= sh.cidrs.len();
            for a in &sh.addrs {
                self.endpoints.remove(*a, |c| c == key);
            }
            if sh.ep.ifindex != 0 {
                self.ifaces.remove(sh.ep.ifindex, |c| c == key);
            }
            if !rebuild {
                old_entries.extend(sh.entries.iter().copied());
                old_cidrs.extend(sh.cidrs.iter().copied());
            }
        }
        for (key, _) in &redone {
            let sh = self.eps[key].share.as_ref().expect("just computed");
            self.n_entries += sh.entries.len();
            self.n_cidrs += sh.cidrs.len();
            for a in &sh.addrs {
                self.endpoints.add(*a, key.clone(), sh.ep);
            }
            if sh.ep.ifindex != 0 {
                self.ifaces.add(sh.ep.ifindex, key.clone(), sh.ep.ep_id);
            }
            if !rebuild {
                new_entries.extend(sh.entries.iter().copied());
                new_cidrs.extend(sh.cidrs.iter().copied());
            }
        }

        let cap = inp.cap;
        if self.n_entries > cap.entries
            || self.n_cidrs > cap.cidrs
            || self.ipcache.len() >= cap.ipcache
        {
            return Err(format!(
                "near capacity ({} of {} entries, {} of {} CIDR entries, {} of {} ipcache entries)",
                self.n_entries,
                cap.entries,
                self.n_cidrs,
                cap.cidrs,
                self.ipcache.len(),
                cap.ipcache
            ));
        }

        let (ipc_puts, ipc_dels) = self.ipcache.take_changes();
        let (ep_puts, ep_dels) = self.endpoints.take_changes();
        let (if_puts, if_dels) = self.ifaces.take_changes();
        let mut ops = Vec::new();
        if !rebuild {
            // The order of `policy_plan::diff`: what opens first, in key
            // order, removals after, the revision last.
            let mut e_puts: Vec<_> = new_entries.difference(&old_entries).copied().collect();
            e_puts.sort_unstable();
            let mut e_dels: Vec<_> = old_entries.difference(&new_entries).copied().collect();
            e_dels.sort_unstable();
            let mut c_puts: Vec<_> = new_cidrs
                .iter()
                .filter(|(k, v)| old_cidrs.get(*k) != Some(*v))
                .map(|(k, v)| (*k, *v))
                .collect();
            c_puts.sort_unstable();
            let mut c_dels: Vec<_> = old_cidrs
                .keys()
                .filter(|k| !new_cidrs.contains_key(*k))
                .copied()
                .collect();
            c_dels.sort_unstable();
            ops.extend(e_puts.into_iter().map(|(d, l)| PolicyOp::EntryPut(d, l)));
            ops.extend(
                c_puts
                    .into_iter()
                    .map(|((d, l), v)| PolicyOp::CidrPut(d, l, v)),
            );
            ops.extend(
                ipc_puts
                    .into_iter()
                    .map(|(a, id)| PolicyOp::IpcachePut(a, 128, id)),
            );
            ops.extend(
                ep_puts
                    .into_iter()
                    .map(|(a, e)| PolicyOp::EndpointPut(a, e)),
            );
            ops.extend(if_puts.into_iter().map(|(i, e)| PolicyOp::IfacePut(i, e)));
            ops.extend(if_dels.into_iter().map(PolicyOp::IfaceDel));
            ops.extend(ipc_dels.into_iter().map(|a| PolicyOp::IpcacheDel(a, 128)));
            ops.extend(ep_dels.into_iter().map(PolicyOp::EndpointDel));
            ops.extend(c_dels.into_iter().map(|(d, l)| PolicyOp::CidrDel(d, l)));
            ops.extend(e_dels.into_iter().map(|(d, l)| PolicyOp::EntryDel(d, l)));
            if !ops.is_empty() || old_flags != self.flags {
                ops.push(PolicyOp::Revision { flags: self.flags });
            }
        }
        Ok(ops)
    }
}
