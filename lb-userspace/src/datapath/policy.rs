//! The policy maps: read into a `PolicyMaps` mirror, written op by op.

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{
        Array, HashMap, MapData,
        lpm_trie::{Key, LpmTrie},
    },
};
use lb_common::{
    IpcacheData, MAP_IPCACHE, MAP_POL_CIDR, MAP_POL_EP, MAP_POL_IF, MAP_POL_STATE, MAP_POLICY,
    NetAddr, PolCidrData, PolEndpoint, PolicyData, PolicyState,
};

use crate::compute::{policy::PolicyMaps, policy_plan::PolicyOp};

pub struct PolicyIo {
    ipcache: LpmTrie<MapData, IpcacheData, u32>,
    endpoints: HashMap<MapData, NetAddr, PolEndpoint>,
    ifaces: HashMap<MapData, u32, u32>,
    entries: LpmTrie<MapData, PolicyData, u32>,
    cidrs: LpmTrie<MapData, PolCidrData, u32>,
    state: Array<MapData, PolicyState>,
}

fn take(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<aya::maps::Map> {
    ebpf.take_map(name)
        .ok_or_else(|| anyhow::anyhow!("map {name} missing from the object"))
}

impl PolicyIo {
    pub fn take(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        Ok(Self {
            ipcache: LpmTrie::try_from(take(ebpf, MAP_IPCACHE)?)?,
            endpoints: HashMap::try_from(take(ebpf, MAP_POL_EP)?)?,
            ifaces: HashMap::try_from(take(ebpf, MAP_POL_IF)?)?,
            entries: LpmTrie::try_from(take(ebpf, MAP_POLICY)?)?,
            cidrs: LpmTrie::try_from(take(ebpf, MAP_POL_CIDR)?)?,
            state: Array::try_from(take(ebpf, MAP_POL_STATE)?)?,
        })
    }

    pub fn read(&self) -> anyhow::Result<PolicyMaps> {
        let mut m = PolicyMaps::default();
        for k in self.ipcache.iter() {
            let (k, v) = k.context("reading the ipcache")?;
            m.ipcache.insert((k.data().addr, k.prefix_len()), v);
        }
        for e in self.endpoints.iter() {
            let (k, v) = e.context("reading the policy endpoints")?;
            m.endpoints.insert(k, v);
        }
        for e in self.ifaces.iter() {
            let (k, v) = e.context("reading the pod interfaces")?;
            m.ifaces.insert(k, v);
        }
        for k in self.entries.keys() {
            let k = k.context("reading the policy entries")?;
            m.entries.insert((k.data(), k.prefix_len()));
        }
        for k in self.cidrs.iter() {
            let (k, v) = k.context("reading the policy CIDR sets")?;
            m.cidrs.insert((k.data(), k.prefix_len()), v);
        }
        m.flags = self.state()?.flags;
        Ok(m)
    }

    pub fn state(&self) -> anyhow::Result<PolicyState> {
        self.state.get(&0, 0).context("reading the policy state")
    }

    /// Applies ops in order; stops at the first failure, naming the map.
    pub fn apply(&mut self, ops: &[PolicyOp]) -> anyhow::Result<()> {
        for op in ops {
            let r = match op {
                PolicyOp::EntryPut(d, l) => self.entries.insert(&Key::new(*l, *d), 1, 0),
                PolicyOp::EntryDel(d, l) => self.entries.remove(&Key::new(*l, *d)),
                PolicyOp::CidrPut(d, l, v) => self.cidrs.insert(&Key::new(*l, *d), *v, 0),
                PolicyOp::CidrDel(d, l) => self.cidrs.remove(&Key::new(*l, *d)),
                PolicyOp::IpcachePut(a, l, v) => {
                    self.ipcache
                        .insert(&Key::new(*l, IpcacheData { addr: *a }), *v, 0)
                }
                PolicyOp::IpcacheDel(a, l) => {
                    self.ipcache.remove(&Key::new(*l, IpcacheData { addr: *a }))
                }
                PolicyOp::EndpointPut(a, e) => self.endpoints.insert(a, e, 0),
                PolicyOp::EndpointDel(a) => self.endpoints.remove(a),
                PolicyOp::IfacePut(i, e) => self.ifaces.insert(i, e, 0),
                PolicyOp::IfaceDel(i) => self.ifaces.remove(i),
                PolicyOp::Revision { flags } => {
                    let mut st = self.state()?;
                    st.revision = st.revision.wrapping_add(1);
                    st.flags = *flags;
                    self.state.set(0, st, 0)
                }
            };
            let map = match op {
                PolicyOp::EntryPut(..) | PolicyOp::EntryDel(..) => MAP_POLICY,
                PolicyOp::CidrPut(..) | PolicyOp::CidrDel(..) => MAP_POL_CIDR,
                PolicyOp::IpcachePut(..) | PolicyOp::IpcacheDel(..) => MAP_IPCACHE,
                PolicyOp::EndpointPut(..) | PolicyOp::EndpointDel(..) => MAP_POL_EP,
                PolicyOp::IfacePut(..) | PolicyOp::IfaceDel(..) => MAP_POL_IF,
                PolicyOp::Revision { .. } => MAP_POL_STATE,
            };
            r.with_context(|| format!("writing {map}: {op:?}"))?;
        }
        Ok(())
    }
}
