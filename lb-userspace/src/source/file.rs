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
/// The kind is one of `KINDS`: a name, not a string per object (the file
/// source keeps two ids per object).
pub type ObjId = (&'static str, ObjRef);

/// The kinds the agent reads.
pub const KINDS: [&str; 6] = [
    "Service",
    "EndpointSlice",
    "Pod",
    "NetworkPolicy",
    "Node",
    "Namespace",
];

/// `kind` as one of `KINDS` (None: a kind the agent does not read).
pub fn known_kind(kind: &str) -> Option<&'static str> {
    KINDS.iter().copied().find(|k| *k == kind)
}

pub fn object_id(o: &Object) -> Option<ObjId> {
    fn id<
        T: k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
    >(
        kind: &'static str,
        t: &T,
        namespaced: bool,
    ) -> Option<ObjId> {
        let m = t.metadata();
        let ns = if namespaced {
            m.namespace.as_deref().unwrap_or("default")
        } else {
            ""
        };
        Some((kind, ObjRef::new(ns, m.name.as_deref()?)))
    }
    match o {
        Object::Service(s) => id("Service", s.as_ref(), true),
        Object::EndpointSlice(s) => id("EndpointSlice", s.as_ref(), true),
        Object::Pod(p) => id("Pod", p.as_ref(), true),
        Object::NetworkPolicy(p) => id("NetworkPolicy", p.as_ref(), true),
        Object::ServiceInfo(i) => Some(("Service", i.key.clone())),
        Object::SliceInfo(i) => Some(("EndpointSlice", i.key.clone())),
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

/// A digest of an object's document text: what the source keeps of each
/// object instead of the object (at 100,000 Services the parsed objects
/// were most of the agent's memory). Text that did not change is an
/// object that did not change; an edit that changes only the text's form
/// costs one Upsert that changes nothing.
type Digest = u64;

struct FileState {
    stamp: Stamp,
    objects: BTreeMap<ObjId, Digest>,
    /// What the file holds that the agent cannot take, as last read.
    rejected: Vec<Rejected>,
}

pub struct FileSource {
    dir: PathBuf,
    files: HashMap<PathBuf, FileState>,
    /// The file whose version of each object the change sets carried, and
    /// that version's digest.
    applied: HashMap<ObjId, (Arc<Path>, Digest)>,
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
        // The objects parsed by this read, by file: what an Upsert carries.
        let mut parsed: HashMap<PathBuf, HashMap<ObjId, Object>> = HashMap::new();
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
            let read = read_file(path, &old);
            batch.errors.extend(read.rejected.iter().cloned());
            touched.extend(old.into_keys());
            touched.extend(read.digests.keys().cloned());
            parsed.insert(path.clone(), read.objects);
            self.files.insert(
                path.clone(),
                FileState {
                    stamp: st,
                    objects: read.digests,
                    rejected: read.rejected,
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
                touched.extend(f.objects.into_keys());
            }
        }
        touched.sort();
        touched.dedup();
        let won = winners(&self.files, &touched);
        let mut names: HashMap<&Path, (Arc<Path>, Arc<str>)> = HashMap::new();
        for id in touched {
            let carried = self.applied.get(&id).map(|(_, d)| *d);
            let Some(path) = won.get(&id).copied() else {
                if self.applied.remove(&id).is_some() {
                    if let Some(n) = self.counts.get_mut(id.0) {
                        *n -= 1;
                    }
                    batch.changes.push(Change::Delete {
                        kind: id.0.to_string(),
                        key: id.1,
                    });
                    batch.files.push(None);
                }
                continue;
            };
            let digest = self.files[path].objects[&id];
            let (arc, name) = names
                .entry(path)
                .or_insert_with(|| (Arc::from(path.as_path()), path.display().to_string().into()))
                .clone();
            if carried != Some(digest) {
                let Some(o) = take_object(&mut parsed, path, &id) else {
                    // Its document there is broken now, and the version
                    // that file had before is not held.
                    batch.errors.push(Rejected {
                        file: Some(path.display().to_string()),
                        object: Some(describe_id(&id)),
                        kind: RejectKind::Invalid,
                        reason: "its document cannot be read and this file's earlier version of it is not held; keeping the version applied before".into(),
                    });
                    continue;
                };
                batch.changes.push(Change::Upsert(o));
                batch.files.push(Some(name));
            }
            if self.applied.insert(id.clone(), (arc, digest)).is_none() {
                *self.counts.entry(id.0.to_string()).or_default() += 1;
            }
        }
        Ok(batch)
    }
}

/// The object `id` as `path` now holds it: parsed by this read, or read
/// again (another file that held it went, and this one was not read).
fn take_object(
    parsed: &mut HashMap<PathBuf, HashMap<ObjId, Object>>,
    path: &Path,
    id: &ObjId,
) -> Option<Object> {
    if !parsed.contains_key(path) {
        let read = read_file(path, &BTreeMap::new());
        parsed.insert(path.to_path_buf(), read.objects);
    }
    parsed.get_mut(path)?.remove(id)
}

/// One file as read: each object's digest, the objects parsed, and what it
/// holds that cannot be read.
struct FileRead {
    digests: BTreeMap<ObjId, Digest>,
    objects: HashMap<ObjId, Object>,
    rejected: Vec<Rejected>,
}

/// One string per namespace among a file's compact objects (held by their
/// keys here and by the snapshot), not one per object.
fn share_namespace(
    mut o: Object,
    seen: &mut std::collections::HashSet<std::sync::Arc<str>>,
) -> Object {
    let key = match &mut o {
        Object::ServiceInfo(i) => &mut i.key,
        Object::SliceInfo(i) => &mut i.key,
        _ => return o,
    };
    match seen.get(&*key.namespace) {
        Some(held) => key.namespace = held.clone(),
        None => {
            seen.insert(key.namespace.clone());
        }
    }
    o
}

/// Parses one file: its objects, their digests, and what it holds that
/// cannot be read. A document that fails keeps its object's previous
/// version (its digest, when it names its object); a document that names
/// none (broken YAML) may have been any of the file's earlier objects, so
/// those that no readable document names are kept: bad input never
/// removes what was programmed. The readable documents beside it still
/// apply.
fn read_file(path: &Path, old: &BTreeMap<ObjId, Digest>) -> FileRead {
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
            return FileRead {
                digests: old.clone(),
                objects: HashMap::new(),
                rejected: vec![r],
            };
        }
    };
    let mut read = FileRead {
        digests: BTreeMap::new(),
        objects: HashMap::new(),
        rejected: Vec::new(),
    };
    let mut unreadable = Vec::new();
    let mut namespaces = std::collections::HashSet::new();
    for doc in manifest::parse_documents_at(&text) {
        let place = doc.place();
        match doc
            .result
            .map(|o| share_namespace(o.compact(), &mut namespaces))
        {
            // The id from the compact form: its name is the very string the
            // snapshot then holds (interned, not copied), not a second one.
            Ok(o) => match object_id(&o) {
                Some(id) => {
                    read.digests.insert(id.clone(), doc.digest);
                    read.objects.insert(id, o);
                }
                None => read.rejected.push(Rejected {
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
                    if let Some((id, d)) = kept {
                        reason += "; keeping its previous version";
                        read.digests.insert(id.clone(), *d);
                    }
                    read.rejected.push(Rejected {
                        file: file.clone(),
                        object: Some(desc.to_string()),
                        kind: (&e).into(),
                        reason,
                    });
                }
                None => {
                    unreadable.push(read.rejected.len());
                    read.rejected.push(Rejected {
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
        for (id, d) in old {
            if !read.digests.contains_key(id) {
                read.digests.insert(id.clone(), *d);
                kept = true;
            }
        }
        if kept {
            for i in unreadable {
                read.rejected[i].reason +=
                    "; keeping its previous objects that no readable document names";
            }
        }
    }
    read
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
