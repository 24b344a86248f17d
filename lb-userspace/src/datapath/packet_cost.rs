//! What one packet costs the packet programs, measured with
//! BPF_PROG_TEST_RUN repeat counts on the loaded programs against maps
//! filled to a given size: a packet for no Service, a packet of a flow
//! conntrack already knows, and an empty program of each hook as the floor.
//! For `cargo xtask bench`; nothing here runs in the agent.

use std::{
    net::Ipv4Addr,
    os::fd::{AsFd as _, BorrowedFd},
    path::PathBuf,
};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap},
    programs::{SchedClassifier, Xdp},
};
use lb_common::{
    BACKEND_LOCAL, Backend, BeU16, CONFIG_HAS_IP4, CT_FWD, Config, CtKey, CtValue, MAP_BACKENDS,
    MAP_CONFIG, MAP_CT, MAP_SERVICES, PROTO_TCP, SCOPE_INTERNAL, SVC_FLAG_EXTERNAL, ServiceKey,
    ServiceValue,
};
use serde::{Deserialize, Serialize};

use super::sys;
use crate::compute::desired::net_addr;

const NODE: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
const PROG_SCHED_CLS: u32 = 3;
const PROG_XDP: u32 = 6;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Nanoseconds per packet, as the kernel timed the repeats.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Costs {
    pub services: usize,
    pub ct_entries: usize,
    pub tc_empty_ns: u32,
    pub tc_no_service_ns: u32,
    pub tc_ct_hit_ns: u32,
    pub xdp_empty_ns: u32,
    pub xdp_no_service_ns: u32,
    /// Milliseconds one conntrack sweep took over these entries (none of
    /// them due), the agent's own code on the loaded map.
    /// None in results from before the sweep was timed.
    #[serde(default)]
    pub ct_sweep_ms: Option<f64>,
}

impl Costs {
    /// What the sweep costs, as a share of one core at the agent's tick
    /// (put off when a sweep takes more than 5% of it).
    pub fn ct_sweep_core_pct(&self) -> Option<f64> {
        self.ct_sweep_ms.map(|ms| {
            let took = std::time::Duration::from_secs_f64(ms / 1e3);
            let every =
                crate::compute::ct_sweep::sweep_period(crate::compute::ct_sweep::SWEEP_EVERY, took);
            ms / (every.as_secs_f64() * 1e3) * 100.0
        })
    }

    /// Seconds from one sweep to the next at this sweep's duration.
    pub fn ct_sweep_every_s(&self) -> Option<f64> {
        self.ct_sweep_ms.map(|ms| {
            crate::compute::ct_sweep::sweep_period(
                crate::compute::ct_sweep::SWEEP_EVERY,
                std::time::Duration::from_secs_f64(ms / 1e3),
            )
            .as_secs_f64()
        })
    }
}

/// The frontend `i` of the filled services map: a LoadBalancer-style
/// external address, port 80, one local backend.
fn frontend(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 1)) + i as u32)
}

