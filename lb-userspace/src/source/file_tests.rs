//! The file source: change sets from a directory of manifests.

use super::*;

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
fn dir(name: &str) -> Dir {
    let d = std::env::temp_dir().join(format!("lb-src-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Dir(d)
}
fn write(d: &Path, name: &str, text: &str) {
    let tmp = d.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, d.join(name)).unwrap();
}
const SVC_A: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: x}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}\n";
const SVC_A2: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: x}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 81}]}\n";
const SVC_B: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: b, namespace: x}\nspec: {clusterIP: 10.96.0.11, ports: [{port: 80}]}\n";

fn kinds(b: &Batch) -> Vec<String> {
    b.changes
        .iter()
        .map(|c| match c {
            Change::Upsert(o) => format!("upsert {}", describe_id(&object_id(o).unwrap())),
            Change::Delete { kind, key } => format!("delete {kind} {key}"),
        })
        .collect()
}

#[test]
fn generation_gates_change_sets_and_only_changes_are_reported() {
    let d = dir("gen");
    write(&d.0, "a.yaml", &format!("{SVC_A}---\n{SVC_B}"));
    write(&d.0, ".hidden.yaml", "not: [valid");
    write(&d.0, GENERATION_FILE, "1");
    let mut s = FileSource::new(&d.0);
    let b = s.poll().unwrap().unwrap();
    assert!(b.full);
    assert_eq!(b.generation, Some(1));
    assert_eq!(kinds(&b), ["upsert Service x/a", "upsert Service x/b"]);
    assert!(b.errors.is_empty(), "{:?}", b.errors);
    // files change but the generation does not: nothing yet
    write(&d.0, "a.yaml", SVC_A2);
    assert!(s.poll().unwrap().is_none());
    write(&d.0, GENERATION_FILE, "2");
    let b = s.poll().unwrap().unwrap();
    assert!(!b.full);
    assert_eq!(kinds(&b), ["upsert Service x/a", "delete Service x/b"]);
    write(&d.0, GENERATION_FILE, "3");
    assert!(s.poll().unwrap().unwrap().changes.is_empty());
}

#[test]
fn the_last_file_defining_an_object_wins_and_the_other_takes_over_when_it_goes() {
    let d = dir("winner");
    write(&d.0, "a.yaml", SVC_A);
    write(&d.0, "b.yaml", SVC_A2);
    let mut s = FileSource::new(&d.0);
    let b = s.poll().unwrap().unwrap();
    assert_eq!(kinds(&b), ["upsert Service x/a"]);
    assert!(b.files[0].as_deref().unwrap().ends_with("b.yaml"));
    // The losing file changes: what was carried does not.
    write(&d.0, "a.yaml", &format!("{SVC_A}---\n{SVC_B}"));
    let b = s.poll().unwrap().unwrap();
    assert_eq!(kinds(&b), ["upsert Service x/b"]);
    // The winner goes: the other file's version is carried.
    std::fs::remove_file(d.0.join("b.yaml")).unwrap();
    let b = s.poll().unwrap().unwrap();
    assert_eq!(kinds(&b), ["upsert Service x/a"]);
    assert!(b.files[0].as_deref().unwrap().ends_with("a.yaml"));
    // Both the same again in another file: nothing to carry.
    write(&d.0, "c.yaml", SVC_A);
    assert!(s.poll().unwrap().is_none());
    std::fs::remove_file(d.0.join("a.yaml")).unwrap();
    let b = s.poll().unwrap().unwrap();
    assert_eq!(kinds(&b), ["delete Service x/b"]);
    assert_eq!(b.counts.unwrap().get("Service"), Some(&1), "x/a is left");
}

/// The source keeps digests, not objects: when the winner goes and the
/// other file's document for the object is broken, that file's earlier
/// version is not there to carry. The applied version stays, and it says so.
#[test]
fn a_winner_gone_while_the_other_files_document_is_broken_keeps_the_applied_version() {
    let d = dir("brokenheir");
    write(&d.0, "a.yaml", SVC_A);
    write(&d.0, "b.yaml", SVC_A2);
    let mut s = FileSource::new(&d.0);
    assert_eq!(kinds(&s.poll().unwrap().unwrap()), ["upsert Service x/a"]);
    write(&d.0, "a.yaml", &SVC_A.replace("ports:", "portz:"));
    let b = s.poll().unwrap().unwrap();
    assert!(b.changes.is_empty(), "a.yaml lost: {:?}", kinds(&b));
    std::fs::remove_file(d.0.join("b.yaml")).unwrap();
    let b = s.poll().unwrap().unwrap();
    assert!(
        b.changes.is_empty(),
        "neither deleted nor replaced: {:?}",
        kinds(&b)
    );
    assert_eq!(b.errors.len(), 1, "{:?}", b.errors);
    let said = b.errors[0].to_string();
    assert!(
        said.contains("a.yaml")
            && said.contains("Service x/a")
            && said.contains("keeping the version applied before"),
        "{said}"
    );
    // Fixed: a.yaml's version is carried.
    write(&d.0, "a.yaml", SVC_A);
    assert_eq!(kinds(&s.poll().unwrap().unwrap()), ["upsert Service x/a"]);
}

