//! portguard's kernel side.
//!
//! The agent attaches these programs at each guarded cgroup only, so they
//! run for the sockets created in a guarded subtree and for no other.
//! `cgroup/sock_create` stamps each such socket with the cgroup it was
//! created in (socket-local storage, freed with the socket); the sock_addr
//! hooks judge bind, connect and unconnected sends against the nearest
//! guard of that cgroup.
//! A sock_addr program allows by returning 1 and denies (EPERM) with 0.
#![no_std]
#![no_main]
// Map keys and values go to the helpers by reference: passing them by value
// (as this lint suggests) changed the generated BPF code (about 300 more
// instructions, other stack slots), and that code is what the verifier judges.
#![expect(clippy::needless_borrows_for_generic_args, reason = "keeps the verified BPF code as it is")]

mod addr;
mod decide;
mod dns;
mod identity;
mod inbound;
mod inventory;
mod lsm;
mod maps;
mod packet;
mod report;
mod socket_kinds;
mod udp_peers;

use aya_ebpf::{
    EbpfContext,
    helpers::generated::bpf_get_socket_cookie,
    macros::{cgroup_sock, cgroup_sock_addr},
    programs::{SockAddrContext, SockContext},
};
use portguard_common::{
    AF_INET, AF_INET6, Config, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_MPTCP, IPPROTO_SCTP, IPPROTO_TCP,
    IPPROTO_UDP, MODE_AUDIT, ORPHAN_GUARD_ID, Op, REASON_NONE, SOCK_DGRAM, SOCK_RAW, Verdict,
};

use crate::{
    addr::{Addr, user_addr4, user_addr6, user_port},
    decide::{bind_allowed, connect_allowed},
    identity::{mark_bound, mark_mptcp, socket_guard, stamp_new_socket},
    maps::PG_CONFIG,
    report::{Decision, record},
    socket_kinds::creation_allowed,
};

/// LSM programs and some helpers are only for GPL-compatible programs; the
/// kernel accepts this dual licence as such.
#[unsafe(no_mangle)]
#[unsafe(link_section = "license")]
pub(crate) static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

const ALLOW: i32 = 1;
const DENY: i32 = 0;

#[cgroup_sock(sock_create)]
pub(crate) fn pg_sock_create(ctx: SockContext) -> i32 {
    let cgroup = stamp_new_socket(&ctx);
    // SAFETY: reading the context's own fields.
    let (ty, protocol, family) = unsafe { ((*ctx.sock).type_, (*ctx.sock).protocol, (*ctx.sock).family) };
    if protocol == IPPROTO_MPTCP {
        mark_mptcp(&ctx);
        return ALLOW;
    }
    // Raw and SCTP sockets bind and connect without any sock_addr hook, and
    // ICMP ping sockets send without one, so a guard refuses to create
    // them unless its policy allows them.
    let ping = ty == SOCK_DGRAM && (protocol == IPPROTO_ICMP || protocol == IPPROTO_ICMPV6);
    if ty != SOCK_RAW && protocol != IPPROTO_SCTP && !ping {
        return ALLOW;
    }
    let family = if family == u32::from(AF_INET6) { AF_INET6 } else { AF_INET };
    if creation_allowed(cgroup, family, protocol as u8) { ALLOW } else { DENY }
}

/// The live generation, read once (one aligned 8-byte load), or `None`
/// before any policy was applied.
#[inline(always)]
pub(crate) fn read_config() -> Option<Config> {
    let cfg = PG_CONFIG.get_ptr(0)?;
    // SAFETY: array value pointer.
    let generation = unsafe { core::ptr::read_volatile(&(*cfg).generation) };
    (generation != 0).then_some(Config { generation })
}

#[cgroup_sock_addr(bind4)]
pub(crate) fn pg_bind4(ctx: SockAddrContext) -> i32 {
    judge(&ctx, Op::Bind, user_addr4(ctx.sock_addr))
}

