//! Program attachment: cgroup and tcx links pinned and adopted by a
//! restarted agent, clsact filters where the kernel has no tcx, XDP, and
//! the pod interfaces followed as they come and go.

use super::*;

/// The link runs the program of id `prog`.
fn runs(link: &std::os::fd::OwnedFd, prog: u32) -> bool {
    sys::cgroup_link_info(link.as_fd()).is_ok_and(|i| i.prog_id == prog)
}

/// The clsact filter slot the agent owns: a fixed priority and handle, so
/// a restarted agent finds (and replaces in place) its predecessor's
/// filter, and `reset` removes it.
const NL_PRIORITY: u16 = 0x1b;
const NL_HANDLE: aya::programs::tc::TcHandle = aya::programs::tc::TcHandle::new(0, 0x1b);

/// Reuses a pinned link: the running program is swapped for the one just
/// loaded (BPF_LINK_UPDATE), so an upgrade never detaches and never leaves a
/// second link beside the first. A link pinned for another cgroup is
/// removed (the attach point changed) and `false` returned.
pub(super) fn adopt_link(
    pin: &Path,
    prog: &CgroupSockAddr,
    cgroup_id: u64,
    attach_type: u32,
) -> anyhow::Result<bool> {
    if !pin.exists() {
        return Ok(false);
    }
    let link =
        sys::obj_get(pin).with_context(|| format!("opening pinned link {}", pin.display()))?;
    let info = sys::cgroup_link_info(link.as_fd())
        .with_context(|| format!("reading link {}", pin.display()))?;
    if info.link_type != sys::BPF_LINK_TYPE_CGROUP
        || info.attach_type != attach_type
        || info.cgroup_id != cgroup_id
    {
        tracing::warn!(link = %pin.display(), ?info, "pinned link is attached elsewhere; replacing it");
        std::fs::remove_file(pin).with_context(|| format!("removing {}", pin.display()))?;
        return Ok(false);
    }
    let prog_fd = prog.fd()?;
    sys::link_update(link.as_fd(), prog_fd.as_fd()).with_context(|| {
        format!(
            "updating the program of link {} (fd {})",
            pin.display(),
            link.as_raw_fd()
        )
    })?;
    tracing::info!(link = %pin.display(), "adopted pinned link");
    Ok(true)
}

impl Datapath {
    /// Attaches the packet programs (tcx links, pinned) to `devices`, once
    /// each; a pinned link of an earlier agent gets the new program instead.
    /// A device without Ethernet headers is refused, named once. A device
    /// that fails does not keep the others from their programs: the error
    /// names each, and a later call tries them again.
    pub fn attach_devices(&mut self, devices: &[String]) -> anyhow::Result<()> {
        let mut fresh = Vec::new();
        for dev in devices {
            if self.devices.contains(dev) {
                continue;
            }
            if let Err(e) = crate::datapath::host::check_ethernet(dev) {
                if self.refused_ifaces.insert(dev.clone()) {
                    tracing::warn!(device = %dev, "not attached: {e:#}");
                }
                continue;
            }
            fresh.push(dev.clone());
        }
        let mut failed: Vec<(String, anyhow::Error)> = Vec::new();
        // Every device's answering hook before any device's starting one
        // (see TC_PROGRAMS): a flow may come in on one device and answer
        // out of another.
        for program in TC_PROGRAMS {
            for dev in &fresh {
                if failed.iter().any(|(d, _)| d == dev) {
                    continue;
                }
                if let Err(e) = self.attach_tc(dev, std::slice::from_ref(program)) {
                    failed.push((dev.clone(), e));
                }
            }
        }
        if self.xdp != XdpAttach::Off {
            for dev in &fresh {
                if !failed.iter().any(|(d, _)| d == dev)
                    && let Err(e) = self.attach_xdp(dev)
                {
                    failed.push((dev.clone(), e));
                }
            }
        }
        fresh.retain(|d| !failed.iter().any(|(f, _)| f == d));
        self.devices.extend(fresh);
        if !failed.is_empty() {
            let said: Vec<String> = failed.iter().map(|(_, e)| format!("{e:#}")).collect();
            anyhow::bail!("{}", said.join("; "));
        }
        Ok(())
    }

