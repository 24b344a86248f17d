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

    /// Waits at most `timeout` for a change; true if one came (every event
    /// waiting is consumed: one read of the directory answers them all).
    pub fn wait(&self, timeout: Duration) -> io::Result<bool> {
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
                Ok(false)
            } else {
                Err(e)
            };
        }
        if n == 0 {
            return Ok(false);
        }
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: `buf` is writable for its whole length.
            let r = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if r <= 0 {
                break;
            }
        }
        Ok(true)
    }
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
        assert!(!w.wait(Duration::from_millis(20)).unwrap(), "no change yet");
        // Reading a file is no change.
        std::fs::read(dir.join("before")).unwrap();
        assert!(
            !w.wait(Duration::from_millis(20)).unwrap(),
            "a read woke it"
        );
        std::fs::write(dir.join("GENERATION"), "1").unwrap();
        assert!(
            w.wait(Duration::from_secs(10)).unwrap(),
            "a write did not wake it"
        );
        // Its events were consumed.
        assert!(!w.wait(Duration::from_millis(20)).unwrap());
        std::fs::rename(dir.join("before"), dir.join("after")).unwrap();
        assert!(
            w.wait(Duration::from_secs(10)).unwrap(),
            "a rename did not wake it"
        );
        std::fs::remove_file(dir.join("after")).unwrap();
        assert!(
            w.wait(Duration::from_secs(10)).unwrap(),
            "a deletion did not wake it"
        );
    }
}
