//! Kernel programs of the load balancer. Entry points are thin: each calls a
//! function of its concern's module and turns the outcome into a verdict.
#![no_std]
#![no_main]

mod affinity;
mod carried;
mod choose;
mod conntrack;
mod csum;
mod flow;
mod frag;
mod frame;
mod icmp;
mod icmp_nat;
mod maglev;
mod maps;
mod nat;
mod packet;
mod policy;
mod service;
mod sock;
mod tc;
mod xdp;

use aya_ebpf::{
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
};

#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    xdp::fast_path(&ctx)
}

#[classifier]
pub fn lb_tc_ingress(ctx: TcContext) -> i32 {
    tc::ingress(&ctx, false)
}

#[classifier]
pub fn lb_tc_egress(ctx: TcContext) -> i32 {
    tc::egress(&ctx)
}

/// On the host side of a pod interface: the pod's egress.
#[classifier]
pub fn lb_pod_from(ctx: TcContext) -> i32 {
    policy::from_pod(&ctx)
}

/// On the host side of a pod interface: the pod's ingress.
#[classifier]
pub fn lb_pod_to(ctx: TcContext) -> i32 {
    policy::to_pod(&ctx)
}

#[cgroup_sock_addr(connect4)]
pub fn lb_connect4(ctx: SockAddrContext) -> i32 {
    sock::forward(&ctx, sock::Family::V4, sock::Hook::Connect)
}

#[cgroup_sock_addr(connect6)]
pub fn lb_connect6(ctx: SockAddrContext) -> i32 {
    sock::forward(&ctx, sock::Family::V6, sock::Hook::Connect)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn lb_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::forward(&ctx, sock::Family::V4, sock::Hook::Sendmsg)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn lb_sendmsg6(ctx: SockAddrContext) -> i32 {
    sock::forward(&ctx, sock::Family::V6, sock::Hook::Sendmsg)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn lb_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx, sock::Family::V4)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn lb_recvmsg6(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx, sock::Family::V6)
}

#[cgroup_sock_addr(getpeername4)]
pub fn lb_getpeer4(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx, sock::Family::V4)
}

#[cgroup_sock_addr(getpeername6)]
pub fn lb_getpeer6(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx, sock::Family::V6)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
