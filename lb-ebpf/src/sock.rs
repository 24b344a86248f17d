//! Socket-level translation (cgroup sock_addr hooks): connect and sendmsg
//! pick a backend and rewrite the destination; recvmsg and getpeername
//! rewrite the backend back into the frontend the socket asked for.

use aya_ebpf::{
    EbpfContext as _,
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    programs::SockAddrContext,
};
use lb_common::{BeU16, NetAddr, PROTO_TCP, PROTO_UDP, SOCK_NAT_SLOTS, SockNatEntry, SockRevKey};

use crate::{
    maps::{LB_HOSTNS_V1, LB_SOCK_NAT_V1, LB_SOCK_REV_V1},
    service::{self, Lookup},
};

const ALLOW: i32 = 1;
const REJECT: i32 = 0;
const ECONNREFUSED: i32 = 111;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Connect,
    Sendmsg,
}

#[inline(always)]
fn sa(ctx: &SockAddrContext) -> *mut bpf_sock_addr {
    ctx.sock_addr
}

#[inline(always)]
fn read_addr(ctx: &SockAddrContext, family: Family) -> NetAddr {
    let p = sa(ctx);
    // SAFETY: `p` is the verifier-checked context; these are 4-byte reads of
    // fields every sock_addr attach type may read.
    unsafe {
        match family {
            Family::V4 => NetAddr::from_v4_raw((*p).user_ip4),
            Family::V6 => NetAddr([
                (*p).user_ip6[0],
                (*p).user_ip6[1],
                (*p).user_ip6[2],
                (*p).user_ip6[3],
            ]),
        }
    }
}

#[inline(always)]
fn write_addr(ctx: &SockAddrContext, family: Family, addr: NetAddr, port: BeU16) {
    let p = sa(ctx);
    // SAFETY: 4-byte stores to user_ip4/user_ip6/user_port, which connect,
    // sendmsg, recvmsg and getpeername programs may write.
    unsafe {
        match family {
            Family::V4 => (*p).user_ip4 = addr.v4_raw(),
            Family::V6 => {
                (*p).user_ip6[0] = addr.0[0];
                (*p).user_ip6[1] = addr.0[1];
                (*p).user_ip6[2] = addr.0[2];
                (*p).user_ip6[3] = addr.0[3];
            }
        }
        (*p).user_port = port.0 as u32;
    }
}

#[inline(always)]
fn read_port(ctx: &SockAddrContext) -> BeU16 {
    // SAFETY: 4-byte read of user_port; the port is its low 16 bits, network order.
    BeU16(unsafe { (*sa(ctx)).user_port } as u16)
}

#[inline(always)]
fn cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: the helper takes the program's own context.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// connect4/6 and sendmsg4/6.
#[inline(always)]
pub fn forward(ctx: &SockAddrContext, family: Family, hook: Hook) -> i32 {
    // SAFETY: 4-byte read of a field readable by every sock_addr attach type.
    let proto = unsafe { (*sa(ctx)).protocol } as u8;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return ALLOW;
    }
    if hook == Hook::Sendmsg && proto != PROTO_UDP {
        return ALLOW;
    }
    let addr = read_addr(ctx, family);
    // An IPv6 address on an IPv4 hook cannot happen; a v6 hook may carry a
    // v4-mapped address, which finds the IPv4 entries through the same key.
    let port = read_port(ctx);
    // SAFETY: the helper takes the program's own context.
    let netns = || unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // Loopback NodePorts exist in the node's own network namespace only: a
    // pod's 127.0.0.1 / ::1 is its own (a sidecar's listener).
    if addr.is_loopback() && !in_host_netns(netns()) {
        return ALLOW;
    }
    let cookie = cookie(ctx);
    match service::lookup(addr, port, proto, cookie, netns) {
        Lookup::NotService => ALLOW,
        Lookup::Refuse => {
            // SAFETY: helper without memory arguments; sets the syscall's error.
            unsafe { bpf_set_retval(-ECONNREFUSED) };
            REJECT
        }
        // No set_retval: the syscall fails with the hook's own EPERM. A
        // socket hook cannot make connect() wait out a timeout the way a
        // dropped SYN does, and it must not look like a refusal
        // (ECONNREFUSED would tell the client the Service has no endpoint).
        Lookup::Drop => REJECT,
        Lookup::Backend { backend, frontend } => {
            if family == Family::V4 && !backend.addr.is_v4() {
                // A v6 backend behind a v4 frontend: the agent never writes one.
                // SAFETY: as above.
                unsafe { bpf_set_retval(-ECONNREFUSED) };
                return REJECT;
            }
            let entry = SockNatEntry {
                backend: backend.addr,
                backend_port: backend.port,
                front_port: port,
                front: addr,
                service_id: frontend.service_id,
            };
            remember(ctx, hook, &entry);
            write_addr(ctx, family, backend.addr, backend.port);
            ALLOW
        }
    }
}

