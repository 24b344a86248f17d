//! What a source hands the sync loop: a complete change set, and the input
//! it could not take, each naming file, object and field.

use std::{collections::BTreeMap, sync::Arc};

use crate::{model::snapshot::Change, source::manifest::ManifestError};

/// Why input was left out; the `kind` label of `lb_source_rejected_total`
/// and of each entry `lb-agent status` lists.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectKind {
    /// The file could not be read at all.
    UnreadableFile,
    /// A document that is not YAML.
    Yaml,
    /// A field the object's kind does not have.
    UnknownField,
    /// A field whose value the API (or this agent) refuses.
    #[default]
    Invalid,
    /// A kind the agent does not read.
    UnsupportedKind,
    /// An object without `metadata.name`.
    NoName,
}

impl RejectKind {
    pub fn label(self) -> &'static str {
        match self {
            Self::UnreadableFile => "unreadable_file",
            Self::Yaml => "yaml",
            Self::UnknownField => "unknown_field",
            Self::Invalid => "invalid",
            Self::UnsupportedKind => "unsupported_kind",
            Self::NoName => "no_name",
        }
    }
}

impl From<&ManifestError> for RejectKind {
    fn from(e: &ManifestError) -> Self {
        match e {
            ManifestError::Yaml(_) => Self::Yaml,
            ManifestError::UnknownField { .. } => Self::UnknownField,
            ManifestError::Invalid { .. } => Self::Invalid,
            ManifestError::UnsupportedKind { .. } => Self::UnsupportedKind,
        }
    }
}

/// Input the agent left out: a document it cannot read, an object it
/// cannot accept. Shown by `lb-agent status` until fixed or removed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, thiserror::Error)]
pub struct Rejected {
    /// The file it is in (None: not from a file).
    pub file: Option<String>,
    /// `Kind namespace/name`, or the document's place (`document 2 (line
    /// 14)`) when it names no object.
    pub object: Option<String>,
    /// An agent from before the kind was recorded said none: `invalid`.
    #[serde(default)]
    pub kind: RejectKind,
    pub reason: String,
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{file}: ")?;
        }
        if let Some(object) = &self.object {
            write!(f, "{object}: ")?;
        }
        f.write_str(&self.reason)
    }
}

/// One complete change set.
#[derive(Debug, Default)]
pub struct Batch {
    pub changes: Vec<Change>,
    /// The file each of `changes` came from (upserts of the file source;
    /// empty otherwise), to name it when the object is rejected later.
    pub files: Vec<Option<Arc<str>>>,
    pub generation: Option<u64>,
    /// Input this read found it cannot take (logged and counted once).
    pub errors: Vec<Rejected>,
    /// Everything the source holds and cannot read, new or not (None: the
    /// source has no such list).
    pub rejected: Option<Vec<Rejected>>,
    /// The first batch holds the whole directory: a full reconcile.
    pub full: bool,
    /// Objects the source holds by kind, for `/metrics`.
    pub counts: Option<BTreeMap<String, u64>>,
}
