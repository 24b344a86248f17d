//! The file source: a directory of ordinary Kubernetes YAML. Writers rename
//! files into place and write `GENERATION` (an integer) last; a change set is
//! read only when that number moves. Without a GENERATION file every change
//! is read as it appears. Only files whose stamp changed are re-read.

use std::{
    collections::{BTreeMap, HashMap},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context as _;

use crate::{
    model::snapshot::{Change, ObjRef},
    source::{
        Batch, RejectKind, Rejected,
        manifest::{self, Object},
    },
};

pub const GENERATION_FILE: &str = "GENERATION";

/// Kind and namespace/name: the identity of an object across files.
pub type ObjId = (String, ObjRef);

pub fn object_id(o: &Object) -> Option<ObjId> {
    fn id<
        T: k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
    >(
        kind: &str,
        t: &T,
        namespaced: bool,
    ) -> Option<ObjId> {
        let m = t.metadata();
        let ns = if namespaced {
            m.namespace.as_deref().unwrap_or("default")
        } else {
            ""
        };
        Some((kind.to_string(), ObjRef::new(ns, m.name.as_deref()?)))
    }
    match o {
        Object::Service(s) => id("Service", s.as_ref(), true),
        Object::EndpointSlice(s) => id("EndpointSlice", s.as_ref(), true),
        Object::Pod(p) => id("Pod", p.as_ref(), true),
        Object::NetworkPolicy(p) => id("NetworkPolicy", p.as_ref(), true),
        Object::Node(n) => id("Node", n.as_ref(), false),
        Object::Namespace(n) => id("Namespace", n.as_ref(), false),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Stamp {
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let m = std::fs::metadata(path)?;
    Ok(Stamp {
        ino: m.ino(),
        size: m.size(),
        mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
    })
}

struct FileState {
    stamp: Stamp,
    objects: BTreeMap<ObjId, Object>,
    /// What the file holds that the agent cannot take, as last read.
    rejected: Vec<Rejected>,
}

pub struct FileSource {
    dir: PathBuf,
    files: HashMap<PathBuf, FileState>,
    /// The file whose version of each object the change sets carried: the
    /// objects themselves live once, in `files`.
    applied: HashMap<ObjId, Arc<Path>>,
    /// `applied` by kind, kept as it changes (not counted per change set).
    counts: BTreeMap<String, u64>,
    generation: Option<u64>,
    started: bool,
}

impl FileSource {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            files: HashMap::new(),
            applied: HashMap::new(),
            counts: BTreeMap::new(),
            generation: None,
            started: false,
        }
    }

    /// How many objects of each kind the source holds.
    pub fn counts_by_kind(&self) -> BTreeMap<String, u64> {
        self.counts.clone()
    }

    /// The next complete change set, if one is ready.
    pub fn poll(&mut self) -> anyhow::Result<Option<Batch>> {
        let gen_path = self.dir.join(GENERATION_FILE);
        let generation = match std::fs::read_to_string(&gen_path) {
            Ok(s) => Some(s.trim().parse::<u64>().with_context(|| {
                format!(
                    "{}: `{}` is not a non-negative integer",
                    gen_path.display(),
                    s.trim()
                )
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("reading {}", gen_path.display())),
        };
        if self.started && generation.is_some() && generation == self.generation {
            return Ok(None);
        }
        let mut batch = self.read_changes()?;
        if self.started
            && generation.is_none()
            && batch.changes.is_empty()
            && batch.errors.is_empty()
        {
            return Ok(None);
        }
        batch.full = !self.started;
        batch.counts = Some(self.counts_by_kind());
        let mut paths: Vec<&PathBuf> = self.files.keys().collect();
        paths.sort();
        batch.rejected = Some(
            paths
                .into_iter()
                .flat_map(|p| self.files[p].rejected.iter().cloned())
                .collect(),
        );
        batch.generation = generation;
        self.started = true;
        self.generation = generation;
        Ok(Some(batch))
    }

    fn read_changes(&mut self) -> anyhow::Result<Batch> {
        let mut batch = Batch::default();
        let mut present = Vec::new();
        for entry in std::fs::read_dir(&self.dir)
            .with_context(|| format!("reading {}", self.dir.display()))?
        {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || name == GENERATION_FILE || !entry.file_type()?.is_file() {
                continue;
            }
            present.push(entry.path());
        }
        present.sort();
        let mut touched: Vec<ObjId> = Vec::new();
        // The objects of files read again or gone, as they were: what the
        // change sets carried is compared with them.
        let mut before: HashMap<PathBuf, BTreeMap<ObjId, Object>> = HashMap::new();
        for path in &present {
            let Ok(st) = stamp(path) else { continue };
            if self.files.get(path).is_some_and(|f| f.stamp == st) {
                continue;
            }
            let old = self
                .files
                .remove(path)
                .map(|f| f.objects)
                .unwrap_or_default();
            let (objects, rejected) = self.read_file(path, &old);
            batch.errors.extend(rejected.iter().cloned());
            touched.extend(old.keys().cloned());
            touched.extend(objects.keys().cloned());
            before.insert(path.clone(), old);
            self.files.insert(
                path.clone(),
                FileState {
                    stamp: st,
                    objects,
                    rejected,
                },
            );
        }
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !present.contains(p))
            .cloned()
            .collect();
        for p in gone {
            if let Some(f) = self.files.remove(&p) {
                touched.extend(f.objects.keys().cloned());
                before.insert(p, f.objects);
            }
        }
        touched.sort();
        touched.dedup();
        let mut names: HashMap<&Path, (Arc<Path>, Arc<str>)> = HashMap::new();
        let winners = winners(&self.files, &touched);
        for id in touched {
            let now = winners.get(&id).map(|p| (*p, &self.files[*p]));
            let carried = self
                .applied
                .get(&id)
                .and_then(|p| match before.get(p.as_ref()) {
                    Some(old) => old.get(&id),
                    None => self.files.get(p.as_ref()).and_then(|f| f.objects.get(&id)),
                });
            match now.and_then(|(p, f)| Some((p, f.objects.get(&id)?))) {
                Some((path, o)) => {
                    let (path, name) = names.entry(path).or_insert_with(|| {
                        (Arc::from(path.as_path()), path.display().to_string().into())
                    });
                    if carried != Some(o) {
                        batch.changes.push(Change::Upsert(o.clone()));
                        batch.files.push(Some(name.clone()));
                    }
                    if let Some(p) = self.applied.get_mut(&id) {
                        *p = path.clone();
                    } else {
                        *self.counts.entry(id.0.clone()).or_default() += 1;
                        self.applied.insert(id, path.clone());
                    }
                }
                None => {
                    if self.applied.remove(&id).is_some() {
                        if let Some(n) = self.counts.get_mut(&id.0) {
                            *n -= 1;
                        }
                        batch.changes.push(Change::Delete {
                            kind: id.0,
                            key: id.1,
                        });
                        batch.files.push(None);
                    }
                }
            }
        }
        Ok(batch)
    }

    /// Parses one file, returning its objects and what it holds that cannot
    /// be read. A document that fails keeps its object's previous version
    /// (when it names its object); a document that names none (broken
    /// YAML) may have been any of the file's earlier objects, so those that
    /// no readable document names are kept: bad input never removes what
    /// was programmed. The readable documents beside it still apply.
    fn read_file(
        &self,
        path: &Path,
        old: &BTreeMap<ObjId, Object>,
    ) -> (BTreeMap<ObjId, Object>, Vec<Rejected>) {
        let file = Some(path.display().to_string());
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                let r = Rejected {
                    file,
                    object: None,
                    kind: RejectKind::UnreadableFile,
                    reason: format!("{e}; keeping its previous objects"),
                };
                return (old.clone(), vec![r]);
            }
        };
        let mut out = BTreeMap::new();
        let mut rejected = Vec::new();
        let mut unreadable = Vec::new();
        for doc in manifest::parse_documents_at(&text) {
            let place = doc.place();
            match doc.result {
                Ok(o) => match object_id(&o) {
                    Some(id) => {
                        out.insert(id, o);
                    }
                    None => rejected.push(Rejected {
                        file: file.clone(),
                        object: Some(place),
                        kind: RejectKind::NoName,
                        reason: "the object has no metadata.name".into(),
                    }),
                },
                Err(e) => match e.object() {
                    Some(desc) => {
                        let kept = old.iter().find(|(id, _)| describe_id(id) == desc);
                        let mut reason = e.reason();
                        if let Some((id, o)) = kept {
                            reason += "; keeping its previous version";
                            out.insert(id.clone(), o.clone());
                        }
                        rejected.push(Rejected {
                            file: file.clone(),
                            object: Some(desc.to_string()),
                            kind: (&e).into(),
                            reason,
                        });
                    }
                    None => {
                        unreadable.push(rejected.len());
                        rejected.push(Rejected {
                            file: file.clone(),
                            object: Some(place),
                            kind: (&e).into(),
                            reason: e.reason(),
                        });
                    }
                },
            }
        }
        if !unreadable.is_empty() {
            let mut kept = false;
            for (id, o) in old {
                if !out.contains_key(id) {
                    out.insert(id.clone(), o.clone());
                    kept = true;
                }
            }
            if kept {
                for i in unreadable {
                    rejected[i].reason +=
                        "; keeping its previous objects that no readable document names";
                }
            }
        }
        (out, rejected)
    }
}

