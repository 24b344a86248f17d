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

/// The node's devices as the agent last set them up: set up again when
/// the node's addresses change, and on every periodic tick while a device
/// is missing its programs.
#[derive(Default)]
pub(super) struct NodeDevices {
    addrs: Option<Vec<std::net::IpAddr>>,
    devices: Vec<String>,
    /// The last failure, as said: a retry that fails the same way is not
    /// said again.
    failed: Option<String>,
}

impl NodeDevices {
    /// After a change set: the SNAT source in the config map and the
    /// packet programs on the devices (given, or those holding the node's
    /// addresses), when the node's addresses changed.
    pub(super) fn sync(
        &mut self,
        dp: &mut Datapath,
        rec: &Reconciler,
        devices: &[String],
        pod_ifaces: &[String],
    ) {
        let addrs = &rec.snapshot.node.addrs;
        if self.addrs.as_ref() == Some(addrs) {
            return;
        }
        self.addrs = Some(addrs.clone());
        let r = set_config(dp, addrs).and_then(|()| {
            self.devices = node_devices(addrs, devices, pod_ifaces)?;
            dp.attach_devices(&self.devices)
        });
        self.said(r);
    }

    /// The periodic retry: devices without their programs (an attach that
    /// failed here or while the maps grew) get them, and a config that
    /// failed to write is written. With every device attached it costs a
    /// look at the list (and a link-type read per refused device).
    pub(super) fn retry(&mut self, dp: &mut Datapath, devices: &[String], pod_ifaces: &[String]) {
        let Some(addrs) = self.addrs.clone() else {
            return;
        };
        let r = if self.failed.is_some() {
            set_config(dp, &addrs).and_then(|()| {
                self.devices = node_devices(&addrs, devices, pod_ifaces)?;
                Ok(())
            })
        } else {
            Ok(())
        };
        let r = r.and_then(|()| dp.attach_devices(&self.devices));
        self.said(r);
    }

    fn said(&mut self, r: anyhow::Result<()>) {
        match r {
            Ok(()) => {
                if self.failed.take().is_some() {
                    tracing::info!(devices = ?self.devices, "packet datapath: every device has its programs now");
                }
            }
            Err(e) => {
                let e = format!("{e:#}");
                if self.failed.as_ref() != Some(&e) {
                    tracing::error!("packet datapath (tried again every periodic tick): {e}");
                }
                self.failed = Some(e);
            }
        }
    }
}

fn set_config(dp: &mut Datapath, addrs: &[std::net::IpAddr]) -> anyhow::Result<()> {
    let mut cfg = lb_common::Config::default();
    if let Some(v4) = addrs.iter().find(|a| a.is_ipv4()) {
        cfg.node_ip4 = crate::compute::desired::net_addr(*v4);
        cfg.flags |= lb_common::CONFIG_HAS_IP4;
    }
    if let Some(v6) = addrs.iter().find(|a| a.is_ipv6()) {
        cfg.node_ip6 = crate::compute::desired::net_addr(*v6);
        cfg.flags |= lb_common::CONFIG_HAS_IP6;
    }
    dp.set_config(cfg)
}

/// The external devices: those given, or those holding the node's
/// addresses.
fn node_devices(
    addrs: &[std::net::IpAddr],
    devices: &[String],
    pod_ifaces: &[String],
) -> anyhow::Result<Vec<String>> {
    let devs: Vec<String> = if devices.is_empty() {
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
    Ok(devs)
}
