//! Which guard judges a socket: the nearest guarded ancestor of the cgroup the
//! socket was *created* in, not of whoever uses it now.
//!
//! `sock_create` stamps every inet socket with its creating cgroup in
//! socket-local storage. The first operation under a policy generation
//! resolves the stamp to a guard (or to "unguarded") from the ancestry the
//! kernel reported for that cgroup, and caches the guard in the stamp.

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_SK_STORAGE_GET_F_CREATE,
    helpers::generated::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_sk_ancestor_cgroup_id,
        bpf_sk_cgroup_id, bpf_sk_storage_get,
    },
    programs::{SockAddrContext, SockContext},
};
use portguard_common::{
    Ancestry, Config, GuardInfo, GuardKey, MAX_CGROUP_DEPTH, STAMP_BOUND, STAMP_GUARDED, STAMP_MPTCP,
    STAMP_UNGUARDED, STAMP_UNRESOLVED, SockStamp, stats,
};

use crate::maps::{PG_ANCESTRY, PG_GUARDS, PG_SCRATCH, PG_SK_STAMPS, PG_STATS, bump};

const BPF_NOEXIST: u64 = 1;

/// Where a cgroup and its ancestry are read when a socket's recorded
/// ancestry is missing: the calling task in process context (the sock_addr,
/// sock and LSM hooks), the socket itself in packet context, where the
/// current task is whoever the softirq interrupted. One generic loop serves
/// both; each program instantiates only its own, so no helper a program
/// type lacks ever reaches its verifier.
pub(crate) trait Origin {
    fn cgroup(&self) -> u64;
    fn ancestor(&self, level: i32) -> u64;
}

/// The calling task (process context).
pub(crate) struct Task;

impl Origin for Task {
    #[inline(always)]
    fn cgroup(&self) -> u64 {
        // SAFETY: helper with no arguments, valid in every program that calls this.
        unsafe { bpf_get_current_cgroup_id() }
    }

    #[inline(always)]
    fn ancestor(&self, level: i32) -> u64 {
        // SAFETY: helper taking a plain level, valid in every program that calls this.
        unsafe { bpf_get_current_ancestor_cgroup_id(level) }
    }
}

/// A full socket the verifier knows (packet context): its own cgroup, the
/// one it was created in.
pub(crate) struct Socket(pub(crate) *mut c_void);

impl Origin for Socket {
    #[inline(always)]
    fn cgroup(&self) -> u64 {
        // SAFETY: a socket pointer the verifier checks.
        unsafe { bpf_sk_cgroup_id(self.0) }
    }

    #[inline(always)]
    fn ancestor(&self, level: i32) -> u64 {
        // SAFETY: as above.
        unsafe { bpf_sk_ancestor_cgroup_id(self.0, level) }
    }
}

/// The guard covering a socket.
pub(crate) struct Guarded {
    pub(crate) sock_cgroup: u64,
    pub(crate) guard_cgroup: u64,
    /// `None` when the socket could not be stamped; the caller must then
    /// fail closed.
    pub(crate) info: Option<GuardInfo>,
}

fn stamps_map() -> *mut c_void {
    // The static's address is what the loader relocates into the map.
    core::ptr::addr_of!(PG_SK_STAMPS) as *mut c_void
}

/// Stamps a new socket with the creating task's cgroup, which is by
/// definition the socket's, and records that cgroup's ancestry. Returns the
/// cgroup.
#[inline(always)]
pub(crate) fn stamp_new_socket(ctx: &SockContext) -> u64 {
    // SAFETY: helper valid in cgroup_sock programs.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    record_ancestry(cgroup, &Task);
    let mut stamp = SockStamp { sock_cgroup: cgroup, ..SockStamp::default() };
    // SAFETY: in cgroup_sock programs the socket argument is the context.
    unsafe {
        bpf_sk_storage_get(
            stamps_map(),
            ctx.as_ptr(),
            (&mut stamp as *mut SockStamp).cast(),
            BPF_SK_STORAGE_GET_F_CREATE.into(),
        )
    };
    cgroup
}

