//! Writing plans into the agent-owned maps and reading them back.

use super::*;

/// What a map write was doing, in words (for errors: never a dump of it).
fn describe_op(op: &Op, sizes: &MapSizes) -> String {
    use crate::compute::desired::ip_of;
    let at = |a: &lb_common::NetAddr, port: lb_common::BeU16| match ip_of(a) {
        std::net::IpAddr::V4(v4) => format!("{v4}:{}", port.to_host()),
        std::net::IpAddr::V6(v6) => format!("[{v6}]:{}", port.to_host()),
    };
    let front = |k: &ServiceKey| {
        let proto = match k.proto {
            6 => "TCP",
            17 => "UDP",
            _ => "any protocol",
        };
        format!("frontend {} {proto}", at(&k.addr, k.port))
    };
    let entry = |k: &ServiceKey| {
        if k.slot == 0 {
            front(k)
        } else {
            format!("backend slot {} of {}", k.slot, front(k))
        }
    };
    match op {
        Op::PutBackend { id, backend } => format!(
            "writing backend {} (id {id}) into {MAP_BACKENDS} ({} entries)",
            at(&backend.addr, backend.port),
            sizes.backends
        ),
        Op::DelBackend { id } => format!("removing backend id {id} from {MAP_BACKENDS}"),
        Op::PutService { key, .. } => format!(
            "writing the {} into {MAP_SERVICES} ({} entries)",
            entry(key),
            sizes.services
        ),
        Op::DelService { key } => format!("removing the {} from {MAP_SERVICES}", entry(key)),
        Op::PutRange { data, .. } => format!(
            "writing a loadBalancerSourceRanges entry of {} into {} ({} entries)",
            at(&data.front, data.port),
            lb_common::MAP_SRC_RANGES,
            sizes.ranges
        ),
        Op::DelRange { data, .. } => format!(
            "removing a loadBalancerSourceRanges entry of {} from {}",
            at(&data.front, data.port),
            lb_common::MAP_SRC_RANGES
        ),
        Op::PutMaglev { service_id, table } => format!(
            "writing the Maglev table ({} entries) of service id {service_id} into {MAP_MAGLEV} ({} tables)",
            table.len(),
            sizes.maglev
        ),
        Op::DelMaglev { service_id } => {
            format!("removing the Maglev table of service id {service_id} from {MAP_MAGLEV}")
        }
    }
}

/// A failed write, named by the op that failed.
fn write_error(op: &Op, sizes: &MapSizes, e: aya::maps::MapError) -> anyhow::Error {
    let full = matches!(&e, aya::maps::MapError::SyscallError(s)
        if matches!(s.io_error.raw_os_error(), Some(libc::E2BIG | libc::ENOSPC)));
    let what = describe_op(op, sizes);
    anyhow::Error::new(e).context(if full {
        format!("{what}: the map is full")
    } else {
        what
    })
}

impl Datapath {
    /// How many entries the maps the plan writes hold.
    pub fn capacity(&self) -> crate::compute::reconcile::Capacity {
        crate::compute::reconcile::Capacity {
            services: Some(self.sizes.services),
            backends: Some(self.sizes.backends),
            maglev: Some(self.sizes.maglev),
            ranges: Some(self.sizes.ranges),
        }
    }

    pub fn set_config(&mut self, mut config: Config) -> anyhow::Result<()> {
        config.maglev_size = self.maglev_size;
        self.config.set(0, config, 0).context("writing config map")
    }

    /// The maps' contents as a plan mirror.
    pub fn read_mirror(&self) -> anyhow::Result<Mirror> {
        let services = self
            .services
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .context("reading services map")?;
        let backends = self
            .backends
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .context("reading backends map")?;
        let ranges = self
            .ranges
            .keys()
            .map(|k| k.map(|k| (k.prefix_len(), k.data())))
            .collect::<Result<Vec<_>, _>>()
            .context("reading source ranges map")?;
        let tables = if self.maglev_valid {
            self.maglev
                .keys()
                .collect::<Result<Vec<u32>, _>>()
                .context("reading Maglev map")?
        } else {
            vec![]
        };
        Ok(Mirror::from_entries(services, backends)
            .with_ranges(ranges)
            .with_maglev(self.maglev_size as usize, tables))
    }

