//! The port inventory: which ports are live, reported from the kernel the
//! moment they open and close, for every socket (guarded or not).
//!
//! A TCP port goes live at listen(), not at bind(): a bound socket that
//! only connects out serves nothing. sock_ops' TCP_LISTEN_CB fires right
//! after the socket enters LISTEN, also for a listen() without bind(). A
//! UDP port goes live at bind (post_bind). Either marks the socket's stamp
//! live, and sock_release reports only marked sockets, so ordinary sockets
//! pay one storage lookup on close.

use core::{ffi::c_void, ptr::read_volatile};

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_SOCK_OPS_TCP_LISTEN_CB,
    helpers::generated::bpf_get_socket_cookie,
    macros::{cgroup_sock, sock_ops},
    programs::{SockContext, SockOpsContext},
};
use portguard_common::{
    AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP, PORT_CLOSED, PORT_OPENED, STAMP_GUARDED, STAMP_LIVE,
    UNGUARDED_ID,
};

use crate::{
    identity::{Guarded, stamp_of_socket},
    read_config,
    report::{LifecycleEvent, record_lifecycle},
};

#[sock_ops]
pub(crate) fn pg_sock_ops(ctx: SockOpsContext) -> u32 {
    if ctx.op() == BPF_SOCK_OPS_TCP_LISTEN_CB {
        // SAFETY: `sk` of a TCP_LISTEN_CB context is the listening socket.
        let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
        if !sk.is_null() {
            // Each context field read on its own, unconditionally: the
            // verifier refuses a load through a context pointer the compiler
            // picked between two fields ("dereference of modified ctx ptr").
            let ops = ctx.ops;
            // SAFETY: `ops` is this program's sock_ops context; each field is one
            // checked context load.
            let (family, ip4, ip6) = unsafe {
                (
                    read_volatile(&(*ops).family),
                    read_volatile(&(*ops).local_ip4),
                    [
                        read_volatile(&(*ops).local_ip6[0]),
                        read_volatile(&(*ops).local_ip6[1]),
                        read_volatile(&(*ops).local_ip6[2]),
                        read_volatile(&(*ops).local_ip6[3]),
                    ],
                )
            };
            // SAFETY: as above.
            let port = unsafe { read_volatile(&(*ops).local_port) };
            let addr = local_addr(family, ip4, ip6);
            // SAFETY: the context pointer is what the helper expects.
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            port_opened(sk.cast(), IPPROTO_TCP, addr, port as u16, cookie);
        }
    }
    1
}

// The kernel lets post_bind4 read only src_ip4, post_bind6 only src_ip6,
// and sock_release neither: hence one reader per hook.

#[cgroup_sock(post_bind4)]
pub(crate) fn pg_post_bind4(ctx: SockContext) -> i32 {
    // SAFETY: reading fields this hook may read.
    let (protocol, ip4, port) = unsafe { ((*ctx.sock).protocol, (*ctx.sock).src_ip4, (*ctx.sock).src_port) };
    if protocol == u32::from(IPPROTO_UDP) {
        let addr = local_addr(u32::from(AF_INET), ip4, [0; 4]);
        port_opened(ctx.as_ptr(), IPPROTO_UDP, addr, port as u16, socket_cookie(&ctx));
    }
    1
}

#[cgroup_sock(post_bind6)]
pub(crate) fn pg_post_bind6(ctx: SockContext) -> i32 {
    // SAFETY: reading fields this hook may read, word by word.
    let (protocol, port) = unsafe { ((*ctx.sock).protocol, (*ctx.sock).src_port) };
    if protocol == u32::from(IPPROTO_UDP) {
        let sock = ctx.sock;
        // SAFETY: `sock` is this program's context; post_bind6 may read src_ip6,
        // word by word.
        let ip6 = unsafe {
            [
                read_volatile(&(*sock).src_ip6[0]),
                read_volatile(&(*sock).src_ip6[1]),
                read_volatile(&(*sock).src_ip6[2]),
                read_volatile(&(*sock).src_ip6[3]),
            ]
        };
        let addr = local_addr(u32::from(AF_INET6), 0, ip6);
        port_opened(ctx.as_ptr(), IPPROTO_UDP, addr, port as u16, socket_cookie(&ctx));
    }
    1
}

#[cgroup_sock(sock_release)]
pub(crate) fn pg_sock_release(ctx: SockContext) -> i32 {
    let Some(stamp) = stamp_of_socket(ctx.as_ptr(), false) else {
        return 1;
    };
    if stamp.flags & STAMP_LIVE == 0 {
        return 1;
    }
    // SAFETY: reading a field this hook may read.
    let protocol = unsafe { (*ctx.sock).protocol } as u8;
    let guard_id = if stamp.guarded == STAMP_GUARDED { stamp.guard.guard_id } else { UNGUARDED_ID };
    // The address is not readable here; the cookie pairs this with its open.
    record_lifecycle(&LifecycleEvent {
        change: PORT_CLOSED,
        sock_cgroup: stamp.sock_cgroup,
        guard_cgroup: stamp.guard_cgroup,
        guard_id,
        generation: stamp.generation,
        proto: protocol,
        addr: crate::addr::Addr { family: 0, bytes: [0; 16] },
        port: 0,
        cookie: socket_cookie(&ctx),
    });
    1
}

#[inline(always)]
fn socket_cookie(ctx: &SockContext) -> u64 {
    // SAFETY: the socket context is what the helper expects.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

#[inline(always)]
fn port_opened(sk: *mut c_void, proto: u8, addr: crate::addr::Addr, port: u16, cookie: u64) {
    // A socket older than the agent has no stamp; stamping it now (with the
    // caller's cgroup, as the sock_addr hooks do) lets its close be seen.
    let Some(stamp) = stamp_of_socket(sk, true) else {
        return;
    };
    stamp.flags |= STAMP_LIVE;
    let mut guarded = Guarded { sock_cgroup: stamp.sock_cgroup, guard_cgroup: 0, info: None };
    let mut generation = 0;
    if let Some(cfg) = read_config() {
        crate::identity::refresh(stamp, cfg.active_slot(), &cfg);
        generation = cfg.generation;
        if stamp.guarded == STAMP_GUARDED {
            guarded.guard_cgroup = stamp.guard_cgroup;
            guarded.info = Some(stamp.guard);
        }
    }
    record_lifecycle(&LifecycleEvent {
        change: PORT_OPENED,
        sock_cgroup: guarded.sock_cgroup,
        guard_cgroup: guarded.guard_cgroup,
        guard_id: guarded.info.map_or(UNGUARDED_ID, |i| i.guard_id),
        generation,
        proto,
        addr,
        port,
        cookie,
    });
}

/// The socket's local address, v4 in the first four bytes.
#[inline(always)]
fn local_addr(family: u32, ip4: u32, ip6: [u32; 4]) -> crate::addr::Addr {
    let mut bytes = [0u8; 16];
    if family == u32::from(AF_INET) {
        bytes[..4].copy_from_slice(&ip4.to_ne_bytes());
        return crate::addr::Addr { family: AF_INET, bytes };
    }
    for (i, w) in ip6.iter().enumerate() {
        bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    crate::addr::Addr { family: AF_INET6, bytes }
}
