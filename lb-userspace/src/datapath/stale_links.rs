//! Pinned links still running another agent's programs: a link whose swap
//! failed, one on a device this agent was not told to serve, an XDP link
//! when this agent runs without XDP. While one runs, the maps those
//! programs write are still being written, so their carry (see `migrate`)
//! ends only once none is left; without a carry they would run an older
//! version's code, or XDP the operator turned off.

use super::*;

impl Datapath {
    /// Puts this agent's program of the same name under every pinned link
    /// that runs another program; an XDP link goes when this agent runs
    /// without XDP (its TC programs do all the XDP one does). Returns the
    /// links left running another program, each with the reason.
    pub(super) fn adopt_stale_links(&mut self) -> Vec<String> {
        let ours: std::collections::HashSet<u32> = self
            .ebpf
            .programs()
            .filter_map(|(_, p)| p.info().ok())
            .map(|i| i.id())
            .collect();
        let entries = match std::fs::read_dir(&self.links_dir) {
            Ok(e) => e,
            Err(e) => return vec![format!("reading {}: {e}", self.links_dir.display())],
        };
        // The clsact records are directories; their filters are replaced
        // in place by slot, never left running (see links).
        let mut pins: Vec<(u8, String)> = entries
            .flatten()
            .filter(|e| !e.path().is_dir())
            .map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                (swap_order(&name), name)
            })
            .collect();
        pins.sort();
        let mut stale = Vec::new();
        for (_, name) in pins {
            if let Err(e) = self.adopt_one(&self.links_dir.join(&name), &name, &ours) {
                stale.push(format!("{name}: {e:#}"));
            }
        }
        stale
    }

    fn adopt_one(
        &mut self,
        pin: &Path,
        name: &str,
        ours: &std::collections::HashSet<u32>,
    ) -> anyhow::Result<()> {
        let link = sys::obj_get(pin).context("opening the pinned link")?;
        let prog_id = sys::cgroup_link_info(link.as_fd())
            .context("reading the link")?
            .prog_id;
        if ours.contains(&prog_id) {
            return Ok(());
        }
        let prog_name =
            sys::prog_name_by_id(prog_id).with_context(|| format!("reading program {prog_id}"))?;
        if name.starts_with("xdp-") && self.xdp == XdpAttach::Off {
            std::fs::remove_file(pin).context("removing the pin")?;
            tracing::info!(
                link = name,
                "detached an earlier agent's XDP program (--xdp off)"
            );
            return Ok(());
        }
        let prog = self
            .ebpf
            .program(&prog_name)
            .ok_or_else(|| anyhow!("runs {prog_name}, which this agent does not have"))?;
        let fd = prog
            .fd()
            .with_context(|| format!("{prog_name} is not loaded"))?;
        match sys::link_update(link.as_fd(), fd.as_fd()) {
            Ok(()) => {}
            // Its device is gone: the link runs nothing any more.
            Err(e) if e.raw_os_error() == Some(libc::ENOLINK) => {
                std::fs::remove_file(pin).context("removing the pin of a defunct link")?;
                tracing::info!(link = name, "unpinned a link whose device is gone");
                return Ok(());
            }
            Err(e) => return Err(e).with_context(|| format!("swapping {prog_name} in")),
        }
        tracing::info!(
            link = name,
            program = prog_name,
            "adopted a link still running an earlier program"
        );
        Ok(())
    }
}

/// The order links are swapped in, as `TC_PROGRAMS` says: every answering
/// hook (egress) before any starting one (ingress), XDP after TC, so a
/// flow a new program starts is never answered by an old one.
fn swap_order(pin: &str) -> u8 {
    if pin.starts_with("tc-egress-") {
        0
    } else if pin.starts_with("tc-ingress-") {
        1
    } else if pin.starts_with("xdp-") {
        2
    } else {
        3
    }
}
