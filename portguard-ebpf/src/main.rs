//! portguard's kernel side.
//!
//! `cgroup/sock_create` stamps each new socket with the cgroup it was created
//! in (socket-local storage, freed with the socket); the sock_addr hooks
//! judge bind, connect and unconnected sends against the guard covering that
//! cgroup. An unguarded socket costs one socket-storage lookup.
//! A sock_addr program allows by returning 1 and denies (EPERM) with 0.
#![no_std]
#![no_main]

mod addr;
mod decide;
mod identity;
mod maps;
mod report;

use aya_ebpf::{
    macros::{cgroup_sock, cgroup_sock_addr},
    programs::{SockAddrContext, SockContext},
};
use portguard_common::{Config, IPPROTO_TCP, IPPROTO_UDP, MODE_AUDIT, ORPHAN_GUARD_ID, Op, Verdict};

use crate::{
    addr::{Addr, user_addr4, user_addr6, user_port},
    decide::{bind_allowed, connect_allowed},
    identity::{socket_guard, stamp_new_socket},
    maps::PG_CONFIG,
    report::{Decision, record},
};

const ALLOW: i32 = 1;
const DENY: i32 = 0;

#[cgroup_sock(sock_create)]
pub fn pg_sock_create(ctx: SockContext) -> i32 {
    stamp_new_socket(&ctx);
    ALLOW
}

#[cgroup_sock_addr(bind4)]
pub fn pg_bind4(ctx: SockAddrContext) -> i32 {
    judge(&ctx, Op::Bind, user_addr4(ctx.sock_addr))
}

#[cgroup_sock_addr(bind6)]
pub fn pg_bind6(ctx: SockAddrContext) -> i32 {
    judge(&ctx, Op::Bind, user_addr6(ctx.sock_addr))
}

#[cgroup_sock_addr(connect4)]
pub fn pg_connect4(ctx: SockAddrContext) -> i32 {
    judge(&ctx, Op::Connect, user_addr4(ctx.sock_addr))
}

#[cgroup_sock_addr(connect6)]
pub fn pg_connect6(ctx: SockAddrContext) -> i32 {
    judge(&ctx, Op::Connect, user_addr6(ctx.sock_addr))
}

#[cgroup_sock_addr(sendmsg4)]
pub fn pg_sendmsg4(ctx: SockAddrContext) -> i32 {
    judge(&ctx, Op::Sendmsg, user_addr4(ctx.sock_addr))
}

#[cgroup_sock_addr(sendmsg6)]
pub fn pg_sendmsg6(ctx: SockAddrContext) -> i32 {
    judge(&ctx, Op::Sendmsg, user_addr6(ctx.sock_addr))
}

/// One decision. The bind hooks key on the socket's own family (the v4 hook
/// runs for AF_INET sockets whatever `sa_family` the caller passed, so an
/// AF_UNSPEC bind is judged like AF_INET), never on `user_family`.
#[inline(always)]
fn judge(ctx: &SockAddrContext, op: Op, addr: Addr) -> i32 {
    let Some(cfg) = PG_CONFIG.get_ptr(0) else {
        return ALLOW;
    };
    // Read once: the whole decision uses this generation's slot even if the
    // agent switches to a new policy meanwhile.
    // SAFETY: array value pointer; one aligned 8-byte load.
    let cfg = Config { generation: unsafe { core::ptr::read_volatile(&(*cfg).generation) } };
    if cfg.generation == 0 {
        return ALLOW;
    }
    let Some(guarded) = socket_guard(ctx, &cfg) else {
        return ALLOW;
    };
    let port = user_port(ctx.sock_addr);
    let proto = unsafe { (*ctx.sock_addr).protocol } as u8;
    let addr = if op == Op::Bind { addr } else { addr.unspecified_as_loopback() };
    let slot = cfg.active_slot();

    let (guard_id, allowed, audit) = match &guarded.info {
        Some(info) => {
            let known_proto = proto == IPPROTO_TCP || proto == IPPROTO_UDP;
            let allowed = known_proto
                && match op {
                    Op::Bind => bind_allowed(info, slot, proto, &addr, port),
                    Op::Connect | Op::Sendmsg => connect_allowed(info, slot, proto, &addr, port),
                };
            (info.guard_id, allowed, info.mode == MODE_AUDIT)
        }
        // The stamp names a guard this slot lacks: fail closed.
        None => (ORPHAN_GUARD_ID, false, false),
    };
    let verdict = if allowed {
        Verdict::Allowed
    } else if audit {
        Verdict::Audited
    } else {
        Verdict::Denied
    };
    record(&Decision {
        op,
        verdict,
        guard_id,
        guarded: &guarded,
        generation: cfg.generation,
        proto,
        addr: &addr,
        port,
    });
    if verdict == Verdict::Denied { DENY } else { ALLOW }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