#[cgroup_sock_addr(bind6)]
pub(crate) fn pg_bind6(ctx: SockAddrContext) -> i32 {
    judge(&ctx, Op::Bind, user_addr6(ctx.sock_addr))
}

#[cgroup_sock_addr(connect4)]
pub(crate) fn pg_connect4(ctx: SockAddrContext) -> i32 {
    judge(&ctx, Op::Connect, user_addr4(ctx.sock_addr))
}

#[cgroup_sock_addr(connect6)]
pub(crate) fn pg_connect6(ctx: SockAddrContext) -> i32 {
    judge(&ctx, Op::Connect, user_addr6(ctx.sock_addr))
}

#[cgroup_sock_addr(sendmsg4)]
pub(crate) fn pg_sendmsg4(ctx: SockAddrContext) -> i32 {
    judge(&ctx, Op::Sendmsg, user_addr4(ctx.sock_addr))
}

#[cgroup_sock_addr(sendmsg6)]
pub(crate) fn pg_sendmsg6(ctx: SockAddrContext) -> i32 {
    judge(&ctx, Op::Sendmsg, user_addr6(ctx.sock_addr))
}

/// One decision. The bind hooks key on the socket's own family (the v4 hook
/// runs for AF_INET sockets whatever `sa_family` the caller passed, so an
/// AF_UNSPEC bind is judged like AF_INET), never on `user_family`.
#[inline(always)]
fn judge(ctx: &SockAddrContext, op: Op, addr: Addr) -> i32 {
    // Read once: the whole decision uses this generation's slot even if the
    // agent switches to a new policy meanwhile.
    let Some(cfg) = read_config() else {
        return ALLOW;
    };
    let Some(guarded) = socket_guard(ctx, &cfg) else {
        return ALLOW;
    };
    let port = user_port(ctx.sock_addr);
    // SAFETY: reading the context's own field; the verifier checks the load.
    let proto = match unsafe { (*ctx.sock_addr).protocol } {
        IPPROTO_MPTCP => IPPROTO_TCP,
        // Any other number is no protocol a rule names: 0 is refused below.
        p if p > u32::from(u8::MAX) => 0,
        p => p as u8,
    };
    let addr = if op == Op::Bind { addr } else { addr.unspecified_as_loopback() };
    let slot = cfg.active_slot();

    // A UDP send to a peer the socket heard from lately (see udp_peers.rs).
    let udp_peer = (proto == IPPROTO_UDP && op != Op::Bind).then(|| {
        // SAFETY: the sock_addr context is what the helper expects.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        udp_peers::key(cookie, &addr, port)
    });
    // Why a refused connect or send of a guard with DNS names was refused.
    let mut reason = REASON_NONE;
    let (guard_id, allowed, audit) = match &guarded.info {
        Some(info) => {
            let known_proto = proto == IPPROTO_TCP || proto == IPPROTO_UDP;
            let allowed = known_proto
                && match op {
                    Op::Bind => bind_allowed(info, slot, proto, &addr, port),
                    Op::Connect | Op::Sendmsg => {
                        udp_peer.as_ref().is_some_and(udp_peers::heard_lately)
                            || connect_allowed(info, slot, proto, &addr, port)
                            || match dns::learned_allows(info, guarded.guard_cgroup, slot, proto, &addr, port)
                            {
                                Ok(()) => true,
                                Err(why) => {
                                    reason = why;
                                    false
                                }
                            }
                    }
                    // Judged in sock_create, the LSM hooks and ingress, never here.
                    Op::Socket | Op::Listen | Op::Accept | Op::Receive => false,
                };
            (info.guard_id, allowed, info.mode == MODE_AUDIT)
        }
        // The socket could not be stamped: fail closed.
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
        peer_port: 0,
        reason: if allowed { REASON_NONE } else { reason },
    });
    if verdict == Verdict::Denied {
        return DENY;
    }
    if let Some(key) = &udp_peer {
        udp_peers::note_sent(key);
    }
    if op == Op::Bind {
        mark_bound(ctx);
    }
    ALLOW
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
