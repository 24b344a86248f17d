//! While a map the programs write is carried (see `migrate`): this
//! agent's programs look the old map up on a miss, through a slot of
//! their object (`LB_CT_CARRIED`, `LB_POL_CT_CARRIED`,
//! `LB_AFFINITY_CARRIED`), so a flow the earlier
//! agent's programs start after the first copy is found at once, and a
//! map grown while running needs no first copy at all (its entries come
//! over as they are looked up, the rest with the copy after the swap).

use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd};

use anyhow::{Context as _, bail};
use aya::Ebpf;
use lb_common::{
    MAP_AFFINITY, MAP_AFFINITY_CARRIED, MAP_CT, MAP_CT_CARRIED, MAP_POL_CT, MAP_POL_CT_CARRIED,
};

use super::{super::sys, Carry};

/// The object's slot where its programs look up a carried map's entries
/// on a miss, for maps that have one.
fn carried_slot(name: &str) -> Option<&'static str> {
    match name {
        MAP_CT => Some(MAP_CT_CARRIED),
        MAP_POL_CT => Some(MAP_POL_CT_CARRIED),
        MAP_AFFINITY => Some(MAP_AFFINITY_CARRIED),
        _ => None,
    }
}

fn slot_fd<'a>(ebpf: &'a Ebpf, slot: &str) -> anyhow::Result<BorrowedFd<'a>> {
    let map = ebpf
        .map(slot)
        .with_context(|| format!("map {slot} missing from the object"))?;
    let aya::maps::Map::ArrayOfMaps(m) = map else {
        bail!("map {slot} is not an array of maps");
    };
    Ok(m.fd().as_fd())
}

/// After `fill`, before any program of this agent runs: the programs of
/// `ebpf` look up the old map on a miss until `finish`, so what the
/// earlier agent's programs make there from now on is found at once, not
/// only at the second copy. The slot takes a map of this agent's key and
/// value sizes only: a carry into a changed value layout keeps the window
/// until the second copy, and says so.
pub fn bridge(ebpf: &Ebpf, c: &mut Carry) -> anyhow::Result<()> {
    let Some(slot) = carried_slot(c.name) else {
        return Ok(());
    };
    if c.from.value_size != c.to.value_size {
        tracing::info!(
            map = c.name,
            "the earlier map's values are {} bytes, this agent's {}: its programs cannot read it, so a flow the earlier programs start before the swap has no entry here until the second copy (a TCP handshake then needs one SYN retransmission)",
            c.from.value_size,
            c.to.value_size
        );
        return Ok(());
    }
    let outer = slot_fd(ebpf, slot)?;
    sys::map_update(
        outer,
        &0u32.to_ne_bytes(),
        &(c.old_fd.as_raw_fd() as u32).to_ne_bytes(),
    )
    .with_context(|| format!("putting the earlier {} in {slot}", c.name))?;
    c.bridged = true;
    Ok(())
}

/// The end of `bridge`: the programs stop looking in the old map (which
/// the kernel frees once nothing holds it).
pub(super) fn unbridge(ebpf: &Ebpf, name: &str) -> anyhow::Result<()> {
    let Some(slot) = carried_slot(name) else {
        return Ok(());
    };
    sys::map_delete(slot_fd(ebpf, slot)?, &0u32.to_ne_bytes())
        .with_context(|| format!("emptying {slot}"))?;
    Ok(())
}