fn csum(chunks: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    for c in chunks {
        for w in c.chunks(2) {
            sum += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet + IPv4 + TCP packet with valid checksums.
fn tcp4(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Vec<u8> {
    let payload = b"hello";
    let mut tcp = Vec::with_capacity(20 + payload.len());
    tcp.extend(sport.to_be_bytes());
    tcp.extend(dport.to_be_bytes());
    tcp.extend(1000u32.to_be_bytes());
    tcp.extend(u32::from(flags & TCP_ACK != 0).to_be_bytes());
    tcp.extend([5 << 4, flags]);
    tcp.extend(64000u16.to_be_bytes());
    tcp.extend([0, 0, 0, 0]);
    tcp.extend(payload);
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend(src.octets());
    pseudo.extend(dst.octets());
    pseudo.extend([0, 6]);
    pseudo.extend((tcp.len() as u16).to_be_bytes());
    let c = csum(&[&pseudo, &tcp]);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0x45, 0];
    ip.extend((20 + tcp.len() as u16).to_be_bytes());
    ip.extend([0, 1, 0x40, 0, 64, 6, 0, 0]);
    ip.extend(src.octets());
    ip.extend(dst.octets());
    let c = csum(&[&ip]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut pkt = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0xc8, 0x08, 0x00];
    pkt.extend(ip);
    pkt.extend(tcp);
    pkt
}

/// `mov r0, verdict; exit`: the floor every program on a hook pays.
fn empty_program(prog_type: u32, verdict: u32) -> anyhow::Result<std::os::fd::OwnedFd> {
    let insns = [0xb7 | (u64::from(verdict) << 32), 0x95];
    sys::prog_load(&sys::ProgLoad {
        prog_type,
        expected_attach_type: 0,
        attach_btf_id: 0,
        insns: &insns,
        name: "lb_empty",
    })
    .context("loading an empty program")
}

fn ns(prog: BorrowedFd<'_>, pkt: &[u8], repeat: u32) -> anyhow::Result<u32> {
    Ok(sys::prog_test_run_repeat(prog, pkt, 0, repeat)?.ns_per_run)
}

/// The packet programs loaded against maps of their own (pinned under a
/// directory removed on drop).
pub(super) struct Loaded {
    pub(super) ebpf: Ebpf,
    pub(super) dir: PathBuf,
    pub(super) backends: std::collections::HashMap<u32, Backend>,
}

impl Drop for Loaded {
    fn drop(&mut self) {
        let _ = super::reset(&self.dir);
    }
}

pub(super) fn load(services: usize, ct_entries: usize) -> anyhow::Result<Loaded> {
    // One directory per load: tests load side by side.
    static LOADS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = LOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = PathBuf::from(format!("/sys/fs/bpf/lbb{}-cost{n}", std::process::id()));
    let _ = super::reset(&dir);
    super::host::ensure_pin_dir(&dir)?;
    let cap = |n: usize| (n.max(1024) * 2) as u32;
    let ebpf = EbpfLoader::new()
        .default_map_pin_directory(&dir)
        .map_max_entries(MAP_SERVICES, cap(services * 2 + 2))
        .map_max_entries(MAP_BACKENDS, cap(services + 1))
        .map_max_entries(MAP_CT, cap(ct_entries + 8))
        .load(super::OBJECT)
        .context("loading the object")?;
    let mut l = Loaded {
        ebpf,
        dir,
        backends: Default::default(),
    };
    let tc: &mut SchedClassifier = l
        .ebpf
        .program_mut("lb_tc_ingress")
        .context("lb_tc_ingress")?
        .try_into()?;
    tc.load()?;
    let xdp: &mut Xdp = l.ebpf.program_mut("lb_xdp").context("lb_xdp")?.try_into()?;
    xdp.load()?;
    let mut cfg: Array<_, Config> = Array::try_from(l.ebpf.map_mut(MAP_CONFIG).context("config")?)?;
    cfg.set(
        0,
        Config {
            node_ip4: net_addr(NODE.into()),
            flags: CONFIG_HAS_IP4,
            ..Default::default()
        },
        0,
    )?;
    l.backends = fill(&mut l.ebpf, services, ct_entries)?;
    Ok(l)
}

/// Fills the maps; returns the backends as the agent's mirror holds them.
fn fill(
    ebpf: &mut Ebpf,
    services: usize,
    ct_entries: usize,
) -> anyhow::Result<std::collections::HashMap<u32, Backend>> {
    let mut mirror = std::collections::HashMap::new();
    let mut bes: HashMap<_, u32, Backend> =
        HashMap::try_from(ebpf.map_mut(MAP_BACKENDS).context("backends")?)?;
    for i in 0..services {
        let b = Backend {
            addr: net_addr(
                Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i as u32).into(),
            ),
            port: BeU16::from_host(8080),
            proto: PROTO_TCP,
            flags: BACKEND_LOCAL,
        };
        bes.insert(i as u32 + 1, b, 0)?;
        mirror.insert(i as u32 + 1, b);
    }
    let mut svcs: HashMap<_, ServiceKey, ServiceValue> =
        HashMap::try_from(ebpf.map_mut(MAP_SERVICES).context("services")?)?;
    for i in 0..services {
        let key = ServiceKey::frontend(
            net_addr(frontend(i).into()),
            BeU16::from_host(80),
            PROTO_TCP,
            SCOPE_INTERNAL,
        );
        let slot = ServiceValue {
            backend_id: i as u32 + 1,
            ..Default::default()
        };
        svcs.insert(key.with_slot(1), slot, 0)?;
        let v = ServiceValue {
            count: 1,
            flags: SVC_FLAG_EXTERNAL,
            service_id: i as u32 + 1,
            ..Default::default()
        };
        svcs.insert(key, v, 0)?;
    }
    let mut ct: HashMap<_, CtKey, CtValue> =
        HashMap::try_from(ebpf.map_mut(MAP_CT).context("conntrack")?)?;
    let of = |k: usize| {
        let id = (k % services.max(1)) as u32 + 1;
        let b = mirror.get(&id).copied().unwrap_or_default();
        (net_addr(frontend(k % services.max(1)).into()), id, b)
    };
    for (k, v) in live_flows(ct_entries, of) {
        ct.insert(k, v, 0)?;
    }
    Ok(mirror)
}

/// `entries` conntrack entries of live flows, as the datapath makes them:
/// a forward entry and its reverse, seen now, so a sweep keeps them all
/// (an odd count ends with a forward entry alone). `of(k)`: the `k`th
/// flow's frontend, backend id and backend.
fn live_flows(
    entries: usize,
    of: impl Fn(usize) -> (lb_common::NetAddr, u32, Backend),
) -> impl Iterator<Item = (CtKey, CtValue)> {
    let now = super::host::monotonic_s();
    (0..entries.div_ceil(2)).flat_map(move |k| {
        let client = net_addr(
            Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 0)) + (k / 60000) as u32).into(),
        );
        let cport = BeU16::from_host(1024 + (k % 60000) as u16);
        let (fe, id, b) = of(k);
        let entry = |saddr, sport, daddr, dport, kind, addr, port| {
            let key = CtKey {
                saddr,
                daddr,
                sport,
                dport,
                proto: PROTO_TCP,
                kind,
                _pad: [0; 2],
            };
            let v = CtValue {
                addr,
                port,
                backend_id: id,
                last_seen: now,
                flags: lb_common::CT_F_ESTABLISHED,
                ..Default::default()
            };
            (key, v)
        };
        let http = BeU16::from_host(80);
        let fwd = entry(client, cport, fe, http, CT_FWD, b.addr, b.port);
        let rev = (2 * k + 1 < entries)
            .then(|| entry(b.addr, b.port, client, cport, lb_common::CT_REV, fe, http));
        std::iter::once(fwd).chain(rev)
    })
}

