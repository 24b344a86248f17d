//! Reports beside the pins, for the inspection commands: the kernel maps
//! hold only numbers, and bpffs holds no plain files, so they live under
//! /run, in a directory named after the pin directory:
//!
//! - `policy.json`: the policy report (endpoints, identities, resolved
//!   allow entries with the rules they came from);
//! - `sync.json`: what the last applied change set left out (rejected
//!   input, Services the maps cannot take), read by `lb-agent status`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::{
    compute::{policy::Report, reconcile::NotProgrammed},
    source::Rejected,
};

const RUN_DIR: &str = "/run/lb-agent";
const SYNC_FILE: &str = "sync.json";

/// `/run/lb-agent/<pin dir with / as ->`.
fn dir(pin_dir: &Path) -> PathBuf {
    let flat: String = pin_dir
        .to_string_lossy()
        .trim_matches('/')
        .replace('/', "-");
    Path::new(RUN_DIR).join(flat)
}

/// `/run/lb-agent/<pin dir with / as ->/policy.json`.
pub fn path(pin_dir: &Path) -> PathBuf {
    dir(pin_dir).join("policy.json")
}

/// `/run/lb-agent/<pin dir with / as ->/sync.json`.
pub fn sync_path(pin_dir: &Path) -> PathBuf {
    dir(pin_dir).join(SYNC_FILE)
}

/// Written whole and renamed into place, so a reader never sees half.
fn write_json(p: &Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    let dir = p.parent().context("report path has no parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = p.file_name().context("report path has no name")?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    std::fs::write(&tmp, serde_json::to_vec(value)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, p).with_context(|| format!("renaming into {}", p.display()))
}

pub fn write(pin_dir: &Path, report: &Report) -> anyhow::Result<()> {
    write_json(&path(pin_dir), report)
}

/// At most this many rejected objects and Services not programmed are
/// listed (all are counted).
pub const LIST_MAX: usize = 1000;

/// What the applied state leaves out. `clean` when nothing: no input
/// rejected, every Service programmed whole.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SyncReport {
    /// The last generation applied (the file source's GENERATION).
    pub generation: Option<u64>,
    pub clean: bool,
    pub rejected_count: usize,
    /// Input left out: file, object, reason (the first `LIST_MAX`).
    pub rejected: Vec<Rejected>,
    pub services_not_programmed: usize,
    /// Services the maps cannot take, with the map and the numbers (the
    /// first `LIST_MAX`).
    pub not_programmed: Vec<NotProgrammed>,
}

impl SyncReport {
    pub fn new<'a>(
        generation: Option<u64>,
        rejected: impl IntoIterator<Item = &'a Rejected>,
        not_programmed: impl IntoIterator<Item = &'a NotProgrammed>,
    ) -> Self {
        let mut r = Self {
            generation,
            ..Default::default()
        };
        for x in rejected {
            r.rejected_count += 1;
            if r.rejected.len() < LIST_MAX {
                r.rejected.push(x.clone());
            }
        }
        for x in not_programmed {
            r.services_not_programmed += 1;
            if r.not_programmed.len() < LIST_MAX {
                r.not_programmed.push(x.clone());
            }
        }
        r.clean = r.rejected_count == 0 && r.services_not_programmed == 0;
        r
    }
}

pub fn write_sync(pin_dir: &Path, report: &SyncReport) -> anyhow::Result<()> {
    write_json(&sync_path(pin_dir), report)
}

/// The agent's last sync report (None: it has written none).
pub fn read_sync(pin_dir: &Path) -> anyhow::Result<Option<SyncReport>> {
    let p = sync_path(pin_dir);
    match std::fs::read(&p) {
        Ok(text) => Ok(Some(
            serde_json::from_slice(&text).with_context(|| format!("parsing {}", p.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
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

/// Removes the reports and their directory (part of `reset`).
pub fn remove(pin_dir: &Path) {
    let _ = std::fs::remove_file(path(pin_dir));
    let _ = std::fs::remove_file(sync_path(pin_dir));
    let _ = std::fs::remove_dir(dir(pin_dir));
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_file_per_pin_dir() {
        assert_eq!(
            super::path(std::path::Path::new("/sys/fs/bpf/lb")),
            std::path::Path::new("/run/lb-agent/sys-fs-bpf-lb/policy.json")
        );
        assert_eq!(
            super::sync_path(std::path::Path::new("/sys/fs/bpf/lb")),
            std::path::Path::new("/run/lb-agent/sys-fs-bpf-lb/sync.json")
        );
    }

    #[test]
    fn a_report_is_clean_only_when_nothing_is_left_out() {
        use super::SyncReport;
        let r = SyncReport::new(Some(3), [], []);
        assert!(r.clean);
        let rej = crate::source::Rejected {
            file: Some("a.yaml".into()),
            object: None,
            kind: crate::source::RejectKind::Yaml,
            reason: "YAML".into(),
        };
        let many = vec![rej; super::LIST_MAX + 5];
        let r = SyncReport::new(Some(3), &many, []);
        assert!(!r.clean);
        assert_eq!(r.rejected_count, super::LIST_MAX + 5);
        assert_eq!(r.rejected.len(), super::LIST_MAX);
    }
}
