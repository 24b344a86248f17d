//! A real `lb-agent` run from a manifest directory, and that directory.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::spawn::confine;

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

/// One `lb-agent run` process, for the test bed, the tests, the bench and
/// the lab alike: its arguments, the cgroup and network namespace it runs
/// in, its log (standard error, appended across restarts). Started,
/// killed, restarted and waited for here; killed and its pins removed on
/// drop.
pub struct AgentProc {
    pub pin_dir: PathBuf,
    /// The cgroup its socket programs attach to (`--cgroup`).
    pub attach: PathBuf,
    pub source: PathBuf,
    pub log: PathBuf,
    /// Added after the arguments every agent gets.
    pub extra: Vec<String>,
    /// Replaces `--source=file:SOURCE` (e.g. `--source=kube` and its flags).
    pub source_args: Option<Vec<String>>,
    /// `--health-addr`; by default a free port on 127.0.0.1, never the
    /// shared default port outside a private namespace.
    pub health_addr: String,
    /// The cgroup the agent process itself runs in (None: the test's). The
    /// lab's agents run in a control cgroup, apart from the nodes' pods.
    pub cgroup: Option<PathBuf>,
    /// The network namespace the agent runs in (None: the test's).
    pub netns: Option<PathBuf>,
    child: Option<Child>,
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
            health_addr: "127.0.0.1:0".into(),
            cgroup: None,
            netns: None,
            child: None,
        }
    }

    /// The arguments `start` gives the agent.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec!["run".to_string()];
        match &self.source_args {
            Some(a) => args.extend(a.iter().cloned()),
            None => args.push(format!("--source=file:{}", self.source.display())),
        }
        args.extend([
            format!("--pin-dir={}", self.pin_dir.display()),
            format!("--cgroup={}", self.attach.display()),
            format!("--health-addr={}", self.health_addr),
        ]);
        args.extend(self.extra.iter().cloned());
        args
    }

    /// Starts the agent; fails (naming what) when it cannot be spawned or
    /// is already running.
    pub fn try_start(&mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.pid() {
            bail!("lb-agent is already running (pid {pid})");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening the agent log {}", self.log.display()))?;
        let mut cmd = Command::new(crate::agent_bin());
        cmd.args(self.args())
            .stderr(log)
            .stdout(Stdio::null())
            .stdin(Stdio::null());
        confine(&mut cmd, self.cgroup.as_deref(), self.netns.as_deref())?;
        self.child = Some(cmd.spawn().context("spawning lb-agent")?);
        Ok(())
    }

    /// `try_start`, panicking on failure.
    pub fn start(&mut self) {
        self.try_start().unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// SIGKILL, and waits for the process to go.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGKILL, then the same agent again.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9();
        self.try_start()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log's last `n` lines.
    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// An `lb-agent` subcommand on this agent's pins, in its namespace.
    fn cli_command(&self, args: &[&str]) -> anyhow::Result<Command> {
        let mut cmd = Command::new(crate::agent_bin());
        cmd.args(args)
            .arg(format!("--pin-dir={}", self.pin_dir.display()));
        confine(&mut cmd, None, self.netns.as_deref())?;
        Ok(cmd)
    }

    pub fn try_cli(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        self.cli_command(args)?
            .output()
            .with_context(|| format!("running lb-agent {}", args.join(" ")))
    }

    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        self.try_cli(args).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The subcommand with its standard output a pipe nobody reads, as
    /// `| head` leaves it once it has its lines: the reading end is closed
    /// before the command starts, so its first write meets the closed pipe.
    pub fn cli_into_closed_pipe(&self, args: &[&str]) -> std::process::Output {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        self.cli_command(args)
            .unwrap_or_else(|e| panic!("{e:#}"))
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

    /// [`crate::try_wait_until`] for what this agent does: fails at once
    /// if the agent exits meanwhile. The log is the caller's to show.
    pub fn try_wait_until(
        &mut self,
        timeout: Duration,
        what: &str,
        mut condition: impl FnMut(&Self) -> bool,
    ) -> anyhow::Result<()> {
        crate::try_wait_until(timeout, what, || {
            if condition(self) {
                return Ok(true);
            }
            if let Some(st) = self.exited() {
                bail!("exited ({st}) while {what}");
            }
            Ok(false)
        })
    }

    /// `try_wait_until`, panicking with the agent's log.
    pub fn wait_until(
        &mut self,
        timeout: Duration,
        what: &str,
        condition: impl FnMut(&Self) -> bool,
    ) {
        if let Err(e) = self.try_wait_until(timeout, what, condition) {
            panic!("lb-agent {e:#}\nagent log:\n{}", self.log_text());
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// How the agent process ended, if it has.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Panics with the log when the agent process has exited.
    pub fn assert_running(&mut self, doing: &str) {
        if let Some(st) = self.exited() {
            panic!("lb-agent exited ({st}) while {doing}:\n{}", self.log_text());
        }
    }

    /// `lb-agent status -o json`, or None when it fails.
    pub fn status(&self) -> Option<serde_json::Value> {
        let out = self.try_cli(&["status", "-o", "json"]).ok()?;
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
        if let Err(e) = self.try_wait_synced(generation, limit) {
            panic!("lb-agent {e:#}\nagent log:\n{}", self.log_text());
        }
    }

    /// `wait_synced_within` for callers that report instead of panicking.
    pub fn try_wait_synced(&mut self, generation: u64, limit: Duration) -> anyhow::Result<()> {
        let what = format!("syncing generation {generation}");
        self.try_wait_until(limit, &what, |a| {
            a.status().is_some_and(|s| {
                s["synced_generation"]
                    .as_u64()
                    .is_some_and(|g| g >= generation)
            })
        })
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