/// Fills the pinned conntrack map of a running agent (`pin_dir`) with
/// `entries` entries of live flows to `frontend` through one of its
/// backends: what a node with that many flows holds. For the bench of a
/// conntrack map's growth while running.
pub fn fill_pinned_ct(
    pin_dir: &std::path::Path,
    entries: usize,
    frontend: std::net::IpAddr,
) -> anyhow::Result<()> {
    let backends: HashMap<_, u32, Backend> =
        HashMap::try_from(super::pinned::open_pinned(pin_dir, MAP_BACKENDS)?)?;
    let (backend_id, b) = backends
        .iter()
        .next()
        .context("no backend in the agent's backends map")??;
    let mut ct: HashMap<_, CtKey, CtValue> =
        HashMap::try_from(super::pinned::open_pinned(pin_dir, MAP_CT)?)?;
    for (k, v) in live_flows(entries, |_| (net_addr(frontend), backend_id, b)) {
        ct.insert(k, v, 0)?;
    }
    Ok(())
}

/// Remembers `clients` more clients in the pinned affinity map of a
/// running agent (`pin_dir`), each as the programs remembered the one
/// client already there (its Service, backend and timeout; used now): what
/// a node with that many clients of a sessionAffinity Service holds.
pub fn remember_clients(pin_dir: &std::path::Path, clients: u32) -> anyhow::Result<()> {
    use lb_common::{AFF_NETNS, AffinityKey, AffinityValue, MAP_AFFINITY, NetAddr};
    let mut m: HashMap<_, AffinityKey, AffinityValue> =
        HashMap::try_from(super::pinned::open_pinned(pin_dir, MAP_AFFINITY)?)?;
    let (k, v) = m
        .iter()
        .next()
        .context("no client in the agent's affinity map")??;
    let v = AffinityValue {
        last_used_s: crate::datapath::host::monotonic_s(),
        ..v
    };
    for i in 0..clients {
        // Network namespace cookies no namespace of this host has.
        let k = AffinityKey {
            client: NetAddr([i, u32::MAX, 0, 0]),
            kind: AFF_NETNS,
            ..k
        };
        m.insert(k, v, 0)?;
    }
    Ok(())
}

