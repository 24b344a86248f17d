//! "Port unreachable" built in place from the packet that found no backend,
//! and sent back out of the device it came in on: the client sees
//! "connection refused" at once (TCP SYN and UDP), as a reject rule would do.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{__sk_buff, TC_ACT_REDIRECT},
    helpers::{bpf_redirect, bpf_skb_change_tail, bpf_skb_load_bytes, bpf_skb_store_bytes},
    programs::TcContext,
};

use lb_common::{C_DROP_NO_BACKEND, C_ICMP_UNREACH};

use crate::{
    csum::{fold, sum},
    maps::{LB_ICMP_BUDGET, count, drop},
    packet::ETH_HLEN,
};

/// Port unreachables per second the node sends at most, and how many may go
/// at once: Linux's own defaults for the ICMP it sends (net.ipv4.icmp_msgs_per_sec,
/// icmp_msgs_burst), so a flood of SYNs to an empty Service cannot turn the
/// node into a reflector.
const ICMP_PER_SEC: u64 = 1000;
const ICMP_BURST: u64 = 50;
const NS_PER_ICMP: u64 = 1_000_000_000 / ICMP_PER_SEC;

/// Takes one ICMP error from the node's token bucket; false when empty.
/// Every CPU shares the one entry without a lock: two racing CPUs can both
/// spend the same token, which lets at most a token per CPU more through.
#[inline(always)]
pub fn budget_allows() -> bool {
    let Some(b) = LB_ICMP_BUDGET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: plain helper call.
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    // SAFETY: the map's one value, valid for this program run; a racing
    // writer can only make the budget slightly loose (see above).
    let b = unsafe { &mut *b };
    let credit = (b[0] + now.saturating_sub(b[1])).min(ICMP_BURST * NS_PER_ICMP);
    b[1] = now;
    if credit < NS_PER_ICMP {
        b[0] = credit;
        return false;
    }
    b[0] = credit - NS_PER_ICMP;
    true
}

/// Bytes of the offending packet quoted back: its IP header and 8 more
/// (RFC 792). An IPv4 header runs to 60 bytes with options.
const QUOTE4_MAX: usize = 60 + 8;
const QUOTE6: usize = 40 + 8;

/// ICMP header and quote, checksummed as one block: the bytes past a
/// shorter quote stay zero and add nothing to the sum.
#[repr(C, align(4))]
struct Icmp4 {
    hdr: [u8; 8],
    quote: [u8; QUOTE4_MAX],
}

/// IPv6 pseudo-header, ICMPv6 header and quote, checksummed as one block.
#[repr(C, align(4))]
struct Icmp6 {
    src: [u8; 16],
    dst: [u8; 16],
    len: [u8; 4],
    next: [u8; 4],
    hdr: [u8; 8],
    quote: [u8; QUOTE6],
}

/// Rewrites the packet into an ICMP(v6) port unreachable to its sender and
/// redirects it; drops it when that cannot be done. Not inlined: its
/// buffers get a stack frame of their own, off the main path's.
#[inline(never)]
pub fn port_unreachable(ctx: &TcContext, v6: bool) -> i32 {
    let r = if v6 { reply6(ctx) } else { reply4(ctx) };
    match r {
        0 => {
            count(C_ICMP_UNREACH);
            // SAFETY: reading the context's own ifindex field.
            let ifindex = unsafe { (*(ctx.as_ptr() as *const __sk_buff)).ifindex };
            // SAFETY: plain helper call; redirect to the device's egress.
            unsafe { bpf_redirect(ifindex, 0) as i32 };
            TC_ACT_REDIRECT
        }
        // No reply could be built: the packet goes, counted as dropped
        // for want of a backend (and not as a reply sent).
        _ => drop(C_DROP_NO_BACKEND),
    }
}

fn swap_macs(ctx: &TcContext) -> Result<(), i64> {
    let dst: [u8; 6] = ctx.load(0)?;
    let src: [u8; 6] = ctx.load(6)?;
    ctx.store(0, &src, 0)?;
    ctx.store(6, &dst, 0)
}

/// 0 when the packet now holds the reply. Non-inlined functions return
/// integers (a Result would come back through the caller's stack).
#[inline(never)]
fn reply4(ctx: &TcContext) -> i32 {
    try_reply4(ctx).map_or(-1, |_| 0)
}

#[inline(never)]
fn reply6(ctx: &TcContext) -> i32 {
    try_reply6(ctx).map_or(-1, |_| 0)
}