    /// Applies ops in order; stops at the first failure, which the caller
    /// answers with a reload of the mirror. A run of backend or of
    /// service-entry writes goes in one batch call (a cold start is
    /// millions of them); the kernel writes a batch's entries in order, so
    /// the datapath sees the same states as entry by entry.
    pub fn apply(&mut self, ops: &[Op]) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        let r = self.apply_runs(ops);
        self.write_time += started.elapsed();
        r
    }

    fn apply_runs(&mut self, ops: &[Op]) -> anyhow::Result<()> {
        // Tables the plan shares (one Service's frontends on several
        // addresses) become one inner map under several keys.
        let mut made: Vec<(crate::compute::plan::MaglevTable, MapData, u32)> = Vec::new();
        let rewritable = self.maglev_tables.rewritable(ops);
        let mut swaps: Vec<Swap> = Vec::new();
        let mut at = 0;
        while at < ops.len() {
            // The run of backend writes, or of service-entry writes, that
            // starts here (empty for any other op).
            let (ids, backends): (Vec<u32>, Vec<Backend>) = ops[at..]
                .iter()
                .map_while(|op| match op {
                    Op::PutBackend { id, backend } => Some((*id, *backend)),
                    _ => None,
                })
                .unzip();
            let (keys, values): (Vec<ServiceKey>, Vec<ServiceValue>) = ops[at..]
                .iter()
                .map_while(|op| match op {
                    Op::PutService { key, value } => Some((*key, *value)),
                    _ => None,
                })
                .unzip();
            let (run, written) = if !ids.is_empty() {
                let fd = self.backends.map().fd().as_fd();
                (ids.len(), sys::update_batch(fd, &ids, &backends))
            } else if !keys.is_empty() {
                let fd = self.services.map().fd().as_fd();
                (keys.len(), sys::update_batch(fd, &keys, &values))
            } else {
                (0, Ok(()))
            };
            if let Err(w) = written {
                let failed = &ops[at + w.written.min(run - 1)];
                let e = aya::sys::SyscallError {
                    call: "bpf_map_update_batch",
                    io_error: w.error,
                };
                return Err(write_error(failed, &self.sizes, e.into()));
            }
            if run > 0 {
                at += run;
                continue;
            }
            let op = &ops[at];
            at += 1;
            match op {
                // Written in runs above.
                Op::PutBackend { .. } | Op::PutService { .. } => Ok(()),
                Op::DelService { key } => self.services.remove(key),
                Op::DelBackend { id } => self.backends.remove(id),
                Op::PutRange { len, data } => self.ranges.insert(&LpmKey::new(*len, *data), 1, 0),
                Op::DelRange { len, data } => self.ranges.remove(&LpmKey::new(*len, *data)),
                Op::PutMaglev { service_id, table } => {
                    if let Some(id) = self.maglev_tables.table_of(*service_id)
                        && let Some(&last) = rewritable.get(&id)
                    {
                        // Its other users' ops come first: written at the last.
                        if last == at - 1 {
                            rewrite_maglev_table(id, table).with_context(|| {
                                format!("rewriting the Maglev table of service id {service_id}")
                            })?;
                        }
                        continue;
                    }
                    let i = match made.iter().position(|(t, _, _)| t.same(table)) {
                        Some(i) => i,
                        None => {
                            let inner = maglev_table(table).with_context(|| {
                                format!("building the Maglev table of service id {service_id}")
                            })?;
                            let id = inner.info().context("reading a new table's id")?.id();
                            made.push((table.clone(), inner, id));
                            made.len() - 1
                        }
                    };
                    swaps.push(Swap {
                        op: at - 1,
                        service_id: *service_id,
                        table: Some(i),
                    });
                    Ok(())
                }
                Op::DelMaglev { service_id } => {
                    swaps.push(Swap {
                        op: at - 1,
                        service_id: *service_id,
                        table: None,
                    });
                    Ok(())
                }
            }
            .map_err(|e| write_error(op, &self.sizes, e))?;
        }
        self.swap_tables(ops, &swaps, &made)
    }

    /// The Maglev map's swaps of a change set, in its order, a batch call
    /// per run of puts or of deletes: every call that writes a map of maps
    /// waits out an RCU grace period (several ms), so a call per frontend
    /// would make a cold start of 100,000 NodePort Services wait minutes.
    /// They come after the change set's other writes: until then a new
    /// frontend has no table (a new flow hashes over its slots) and a
    /// changed one its old table, whose entries outside the new slots fall
    /// back the same way. The datapath sees each frontend's old table or
    /// its new one, never a mix.
    fn swap_tables(
        &mut self,
        ops: &[Op],
        swaps: &[Swap],
        made: &[(crate::compute::plan::MaglevTable, MapData, u32)],
    ) -> anyhow::Result<()> {
        let outer = self.maglev_fd.as_fd();
        let mut at = 0;
        while at < swaps.len() {
            let put = swaps[at].table.is_some();
            let run: Vec<&Swap> = swaps[at..]
                .iter()
                .take_while(|s| s.table.is_some() == put)
                .collect();
            let keys: Vec<u32> = run.iter().map(|s| s.service_id).collect();
            let written = if put {
                let fds: Vec<u32> = run
                    .iter()
                    .map(|s| made[s.table.expect("a put")].1.fd().as_fd().as_raw_fd() as u32)
                    .collect();
                sys::update_batch(outer, &keys, &fds)
            } else {
                sys::delete_batch(outer, &keys)
            };
            let done = written.as_ref().map_or_else(|w| w.written, |()| run.len());
            for s in &run[..done.min(run.len())] {
                match s.table {
                    Some(i) => self.maglev_tables.swapped(s.service_id, made[i].2),
                    None => self.maglev_tables.removed(s.service_id),
                }
            }
            if let Err(w) = written {
                let e = aya::sys::SyscallError {
                    call: if put {
                        "bpf_map_update_batch"
                    } else {
                        "bpf_map_delete_batch"
                    },
                    io_error: w.error,
                };
                let failed = &ops[run[w.written.min(run.len() - 1)].op];
                return Err(write_error(failed, &self.sizes, e.into()));
            }
            at += run.len();
        }
        Ok(())
    }

    /// Time spent writing plans into the maps since the last call.
    pub fn take_write_time(&mut self) -> std::time::Duration {
        std::mem::take(&mut self.write_time)
    }

    pub fn set_status(&mut self, status: Status) -> anyhow::Result<()> {
        self.status.set(0, status, 0).context("writing status map")
    }

    pub fn status(&self) -> anyhow::Result<Status> {
        self.status.get(&0, 0).context("reading status map")
    }
}

