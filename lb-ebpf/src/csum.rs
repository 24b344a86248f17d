//! Checksum helpers of every rewrite: incremental updates (RFC 1624)
//! through the kernel's helpers at TC, in registers at XDP (no stack
//! buffers on its deepest call chain), and whole sums of the ICMP errors
//! built in place.

use aya_ebpf::{helpers::bpf_csum_diff, programs::TcContext};
use lb_common::NetAddr;

/// `bpf_l4_csum_replace`: the change is in the pseudo-header.
pub const BPF_F_PSEUDO_HDR: u64 = 1 << 4;
/// `bpf_l4_csum_replace`: a zero checksum (UDP over IPv4: "none") stays zero.
pub const BPF_F_MARK_MANGLED_0: u64 = 1 << 5;
/// The L4 checksum of an IPv6 packet: with CHECKSUM_COMPLETE the kernel
/// must not fold the pseudo-header change into skb->csum (IPv6 has no
/// header checksum to absorb it), or the stack reports "hw csum failure".
/// Kernels before 6.16 do not know the flag and refuse the call: it is
/// then made again without it (`l4_replace`).
pub const BPF_F_IPV6: u64 = 1 << 7;

/// `bpf_l4_csum_replace` at `off`, with BPF_F_IPV6 for IPv6 where the
/// kernel has it.
#[inline(always)]
pub fn l4_replace(
    ctx: &TcContext,
    off: usize,
    from: u64,
    to: u64,
    flags: u64,
    v6: bool,
) -> Result<(), i64> {
    if v6
        && ctx
            .l4_csum_replace(off, from, to, flags | BPF_F_IPV6)
            .is_ok()
    {
        return Ok(());
    }
    ctx.l4_csum_replace(off, from, to, flags)
}

/// The ones'-complement difference of two addresses (16 bytes each), for
/// the checksums an IPv6 address is part of.
#[inline(always)]
pub fn addr_diff(old: &NetAddr, new: &NetAddr) -> u64 {
    let mut from = old.0;
    let mut to = new.0;
    // SAFETY: both buffers are 16-byte stack arrays, sizes as given.
    unsafe { bpf_csum_diff(from.as_mut_ptr(), 16, to.as_mut_ptr(), 16, 0) as u64 }
}

/// The ones'-complement sum of `T`'s bytes (T: 4-byte aligned, size a
/// multiple of 4).
#[inline(always)]
pub fn sum<T>(t: &mut T) -> u64 {
    // SAFETY: `t` is a live, 4-byte aligned value of size_of::<T>() bytes.
    unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            (t as *mut T).cast(),
            core::mem::size_of::<T>() as u32,
            0,
        ) as u64
    }
}

/// Adds the replacement of raw memory word `from` by `to` to a ones'
/// complement sum, in registers.
#[inline(always)]
pub fn add(sum: u64, from: u32, to: u32) -> u64 {
    let nf = !from;
    sum + (nf & 0xffff) as u64 + (nf >> 16) as u64 + (to & 0xffff) as u64 + (to >> 16) as u64
}

/// As `add`, for a 16-bit field.
#[inline(always)]
pub fn add16(sum: u64, from: u16, to: u16) -> u64 {
    sum + (!from) as u64 + to as u64
}

/// Folds a sum into the 16-bit checksum, in memory order (the sum ran over
/// network-order bytes as they lie in memory). For an update, the sum
/// starts from `!old` and holds the replacements.
#[inline(always)]
pub fn fold(mut c: u64) -> u16 {
    c = (c & 0xffff) + (c >> 16);
    c = (c & 0xffff) + (c >> 16);
    c = (c & 0xffff) + (c >> 16);
    !(c as u16)
}