/// The per-packet costs with `services` frontends and `ct_entries`
/// conntrack entries, each the kernel's mean over `repeat` runs.
pub fn measure(services: usize, ct_entries: usize, repeat: u32) -> anyhow::Result<Costs> {
    if services == 0 {
        bail!("measure with at least one Service (the conntrack hit needs one)");
    }
    let mut l = load(services, ct_entries)?;
    let ct_sweep_ms = sweep_ms(&mut l, ct_entries)?;
    let tc: &SchedClassifier = l
        .ebpf
        .program("lb_tc_ingress")
        .context("lb_tc_ingress")?
        .try_into()?;
    let xdp: &Xdp = l.ebpf.program("lb_xdp").context("lb_xdp")?.try_into()?;
    let (tc, xdp) = (tc.fd()?.as_fd(), xdp.fd()?.as_fd());
    let tc_empty = empty_program(PROG_SCHED_CLS, 0)?;
    let xdp_empty = empty_program(PROG_XDP, 2)?;
    let none = tcp4(CLIENT, 40000, Ipv4Addr::new(10, 200, 0, 1), 443, TCP_SYN);
    // The last frontend (the farthest in any order), its flow made by its
    // SYN, then measured on its ACKs.
    let to = frontend(services - 1);
    let syn = tcp4(CLIENT, 40001, to, 80, TCP_SYN);
    let ack = tcp4(CLIENT, 40001, to, 80, TCP_ACK);
    let first = sys::prog_test_run_repeat(tc, &syn, 0, 1)?;
    if first.data.get(30..34) == Some(&to.octets()[..]) {
        bail!(
            "the measured SYN to {to}:80 was not translated (verdict {}): is the frontend in the map?",
            first.verdict
        );
    }
    let hit = sys::prog_test_run_repeat(tc, &ack, 0, 1)?;
    if hit.data.get(30..34) == Some(&to.octets()[..]) {
        bail!(
            "an ACK of the flow the SYN made was not translated (verdict {})",
            hit.verdict
        );
    }
    Ok(Costs {
        services,
        ct_entries,
        tc_empty_ns: ns(tc_empty.as_fd(), &none, repeat)?,
        tc_no_service_ns: ns(tc, &none, repeat)?,
        tc_ct_hit_ns: ns(tc, &ack, repeat)?,
        xdp_empty_ns: ns(xdp_empty.as_fd(), &none, repeat)?,
        xdp_no_service_ns: ns(xdp, &none, repeat)?,
        ct_sweep_ms: Some(ct_sweep_ms),
    })
}

/// One conntrack sweep over the filled map, timed; every entry part of a
/// live flow, so the figure is the steady state's walk, not a mass removal.
/// The sweep timed follows a first one, as the sweeper thread's do: with
/// the buffers the sweep before it left.
fn sweep_ms(l: &mut Loaded, ct_entries: usize) -> anyhow::Result<f64> {
    let max = ct_entries + 8;
    let map = l.ebpf.map_mut(MAP_CT).context("conntrack")?;
    let mut state = super::sweep::CtSweep::default();
    let mut ms = 0.0;
    for _ in 0..2 {
        let t = std::time::Instant::now();
        let (removed, kept, flows) = super::sweep::sweep_ct(
            map,
            &mut state,
            max,
            0,
            crate::compute::ct_sweep::gone_from(&l.backends),
            &Default::default(),
            usize::MAX,
        )?;
        ms = t.elapsed().as_secs_f64() * 1e3;
        if removed != 0 || kept != ct_entries {
            bail!("the sweep removed {removed} and kept {kept} of {ct_entries} live entries");
        }
        if flows.flows != ct_entries.div_ceil(2) || flows.orphans != 0 {
            bail!(
                "the sweep saw {flows:?} in {ct_entries} entries (each flow forward and reverse)"
            );
        }
    }
    Ok(ms)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_conntrack_hit_and_a_packet_for_no_service_are_timed() {
        assert!(
            crate::datapath::host::is_root(),
            "BPF_PROG_TEST_RUN needs root: run through `cargo xtask test`"
        );
        let c = super::measure(3, 100, 10).expect("measure");
        assert!(
            c.tc_empty_ns > 0 && c.tc_no_service_ns > 0 && c.tc_ct_hit_ns > 0,
            "{c:?}"
        );
        assert!(c.xdp_empty_ns > 0 && c.xdp_no_service_ns > 0, "{c:?}");
    }
}
