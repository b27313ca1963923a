//! BPF LSM programs for the two holes the cgroup socket hooks leave:
//!
//! * `socket_listen`: listen() on a socket that was never bound through a
//!   judged bind (the kernel autobinds it to an ephemeral port with no bind
//!   hook on the way) is refused in a guarded cgroup.
//! * `socket_create`: AF_PACKET sockets are not inet sockets, so
//!   `cgroup/sock_create` never sees them; a guard refuses them unless its
//!   policy allows raw sockets.
//!
//! LSM programs return 0 to allow and a negative errno to refuse. They are
//! optional: on a kernel without the BPF LSM the agent warns and runs
//! without them.

use core::ffi::c_void;

use aya_ebpf::{helpers::generated::bpf_get_current_cgroup_id, macros::lsm, programs::LsmContext};
use portguard_common::{AF_INET, IPPROTO_TCP, Op, STAMP_BOUND, STAMP_GUARDED, STAMP_MPTCP, Verdict};

use crate::{
    identity::{Task, refresh, stamp_of_sock},
    read_config,
    report::record_violation,
    socket_kinds::creation_allowed,
};

const LSM_ALLOW: i32 = 0;
const EPERM: i32 = 1;
const AF_PACKET: i32 = 17;

/// `struct socket` puts `sk` after `state` (4 bytes, padded to 8 with
/// `type`), `flags` (8) and `file` (8): offset 24, stable since 2.6. The
/// verifier checks the load against the kernel's BTF and refuses the
/// program if a kernel ever moved it.
const SOCKET_SK_OFFSET_WORDS: usize = 3;

#[lsm(hook = "socket_listen")]
pub(crate) fn pg_socket_listen(ctx: LsmContext) -> i32 {
    let sock: *const u64 = ctx.arg(0);
    // SAFETY: a BTF pointer to struct socket; see SOCKET_SK_OFFSET_WORDS.
    let sk = unsafe { *sock.add(SOCKET_SK_OFFSET_WORDS) } as *mut c_void;
    let Some(cfg) = read_config() else { return LSM_ALLOW };
    // No stamp: not an inet socket, or one from before portguard started
    // (such a listener was bound, if at all, before anything was guarded).
    let Some(stamp) = stamp_of_sock(sk) else { return LSM_ALLOW };
    refresh(stamp, cfg.active_slot(), &cfg, &Task);
    // An MPTCP socket's judged bind marked its subflow, not this socket; the
    // subflow's listener is what the ingress program judges.
    if stamp.guarded != STAMP_GUARDED || stamp.flags & (STAMP_BOUND | STAMP_MPTCP) != 0 {
        return LSM_ALLOW;
    }
    let verdict = record_violation(
        Op::Listen,
        stamp.sock_cgroup,
        stamp.guard_cgroup,
        &stamp.guard,
        cfg.generation,
        IPPROTO_TCP,
        AF_INET,
    );
    if verdict == Verdict::Denied { -EPERM } else { LSM_ALLOW }
}

#[lsm(hook = "socket_create")]
pub(crate) fn pg_socket_create(ctx: LsmContext) -> i32 {
    let family: i32 = ctx.arg(0);
    let kern: i32 = ctx.arg(3);
    if family != AF_PACKET || kern != 0 {
        return LSM_ALLOW;
    }
    // SAFETY: helper valid in LSM programs.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    if creation_allowed(cgroup, AF_INET, 0) { LSM_ALLOW } else { -EPERM }
}
