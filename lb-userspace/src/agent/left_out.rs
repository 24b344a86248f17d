//! What a change set leaves out, and what is done about it: maps grown
//! when Services need more room, Services named once in the log and
//! counted for `lb-agent status`, `/healthz` and `/metrics`, and connected
//! UDP sockets of backends that left destroyed.

use crate::{
    compute::reconcile::Reconciler,
    datapath::{Datapath, MapSizes},
};

/// Connected UDP sockets whose backend left their Service are destroyed:
/// their applications see an error and connect again, to a live backend.
pub(super) fn destroy_left_udp(
    dp: &Datapath,
    rec: &mut Reconciler,
    health: &crate::serve::health::Health,
) {
    let left = rec.take_left_udp();
    if left.is_empty() {
        return;
    }
    match dp.destroy_udp_sockets(&left) {
        Ok(n) => {
            health.metrics.udp_sockets_destroyed.inc_by(n);
            if n > 0 {
                tracing::info!(
                    sockets = n,
                    backends = left.len(),
                    "destroyed connected UDP sockets of backends that left their Service"
                );
            }
        }
        Err(e) => tracing::warn!("destroying the UDP sockets of removed backends: {e:#}"),
    }
}

/// At most this many Services are named one by one per change set; the
/// rest are counted (all are listed by `lb-agent status`).
const NAMED_MAX: usize = 20;

/// The change set's outcome after growing the maps (those with no
/// `--max-*` flag) for what it left out for room, and programming that in
/// the same change set: several rounds when Services fit one grown map and
/// then meet another, so that a change set is recorded with all it could
/// program.
pub(super) fn grow_for_left_out(
    dp: &mut Datapath,
    rec: &mut Reconciler,
    first: anyhow::Result<crate::compute::reconcile::Outcome>,
) -> anyhow::Result<crate::compute::reconcile::Outcome> {
    let mut out = first;
    // Each round grows every map that was short to what every left-out
    // Service needs of it; a Service then short of another map (it stopped
    // at the first) gets the next round.
    for _ in 0..3 {
        if out.is_err() || !grow_if_short(dp, rec) {
            break;
        }
        let again = rec.apply_from(Vec::new(), &[], false, dp);
        out = out.and_then(|first| again.map(|a| merge_outcomes(first, a)));
    }
    out
}

/// Grows the maps that may grow when the Services left out for room need
/// more than they have, every map by what they all need of it; true when
/// grown. A map that cannot grow leaves them reported as for a fixed size.
fn grow_if_short(dp: &mut Datapath, rec: &Reconciler) -> bool {
    if rec.not_programmed.is_empty() {
        return false;
    }
    let (services, backends, ranges, maglev) =
        rec.not_programmed
            .values()
            .fold((0, 0, 0, 0), |(s, b, r, t), np| {
                (
                    s + np.need.services,
                    b + np.need.backends,
                    r + np.need.ranges,
                    t + np.need.maglev,
                )
            });
    let m = rec.mirror();
    let wanted = crate::datapath::Wanted {
        services: m.services().len() as u64 + services,
        backends: m.backends().len() as u64 + backends,
        ranges: m.range_entries() as u64 + ranges,
        maglev: m.maglev_tables() as u64 + maglev,
        ..Default::default()
    };
    let Some(sizes) = crate::datapath::grown(dp.sizes(), wanted) else {
        return false;
    };
    let from = dp.sizes();
    match dp.grow(sizes) {
        Ok(()) => {
            tracing::info!(
                "maps grown for the cluster: services {} -> {} entries, backends {} -> {}, loadBalancerSourceRanges {} -> {}, Maglev tables {} -> {} ({} Services left out needed {services} services, {backends} backends, {ranges} source range entries and {maglev} Maglev tables)",
                from.services,
                sizes.services,
                from.backends,
                sizes.backends,
                from.ranges,
                sizes.ranges,
                from.maglev,
                sizes.maglev,
                rec.not_programmed.len(),
            );
            true
        }
        Err(e) => {
            tracing::error!(
                "growing the maps failed: {e:#}; the Services that do not fit stay reported"
            );
            false
        }
    }
}

