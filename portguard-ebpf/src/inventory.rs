//! The port inventory: which ports of guarded cgroups are live, kept by
//! the kernel in `PG_LIVE_PORTS` from the moment they go live.
//!
//! A TCP port goes live at listen(), not at bind(): a bound socket that
//! only connects out serves nothing. sock_ops' TCP_LISTEN_CB fires right
//! after the socket enters LISTEN, also for a listen() without bind(). A
//! UDP port goes live at bind (post_bind). Either inserts the port in
//! `PG_LIVE_PORTS` and marks the socket's stamp live, and sock_release
//! looks only at marked sockets, so ordinary sockets pay one storage lookup
//! on close. A port released within `BRIEF_PORT_NS` only bumps a per-CPU
//! count: a bind-and-close loop costs the agent nothing per port.

use core::{ffi::c_void, ptr::read_volatile};

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_SOCK_OPS_TCP_LISTEN_CB,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid,
        generated::{bpf_get_socket_cookie, bpf_ktime_get_boot_ns},
    },
    macros::{cgroup_sock, sock_ops},
    programs::{SockContext, SockOpsContext},
};
use portguard_common::{
    AF_INET, AF_INET6, BRIEF_PORT_NS, BriefPortKey, IPPROTO_TCP, IPPROTO_UDP, LivePort, STAMP_GUARDED,
    STAMP_LIVE, UNGUARDED_ID, stats,
};

use crate::{
    identity::stamp_of_socket,
    maps::{PG_BRIEF_PORTS, PG_LIVE_PORTS, PG_STATS, bump},
    read_config,
    report::record_port_closed,
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
    // The address is not readable here: the entry kept at open has it.
    let cookie = socket_cookie(&ctx);
    let Some(live) = PG_LIVE_PORTS.get_ptr(&cookie) else {
        return 1;
    };
    // SAFETY: a value of this map, read below before this program deletes
    // it; another program deleting it meanwhile (the map is not
    // preallocated) frees it only after an RCU grace period.
    let live = unsafe { &*live };
    // SAFETY: helper with no arguments, valid in every program type.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    if now.wrapping_sub(live.opened_boot_ns) < BRIEF_PORT_NS {
        count_brief(live);
        let _ = PG_LIVE_PORTS.remove(&cookie);
    } else {
        // Deleted before the event is sent: an agent that reads the entry
        // has read it before the close it will then receive.
        let closed = *live;
        let _ = PG_LIVE_PORTS.remove(&cookie);
        record_port_closed(&closed, now);
    }
    1
}

/// Bumps this CPU's count of brief ports like `live` (exact, no atomics).
#[inline(always)]
fn count_brief(live: &LivePort) {
    const BPF_NOEXIST: u64 = 1;
    let key = BriefPortKey {
        sock_cgroup: live.sock_cgroup,
        guard_id: live.guard_id,
        port: live.port,
        proto: live.proto,
        family: live.family,
        addr: live.addr,
    };
    let mut slot = PG_BRIEF_PORTS.get_ptr_mut(&key);
    if slot.is_none() {
        // Another CPU may insert the key between our lookup and insert; then
        // the insert fails and this CPU's copy (zeroed by the kernel) is there.
        let _ = PG_BRIEF_PORTS.insert(&key, &0, BPF_NOEXIST);
        slot = PG_BRIEF_PORTS.get_ptr_mut(&key);
    }
    if let Some(c) = slot {
        // SAFETY: this CPU's copy of the value; nothing else writes it, and
        // the program cannot migrate to another CPU mid-run.
        unsafe { *c += 1 };
    }
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
    let mut guard_cgroup = 0;
    let mut guard_id = UNGUARDED_ID;
    let mut generation = 0;
    if let Some(cfg) = read_config() {
        crate::identity::refresh(stamp, cfg.active_slot(), &cfg, &crate::identity::Task);
        generation = cfg.generation;
        if stamp.guarded == STAMP_GUARDED {
            guard_cgroup = stamp.guard_cgroup;
            guard_id = stamp.guard.guard_id;
        }
    }
    let live = LivePort {
        sock_cgroup: stamp.sock_cgroup,
        guard_cgroup,
        pid_tgid: bpf_get_current_pid_tgid(),
        generation,
        cookie,
        // SAFETY: helper with no arguments, valid in every program type.
        opened_boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        guard_id,
        port,
        family: addr.family,
        proto,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        addr: addr.bytes,
    };
    // The agent reads this map on a timer: going live wakes no one.
    if PG_LIVE_PORTS.insert(&cookie, &live, 0).is_ok() {
        stamp.flags |= STAMP_LIVE;
    } else {
        bump(&PG_STATS, stats::LIVE_PORTS_FULL);
    }
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