    /// Keeps the TC programs on exactly the pod interfaces `present` (name,
    /// ifindex): new ones get them, links of vanished ones (or of a name
    /// now held by another interface) are unpinned. Pins of interfaces that
    /// no longer exist, left by an earlier agent, go too.
    pub fn sync_pod_ifaces(&mut self, present: &[(String, u32)]) -> anyhow::Result<()> {
        let gone: Vec<String> = self
            .pod_ifaces
            .iter()
            .filter(|(n, i)| !present.iter().any(|(pn, pi)| pn == *n && pi == *i))
            .map(|(n, _)| n.clone())
            .collect();
        for n in gone {
            self.pod_ifaces.remove(&n);
            self.unpin_tc(&n);
        }
        for entry in std::fs::read_dir(&self.links_dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            let dev = name
                .strip_prefix("tc-ingress-")
                .or_else(|| name.strip_prefix("tc-egress-"));
            if let Some(dev) = dev.filter(|d| !crate::datapath::host::interface_exists(d)) {
                tracing::info!(
                    interface = dev,
                    "unpinning the links of a vanished interface"
                );
                let _ = std::fs::remove_file(self.links_dir.join(&name));
            }
            let gone_record = name
                .strip_prefix(CLSACT_RECORD)
                .is_some_and(|d| !crate::datapath::host::interface_exists(d));
            if gone_record {
                let _ = std::fs::remove_dir(self.links_dir.join(&name));
            }
        }
        for (n, i) in present {
            if self.pod_ifaces.contains_key(n) || self.devices.contains(n) {
                continue;
            }
            if let Err(e) = crate::datapath::host::check_ethernet(n) {
                // Said once per interface, not at every sync.
                if self.refused_ifaces.insert(n.clone()) {
                    tracing::warn!(interface = %n, "pod interface: {e:#}");
                }
                continue;
            }
            match self.attach_tc(n, POD_PROGRAMS) {
                Ok(()) => {
                    self.pod_ifaces.insert(n.clone(), *i);
                }
                // A pod interface can vanish between listing and attaching.
                Err(e) => tracing::warn!(interface = %n, "pod interface: {e:#}"),
            }
        }
        Ok(())
    }

    fn unpin_tc(&self, dev: &str) {
        for (_, dir) in TC_PROGRAMS {
            let _ = std::fs::remove_file(self.links_dir.join(format!("tc-{dir}-{dev}")));
        }
    }

    /// The TC programs on `dev` (ingress and egress), as pinned tcx links;
    /// a pinned link of an earlier agent gets the new program instead.
    fn attach_tc(&mut self, dev: &str, programs: &[(&str, &str)]) -> anyhow::Result<()> {
        for (name, dir) in programs {
            let pin = self.links_dir.join(format!("tc-{dir}-{dev}"));
            let prog: &mut SchedClassifier = self
                .ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing"))?
                .try_into()?;
            if pin.exists() {
                let link = sys::obj_get(&pin)
                    .with_context(|| format!("opening pinned link {}", pin.display()))?;
                // Already this program (a device tried again after its XDP
                // failed): nothing to swap, nothing to say.
                if runs(&link, prog.info()?.id()) {
                    continue;
                }
                let prog_fd = prog.fd()?;
                if sys::link_update(link.as_fd(), prog_fd.as_fd()).is_ok() {
                    tracing::info!(link = %pin.display(), "adopted pinned link");
                    continue;
                }
                tracing::warn!(link = %pin.display(), "pinned link is stale; replacing it");
                std::fs::remove_file(&pin)?;
            }
            let attach = if *dir == "ingress" {
                TcAttachType::Ingress
            } else {
                TcAttachType::Egress
            };
            let tcx = match self.tc_attach {
                TcAttach::Netlink => None,
                mode => match prog.attach_with_options(
                    dev,
                    attach,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                ) {
                    Ok(id) => Some(id),
                    Err(e) if mode == TcAttach::Auto => {
                        tracing::info!(device = dev, "no tcx ({e}); using a clsact filter");
                        None
                    }
                    Err(e) => {
                        return Err(e)
                            .with_context(|| format!("attaching {name} to {dev} ({dir})"));
                    }
                },
            };
            let Some(id) = tcx else {
                attach_netlink(prog, dev, attach).with_context(|| {
                    format!("attaching {name} to {dev} ({dir}) as a clsact filter")
                })?;
                record_clsact(&self.links_dir, dev)?;
                tracing::info!(program = name, device = dev, "attached (clsact)");
                continue;
            };
            let link: FdLink = prog
                .take_link(id)?
                .try_into()
                .context("tcx link is not an fd link")?;
            link.pin(&pin)
                .with_context(|| format!("pinning link {}", pin.display()))?;
            tracing::info!(program = name, device = dev, "attached");
        }
        Ok(())
    }

