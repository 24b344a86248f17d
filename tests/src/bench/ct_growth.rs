//! A conntrack map grown while the agent runs, at the size of a busy
//! node's: how long the object with the bigger map takes to load (on a
//! thread), how long the sync loop waits (the swap of the programs under
//! the links), and how long the copy of the old map's entries then runs
//! beside it.

use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use super::{topo::Topology, variants::Agent};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CtGrowth {
    /// Live flows' entries the map held.
    pub entries: usize,
    /// Its size, and the size it grew to.
    pub from: u32,
    pub to: u64,
    /// From the growth's start to the swap: the load of the object with
    /// the bigger maps on a thread, the tick that finds it done (100 ms
    /// at most), the swap.
    pub load_ms: f64,
    /// The sync loop's wait, the swap: changes wait this long.
    pub sync_loop_ms: f64,
    /// The copy after the swap, on a thread of its own.
    pub copy_ms: f64,
}

/// The number a log line says came before `what`.
fn count_before(line: &str, what: &str) -> Option<usize> {
    line.split(what)
        .next()?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

/// An agent whose conntrack map of the next power of two above `entries`
/// holds that many entries (more than three quarters: the next sweep
/// grows it).
pub fn measure(topo: &Topology, entries: usize) -> anyhow::Result<CtGrowth> {
    let from = u32::try_from(entries)?.next_power_of_two();
    if entries as u64 * 4 <= u64::from(from) * 3 {
        bail!(
            "{entries} entries fill a map of {from} to three quarters at most, which does not grow: pick more (e.g. 1000000)"
        );
    }
    let dir = crate::testbed::TempDir(std::env::temp_dir().join(crate::unique("bench-ctgrow")));
    std::fs::create_dir_all(&dir.0)?;
    let mut agent = Agent::start(topo, 3, &dir.0, &[&format!("--ct-initial={from}")])?;
    lb_agent::datapath::packet_cost::fill_pinned_ct(
        &agent.proc.pin_dir,
        entries,
        "10.96.0.10".parse()?,
    )?;
    // The sweeps come every 10 s or more (a sweep of a million entries
    // stretches their cadence), the growth at the sync loop's next look.
    let grown = logged(
        &mut agent,
        "maps grown while running",
        Duration::from_secs(90),
    )?;
    let copied_line = logged(
        &mut agent,
        "entries of the earlier map copied after the swap",
        Duration::from_secs(120),
    )?;
    // A sweep in the middle of the fill could start the growth before the
    // last entries went in: then the row would not be what it says.
    let what = " entries of the earlier map copied after the swap";
    let copied = count_before(&copied_line, what).context("the copied count")?;
    if copied != entries {
        bail!("the copy after the swap brought {copied} entries, not the {entries} filled");
    }
    Ok(CtGrowth {
        entries,
        from,
        to: field(&grown, "conntrack")?,
        load_ms: field(&grown, "took_ms")?,
        sync_loop_ms: field(&grown, "swap_ms")?,
        copy_ms: field(&copied_line, "took_ms")?,
    })
}

/// The agent's first log line holding `what`.
fn logged(agent: &mut Agent, what: &str, limit: Duration) -> anyhow::Result<String> {
    let mut line = None;
    crate::wait::try_wait_until(limit, &format!("the agent logging \"{what}\""), || {
        agent.proc.assert_running(what);
        line = agent
            .proc
            .log_text()
            .lines()
            .find(|l| l.contains(what))
            .map(str::to_string);
        Ok(line.is_some())
    })
    .with_context(|| agent.proc.log_text())?;
    Ok(line.expect("the wait ended on a line"))
}

/// A `name=value` field of a log line.
fn field<T: std::str::FromStr>(line: &str, name: &str) -> anyhow::Result<T> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {name}= in the log line {line}"))
}
