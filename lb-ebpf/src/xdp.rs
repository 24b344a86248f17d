//! The XDP fast path on the external devices: packets of known flows to a
//! backend on this node are DNAT'd here and passed up; everything else
//! (new flows, backends on other nodes, replies, ICMP) passes untouched to
//! the TC programs, which make the same decisions with conntrack they share.

use aya_ebpf::{bindings::xdp_action::XDP_PASS, helpers::bpf_csum_diff, programs::XdpContext};
use lb_common::{
    BACKEND_LOCAL, BeU16, C_XDP_DNAT, C_XDP_PASS, CT_FWD, CtKey, NetAddr, PROTO_TCP, PROTO_UDP,
};

use crate::{
    conntrack,
    maps::{LB_BACKENDS_V1, count},
};

const ETH: usize = 14;

#[inline(always)]
fn ptr<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    if start + off + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + off) as *mut T)
}

/// New checksum after replacing `from` with `to` (raw memory words).
#[inline(always)]
fn csum_update(old: u16, from: &mut [u32; 4], to: &mut [u32; 4], words: u32) -> u16 {
    // SAFETY: both buffers are 16-byte stack arrays; `words` <= 4.
    let mut c = unsafe {
        bpf_csum_diff(
            from.as_mut_ptr(),
            words * 4,
            to.as_mut_ptr(),
            words * 4,
            !old as u32,
        )
    } as u64;
    c = (c & 0xffff) + (c >> 16);
    c = (c & 0xffff) + (c >> 16);
    c = (c & 0xffff) + (c >> 16);
    !(c as u16)
}

pub fn fast_path(ctx: &XdpContext) -> u32 {
    if try_fast_path(ctx).is_none() {
        count(C_XDP_PASS);
    }
    XDP_PASS
}

#[inline(always)]
fn try_fast_path(ctx: &XdpContext) -> Option<()> {
    // SAFETY (all derefs below): each pointer comes from `ptr`, which checked
    // that the whole value lies inside the packet.
    let eth_proto = u16::from_be(unsafe { *ptr::<u16>(ctx, 12)? });
    let (v6, proto, saddr, daddr, l4) = match eth_proto {
        0x0800 => {
            let vihl = unsafe { *ptr::<u8>(ctx, ETH)? };
            let frag = u16::from_be(unsafe { *ptr::<u16>(ctx, ETH + 6)? });
            if vihl != 0x45 || frag & 0x3fff != 0 {
                return None;
            }
            let proto = unsafe { *ptr::<u8>(ctx, ETH + 9)? };
            let s = unsafe { *ptr::<u32>(ctx, ETH + 12)? };
            let d = unsafe { *ptr::<u32>(ctx, ETH + 16)? };
            (
                false,
                proto,
                NetAddr::from_v4_raw(s),
                NetAddr::from_v4_raw(d),
                ETH + 20,
            )
        }
        0x86dd => {
            let proto = unsafe { *ptr::<u8>(ctx, ETH + 6)? };
            let s = unsafe { *ptr::<[u32; 4]>(ctx, ETH + 8)? };
            let d = unsafe { *ptr::<[u32; 4]>(ctx, ETH + 24)? };
            (true, proto, NetAddr(s), NetAddr(d), ETH + 40)
        }
        _ => return None,
    };
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return None;
    }
    let csum_off = if proto == PROTO_TCP { l4 + 16 } else { l4 + 6 };
    let csum_p = ptr::<u16>(ctx, csum_off)?;
    let sport_p = ptr::<u16>(ctx, l4)?;
    let dport_p = ptr::<u16>(ctx, l4 + 2)?;
    let (sport, dport) = unsafe { (BeU16(*sport_p), BeU16(*dport_p)) };
    let k = CtKey {
        saddr,
        daddr,
        sport,
        dport,
        proto,
        kind: CT_FWD,
        _pad: [0; 2],
    };
    let v = conntrack::lookup(&k)?;
    if v.flags & BACKEND_LOCAL == 0 {
        return None;
    }
    // A backend gone is a miss: TC reselects.
    // SAFETY: copied out at once.
    let b = unsafe { LB_BACKENDS_V1.get(&v.backend_id) }.copied()?;
    if b.addr != v.addr || b.port != v.port || b.addr.is_v4() == v6 {
        return None;
    }
    // A FIN or RST goes on to TC, which marks the entry closing.
    let flags = unsafe { *ptr::<u8>(ctx, l4 + 13)? };
    if proto == PROTO_TCP && flags & 0x05 != 0 {
        return None;
    }
    conntrack::touch(&k, &v, if proto == PROTO_TCP { flags } else { 0 });
    let old_csum = unsafe { *csum_p };
    let udp_no_csum = proto == PROTO_UDP && !v6 && old_csum == 0;
    let mut from = [0u32; 4];
    let mut to = [0u32; 4];
    let mut csum = old_csum;
    if v6 {
        let dp = ptr::<[u32; 4]>(ctx, ETH + 24)?;
        from = daddr.0;
        to = v.addr.0;
        csum = csum_update(csum, &mut from, &mut to, 4);
        unsafe { *dp = v.addr.0 };
    } else {
        let dp = ptr::<u32>(ctx, ETH + 16)?;
        let ip_csum_p = ptr::<u16>(ctx, ETH + 10)?;
        from[0] = daddr.v4_raw();
        to[0] = v.addr.v4_raw();
        unsafe { *ip_csum_p = csum_update(*ip_csum_p, &mut from, &mut to, 1) };
        csum = csum_update(csum, &mut from, &mut to, 1);
        unsafe { *dp = v.addr.v4_raw() };
    }
    let mut pf = [dport.0 as u32, 0, 0, 0];
    let mut pt = [v.port.0 as u32, 0, 0, 0];
    csum = csum_update(csum, &mut pf, &mut pt, 1);
    unsafe {
        *dport_p = v.port.0;
        if !udp_no_csum {
            // A UDP checksum that computes to zero is sent as all ones.
            *csum_p = if csum == 0 && proto == PROTO_UDP {
                0xffff
            } else {
                csum
            };
        }
    }
    count(C_XDP_DNAT);
    Some(())
}