    fn attach_xdp(&mut self, dev: &str) -> anyhow::Result<()> {
        let pin = self.links_dir.join(format!("xdp-{dev}"));
        let prog: &mut Xdp = self
            .ebpf
            .program_mut("lb_xdp")
            .ok_or_else(|| anyhow!("lb_xdp missing"))?
            .try_into()?;
        if pin.exists() {
            let link = sys::obj_get(&pin)
                .with_context(|| format!("opening pinned link {}", pin.display()))?;
            if sys::link_update(link.as_fd(), prog.fd()?.as_fd()).is_ok() {
                tracing::info!(link = %pin.display(), "adopted pinned link");
                return Ok(());
            }
            std::fs::remove_file(&pin)?;
        }
        let mode = if self.xdp == XdpAttach::Native {
            XdpMode::Driver
        } else {
            XdpMode::Skb
        };
        let id = prog
            .attach(dev, mode)
            .with_context(|| format!("attaching lb_xdp to {dev} ({:?})", self.xdp))?;
        let link: FdLink = prog
            .take_link(id)?
            .try_into()
            .context("XDP link is not an fd link")?;
        link.pin(&pin)
            .with_context(|| format!("pinning link {}", pin.display()))?;
        tracing::info!(device = dev, mode = ?self.xdp, "attached lb_xdp");
        Ok(())
    }
}

/// The program as the agent's clsact filter on `dev`: created, or put in
/// place of an earlier agent's filter in the same slot (no gap). The link
/// is forgotten, not dropped: dropping it would detach the filter, which
/// must outlive this process as pinned tcx links do.
pub(super) fn attach_netlink(
    prog: &mut SchedClassifier,
    dev: &str,
    attach: TcAttachType,
) -> anyhow::Result<()> {
    use aya::programs::tc::{NlOptions, SchedClassifierLink};
    match aya::programs::tc::qdisc_add_clsact(dev) {
        Ok(()) => {}
        // Already there (an earlier agent, or another tool's programs).
        Err(aya::programs::tc::TcError::NetlinkError(e))
            if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(e).context("adding the clsact qdisc"),
    }
    let opts = TcAttachOptions::Netlink(NlOptions {
        priority: NL_PRIORITY,
        handle: NL_HANDLE,
        ..Default::default()
    });
    let id = match prog.attach_with_options(dev, attach, opts) {
        Ok(id) => id,
        Err(_) => {
            let old = SchedClassifierLink::attached(dev, attach, NL_PRIORITY, NL_HANDLE, None)?;
            prog.attach_to_link(old)
                .context("replacing the earlier filter")?
        }
    };
    std::mem::forget(prog.take_link(id)?);
    Ok(())
}

/// The pin directory's record of a device that got clsact filters (tcx
/// links are pins of their own; filters are not, and bpffs holds no plain
/// files, so the record is an empty directory).
pub(super) const CLSACT_RECORD: &str = "clsact-";

pub(super) fn record_clsact(links_dir: &Path, dev: &str) -> anyhow::Result<()> {
    let p = links_dir.join(format!("{CLSACT_RECORD}{dev}"));
    match std::fs::create_dir(&p) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            Err(e).with_context(|| format!("recording {}", p.display()))
        }
        _ => Ok(()),
    }
}

/// Removes the agent's clsact filters from `dev` (its fixed slot only).
pub(super) fn detach_netlink_filters(dev: &str) {
    use aya::programs::links::Link as _;
    use aya::programs::tc::SchedClassifierLink;
    for attach in [TcAttachType::Ingress, TcAttachType::Egress] {
        if let Ok(l) = SchedClassifierLink::attached(dev, attach, NL_PRIORITY, NL_HANDLE, None) {
            // Absent is fine: the device may have gone or been reset.
            let _ = l.detach();
        }
    }
}