/// One change set's outcome when a second round after growing the maps
/// programmed (some of) what the first left out.
pub(super) fn merge_outcomes(
    mut first: crate::compute::reconcile::Outcome,
    again: crate::compute::reconcile::Outcome,
) -> crate::compute::reconcile::Outcome {
    let now_in: std::collections::BTreeSet<String> = again
        .programmed_again
        .iter()
        .map(|s| s.to_string())
        .collect();
    let left_first: std::collections::BTreeSet<String> = first
        .not_programmed
        .iter()
        .map(|np| np.service.clone())
        .collect();
    first
        .not_programmed
        .retain(|np| !now_in.contains(&np.service));
    first.not_programmed.extend(again.not_programmed);
    // Left out and programmed within one change set: never said twice.
    first.programmed_again.extend(
        again
            .programmed_again
            .into_iter()
            .filter(|s| !left_first.contains(&s.to_string())),
    );
    first.ops += again.ops;
    first.errors.extend(again.errors);
    first.policy_changed |= again.policy_changed;
    first
}

/// Says, once, which Services a change set found the maps cannot take, and
/// which skipped ones it programmed.
pub(super) fn log_left_out(out: &crate::compute::reconcile::Outcome) {
    for np in out.not_programmed.iter().take(NAMED_MAX) {
        tracing::error!("{np}");
    }
    if out.not_programmed.len() > NAMED_MAX {
        tracing::error!(
            "and {} more Services not programmed (the maps are full; `lb-agent status` lists up to {})",
            out.not_programmed.len() - NAMED_MAX,
            crate::serve::report::LIST_MAX
        );
    }
    for svc in out.programmed_again.iter().take(NAMED_MAX) {
        tracing::info!("Service {svc} programmed: the maps have room for it now");
    }
    if out.programmed_again.len() > NAMED_MAX {
        tracing::info!(
            "and {} more Services programmed now that the maps have room",
            out.programmed_again.len() - NAMED_MAX
        );
    }
}

/// What the applied state leaves out, for `lb-agent status` (the report
/// beside the pins), `/healthz` and `/metrics`.
/// `last`: the report last written (an equal one is not written again).
pub(super) fn publish_left_out(
    pin_dir: &std::path::Path,
    health: &crate::serve::health::Health,
    rec: &Reconciler,
    source_rejected: &[crate::source::Rejected],
    generation: u64,
    last: &mut Option<crate::serve::report::SyncReport>,
) {
    let report = crate::serve::report::SyncReport::new(
        Some(generation),
        source_rejected.iter().chain(rec.rejected.values()),
        rec.not_programmed.values(),
    );
    health.left_out(
        report.services_not_programmed as u64,
        report.rejected_count as u64,
    );
    if last.as_ref() == Some(&report) {
        return;
    }
    match crate::serve::report::write_sync(pin_dir, &report) {
        Ok(()) => *last = Some(report),
        Err(e) => tracing::warn!("sync report: {e:#}"),
    }
}

/// The maps' capacities into `/metrics` (`lb_map_capacity`).
pub(super) fn record_capacity(health: &crate::serve::health::Health, sizes: MapSizes) {
    for (map, cap) in [
        (lb_common::MAP_SERVICES, sizes.services),
        (lb_common::MAP_BACKENDS, sizes.backends),
        (lb_common::MAP_SRC_RANGES, sizes.ranges),
        (lb_common::MAP_MAGLEV, sizes.maglev),
        (lb_common::MAP_CT, sizes.ct),
        (lb_common::MAP_POL_CT, sizes.pol_ct),
        (lb_common::MAP_AFFINITY, sizes.affinity),
        (lb_common::MAP_SOCK_REV, sizes.sock_rev),
        (lb_common::MAP_IPCACHE, sizes.ipcache),
        (lb_common::MAP_POLICY, sizes.pol_entries),
        (lb_common::MAP_POL_CIDR, sizes.pol_cidrs),
    ] {
        health
            .metrics
            .map_capacity
            .get_or_create(&crate::serve::health::MapLabel { map: map.into() })
            .set(cap as i64);
    }
}
