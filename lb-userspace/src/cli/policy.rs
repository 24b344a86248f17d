//! `lb-agent endpoint list`, `identity list`, `policy get POD`: the policy
//! report the agent writes, joined with the kernel's verdict counters.

use std::collections::BTreeMap;

use lb_common::{POL_REASON_NAMES, POL_REASONS};
use serde_json::json;

use crate::{
    compute::policy::{EndpointReport, Report},
    datapath::Pinned,
    serve::report,
};

type Counts = BTreeMap<u32, [u64; POL_REASONS as usize]>;

fn counts_json(row: Option<&[u64; POL_REASONS as usize]>) -> serde_json::Value {
    let row = row.copied().unwrap_or_default();
    POL_REASON_NAMES
        .iter()
        .zip(row)
        .map(|(n, v)| (n.to_string(), json!(v)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Verdicts summed over every endpoint, by reason.
pub fn totals(counts: &Counts) -> BTreeMap<&'static str, u64> {
    let mut t: BTreeMap<&'static str, u64> = POL_REASON_NAMES.iter().map(|n| (*n, 0)).collect();
    for row in counts.values() {
        for (n, v) in POL_REASON_NAMES.iter().zip(row) {
            *t.get_mut(n).expect("every name") += v;
        }
    }
    t
}

fn load(p: &Pinned) -> anyhow::Result<(Report, Counts)> {
    Ok((report::read(&p.pin_dir)?, p.policy_counts()?))
}

fn endpoint_json(e: &EndpointReport, counts: &Counts, allows: bool) -> serde_json::Value {
    let mut v = json!({
        "pod": e.pod,
        "ep_id": e.ep_id,
        "identity": e.identity,
        "addresses": e.addresses,
        "ifindex": e.ifindex,
        "ingress_isolated": e.ingress_isolated,
        "egress_isolated": e.egress_isolated,
        "entries": e.entries,
        "cidr_entries": e.cidr_entries,
        "verdicts": counts_json(counts.get(&e.ep_id)),
    });
    if allows {
        v["allows"] = json!(e.allows);
    }
    v
}

pub fn endpoints(p: &Pinned, out: super::Output) -> anyhow::Result<()> {
    let (r, counts) = load(p)?;
    if out == super::Output::Json {
        let rows: Vec<_> = r
            .endpoints
            .iter()
            .map(|e| endpoint_json(e, &counts, false))
            .collect();
        println!("{}", json!(rows));
        return Ok(());
    }
    println!(
        "{:<32} {:>5} {:>10} {:<8} {:<8} {:>7} {:>10} {:>10}",
        "POD", "EP", "IDENTITY", "INGRESS", "EGRESS", "ENTRIES", "DENIED-IN", "DENIED-EG"
    );
    let iso = |b: bool| if b { "isolated" } else { "open" };
    for e in &r.endpoints {
        let c = counts.get(&e.ep_id).copied().unwrap_or_default();
        println!(
            "{:<32} {:>5} {:>10} {:<8} {:<8} {:>7} {:>10} {:>10}",
            e.pod,
            e.ep_id,
            e.identity,
            iso(e.ingress_isolated),
            iso(e.egress_isolated),
            e.entries + e.cidr_entries,
            c[2],
            c[3]
        );
    }
    Ok(())
}

pub fn identities(p: &Pinned, out: super::Output) -> anyhow::Result<()> {
    let r = report::read(&p.pin_dir)?;
    if out == super::Output::Json {
        println!("{}", json!(r.identities));
        return Ok(());
    }
    println!(
        "{:>10} {:<20} {:>5} LABELS",
        "IDENTITY", "NAMESPACE", "PODS"
    );
    println!(
        "{:>10} {:<20} {:>5} (this node)",
        lb_common::ID_HOST,
        "-",
        "-"
    );
    println!(
        "{:>10} {:<20} {:>5} (anything else)",
        lb_common::ID_WORLD,
        "-",
        "-"
    );
    for i in &r.identities {
        let labels: Vec<String> = i.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "{:>10} {:<20} {:>5} {}",
            i.identity,
            i.namespace,
            i.pods,
            labels.join(",")
        );
    }
    Ok(())
}

/// One endpoint's resolved allow entries; `pod` is `namespace/name`.
pub fn get(p: &Pinned, pod: &str, out: super::Output) -> anyhow::Result<()> {
    let (r, counts) = load(p)?;
    let Some(e) = r.endpoints.iter().find(|e| e.pod == pod) else {
        anyhow::bail!(
            "no local endpoint {pod} (pods on this node: {})",
            r.endpoints
                .iter()
                .map(|e| e.pod.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    if out == super::Output::Json {
        println!("{}", endpoint_json(e, &counts, true));
        return Ok(());
    }
    println!(
        "{} (endpoint {}, identity {}): ingress {}, egress {}",
        e.pod,
        e.ep_id,
        e.identity,
        if e.ingress_isolated {
            "isolated"
        } else {
            "open"
        },
        if e.egress_isolated {
            "isolated"
        } else {
            "open"
        }
    );
    println!("{:<8} {:<28} {:<20} FROM", "DIR", "PEER", "PORTS");
    for a in &e.allows {
        println!(
            "{:<8} {:<28} {:<20} {}",
            a.direction,
            a.peer,
            a.ports,
            a.from.join(", ")
        );
    }
    Ok(())
}