/// The file defining each of `ids` that wins: the last in name order.
/// Looked up per id when few change, in one pass over every file's
/// objects when that is cheaper (a cold start from many files).
fn winners<'a>(
    files: &'a HashMap<PathBuf, FileState>,
    ids: &[ObjId],
) -> HashMap<ObjId, &'a PathBuf> {
    let mut won: HashMap<ObjId, &PathBuf> = HashMap::with_capacity(ids.len());
    let total: usize = files.values().map(|f| f.objects.len()).sum();
    if ids.len().saturating_mul(files.len()) <= total {
        for id in ids {
            let last = files
                .iter()
                .filter(|(_, f)| f.objects.contains_key(id))
                .map(|(p, _)| p)
                .max();
            if let Some(p) = last {
                won.insert(id.clone(), p);
            }
        }
    } else {
        let wanted: std::collections::HashSet<&ObjId> = ids.iter().collect();
        for (p, f) in files {
            for id in f.objects.keys().filter(|id| wanted.contains(id)) {
                let w = won.entry(id.clone()).or_insert(p);
                if p > *w {
                    *w = p;
                }
            }
        }
    }
    won
}

/// `Kind namespace/name` (`Kind name` when cluster-scoped), as messages
/// name objects.
pub fn describe_id((kind, r): &ObjId) -> String {
    if r.namespace.is_empty() {
        format!("{kind} {}", r.name)
    } else {
        format!("{kind} {r}")
    }
}

#[cfg(test)]
#[path = "file_tests.rs"]
mod tests;
