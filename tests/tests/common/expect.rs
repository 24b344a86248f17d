//! Expectations shared by the lab scenario tests.

use std::collections::BTreeSet;

use super::Run;

/// (step, from, to, family, protocol, ok) of every attempt.
pub fn reachability(r: &Run) -> BTreeSet<(u64, String, String, String, String, bool)> {
    r.lines
        .iter()
        .map(|l| {
            (
                l["step"].as_u64().unwrap(),
                l["from"].as_str().unwrap().into(),
                l["to"].as_str().unwrap().into(),
                l["family"].as_str().unwrap().into(),
                l["protocol"].as_str().unwrap().into(),
                l["ok"].as_bool().unwrap(),
            )
        })
        .collect()
}
