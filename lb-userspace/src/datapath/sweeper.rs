//! The conntrack sweeps on a thread of their own: a sweep of a million
//! entries takes a good part of a second, which the sync loop must not
//! wait out. The thread opens the pinned maps at each sweep (a map grown
//! since is swapped under the same pin) and bounds what one sweep deletes.
//!
//! Whether a flow's backend is gone is asked of the kernel's backends map,
//! but only for the ids the agent deleted lately (it says so through
//! [`Sweeper::backends_left`]); every id the flows name is looked up at
//! the first sweep and every [`FULL_CHECK_EVERY`] sweeps after, so that
//! nothing missed outlives a few minutes.

use std::collections::HashSet;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::*;
use crate::compute::conntrack_gc::Timeouts;
use crate::compute::ct_sweep::CtStats;

/// Deletions one sweep makes at most (each is two system calls): a mass
/// expiry is spread over the next sweeps, which find the rest again.
pub const DELETE_BUDGET: usize = 1 << 16;

/// Sweeps between two that look up every backend id the flows name.
pub const FULL_CHECK_EVERY: u64 = 30;

/// What one turn of the thread did, for the metrics.
#[derive(Debug, Default)]
pub struct SweepReport {
    pub removed: usize,
    pub kept: usize,
    pub flows: CtStats,
    pub evicted_entries_total: u64,
    pub evicted_answered_flows_total: u64,
    pub policy_removed: usize,
    /// Policy conntrack entries not expired (those past the deletion
    /// budget go at the next sweep).
    pub policy_kept: usize,
    pub affinity_removed: usize,
    /// Affinity clients not expired (as above).
    pub affinity_kept: usize,
    pub took: Duration,
}