#[inline(always)]
fn try_reply4(ctx: &TcContext) -> Result<(), i64> {
    let vihl: u8 = ctx.load(ETH_HLEN)?;
    if vihl >> 4 != 4 || vihl & 0x0f < 5 {
        return Err(-1);
    }
    // 28 to 68 bytes, a multiple of 4: the header, options included.
    let quote_len = (vihl & 0x0f) as u32 * 4 + 8;
    // The compiler folds the arithmetic into a form whose bounds the
    // verifier loses; an opaque check gives them back.
    if !aya_ebpf::check_bounds_signed(quote_len as i64, 28, QUOTE4_MAX as i64) {
        return Err(-1);
    }
    let mut icmp = Icmp4 {
        hdr: [3, 3, 0, 0, 0, 0, 0, 0],
        quote: [0; QUOTE4_MAX],
    };
    // SAFETY: the program's own skb; `quote_len` is at most the buffer's
    // size, which the verifier checks too.
    if unsafe {
        bpf_skb_load_bytes(
            ctx.as_ptr().cast(),
            ETH_HLEN as u32,
            icmp.quote.as_mut_ptr().cast(),
            quote_len,
        )
    } != 0
    {
        return Err(-1);
    }
    let c = fold(sum(&mut icmp)).to_ne_bytes();
    icmp.hdr[2] = c[0];
    icmp.hdr[3] = c[1];
    let saddr: [u8; 4] = ctx.load(ETH_HLEN + 12)?;
    let daddr: [u8; 4] = ctx.load(ETH_HLEN + 16)?;
    let total = (20 + 8 + quote_len) as u16;
    let t = total.to_be_bytes();
    #[repr(C, align(4))]
    struct Ip([u8; 20]);
    let mut ip = Ip([
        0x45, 0, t[0], t[1], 0, 0, 0, 0, 64, 1, 0, 0, daddr[0], daddr[1], daddr[2], daddr[3],
        saddr[0], saddr[1], saddr[2], saddr[3],
    ]);
    let c = fold(sum(&mut ip)).to_ne_bytes();
    ip.0[10] = c[0];
    ip.0[11] = c[1];
    swap_macs(ctx)?;
    // SAFETY: the program's own skb; the new length is positive and small.
    if unsafe { bpf_skb_change_tail(ctx.as_ptr().cast(), (ETH_HLEN as u32) + total as u32, 0) } != 0
    {
        return Err(-1);
    }
    ctx.store(ETH_HLEN, &ip.0, 0)?;
    ctx.store(ETH_HLEN + 20, &icmp.hdr, 0)?;
    // SAFETY: as the load above; the packet is now long enough to hold it.
    if unsafe {
        bpf_skb_store_bytes(
            ctx.as_ptr().cast(),
            (ETH_HLEN + 28) as u32,
            icmp.quote.as_ptr().cast(),
            quote_len,
            0,
        )
    } != 0
    {
        return Err(-1);
    }
    Ok(())
}

#[inline(always)]
fn try_reply6(ctx: &TcContext) -> Result<(), i64> {
    let icmp_len = (8 + QUOTE6) as u32;
    // The reply goes from the packet's destination to its source.
    let mut b = Icmp6 {
        src: ctx.load(ETH_HLEN + 24)?,
        dst: ctx.load(ETH_HLEN + 8)?,
        len: icmp_len.to_be_bytes(),
        next: [0, 0, 0, 58],
        hdr: [1, 4, 0, 0, 0, 0, 0, 0],
        quote: ctx.load(ETH_HLEN)?,
    };
    let c = fold(sum(&mut b)).to_ne_bytes();
    b.hdr[2] = c[0];
    b.hdr[3] = c[1];
    swap_macs(ctx)?;
    // SAFETY: as in reply4.
    if unsafe { bpf_skb_change_tail(ctx.as_ptr().cast(), (ETH_HLEN + 40) as u32 + icmp_len, 0) }
        != 0
    {
        return Err(-1);
    }
    let head: [u8; 8] = [0x60, 0, 0, 0, (icmp_len >> 8) as u8, icmp_len as u8, 58, 64];
    ctx.store(ETH_HLEN, &head, 0)?;
    ctx.store(ETH_HLEN + 8, &b.src, 0)?;
    ctx.store(ETH_HLEN + 24, &b.dst, 0)?;
    ctx.store(ETH_HLEN + 40, &b.hdr, 0)?;
    ctx.store(ETH_HLEN + 48, &b.quote, 0)?;
    Ok(())
}
