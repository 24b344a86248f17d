//! Processes inside a cgroup and a network namespace. The child joins both
//! between fork and exec, before it can open a socket: a socket belongs to
//! the cgroup of the process that created it.

use std::{
    ffi::CString,
    io::{BufRead, BufReader},
    os::{
        fd::AsFd as _,
        unix::{ffi::OsStrExt as _, process::CommandExt as _},
    },
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
};

/// A cgroup v2 directory of our own, killed and removed on drop.
pub struct Cgroup {
    pub path: PathBuf,
}

impl Cgroup {
    pub fn new(name: &str) -> Self {
        let root = lb_agent::datapath::host::cgroup2_root().expect("cgroup2");
        let path = root.join(name);
        std::fs::create_dir(&path)
            .unwrap_or_else(|e| panic!("creating cgroup {}: {e}", path.display()));
        Self { path }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        remove_cgroup(&self.path);
    }
}

/// cgroup.kill, wait for it to empty, rmdir. The kill is repeated while
/// the cgroup stays: a run being torn down from a signal thread may still
/// start a process in it (a probe) after the first kill.
pub fn remove_cgroup(path: &Path) {
    for _ in 0..500 {
        let _ = std::fs::write(path.join("cgroup.kill"), "1");
        if std::fs::remove_dir(path).is_ok() || !path.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Prepares `cmd` to enter `cgroup` and `netns` before exec, and to die with
/// the test (PR_SET_PDEATHSIG). The namespace is opened here, so a missing
/// one is reported by name; the child enters it with `netns::enter_fd`.
#[expect(
    unsafe_code,
    reason = "pre_exec: joining a cgroup and a network namespace between fork and exec"
)]
pub fn confine(
    cmd: &mut Command,
    cgroup: Option<&Path>,
    netns: Option<&Path>,
) -> anyhow::Result<()> {
    let procs =
        cgroup.map(|c| CString::new(c.join("cgroup.procs").as_os_str().as_bytes()).expect("path"));
    let ns = netns.map(crate::netns::open).transpose()?;
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe calls (raw syscalls, and `netns::enter_fd`, which
    // is setns alone) on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            // The lab blocks termination signals in its threads (one thread
            // waits for them); children start with none blocked.
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(p) = &procs {
                let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
            }
            if let Some(ns) = &ns {
                crate::netns::enter_fd(ns.as_fd())?;
            }
            Ok(())
        });
    }
    Ok(())
}

/// A child killed on drop.
pub struct Proc {
    pub child: Child,
    pub stdout: Option<BufReader<ChildStdout>>,
}

impl Proc {
    pub fn spawn(mut cmd: Command, cgroup: Option<&Path>, netns: Option<&Path>) -> Self {
        confine(&mut cmd, cgroup, netns).unwrap_or_else(|e| panic!("{e:#}"));
        cmd.stdout(Stdio::piped()).stdin(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        let stdout = child.stdout.take().map(BufReader::new);
        Self { child, stdout }
    }

    pub fn read_line(&mut self) -> String {
        let mut l = String::new();
        self.stdout
            .as_mut()
            .expect("stdout")
            .read_line(&mut l)
            .expect("read");
        l
    }

    pub fn send_line(&mut self, s: &str) {
        use std::io::Write as _;
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{s}").expect("write");
        stdin.flush().expect("flush");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
