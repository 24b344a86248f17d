//! The node as the packet programs see it: its addresses, the devices
//! holding them, and the pod interfaces that come and go.

use crate::{compute::reconcile::Reconciler, datapath::Datapath};

/// This node's own addresses: they get the host identity (the pod's own
/// node always reaches it). Link-local ones are left out.
pub(super) fn local_addrs() -> Vec<std::net::IpAddr> {
    match crate::datapath::host::interface_addrs() {
        Ok(a) => a
            .into_iter()
            .map(|(_, ip)| ip)
            .filter(|ip| match ip {
                std::net::IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
                std::net::IpAddr::V4(_) => true,
            })
            .collect(),
        Err(e) => {
            tracing::warn!("listing this node's addresses: {e:#}");
            vec![]
        }
    }
}

pub(super) fn sync_pod_ifaces(dp: &mut Datapath, patterns: &[String]) {
    if patterns.iter().all(String::is_empty) {
        return;
    }
    let r =
        crate::datapath::host::interfaces_matching(patterns).and_then(|p| dp.sync_pod_ifaces(&p));
    if let Err(e) = r {
        tracing::warn!("pod interfaces: {e:#}");
    }
}

/// When this node's addresses change: the SNAT source in the config map,
/// and the packet programs on the devices (given, or those holding the
/// addresses).
pub(super) fn node_setup(
    dp: &mut Datapath,
    rec: &Reconciler,
    devices: &[String],
    pod_ifaces: &[String],
    seen: &mut Option<Vec<std::net::IpAddr>>,
) -> anyhow::Result<()> {
    let addrs = &rec.snapshot.node.addrs;
    if seen.as_ref() == Some(addrs) {
        return Ok(());
    }
    *seen = Some(addrs.clone());
    let mut cfg = lb_common::Config::default();
    if let Some(v4) = addrs.iter().find(|a| a.is_ipv4()) {
        cfg.node_ip4 = crate::compute::desired::net_addr(*v4);
        cfg.flags |= lb_common::CONFIG_HAS_IP4;
    }
    if let Some(v6) = addrs.iter().find(|a| a.is_ipv6()) {
        cfg.node_ip6 = crate::compute::desired::net_addr(*v6);
        cfg.flags |= lb_common::CONFIG_HAS_IP6;
    }
    dp.set_config(cfg)?;
    let devs = if devices.is_empty() {
        // A pod interface keeps its own programs (and its pod's policy)
        // even when it carries a node address (a gateway address, say).
        crate::datapath::host::interfaces_with(addrs)?
            .into_iter()
            .filter(|d| {
                !pod_ifaces
                    .iter()
                    .any(|p| !p.is_empty() && crate::datapath::host::glob_match(p, d))
            })
            .collect()
    } else {
        devices.to_vec()
    };
    if devs.is_empty() {
        tracing::warn!(
            "no external device found for this node's addresses {addrs:?}; pass --devices"
        );
    }
    dp.attach_devices(&devs)
}