/// The guard covering `cgroup` (the calling task's own) under `cfg`.
#[inline(always)]
pub(crate) fn guard_of(cgroup: u64, cfg: &Config) -> Option<(u64, GuardInfo)> {
    record_ancestry(cgroup, &Task);
    resolve(cgroup, cfg.active_slot(), &Task)
}

/// The guard for the socket behind `ctx` under `cfg`, or `None` for an
/// unguarded socket: the fast path.
///
/// Written so that resolution has a single call site: every copy of its
/// loops multiplies the verifier's work (it refused an earlier shape with
/// E2BIG, "BPF program is too large").
#[inline(always)]
pub(crate) fn socket_guard(ctx: &SockAddrContext, cfg: &Config) -> Option<Guarded> {
    let slot = cfg.active_slot();
    // SAFETY: ctx.sock_addr->sk is the socket; the helper checks it.
    let mut stamp = unsafe { PG_SK_STAMPS.get_ptr_mut(ctx) };
    if stamp.is_null() {
        // A socket older than portguard: the best identity left is the
        // calling task's cgroup. Stamp it so the next operation is fast.
        bump(&PG_STATS, stats::STAMP_MISSES);
        // SAFETY: helper with no arguments, valid in sock_addr programs.
        let cgroup = unsafe { bpf_get_current_cgroup_id() };
        let mut fresh = SockStamp { sock_cgroup: cgroup, ..SockStamp::default() };
        record_ancestry(fresh.sock_cgroup, &Task);
        // SAFETY: ctx.sock_addr->sk is the socket; `fresh` outlives the call, which
        // copies it into the new storage.
        stamp = unsafe { PG_SK_STAMPS.get_or_insert_ptr_mut(ctx, Some(&mut fresh)) };
        if stamp.is_null() {
            // No memory for 64 bytes of socket storage: refuse rather than
            // guess (a guard must never open), and count it.
            bump(&PG_STATS, stats::STAMP_FAILURES);
            return Some(Guarded { sock_cgroup: fresh.sock_cgroup, guard_cgroup: 0, info: None });
        }
    }
    // SAFETY: socket storage owned by this socket, valid for this run.
    let s = unsafe { &mut *stamp };
    refresh(s, slot, cfg, &Task);
    if s.guarded != STAMP_GUARDED {
        return None;
    }
    Some(Guarded { sock_cgroup: s.sock_cgroup, guard_cgroup: s.guard_cgroup, info: Some(s.guard) })
}

/// Re-resolves a stamp made under another generation (or never resolved).
#[inline(always)]
pub(crate) fn refresh<O: Origin>(s: &mut SockStamp, slot: u32, cfg: &Config, origin: &O) {
    if s.generation != cfg.generation || s.guarded == STAMP_UNRESOLVED {
        match resolve(s.sock_cgroup, slot, origin) {
            Some((guard_cgroup, info)) => {
                s.guard_cgroup = guard_cgroup;
                s.guard = info;
                s.guarded = STAMP_GUARDED;
            }
            None => s.guarded = STAMP_UNGUARDED,
        }
        s.generation = cfg.generation;
    }
}

/// Notes that a new socket is an MPTCP one (see `STAMP_MPTCP`).
#[inline(always)]
pub(crate) fn mark_mptcp(ctx: &SockContext) {
    if let Some(stamp) = stamp_of_socket(ctx.as_ptr(), false) {
        stamp.flags |= STAMP_MPTCP;
    }
}

/// Notes that a judged bind let this socket take its port.
#[inline(always)]
pub(crate) fn mark_bound(ctx: &SockAddrContext) {
    // SAFETY: ctx.sock_addr->sk is the socket; the helper checks it.
    let stamp = unsafe { PG_SK_STAMPS.get_ptr_mut(ctx) };
    if !stamp.is_null() {
        // SAFETY: non-null socket storage owned by this socket, valid for this run.
        unsafe { (*stamp).flags |= STAMP_BOUND };
    }
}

