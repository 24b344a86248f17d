//! A real `lb-agent` run from a manifest directory, and that directory.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use crate::spawn::{Proc, confine};

/// A file-source directory: files are renamed into place, GENERATION last.
pub struct Manifests {
    pub dir: PathBuf,
    generation: u64,
}

impl Manifests {
    pub fn new(dir: PathBuf) -> Self {
        std::fs::create_dir_all(&dir).expect("manifest dir");
        Self { dir, generation: 0 }
    }

    pub fn write(&self, name: &str, yaml: &str) {
        let tmp = self.dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, yaml).expect("write manifest");
        std::fs::rename(&tmp, self.dir.join(name)).expect("rename manifest");
    }

    pub fn remove(&self, name: &str) {
        std::fs::remove_file(self.dir.join(name)).expect("remove manifest");
    }

    /// Ends a change set; returns its generation.
    pub fn commit(&mut self) -> u64 {
        self.generation += 1;
        self.write("GENERATION", &self.generation.to_string());
        self.generation
    }
}

pub struct AgentProc {
    pub pin_dir: PathBuf,
    pub attach: PathBuf,
    pub source: PathBuf,
    pub log: PathBuf,
    pub extra: Vec<String>,
    /// Replaces `--source=file:SOURCE` (e.g. `--source=kube` and its flags).
    pub source_args: Option<Vec<String>>,
    /// The network namespace the agent runs in (None: the test's).
    pub netns: Option<PathBuf>,
    proc: Option<Proc>,
}

impl AgentProc {
    pub fn new(pin_dir: PathBuf, attach: PathBuf, source: PathBuf, log: PathBuf) -> Self {
        Self {
            pin_dir,
            attach,
            source,
            log,
            extra: vec![],
            source_args: None,
            netns: None,
            proc: None,
        }
    }

    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("agent log");
        let mut cmd = Command::new(crate::agent_bin());
        cmd.arg("run");
        match &self.source_args {
            Some(args) => cmd.args(args),
            None => cmd.arg(format!("--source=file:{}", self.source.display())),
        };
        cmd.arg(format!("--pin-dir={}", self.pin_dir.display()))
            .arg(format!("--cgroup={}", self.attach.display()))
            // Outside a private namespace: never the shared default port.
            .arg("--health-addr=127.0.0.1:0")
            .args(&self.extra)
            .stderr(log);
        confine(&mut cmd, None, self.netns.as_deref()).unwrap_or_else(|e| panic!("{e:#}"));
        cmd.stdout(Stdio::null()).stdin(Stdio::null());
        let child = cmd.spawn().expect("spawning lb-agent");
        self.proc = Some(Proc {
            child,
            stdout: None,
        });
    }

    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.child.kill(); // SIGKILL
            let _ = p.child.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// An `lb-agent` subcommand on this agent's pins, in its namespace.
    fn cli_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(crate::agent_bin());
        cmd.args(args)
            .arg(format!("--pin-dir={}", self.pin_dir.display()));
        confine(&mut cmd, None, self.netns.as_deref()).unwrap_or_else(|e| panic!("{e:#}"));
        cmd
    }

    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        self.cli_command(args).output().expect("lb-agent")
    }

    /// The subcommand with its standard output a pipe nobody reads, as
    /// `| head` leaves it once it has its lines: the reading end is closed
    /// before the command starts, so its first write meets the closed pipe.
    pub fn cli_into_closed_pipe(&self, args: &[&str]) -> std::process::Output {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        self.cli_command(args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .expect("lb-agent")
    }

    /// GET `path` from the agent's health endpoint: (status code, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        use std::io::{Read as _, Write as _};
        let port = self
            .status()
            .and_then(|s| s["health_port"].as_u64())
            .expect("health port in status");
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port as u16))
            .expect("connect health endpoint");
        // One write: the whole request in one segment.
        c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        let mut resp = String::new();
        c.read_to_string(&mut resp).unwrap();
        let code = resp
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (code, body)
    }

    /// Waits until this agent process answers 200 on `/healthz` (its
    /// first sync is done); panics with the agent's log after 30 s.
    pub fn wait_healthy(&mut self) {
        self.wait_until(Duration::from_secs(30), "becoming healthy", |a| {
            let pid_ok = a.pid().map(u64::from);
            let s = a.status();
            let mine = s.as_ref().and_then(|s| s["agent_pid"].as_u64()) == pid_ok;
            mine && a.http_get("/healthz").0 == 200
        });
    }

    /// [`crate::wait_until`] for what this agent does: fails at once if
    /// the agent exits meanwhile, and with its log when `timeout` passes.
    pub fn wait_until(
        &mut self,
        timeout: Duration,
        what: &str,
        mut condition: impl FnMut(&Self) -> bool,
    ) {
        let r = crate::try_wait_until(timeout, what, || {
            if condition(self) {
                return Ok(true);
            }
            self.assert_running(what);
            Ok(false)
        });
        if let Err(e) = r {
            panic!("lb-agent {e:#}\nagent log:\n{}", self.log_text());
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.child.id())
    }

    /// Panics with the log when the agent process has exited.
    pub fn assert_running(&mut self, doing: &str) {
        if let Some(Ok(Some(st))) = self.proc.as_mut().map(|p| p.child.try_wait()) {
            panic!("lb-agent exited ({st}) while {doing}:\n{}", self.log_text());
        }
    }

    pub fn status(&self) -> Option<serde_json::Value> {
        let out = self.cli(&["status", "-o", "json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    /// Waits until the agent reports `generation` as synced (the agent's own
    /// record, not a sleep); panics with the agent's log after 30 s.
    pub fn wait_synced(&mut self, generation: u64) {
        self.wait_synced_within(generation, Duration::from_secs(30));
    }

    /// `wait_synced` for change sets known to take longer.
    pub fn wait_synced_within(&mut self, generation: u64, limit: Duration) {
        let what = format!("syncing generation {generation}");
        self.wait_until(limit, &what, |a| {
            a.status().is_some_and(|s| {
                s["synced_generation"]
                    .as_u64()
                    .is_some_and(|g| g >= generation)
            })
        });
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill9();
        let _ = lb_agent::datapath::reset(&self.pin_dir);
    }
}

pub fn pin_path(name: &str) -> PathBuf {
    Path::new("/sys/fs/bpf").join(name)
}
