//! Pinned links still running another agent's programs. While one runs,
//! the maps those programs write are still being written, so their carry
//! (see `migrate`) ends only once none is left: a link whose swap failed,
//! or one on a device this agent was not told to serve.

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
        let mut stale = Vec::new();
        for entry in entries.flatten() {
            let pin = entry.path();
            // The clsact records are directories; their filters are
            // replaced in place by slot, never left running (see links).
            if pin.is_dir() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Err(e) = self.adopt_one(&pin, &name, &ours) {
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
        sys::link_update(link.as_fd(), fd.as_fd())
            .with_context(|| format!("swapping {prog_name} in"))?;
        tracing::info!(
            link = name,
            program = prog_name,
            "adopted a link still running an earlier program"
        );
        Ok(())
    }
}
