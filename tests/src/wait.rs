//! Waiting for a condition, the one way the tests wait: poll it until it
//! holds, and fail naming what never happened. Never a sleep standing in
//! for a condition, and never a pass/fail decided by how long it took: the
//! timeout only turns a hang into a failure.

use std::time::{Duration, Instant};

/// How often a condition is looked at: often enough not to slow a test,
/// rarely enough that polls that spawn `lb-agent status` stay cheap.
const POLL: Duration = Duration::from_millis(20);

/// Polls `condition` until it holds; panics with "`what`: not within
/// `timeout`" when it does not. A condition that can tell the wait is
/// hopeless (the agent exited) panics itself, with its own message.
pub fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    if let Err(e) = try_wait_until(timeout, what, || Ok(condition())) {
        panic!("{e:#}");
    }
}

/// [`wait_until`] for callers that report instead of panicking (the lab):
/// `condition`'s error ends the wait at once and is returned.
pub fn try_wait_until(
    timeout: Duration,
    what: &str,
    condition: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    try_wait_until_every(POLL, timeout, what, condition)
}

/// [`try_wait_until`], looking every `every`: the bench, which times how
/// soon a condition holds, looks every millisecond.
pub fn try_wait_until_every(
    every: Duration,
    timeout: Duration,
    what: &str,
    mut condition: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if condition()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            anyhow::bail!("{what}: not within {timeout:?}");
        }
        std::thread::sleep(every);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_once_the_condition_holds_and_fails_naming_what_did_not() {
        let mut n = 0;
        wait_until(Duration::from_secs(60), "the third look", || {
            n += 1;
            n == 3
        });
        assert_eq!(n, 3, "looked until it held, not once more");
        let e =
            try_wait_until(Duration::ZERO, "a thing that never holds", || Ok(false)).unwrap_err();
        assert_eq!(format!("{e}"), "a thing that never holds: not within 0ns");
        let e = try_wait_until(Duration::from_secs(60), "x", || {
            anyhow::bail!("agent exited")
        })
        .unwrap_err();
        assert_eq!(
            format!("{e}"),
            "agent exited",
            "a condition's error ends the wait"
        );
    }
}