/// The socket's network namespace is the node's host one (as the agent
/// recorded it; none before it did).
#[inline(always)]
fn in_host_netns(netns: u64) -> bool {
    LB_HOSTNS_V1.get(0).is_some_and(|h| *h != 0 && *h == netns)
}

/// Writes a socket's reverse translation into its own storage: a connect
/// into slot 0; an unconnected datagram into the slot already naming its
/// backend, else the first free one, else one picked by the backend's port.
/// Not inlined (stack). A failure (no memory) only costs the reverse
/// rewrite, never the connection.
#[inline(never)]
fn remember(ctx: &SockAddrContext, hook: Hook, e: &SockNatEntry) -> i32 {
    // SAFETY: the helper reads the context's socket, which every sock_addr
    // program has; the storage is created zeroed when missing.
    let st = unsafe { LB_SOCK_NAT_V1.get_or_insert_ptr_mut(ctx, None) };
    if st.is_null() {
        return 1;
    }
    // SAFETY: a non-null pointer from bpf_sk_storage_get: the socket's
    // value, valid for this program run (only this socket's hooks write it,
    // and they run under its lock).
    let st = unsafe { &mut *st };
    let mut slot = 0;
    if hook == Hook::Sendmsg {
        slot = 1 + (e.backend_port.0 as usize) % (SOCK_NAT_SLOTS - 1);
        let mut i = SOCK_NAT_SLOTS - 1;
        while i >= 1 {
            let cur = &st.entries[i];
            if cur.backend_port.0 == 0 {
                slot = i;
            }
            if cur.backend == e.backend && cur.backend_port == e.backend_port {
                slot = i;
                break;
            }
            i -= 1;
        }
    }
    // The mask must reach the verifier: a volatile read keeps LLVM from
    // folding it into what it knows of `slot` (the verifier does not).
    // SAFETY: a read of a local.
    let slot = unsafe { core::ptr::read_volatile(&slot) } & (SOCK_NAT_SLOTS - 1);
    let cur = &mut st.entries[slot];
    // Unconnected UDP runs this per datagram: write only a change.
    if *cur != *e {
        *cur = *e;
    }
    0
}

/// recvmsg4/6 and getpeername4/6: show the frontend, not the backend, to a
/// socket that the forward path translated. Accepted sockets have storage
/// of their own (none), so a server keeps seeing its real client.
#[inline(always)]
pub fn reverse(ctx: &SockAddrContext, family: Family) -> i32 {
    let addr = read_addr(ctx, family);
    let port = read_port(ctx);
    // SAFETY: as in `remember`; no storage is created here.
    let st = unsafe { LB_SOCK_NAT_V1.get_ptr_mut(ctx) };
    if !st.is_null() {
        // SAFETY: as in `remember`; read only.
        let st = unsafe { &*st };
        let mut i = 0;
        while i < SOCK_NAT_SLOTS {
            let e = &st.entries[i];
            if e.backend_port == port && e.backend == addr {
                if family == Family::V6 || e.front.is_v4() {
                    write_addr(ctx, family, e.front, e.front_port);
                }
                return ALLOW;
            }
            i += 1;
        }
    }
    // A socket connected by an agent before socket-local storage.
    let key = SockRevKey {
        cookie: cookie(ctx),
        addr,
        port,
        _pad: [0; 6],
    };
    // SAFETY: copied out at once.
    if let Some(v) = unsafe { LB_SOCK_REV_V1.get(key) }.copied()
        && (family == Family::V6 || v.addr.is_v4())
    {
        write_addr(ctx, family, v.addr, v.port);
    }
    ALLOW
}
