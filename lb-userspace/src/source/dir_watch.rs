//! Waking the file source when its directory changes (inotify), so a
//! change set is read within a millisecond of its GENERATION file being
//! written instead of at the next poll. The poll stays as the fallback:
//! for files in subdirectories, and where inotify is refused.
#![expect(
    unsafe_code,
    reason = "inotify(7) and poll(2) have no safe wrapper in std"
)]

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
    time::Duration,
};

/// What is watched: a file written and closed, moved in or out, deleted;
/// the directory itself moved or deleted. Not a file created (it is still
/// empty then: its close after writing is the event).
const EVENTS: u32 = libc::IN_CLOSE_WRITE
    | libc::IN_MOVED_TO
    | libc::IN_MOVED_FROM
    | libc::IN_DELETE
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF;

pub struct DirWatch {
    fd: OwnedFd,
}

impl DirWatch {
    pub fn new(dir: &Path) -> io::Result<Self> {
        // SAFETY: no pointer is passed; the result is checked before use.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this fd and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: `path` is a NUL-terminated string that outlives the call.
        let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), EVENTS) };
        if wd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd })
    }

    /// Waits at most `timeout` for a change. Every event waiting is
    /// consumed (one read of the directory answers them all).
    pub fn wait(&self, timeout: Duration) -> io::Result<Woke> {
        let mut p = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd, its count 1.
        let n = unsafe { libc::poll(&mut p, 1, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(Woke::Timeout)
            } else {
                Err(e)
            };
        }
        if n == 0 {
            return Ok(Woke::Timeout);
        }
        let mut woke = Woke::Changed;
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: `buf` is writable for its whole length.
            let r = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            let Ok(len) = usize::try_from(r) else { break };
            if len == 0 {
                break;
            }
            if ended(&buf[..len]) {
                woke = Woke::Ended;
            }
        }
        Ok(woke)
    }
}

/// What a wait ended with.
#[derive(Debug, PartialEq, Eq)]
pub enum Woke {
    Timeout,
    Changed,
    /// The watch is gone (the directory deleted or moved away): a new one
    /// is needed to see changes again.
    Ended,
}

/// Whether the events in `buf` (struct inotify_event, each 16 bytes and
/// its name) say the watch ended.
fn ended(buf: &[u8]) -> bool {
    let mut at = 0;
    while let Some(head) = buf.get(at..at + 16) {
        let mask = u32::from_ne_bytes(head[4..8].try_into().expect("4 bytes"));
        let len = u32::from_ne_bytes(head[12..16].try_into().expect("4 bytes")) as usize;
        if mask & libc::IN_IGNORED != 0 {
            return true;
        }
        at += 16 + len;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_written_into_the_directory_wakes_the_wait_and_nothing_else_does() {
        let dir = std::env::temp_dir().join(format!("lb-dirwatch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        struct Gone(std::path::PathBuf);
        impl Drop for Gone {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let _gone = Gone(dir.clone());
        std::fs::write(dir.join("before"), "x").unwrap();
        let w = DirWatch::new(&dir).unwrap();
        let short = Duration::from_millis(20);
        let long = Duration::from_secs(10);
        assert_eq!(w.wait(short).unwrap(), Woke::Timeout, "no change yet");
        // Reading a file is no change.
        std::fs::read(dir.join("before")).unwrap();
        assert_eq!(w.wait(short).unwrap(), Woke::Timeout, "a read woke it");
        std::fs::write(dir.join("GENERATION"), "1").unwrap();
        assert_eq!(w.wait(long).unwrap(), Woke::Changed, "a write");
        // Its events were consumed.
        assert_eq!(w.wait(short).unwrap(), Woke::Timeout);
        std::fs::rename(dir.join("before"), dir.join("after")).unwrap();
        assert_eq!(w.wait(long).unwrap(), Woke::Changed, "a rename");
        std::fs::remove_file(dir.join("after")).unwrap();
        assert_eq!(w.wait(long).unwrap(), Woke::Changed, "a deletion");
        // The directory itself gone: the watch says it ended.
        std::fs::remove_file(dir.join("GENERATION")).unwrap();
        let _ = w.wait(short);
        std::fs::remove_dir(&dir).unwrap();
        assert_eq!(w.wait(long).unwrap(), Woke::Ended, "the directory removed");
    }
}