/// A Maglev map write put off to the end of its change set: the table
/// (an index into the tables made) for a put, None for a delete.
struct Swap {
    op: usize,
    service_id: u32,
    table: Option<usize>,
}

/// The table this agent made as inner map `id`, rewritten in place (see
/// `maglev_tables`): it has the agent's table size, as `table` does.
pub(super) fn rewrite_maglev_table(id: u32, table: &[u32]) -> anyhow::Result<()> {
    let inner = MapData::from_id(id).context("opening the table")?;
    let slots = inner.info().context("reading the table")?.max_entries();
    anyhow::ensure!(
        slots as usize == table.len(),
        "the table has {slots} slots, the new one {}",
        table.len()
    );
    sys::map_mmap_write_u32(inner.fd().as_fd(), table).context("writing the table")
}

/// A new inner map holding `table` whole, ready to be swapped in.
pub(super) fn maglev_table(table: &[u32]) -> anyhow::Result<MapData> {
    let obj = aya_obj::Map::new_from_params(
        aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_ARRAY as u32,
        4,
        4,
        table.len() as u32,
        lb_common::MAGLEV_TABLE_FLAGS,
    );
    let inner = MapData::create(obj, "lb_maglev", None).context("creating a table")?;
    sys::map_mmap_write_u32(inner.fd().as_fd(), table).context("filling the table")?;
    Ok(inner)
}
