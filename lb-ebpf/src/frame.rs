//! What a parser needs from a packet, whichever hook it runs at: TC reads
//! through the skb helpers (the frame may be non-linear), XDP straight
//! from the linear buffer. One parser (`packet`) over both, so the two
//! paths understand exactly the same packets.

use aya_ebpf::programs::{TcContext, XdpContext};

pub trait Frame {
    /// The `T` at byte `off` of the frame, or None past its end.
    fn load<T: Copy>(&self, off: usize) -> Option<T>;
    /// Whether the frame holds at least `len` bytes.
    fn holds(&self, len: usize) -> bool;
}

impl Frame for TcContext {
    /// Straight from the linear part of the frame, where the headers
    /// almost always are; through `bpf_skb_load_bytes` only past it (a
    /// helper call per field cost the parser most of its time).
    #[inline(always)]
    fn load<T: Copy>(&self, off: usize) -> Option<T> {
        let (start, end) = skb_bounds(self);
        // One byte of slack: LLVM turns `p + 1 > end` into `p >= end`,
        // which tells the verifier nothing about the byte at `p`. A field
        // ending at the last byte of the linear data takes the helper.
        if start + off + core::mem::size_of::<T>() + 1 > end {
            return TcContext::load(self, off).ok();
        }
        // SAFETY: the whole `T` lies inside the linear data (checked just
        // above); unaligned packet loads are fine, as at XDP.
        Some(unsafe { *((start + off) as *const T) })
    }

    #[inline(always)]
    fn holds(&self, len: usize) -> bool {
        self.len() as usize >= len
    }
}

impl Frame for XdpContext {
    #[inline(always)]
    fn load<T: Copy>(&self, off: usize) -> Option<T> {
        let (start, end) = bounds(self);
        if start + off + core::mem::size_of::<T>() > end {
            return None;
        }
        // SAFETY: the whole `T` lies inside the packet (checked just
        // above); BPF packet loads need no alignment (the verifier allows
        // unaligned packet access, and the JITs emit plain loads).
        Some(unsafe { *((start + off) as *const T) })
    }

    #[inline(always)]
    fn holds(&self, len: usize) -> bool {
        // Compared as pointers: the verifier refuses data_end - data.
        let (start, end) = bounds(self);
        start + len <= end
    }
}

/// The packet's start and end, read from the context where they are used.
/// Volatile, so that LLVM never hoists them out of a function into its
/// caller and passes the packet pointers as arguments: the verifier
/// refuses the widening LLVM then applies to them.
#[inline(always)]
fn bounds(ctx: &XdpContext) -> (usize, usize) {
    // SAFETY: `ctx.ctx` is the context pointer the kernel passed the
    // program, valid for the whole run; both fields are plain u32s.
    unsafe {
        (
            core::ptr::read_volatile(&(*ctx.ctx).data) as usize,
            core::ptr::read_volatile(&(*ctx.ctx).data_end) as usize,
        )
    }
}

/// The linear data's start and end, read where they are used (volatile, as
/// `bounds`): a helper that changes the packet invalidates earlier ones.
#[inline(always)]
fn skb_bounds(ctx: &TcContext) -> (usize, usize) {
    // SAFETY: `ctx.skb.skb` is the context pointer the kernel passed the
    // program, valid for the whole run; both fields are plain u32s.
    unsafe {
        (
            core::ptr::read_volatile(&(*ctx.skb.skb).data) as usize,
            core::ptr::read_volatile(&(*ctx.skb.skb).data_end) as usize,
        )
    }
}

/// A pointer to the `T` at byte `off` of an XDP frame, when all of it lies
/// inside the packet (the check the verifier needs before any access).
#[inline(always)]
pub fn xdp_ptr<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    let (start, end) = bounds(ctx);
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}
