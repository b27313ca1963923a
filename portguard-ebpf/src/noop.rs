//! Empty always-allow programs on the same hooks as portguard's, for the
//! benchmark's C1 configuration: the cost any cgroup-BPF design pays.
#![no_std]
#![no_main]

use aya_ebpf::{
    macros::{cgroup_skb, cgroup_sock, cgroup_sock_addr, sock_ops},
    programs::{SkBuffContext, SockAddrContext, SockContext, SockOpsContext},
};

#[cgroup_sock(sock_create)]
pub(crate) fn pg_sock_create(_ctx: SockContext) -> i32 {
    1
}

#[cgroup_sock_addr(bind4)]
pub(crate) fn pg_bind4(_ctx: SockAddrContext) -> i32 {
    1
}

#[cgroup_sock_addr(bind6)]
pub(crate) fn pg_bind6(_ctx: SockAddrContext) -> i32 {
    1
}

#[cgroup_sock_addr(connect4)]
pub(crate) fn pg_connect4(_ctx: SockAddrContext) -> i32 {
    1
}

#[cgroup_sock_addr(connect6)]
pub(crate) fn pg_connect6(_ctx: SockAddrContext) -> i32 {
    1
}

#[cgroup_sock_addr(sendmsg4)]
pub(crate) fn pg_sendmsg4(_ctx: SockAddrContext) -> i32 {
    1
}

#[cgroup_sock_addr(sendmsg6)]
pub(crate) fn pg_sendmsg6(_ctx: SockAddrContext) -> i32 {
    1
}

#[cgroup_sock(post_bind4)]
pub(crate) fn pg_post_bind4(_ctx: SockContext) -> i32 {
    1
}

#[cgroup_sock(post_bind6)]
pub(crate) fn pg_post_bind6(_ctx: SockContext) -> i32 {
    1
}

#[cgroup_sock(sock_release)]
pub(crate) fn pg_sock_release(_ctx: SockContext) -> i32 {
    1
}

#[cgroup_skb(egress)]
pub(crate) fn pg_sock_egress(_ctx: SkBuffContext) -> i32 {
    1
}

#[cgroup_skb(ingress)]
pub(crate) fn pg_sock_ingress(_ctx: SkBuffContext) -> i32 {
    1
}

#[sock_ops]
pub(crate) fn pg_sock_ops(_ctx: SockOpsContext) -> u32 {
    1
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
