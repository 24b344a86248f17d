//! When the agent retries a full resync after a failed write.

use std::time::Duration;

/// When to try a full resync again after a failed one: the next tick at
/// first, then twice as long each time up to 30 s; a failure is logged
/// when its message is new.
pub struct Backoff {
    first: Duration,
    delay: Duration,
    at: std::time::Instant,
    said: Option<String>,
}

impl Backoff {
    const MAX: Duration = Duration::from_secs(30);

    pub fn new(first: Duration) -> Self {
        Self {
            first,
            delay: first,
            at: std::time::Instant::now(),
            said: None,
        }
    }

    pub fn due(&self) -> bool {
        std::time::Instant::now() >= self.at
    }

    pub fn reset(&mut self) {
        self.delay = self.first;
        self.at = std::time::Instant::now();
        self.said = None;
    }

    pub fn failed(&mut self, msg: &str) {
        if self.said.as_deref() != Some(msg) {
            tracing::error!(
                "full resync failed: {msg}; trying again with backoff (up to {} s), said once",
                Self::MAX.as_secs()
            );
            self.said = Some(msg.to_string());
        }
        self.at = std::time::Instant::now() + self.delay;
        self.delay = (self.delay * 2).min(Self::MAX);
    }
}