#[test]
fn a_cold_start_from_many_files_finds_each_objects_file() {
    let d = dir("many");
    for i in 0..300 {
        write(
            &d.0,
            &format!("s{i:03}.yaml"),
            &SVC_A.replace("name: a", &format!("name: s{i}")),
        );
    }
    let mut s = FileSource::new(&d.0);
    let b = s.poll().unwrap().unwrap();
    assert_eq!(b.changes.len(), 300);
    for (c, f) in b.changes.iter().zip(&b.files) {
        let Change::Upsert(o) = c else {
            panic!("{c:?}")
        };
        let (_, key) = object_id(o).unwrap();
        assert!(f.as_deref().unwrap().ends_with(&format!(
            "/s{:03}.yaml",
            key.name[1..].parse::<u32>().unwrap()
        )));
    }
}

#[test]
fn rejected_input_stays_listed_until_its_file_is_fixed_or_gone() {
    let d = dir("rejected");
    let torn = "apiVersion: v1\nkind: Service\nmetadata: {name: torn, namespace: x\n";
    write(&d.0, "a.yaml", &format!("{SVC_A}---\n{torn}---\n{SVC_B}"));
    write(&d.0, GENERATION_FILE, "1");
    let mut s = FileSource::new(&d.0);
    let b = s.poll().unwrap().unwrap();
    // the documents beside the broken one apply, from their file
    assert_eq!(kinds(&b), ["upsert Service x/a", "upsert Service x/b"]);
    assert!(
        b.files
            .iter()
            .all(|f| f.as_deref().is_some_and(|f| f.ends_with("a.yaml")))
    );
    let rejected = b.rejected.clone().unwrap();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert!(rejected[0].file.as_deref().unwrap().ends_with("a.yaml"));
    assert_eq!(rejected[0].object.as_deref(), Some("document 2 (line 6)"));
    assert!(rejected[0].reason.contains("YAML"), "{rejected:?}");
    assert_eq!(rejected[0].kind, RejectKind::Yaml);
    assert_eq!(b.errors, rejected);
    // another file changes: what a.yaml left out is still left out
    write(&d.0, "b.yaml", SVC_A2);
    write(&d.0, GENERATION_FILE, "2");
    let b = s.poll().unwrap().unwrap();
    assert_eq!(b.rejected.as_ref().unwrap(), &rejected);
    assert!(b.errors.is_empty(), "said once: {:?}", b.errors);
    // a.yaml is fixed: nothing is rejected any more
    write(&d.0, "a.yaml", &format!("{SVC_A}---\n{SVC_B}"));
    write(&d.0, GENERATION_FILE, "3");
    assert_eq!(s.poll().unwrap().unwrap().rejected, Some(vec![]));
    // broken again, then removed: its rejections go with it
    write(&d.0, "a.yaml", "kind: [");
    write(&d.0, GENERATION_FILE, "4");
    assert_eq!(s.poll().unwrap().unwrap().rejected.unwrap().len(), 1);
    std::fs::remove_file(d.0.join("a.yaml")).unwrap();
    write(&d.0, GENERATION_FILE, "5");
    assert_eq!(s.poll().unwrap().unwrap().rejected, Some(vec![]));
}

#[test]
fn bad_documents_keep_what_was_there() {
    let d = dir("bad");
    write(&d.0, "a.yaml", &format!("{SVC_A}---\n{SVC_B}"));
    let mut s = FileSource::new(&d.0);
    assert_eq!(s.poll().unwrap().unwrap().changes.len(), 2);
    // b gets a misspelt field: error named, b kept, a still updated
    write(
        &d.0,
        "a.yaml",
        &format!("{SVC_A2}---\n{}", SVC_B.replace("ports:", "portz:")),
    );
    let b = s.poll().unwrap().unwrap();
    assert_eq!(kinds(&b), ["upsert Service x/a"]);
    assert_eq!(b.errors.len(), 1);
    let said = b.errors[0].to_string();
    assert!(
        said.contains("a.yaml") && said.contains("Service x/b") && said.contains("spec.portz"),
        "{said}"
    );
    assert_eq!(b.errors[0].kind, RejectKind::UnknownField);
    // broken YAML: everything of the file kept
    write(&d.0, "a.yaml", "kind: [");
    let b = s.poll().unwrap().unwrap();
    assert!(b.changes.is_empty());
    assert!(b.errors[0].reason.contains("keeping its previous objects"));
    assert_eq!(b.errors[0].kind, RejectKind::Yaml);
    // file removed: its objects go
    std::fs::remove_file(d.0.join("a.yaml")).unwrap();
    assert_eq!(
        kinds(&s.poll().unwrap().unwrap()),
        ["delete Service x/a", "delete Service x/b"]
    );
}

#[test]
fn a_files_objects_share_their_namespace_and_the_source_keeps_their_own_names() {
    let d = dir("share");
    write(&d.0, "a.yaml", &format!("{SVC_A}---\n{SVC_B}"));
    write(&d.0, GENERATION_FILE, "1");
    let mut s = FileSource::new(&d.0);
    let b = s.poll().unwrap().unwrap();
    let keys: Vec<ObjRef> = b
        .changes
        .iter()
        .map(|c| match c {
            Change::Upsert(Object::ServiceInfo(i)) => i.key.clone(),
            c => panic!("a compact Service: {c:?}"),
        })
        .collect();
    assert_eq!(keys.len(), 2);
    assert!(
        std::sync::Arc::ptr_eq(&keys[0].namespace, &keys[1].namespace),
        "one namespace string for the file's objects"
    );
    for k in &keys {
        let (held, _) = s
            .applied
            .get_key_value(&("Service", k.clone()))
            .expect("applied");
        assert!(
            std::sync::Arc::ptr_eq(&held.1.name, &k.name),
            "{k}: the source's id holds the object's own name string"
        );
    }
}
