//! The policy report (endpoints, identities, resolved allow entries with
//! the rules they came from) as a JSON file beside the pins, for the
//! inspection commands: the kernel maps hold only numbers. bpffs holds no
//! plain files, so it lives under /run, named after the pin directory.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::compute::policy::Report;

const RUN_DIR: &str = "/run/lb-agent";

/// `/run/lb-agent/<pin dir with / as ->/policy.json`.
pub fn path(pin_dir: &Path) -> PathBuf {
    let flat: String = pin_dir
        .to_string_lossy()
        .trim_matches('/')
        .replace('/', "-");
    Path::new(RUN_DIR).join(flat).join("policy.json")
}

/// Written whole and renamed into place, so a reader never sees half.
pub fn write(pin_dir: &Path, report: &Report) -> anyhow::Result<()> {
    let p = path(pin_dir);
    let dir = p.parent().context("report path has no parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(".policy.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(report)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &p).with_context(|| format!("renaming into {}", p.display()))
}

pub fn read(pin_dir: &Path) -> anyhow::Result<Report> {
    let p = path(pin_dir);
    let text = std::fs::read(&p).with_context(|| {
        format!(
            "reading {} (written by the agent running with --pin-dir {})",
            p.display(),
            pin_dir.display()
        )
    })?;
    serde_json::from_slice(&text).with_context(|| format!("parsing {}", p.display()))
}

/// Removes the report and its directory (part of `reset`).
pub fn remove(pin_dir: &Path) {
    let p = path(pin_dir);
    let _ = std::fs::remove_file(&p);
    if let Some(dir) = p.parent() {
        let _ = std::fs::remove_dir(dir);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_file_per_pin_dir() {
        assert_eq!(
            super::path(std::path::Path::new("/sys/fs/bpf/lb")),
            std::path::Path::new("/run/lb-agent/sys-fs-bpf-lb/policy.json")
        );
    }
}
