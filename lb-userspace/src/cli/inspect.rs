//! The inspection subcommands: what the kernel holds, read from the pins.

use std::{collections::BTreeMap, net::IpAddr};

use lb_common::{SCOPE_INTERNAL, SVC_FLAG_ADDR_ONLY, SVC_FLAG_EXTERNAL, SVC_FLAG_NODEPORT};
use serde_json::json;

use crate::{compute::desired::ip_of, datapath::Pinned};

fn proto_name(p: u8) -> &'static str {
    match p {
        6 => "TCP",
        17 => "UDP",
        _ => "any",
    }
}

fn endpoint(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

pub fn status(p: &Pinned, out: super::Output) -> anyhow::Result<()> {
    let st = p.status()?;
    let fill = p.fill()?;
    let links = p.links();
    let counters = p.counters()?;
    let policy = crate::cli::policy::totals(&p.policy_counts()?);
    let flows = crate::compute::ct_sweep::stats(&p.conntrack()?);
    // What the applied state leaves out (the agent's report beside the
    // pins; None before its first sync).
    let sync = crate::serve::report::read_sync(&p.pin_dir).unwrap_or_else(|e| {
        eprintln!("warning: {e:#}");
        None
    });
    if out == super::Output::Json {
        let maps: BTreeMap<_, _> = fill
            .iter()
            .map(|f| {
                (
                    f.name,
                    json!({"entries": f.entries, "max_entries": f.max_entries}),
                )
            })
            .collect();
        let links: BTreeMap<_, _> = links
            .iter()
            .map(|(n, ok)| (n.clone(), json!({"attached": ok})))
            .collect();
        println!(
            "{}",
            json!({
                "synced_generation": st.synced_generation,
                "clean": sync.as_ref().map(|r| r.clean),
                "rejected_count": sync.as_ref().map_or(0, |r| r.rejected_count),
                "rejected": sync.as_ref().map(|r| r.rejected.clone()).unwrap_or_default(),
                "services_not_programmed": sync.as_ref().map_or(0, |r| r.services_not_programmed),
                "not_programmed": sync.as_ref().map(|r| r.not_programmed.clone()).unwrap_or_default(),
                "synced_at_unix_ms": st.synced_at_unix_ms,
                "agent_pid": st.agent_pid,
                "health_port": st.health_port,
                "source": st.source_str(),
                "pin_dir": p.pin_dir,
                "maps": maps,
                "links": links,
                "counters": counters.iter().map(|(n, v)| (n.to_string(), *v)).collect::<BTreeMap<_, _>>(),
                "policy": policy,
                "conntrack_flows": flows,
            })
        );
    } else {
        println!("pin dir:           {}", p.pin_dir.display());
        println!("source:            {}", st.source_str());
        println!("synced generation: {}", st.synced_generation);
        match &sync {
            None => println!("applied cleanly:   unknown (no sync report yet)"),
            Some(r) if r.clean => println!("applied cleanly:   yes"),
            Some(r) => {
                println!(
                    "applied cleanly:   no ({} rejected, {} Services not programmed)",
                    r.rejected_count, r.services_not_programmed
                );
                for x in &r.rejected {
                    println!("  rejected:        {x}");
                }
                if r.rejected.len() < r.rejected_count {
                    println!(
                        "  rejected:        ... and {} more",
                        r.rejected_count - r.rejected.len()
                    );
                }
                for np in &r.not_programmed {
                    println!(
                        "  not programmed:  Service {}: {} full, needs {} entries, {} of {} free{}",
                        np.service,
                        np.map,
                        np.needed,
                        np.free,
                        np.capacity,
                        if np.previous_state_kept {
                            " (previous state kept)"
                        } else {
                            ""
                        }
                    );
                }
                if r.not_programmed.len() < r.services_not_programmed {
                    println!(
                        "  not programmed:  ... and {} more",
                        r.services_not_programmed - r.not_programmed.len()
                    );
                }
            }
        }
        println!(
            "last sync:         {}",
            if st.synced_at_unix_ms == 0 {
                "never".to_string()
            } else {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                format!(
                    "{:.1} s ago",
                    now.saturating_sub(st.synced_at_unix_ms) as f64 / 1000.0
                )
            }
        );
        println!("agent pid:         {}", st.agent_pid);
        println!(
            "health port:       {}",
            if st.health_port == 0 {
                "off".to_string()
            } else {
                st.health_port.to_string()
            }
        );
        for f in &fill {
            println!("map {:<16} {:>8} / {}", f.name, f.entries, f.max_entries);
        }
        for (n, v) in &policy {
            println!("{n:<26} {v}");
        }
        println!(
            "conntrack flows:  {} ({} unanswered, {} closing), {} orphan entries",
            flows.flows, flows.unanswered, flows.closing, flows.orphans
        );
        for (n, ok) in &links {
            println!(
                "link {:<15} {}",
                n,
                if *ok { "attached" } else { "MISSING" }
            );
        }
    }
    Ok(())
}

pub fn services(p: &Pinned, out: super::Output) -> anyhow::Result<()> {
    let services = p.services()?;
    let backends: BTreeMap<u32, _> = p.backends()?.into_iter().collect();
    let slots: BTreeMap<_, _> = services.iter().map(|(k, v)| (*k, *v)).collect();
    let maglev = p.maglev_ids()?;
    let mut rows = Vec::new();
    for (k, v) in slots
        .iter()
        .filter(|(k, v)| k.slot == 0 && v.flags & SVC_FLAG_ADDR_ONLY == 0)
    {
        let bes: Vec<String> = (1..=v.count)
            .filter_map(|s| slots.get(&k.with_slot(s)))
            .map(|sv| match backends.get(&sv.backend_id) {
                Some(b) => endpoint(ip_of(&b.addr), b.port.to_host()),
                None => format!("<missing backend {}>", sv.backend_id),
            })
            .collect();
        rows.push(json!({
            "frontend": endpoint(ip_of(&k.addr), k.port.to_host()),
            "protocol": proto_name(k.proto),
            "scope": if k.scope == SCOPE_INTERNAL { "internal" } else { "external" },
            "kind": if v.flags & SVC_FLAG_NODEPORT != 0 { "NodePort" } else if v.flags & SVC_FLAG_EXTERNAL != 0 { "External" } else { "ClusterIP" },
            "from_outside": v.flags & SVC_FLAG_EXTERNAL != 0,
            "service_id": v.service_id,
            "maglev": maglev.contains(&v.service_id),
            "backends": bes,
        }));
    }
    if out == super::Output::Json {
        println!("{}", serde_json::Value::Array(rows));
    } else {
        for r in rows {
            println!(
                "{:<28} {:<4} {:<9} {:<9} -> {}",
                r["frontend"].as_str().unwrap_or_default(),
                r["protocol"].as_str().unwrap_or_default(),
                r["kind"].as_str().unwrap_or_default(),
                r["scope"].as_str().unwrap_or_default(),
                r["backends"]
                    .as_array()
                    .map(|a| a
                        .iter()
                        .filter_map(|b| b.as_str())
                        .collect::<Vec<_>>()
                        .join(", "))
                    .unwrap_or_default()
            );
        }
    }
    Ok(())
}

pub fn backends(p: &Pinned, out: super::Output) -> anyhow::Result<()> {
    let mut bes = p.backends()?;
    bes.sort_by_key(|(id, _)| *id);
    let rows: Vec<_> = bes
        .iter()
        .map(|(id, b)| json!({"id": id, "address": endpoint(ip_of(&b.addr), b.port.to_host()), "protocol": proto_name(b.proto),
            "local": b.flags & lb_common::BACKEND_LOCAL != 0, "draining": b.flags & lb_common::BACKEND_DRAINING != 0}))
        .collect();
    if out == super::Output::Json {
        println!("{}", serde_json::Value::Array(rows));
    } else {
        for r in rows {
            println!(
                "{:>6} {:<28} {:<4}{}",
                r["id"],
                r["address"].as_str().unwrap_or_default(),
                r["protocol"].as_str().unwrap_or_default(),
                if r["draining"] == true {
                    " draining"
                } else {
                    ""
                }
            );
        }
    }
    Ok(())
}

pub fn conntrack(p: &Pinned, out: super::Output) -> anyhow::Result<()> {
    let kinds = ["?", "forward", "reverse", "snat", "reverse-snat"];
    let now = crate::datapath::host::monotonic_s() as i64;
    let rows: Vec<_> = p
        .conntrack()?
        .iter()
        .map(|(k, v)| {
            json!({
                "kind": kinds.get(k.kind as usize).copied().unwrap_or("?"),
                "protocol": proto_name(k.proto),
                "src": endpoint(ip_of(&k.saddr), k.sport.to_host()),
                "dst": endpoint(ip_of(&k.daddr), k.dport.to_host()),
                "to": endpoint(ip_of(&v.addr), v.port.to_host()),
                "backend_id": v.backend_id,
                "idle_s": now - v.last_seen as i64,
            })
        })
        .collect();
    if out == super::Output::Json {
        println!("{}", serde_json::Value::Array(rows));
    } else {
        for r in rows {
            println!(
                "{:<12} {:<4} {:<28} -> {:<28} => {:<28} idle {}s",
                r["kind"].as_str().unwrap_or_default(),
                r["protocol"].as_str().unwrap_or_default(),
                r["src"].as_str().unwrap_or_default(),
                r["dst"].as_str().unwrap_or_default(),
                r["to"].as_str().unwrap_or_default(),
                r["idle_s"]
            );
        }
    }
    Ok(())
}