/// The sweeper thread; stops (and is joined) when dropped.
pub struct Sweeper {
    left: Option<mpsc::Sender<Vec<u32>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sweeper {
    /// Sweeps the maps pinned in `pin_dir` every `every`; `report` gets
    /// each sweep's outcome (or its error) on the thread.
    pub fn spawn(
        pin_dir: PathBuf,
        timeouts: Timeouts,
        every: Duration,
        mut report: impl FnMut(anyhow::Result<SweepReport>) + Send + 'static,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Vec<u32>>();
        let thread = std::thread::Builder::new()
            .name("ct-sweep".into())
            .spawn(move || {
                let mut s = State {
                    pin_dir,
                    timeouts,
                    ct: sweep::CtSweep::default(),
                    policy_walk: sweep::Walk::default(),
                    affinity_walk: sweep::Walk::default(),
                    left_now: HashSet::new(),
                    left_before: HashSet::new(),
                    sweeps: 0,
                };
                let mut next = Instant::now() + every;
                loop {
                    match rx.recv_timeout(next.saturating_duration_since(Instant::now())) {
                        Ok(ids) => s.left_now.extend(ids),
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            let started = Instant::now();
                            report(s.sweep());
                            // The cadence, kept to the sweeps' share of a
                            // core however big the map.
                            let period =
                                crate::compute::ct_sweep::sweep_period(every, started.elapsed());
                            next = (next + every).max(started + period);
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                }
            })?;
        Ok(Self {
            left: Some(tx),
            thread: Some(thread),
        })
    }

    /// Backend ids the agent deleted from the maps: their flows go at the
    /// next sweep.
    pub fn backends_left(&self, ids: Vec<u32>) {
        if let (false, Some(tx)) = (ids.is_empty(), &self.left) {
            // The thread only ends when this is dropped.
            let _ = tx.send(ids);
        }
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        self.left = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct State {
    pin_dir: PathBuf,
    timeouts: Timeouts,
    /// What one conntrack sweep leaves the next (the eviction count, the
    /// walk's buffers).
    ct: sweep::CtSweep,
    policy_walk: sweep::Walk<lb_common::PolCtKey, lb_common::PolCtValue>,
    affinity_walk: sweep::Walk<lb_common::AffinityKey, lb_common::AffinityValue>,
    /// Ids deleted since the last sweep, and before it: a flow made just
    /// before its backend left may come after the walk that looked.
    left_now: HashSet<u32>,
    left_before: HashSet<u32>,
    sweeps: u64,
}

impl State {
    fn sweep(&mut self) -> anyhow::Result<SweepReport> {
        let started = Instant::now();
        let every_id = self.sweeps.is_multiple_of(FULL_CHECK_EVERY);
        self.sweeps += 1;
        let dir = &self.pin_dir;
        let new_entries = ct_entries_made(dir)?;
        let backends: HashMap<_, u32, Backend> =
            HashMap::try_from(pinned::open_pinned(dir, MAP_BACKENDS)?)?;
        let check: HashSet<u32> = self.left_now.union(&self.left_before).copied().collect();
        let mut known: std::collections::HashMap<u32, Option<Backend>> = Default::default();
        let gone = |v: &CtValue| {
            if !every_id && !check.contains(&v.backend_id) {
                return false;
            }
            let b = known
                .entry(v.backend_id)
                .or_insert_with(|| backends.get(&v.backend_id, 0).ok());
            !b.is_some_and(|b| b.addr == v.addr && b.port == v.port)
        };
        if migrate::old_pin(dir, MAP_CT).exists() {
            // A carried map fills as its copy runs: no eviction is judged
            // from what this walk finds (nor from the next while it fills).
            self.ct.evictions.forget();
        }
        let (mut ct, max) = pinned::open_pinned_sized(dir, MAP_CT)?;
        let max = max as usize;
        let (removed, kept, flows) = sweep::sweep_ct(
            &mut ct,
            &mut self.ct,
            max,
            new_entries,
            gone,
            &self.timeouts,
            DELETE_BUDGET,
        )?;
        self.left_before = std::mem::take(&mut self.left_now);
        let (mut pol, max) = pinned::open_pinned_sized(dir, lb_common::MAP_POL_CT)?;
        let max = max as usize;
        let (policy_removed, policy_kept) = sweep::sweep_policy_ct(
            &mut pol,
            &mut self.policy_walk,
            max,
            &self.timeouts,
            DELETE_BUDGET,
        )?;
        let (mut aff, max) = pinned::open_pinned_sized(dir, lb_common::MAP_AFFINITY)?;
        let (affinity_removed, affinity_kept) = sweep::sweep_affinity(
            &mut aff,
            &mut self.affinity_walk,
            max as usize,
            DELETE_BUDGET,
        )?;
        Ok(SweepReport {
            removed,
            kept,
            flows,
            evicted_entries_total: self.ct.evictions.entries_total,
            evicted_answered_flows_total: self.ct.evictions.answered_flows_total,
            policy_removed,
            policy_kept,
            affinity_removed,
            affinity_kept,
            took: started.elapsed(),
        })
    }
}

/// The datapath's count of conntrack entries made, summed over CPUs.
fn ct_entries_made(pin_dir: &Path) -> anyhow::Result<u64> {
    let m: PerCpuArray<_, u64> =
        PerCpuArray::try_from(pinned::open_pinned(pin_dir, lb_common::MAP_COUNTERS)?)?;
    Ok(m.get(&(lb_common::C_CT_ENTRY_NEW as u32), 0)?.iter().sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::desired::net_addr;
    use lb_common::BeU16;

    fn entries(l: &mut super::super::packet_cost::Loaded) -> Vec<(CtKey, CtValue)> {
        let m: HashMap<_, CtKey, CtValue> =
            HashMap::try_from(l.ebpf.map_mut(MAP_CT).expect("ct")).expect("ct");
        m.iter().map(Result::unwrap).collect()
    }

    #[test]
    fn the_thread_sweeps_idle_flows_then_the_flows_of_a_backend_the_agent_deleted() {
        assert!(
            crate::datapath::host::is_root(),
            "pinned BPF maps need root: run through `cargo xtask test`"
        );
        // Two Services (backend ids 1 and 2); five live flows of a forward
        // and a reverse entry each: ids 1, 2, 1, 2, 1.
        let mut l = super::super::packet_cost::load(2, 10).expect("maps");
        let b1 = l.backends[&1];
        let idle = CtKey {
            saddr: net_addr("172.31.0.9".parse().unwrap()),
            daddr: net_addr("10.200.0.1".parse().unwrap()),
            sport: BeU16::from_host(5555),
            dport: BeU16::from_host(80),
            proto: lb_common::PROTO_TCP,
            kind: lb_common::CT_FWD,
            _pad: [0; 2],
        };
        {
            let mut ct: HashMap<_, CtKey, CtValue> =
                HashMap::try_from(l.ebpf.map_mut(MAP_CT).unwrap()).unwrap();
            // A SYN nobody answered, 100 s ago (the SYN timeout is 60 s).
            let v = CtValue {
                addr: b1.addr,
                port: b1.port,
                backend_id: 1,
                last_seen: crate::datapath::host::monotonic_s() - 100,
                ..Default::default()
            };
            ct.insert(idle, v, 0).unwrap();
        }
        let (tx, rx) = mpsc::channel();
        let sweeper = Sweeper::spawn(
            l.dir.clone(),
            Timeouts::default(),
            Duration::from_millis(200),
            move |r| {
                let _ = tx.send(r.map_err(|e| format!("{e:#}")));
            },
        )
        .expect("thread");
        let first = rx.recv_timeout(Duration::from_secs(10)).expect("a sweep");
        let first = first.expect("the sweep worked");
        assert_eq!((first.removed, first.kept), (1, 10), "{first:?}");
        assert_eq!(
            first.flows.flows, 6,
            "five live and the idle one: {first:?}"
        );
        assert!(entries(&mut l).iter().all(|(k, _)| *k != idle));

        // The agent deletes backend 2 and says so: its flows go, whole.
        {
            let mut bes: HashMap<_, u32, Backend> =
                HashMap::try_from(l.ebpf.map_mut(MAP_BACKENDS).unwrap()).unwrap();
            bes.remove(&2).unwrap();
        }
        sweeper.backends_left(vec![2]);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut removed = 0;
        while removed < 4 && Instant::now() < deadline {
            if let Ok(r) = rx.recv_timeout(Duration::from_secs(1)) {
                removed += r.expect("the sweep worked").removed;
            }
        }
        let left = entries(&mut l);
        assert_eq!(removed, 4, "backend 2's two flows, four entries: {left:?}");
        assert_eq!(left.len(), 6);
        assert!(left.iter().all(|(_, v)| v.backend_id == 1), "{left:?}");
        drop(sweeper);
        assert!(
            rx.recv_timeout(Duration::from_millis(500)).is_err(),
            "no sweep after the sweeper is dropped"
        );
    }

    #[test]
    fn one_sweep_deletes_at_most_its_budget_and_the_next_finds_the_rest() {
        assert!(
            crate::datapath::host::is_root(),
            "pinned BPF maps need root: run through `cargo xtask test`"
        );
        let mut l = super::super::packet_cost::load(1, 10).expect("maps");
        let mut ev = sweep::CtSweep::default();
        let sweep = |l: &mut super::super::packet_cost::Loaded, ev: &mut sweep::CtSweep, budget| {
            let map = l.ebpf.map_mut(MAP_CT).unwrap();
            // Every backend gone: every flow is doomed.
            sweep::sweep_ct(map, ev, 100, 0, |_| true, &Timeouts::default(), budget).unwrap()
        };
        // Five flows of two entries: three entries' budget takes one flow
        // whole, not one and a half.
        let (removed, kept, _) = sweep(&mut l, &mut ev, 3);
        assert_eq!((removed, kept), (2, 8));
        let (removed, kept, flows) = sweep(&mut l, &mut ev, 100);
        assert_eq!((removed, kept, flows.orphans), (8, 0, 0));
    }

    #[test]
    fn clients_go_from_the_affinity_map_once_their_services_timeout_passed() {
        use lb_common::{AffinityKey, AffinityValue};
        assert!(
            crate::datapath::host::is_root(),
            "pinned BPF maps need root: run through `cargo xtask test`"
        );
        let mut l = super::super::packet_cost::load(1, 10).expect("maps");
        let now = crate::datapath::host::monotonic_s();
        // (client, idle seconds, the Service's timeout; 0: programs that
        // did not record it, so a day), and whether the sweep keeps it.
        let clients = [
            (1, 30, 60, true),
            (2, 61, 60, false),
            (3, 100, 0, true),
            (4, 100, 10800, true),
            (5, 90, 30, false),
        ];
        let key = |c: u32| AffinityKey {
            client: lb_common::NetAddr([c, 0, 0, 0]),
            service_id: 1,
            kind: lb_common::AFF_CLIENT,
        };
        let map = l.ebpf.map_mut(lb_common::MAP_AFFINITY).unwrap();
        {
            let mut m: HashMap<_, AffinityKey, AffinityValue> =
                HashMap::try_from(&mut *map).unwrap();
            for (c, idle, timeout_s, _) in clients {
                let v = AffinityValue {
                    backend_id: 1,
                    slot: 1,
                    last_used_s: now.checked_sub(idle).expect("up for two minutes"),
                    timeout_s,
                    ..Default::default()
                };
                m.insert(key(c), v, 0).unwrap();
            }
        }
        let mut walk = sweep::Walk::default();
        // One deletion's budget: the other expired client waits for the
        // next sweep, and counts as no live entry meanwhile.
        let (removed, live) = sweep::sweep_affinity(map, &mut walk, 100, 1).unwrap();
        assert_eq!((removed, live), (1, 3));
        let (removed, live) = sweep::sweep_affinity(map, &mut walk, 100, 100).unwrap();
        assert_eq!((removed, live), (1, 3));
        let m: HashMap<_, AffinityKey, AffinityValue> = HashMap::try_from(&*map).unwrap();
        for (c, _, _, keeps) in clients {
            assert_eq!(m.get(&key(c), 0).is_ok(), keeps, "client {c}");
        }
    }
}
