//! The file source's thread: reads the directory when it changes and on
//! every poll tick, and hands complete change sets to the sync loop.

use std::{path::PathBuf, time::Duration};

use crate::source::{
    Batch,
    dir_watch::{DirWatch, Woke},
    file::FileSource,
};

/// The file source, on a thread of its own: reading and parsing a big
/// manifest takes seconds, which the sync loop's runtime must not wait out.
/// Read when its directory changes (inotify), and every `every` besides.
/// Ends when the agent stops taking batches.
pub(super) fn poll_files(dir: PathBuf, every: Duration, tx: tokio::sync::mpsc::Sender<Batch>) {
    let mut source = FileSource::new(&dir);
    let mut last_error: Option<String> = None;
    let mut watch = Watch::default();
    let mut next = std::time::Instant::now();
    loop {
        watch.wait_until(&dir, next, every);
        next = std::time::Instant::now() + every;
        match source.poll() {
            Ok(Some(batch)) => {
                if last_error.take().is_some() {
                    tracing::info!("source {} readable again", dir.display());
                }
                if tx.blocking_send(batch).is_err() {
                    return;
                }
            }
            Ok(None) => {}
            Err(e) => {
                // Polled every tick: say it once, not ten times a second.
                let msg = format!("{e:#}");
                if last_error.as_deref() != Some(msg.as_str()) {
                    tracing::error!(
                        "source {}: {msg}; keeping the last applied state",
                        dir.display()
                    );
                    last_error = Some(msg);
                }
            }
        }
    }
}

/// The directory's watch, made again when it ends (the directory deleted
/// or replaced) or could not be made (not there yet): tried at every poll
/// tick meanwhile, and each state said once.
#[derive(Default)]
struct Watch {
    dir: Option<DirWatch>,
    said: Option<String>,
}

impl Watch {
    /// Until `next`, or a change of the directory.
    fn wait_until(&mut self, path: &std::path::Path, next: std::time::Instant, every: Duration) {
        let left = || next.saturating_duration_since(std::time::Instant::now());
        if self.dir.is_none() {
            match DirWatch::new(path) {
                Ok(w) => {
                    if self.said.take().is_some() {
                        tracing::info!("source {}: its changes are watched again", path.display());
                    }
                    self.dir = Some(w);
                }
                Err(e) => self.say(path, format!("its changes are not watched ({e})"), every),
            }
        }
        let Some(w) = &self.dir else {
            std::thread::sleep(left());
            return;
        };
        match w.wait(left()) {
            // Files written together wake it once: what follows within a
            // millisecond is read with them, for up to 10 ms of events.
            Ok(Woke::Changed) => {
                for _ in 0..10 {
                    if w.wait(Duration::from_millis(1)).ok() != Some(Woke::Changed) {
                        break;
                    }
                }
            }
            Ok(Woke::Timeout) => {}
            Ok(Woke::Ended) => self.dir = None,
            Err(e) => {
                self.say(path, format!("watching its changes failed ({e})"), every);
                self.dir = None;
            }
        }
    }

    fn say(&mut self, path: &std::path::Path, what: String, every: Duration) {
        if self.said.as_deref() != Some(what.as_str()) {
            tracing::warn!("source {}: {what}; read every {every:?}", path.display());
            self.said = Some(what);
        }
    }
}