/// The stamp of a socket given as a `bpf_sock` context or `sk` pointer.
/// With `create`, a socket older than portguard is stamped with the calling
/// task's cgroup, as the sock_addr hooks do.
#[inline(always)]
pub(crate) fn stamp_of_socket(sk: *mut c_void, create: bool) -> Option<&'static mut SockStamp> {
    // SAFETY: `sk` is a socket pointer the verifier checks.
    let mut p = unsafe { bpf_sk_storage_get(stamps_map(), sk, core::ptr::null_mut(), 0) }.cast::<SockStamp>();
    if p.is_null() && create {
        // SAFETY: helper with no arguments, valid in every program that calls this.
        let cgroup = unsafe { bpf_get_current_cgroup_id() };
        record_ancestry(cgroup, &Task);
        let mut fresh = SockStamp { sock_cgroup: cgroup, ..SockStamp::default() };
        // SAFETY: `sk` as above; `fresh` outlives the call, which copies it.
        p = unsafe {
            bpf_sk_storage_get(
                stamps_map(),
                sk,
                (&mut fresh as *mut SockStamp).cast(),
                BPF_SK_STORAGE_GET_F_CREATE.into(),
            )
        }
        .cast::<SockStamp>();
    }
    // SAFETY: null (no storage) or socket storage owned by this socket,
    // valid for this run.
    unsafe { p.as_mut() }
}

/// The stamp of a kernel `struct sock` (from an LSM hook), if it has one.
#[inline(always)]
pub(crate) fn stamp_of_sock(sk: *mut c_void) -> Option<&'static mut SockStamp> {
    // SAFETY: `sk` is a BTF-typed socket pointer the verifier checks.
    let p = unsafe { bpf_sk_storage_get(stamps_map(), sk, core::ptr::null_mut(), 0) }.cast::<SockStamp>();
    // SAFETY: null (no storage) or socket storage owned by this socket,
    // valid for this run.
    unsafe { p.as_mut() }
}

/// Nearest guarded ancestor (or the cgroup itself) of `cgroup`, with its
/// guard, from the ancestry recorded when a socket was created there. If
/// none is recorded (evicted from the LRU), `origin`'s cgroup is the best
/// identity left (in packet context, the socket's own: exact).
#[inline(always)]
fn resolve<O: Origin>(cgroup: u64, slot: u32, origin: &O) -> Option<(u64, GuardInfo)> {
    let mut key = cgroup;
    if PG_ANCESTRY.get_ptr(&key).is_none() {
        bump(&PG_STATS, stats::ANCESTRY_MISSES);
        key = origin.cgroup();
        record_ancestry(key, origin);
    }
    // SAFETY: LRU values can be recycled under a reader; a torn read can only
    // pick a wrong ancestor list, the same risk as the fallback above.
    let ancestry = unsafe { PG_ANCESTRY.get(&key) }?;
    nearest_guard(ancestry, slot)
}

#[inline(always)]
fn guard_at(id: u64, slot: u32) -> Option<GuardInfo> {
    let key = GuardKey { cgroup_id: id, slot, _pad: 0 };
    // SAFETY: not preallocated (see maps.rs): copied out at once.
    unsafe { PG_GUARDS.get(&key) }.copied()
}

#[inline(always)]
fn nearest_guard(ancestry: &Ancestry, slot: u32) -> Option<(u64, GuardInfo)> {
    let depth = ancestry.depth as usize;
    for i in 0..MAX_CGROUP_DEPTH {
        let level = MAX_CGROUP_DEPTH - 1 - i;
        if level >= depth {
            continue;
        }
        let id = ancestry.ids[level];
        if let Some(info) = guard_at(id, slot) {
            return Some((id, info));
        }
    }
    None
}

/// Records `cgroup`'s ancestry as `origin` reports it (`origin` is in
/// `cgroup`), unless it is recorded already.
#[inline(always)]
fn record_ancestry<O: Origin>(cgroup: u64, origin: &O) {
    if PG_ANCESTRY.get_ptr(&cgroup).is_some() {
        return;
    }
    let Some(scratch) = PG_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch value, ours for the rest of this run.
    let a = unsafe { &mut *scratch };
    a.depth = 0;
    for level in 0..MAX_CGROUP_DEPTH {
        let id = origin.ancestor(level as i32);
        if id == 0 {
            break;
        }
        a.ids[level] = id;
        a.depth = level as u32 + 1;
    }
    let _ = PG_ANCESTRY.insert(&cgroup, &*a, BPF_NOEXIST);
}
