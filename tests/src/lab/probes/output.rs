//! A step's attempts as JSON lines, or the `--human` table and summaries.

use std::collections::BTreeMap;

use super::Attempt;

/// JSON lines, or the `--human` table and summaries.
pub struct Output {
    human: bool,
    all: Vec<Attempt>,
}

impl Output {
    pub fn new(human: bool) -> Self {
        Self { human, all: vec![] }
    }

    pub fn line(&mut self, a: &Attempt) {
        if self.human {
            let result = if a.ok {
                match (&a.served_by, a.http_status) {
                    (_, Some(code)) => format!("HTTP {code}"),
                    (Some(s), _) => {
                        format!("{s} (saw {})", a.client_seen.as_deref().unwrap_or("?"))
                    }
                    _ => "ok".into(),
                }
            } else {
                format!("FAILED: {}", a.error.as_deref().unwrap_or("?"))
            };
            let churn = a.churn.as_ref().map_or(String::new(), |c| {
                format!(
                    "  [{} connections, {} failed, slowest connect {:.2} ms, {} over 1 s]",
                    c.attempts, c.failed, c.max_ms, c.over_1s
                )
            });
            println!(
                "step {} {:<14} -> {:<28} {:<24} {:<4} {:>7.2} ms  {result}{churn}",
                a.step, a.from, a.to, a.target, a.protocol, a.ms
            );
        } else {
            println!("{}", serde_json::to_string(a).expect("json"));
        }
        self.all.push(a.clone());
    }

    pub fn finish(&self) {
        if !self.human {
            return;
        }
        let blocked: Vec<&Attempt> = self.all.iter().filter(|a| !a.ok).collect();
        // A churn probe's line stands for all its connections.
        let (tried, failed) = self.all.iter().fold((0, 0), |(t, f), a| match &a.churn {
            Some(c) => (t + c.attempts, f + c.failed),
            None => (t + 1, f + u64::from(!a.ok)),
        });
        println!("\n{tried} attempts, {failed} failed");
        let pairs: std::collections::BTreeSet<String> = blocked
            .iter()
            .map(|a| {
                format!(
                    "step {} {} -> {} ({} {}): {}",
                    a.step,
                    a.from,
                    a.to,
                    a.family,
                    a.protocol,
                    a.error.as_deref().unwrap_or("?")
                )
            })
            .collect();
        for p in &pairs {
            println!("  blocked: {p}");
        }
        let mut dist: BTreeMap<(usize, String, &str), BTreeMap<String, usize>> = BTreeMap::new();
        for a in self.all.iter().filter(|a| {
            !a.to.contains('/')
                || a.to.starts_with("service/")
                || a.to.starts_with("nodeport/")
                || a.to.starts_with("loadbalancer/")
                || a.to.starts_with("externalip/")
        }) {
            if a.to.split('/').count() >= 3 {
                *dist
                    .entry((a.step, a.to.clone(), a.family))
                    .or_default()
                    .entry(
                        a.served_by
                            .clone()
                            .unwrap_or_else(|| a.error.clone().unwrap_or_default()),
                    )
                    .or_default() += 1;
            }
        }
        if !dist.is_empty() {
            println!("\nwho answered, per service target:");
            for ((step, to, fam), m) in dist {
                let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                println!("  step {step} {to} ({fam}): {}", parts.join(", "));
            }
        }
    }
}
