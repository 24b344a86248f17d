//! While the agent carries an earlier agent's map the programs write (a
//! restart with another size, a growth while running), that map stands in
//! slot 0 of an array of maps of this object (`LB_CT_CARRIED` and its
//! likes), and an entry missing here is taken over from it. Callers ask
//! `open` inline first, so a miss outside a carry costs no call.

use aya_ebpf::btf_maps::ArrayOfMaps;

/// An earlier map stands in `carried`: one array lookup.
#[inline(always)]
pub fn open<M>(carried: &ArrayOfMaps<M, 1>) -> bool {
    carried.get(0).is_some()
}

/// The entry for key `$k` in the map carried in `$carried` becomes `$map`'s,
/// never replacing one of its own: true when there was one.
macro_rules! adopt {
    ($carried:expr, $map:expr, $k:expr) => {{
        const BPF_NOEXIST: u64 = 1;
        match $carried.get_value_ptr_mut(0, $k) {
            Some(v) => {
                // SAFETY: `v` points at a live value of the carried map
                // (the agent fills the slot only with a map of this value
                // size), read by the helper before this program can touch
                // that map again.
                let _ = $map.insert($k, unsafe { &*v }, BPF_NOEXIST);
                true
            }
            None => false,
        }
    }};
}
pub(crate) use adopt;
