//! The lab as the integration tests drive it: one run of the real `lb-lab`
//! binary at a time, its JSON lines, and the per-step node dumps.
#![allow(dead_code, reason = "each test binary uses a part of these helpers")]

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
};

use serde_json::Value;

pub mod expect;
pub mod socket;

/// Lab scenarios run one at a time.
pub static LAB: Mutex<()> = Mutex::new(());

pub struct Run {
    pub code: i32,
    pub lines: Vec<Value>,
    pub stderr: String,
    pub pid: u32,
}

pub fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(name)
}

pub fn lab(path: &Path) -> Run {
    lab_with(path, None)
}

/// Runs a scenario; with `dump`, each node's ct list, status and packet
/// filter rules are written there after every step.
pub fn lab_with(path: &Path, dump: Option<&Path>) -> Run {
    lab_args(path, dump, &[])
}

/// With extra `--agent-arg`s.
pub fn lab_args(path: &Path, dump: Option<&Path>, agent_args: &[&str]) -> Run {
    lb_tests::require_kernel();
    let _one = LAB.lock().unwrap_or_else(|e| e.into_inner());
    let child = Command::new(env!("CARGO_BIN_EXE_lb-lab"))
        .arg(path)
        .args(agent_args.iter().map(|a| format!("--agent-arg={a}")))
        .env("LB_AGENT_BIN", lb_tests::agent_bin())
        .envs(dump.map(|d| ("LB_LAB_DUMP_DIR", d)))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("lb-lab");
    let pid = child.id();
    let out = child.wait_with_output().expect("lb-lab");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        lines,
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        pid,
    };
    assert_nothing_left(pid);
    run
}

/// No namespace, cgroup, pin, temp dir or process of run `pid` remains.
pub fn assert_nothing_left(pid: u32) {
    let tag = format!("lbl{pid}-");
    let mut left = Vec::new();
    let root = lb_agent::datapath::host::cgroup2_root().unwrap();
    for dir in [
        PathBuf::from("/run/netns"),
        root,
        PathBuf::from("/sys/fs/bpf"),
        std::env::temp_dir(),
    ] {
        if let Ok(rd) = std::fs::read_dir(&dir) {
            left.extend(rd.flatten().map(|e| e.path()).filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&tag))
            }));
        }
    }
    assert!(left.is_empty(), "run {pid} left behind: {left:?}");
}

pub fn ok_run(name: &str) -> Run {
    let r = lab(&scenario(name));
    assert_eq!(
        r.code, 0,
        "{name} did not run (exit {}):\n{}",
        r.code, r.stderr
    );
    r
}

pub fn select<'a>(r: &'a Run, step: u64, from: &str, to: &str) -> Vec<&'a Value> {
    r.lines
        .iter()
        .filter(|l| l["step"] == step && l["from"] == from && l["to"] == to)
        .collect()
}

pub fn served_by(lines: &[&Value]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for l in lines {
        assert_eq!(l["ok"], true, "probe failed: {l}");
        *m.entry(l["served_by"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    m
}

pub struct DumpDir(pub PathBuf);

impl DumpDir {
    pub fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(lb_tests::unique(tag));
        std::fs::create_dir_all(&d).unwrap();
        Self(d)
    }
    pub fn json(&self, step: u64, node: &str, what: &str) -> Value {
        let p = self.0.join(format!("step{step}-{node}-{what}.json"));
        serde_json::from_slice(
            &std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
        )
        .unwrap()
    }
    pub fn rules(&self, step: u64, node: &str) -> String {
        std::fs::read_to_string(self.0.join(format!("step{step}-{node}-rules.txt"))).unwrap()
    }
}

impl Drop for DumpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// bpftool's output for `args`, which must succeed.
pub fn bpftool(args: &[&std::ffi::OsStr]) -> Vec<u8> {
    let out = std::process::Command::new("bpftool")
        .args(args)
        .output()
        .expect("bpftool");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
