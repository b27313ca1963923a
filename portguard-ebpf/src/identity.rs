//! Which guard judges a socket: the nearest guarded ancestor of the cgroup the
//! socket was *created* in, not of whoever uses it now.

use aya_ebpf::{
    EbpfContext,
    helpers::generated::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_socket_cookie,
    },
};
use portguard_common::{
    Ancestry, Config, GuardInfo, GuardKey, MAX_CGROUP_DEPTH, STAMP_GUARDED, STAMP_UNGUARDED,
    STAMP_UNRESOLVED, SockStamp, stats,
};

use crate::maps::{PG_ANCESTRY, PG_GUARDS, PG_SCRATCH, PG_SOCK_STAMPS, PG_STATS, bump};

const BPF_NOEXIST: u64 = 1;

/// The guard covering a socket.
pub struct Guarded {
    pub sock_cgroup: u64,
    pub guard_cgroup: u64,
    /// `None` when the stamp names a guard the active slot does not hold;
    /// the caller must then fail closed.
    pub info: Option<GuardInfo>,
}

/// Records the creating task's cgroup and its ancestors. Called from
/// `sock_create`, where the task is by definition in the socket's cgroup.
#[inline(always)]
pub fn stamp_new_socket<C: EbpfContext>(ctx: &C) {
    // SAFETY: helpers valid in cgroup_sock programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    record_current_ancestry(cgroup);
    let stamp =
        SockStamp { sock_cgroup: cgroup, guard_cgroup: 0, generation: 0, guarded: STAMP_UNRESOLVED, _pad: 0 };
    let _ = PG_SOCK_STAMPS.insert(&cookie, &stamp, 0);
}

#[inline(always)]
pub fn forget_socket<C: EbpfContext>(ctx: &C) {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let _ = PG_SOCK_STAMPS.remove(&cookie);
}

/// Resolves the guard for the socket behind `ctx` under `cfg`, caching the
/// answer in the socket's stamp until the policy generation changes.
/// Returns `None` for an unguarded socket: the fast path.
#[inline(always)]
pub fn socket_guard<C: EbpfContext>(ctx: &C, cfg: &Config) -> Option<Guarded> {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let slot = cfg.active_slot();
    let (sock_cgroup, guard_cgroup) = match PG_SOCK_STAMPS.get_ptr_mut(&cookie) {
        Some(stamp) => {
            // SAFETY: a map value pointer, valid for this program run.
            let s = unsafe { &mut *stamp };
            if s.generation != cfg.generation || s.guarded == STAMP_UNRESOLVED {
                let guard = resolve_recorded(s.sock_cgroup, slot);
                s.guard_cgroup = guard.unwrap_or(0);
                s.guarded = if guard.is_some() { STAMP_GUARDED } else { STAMP_UNGUARDED };
                s.generation = cfg.generation;
            }
            if s.guarded != STAMP_GUARDED {
                return None;
            }
            (s.sock_cgroup, s.guard_cgroup)
        }
        None => {
            // A socket older than portguard (or evicted from the LRU): the
            // best identity left is the calling task's cgroup. Stamp it so
            // the next operation takes the fast path.
            bump(&PG_STATS, stats::STAMP_MISSES);
            let cgroup = unsafe { bpf_get_current_cgroup_id() };
            record_current_ancestry(cgroup);
            let guard = resolve_recorded(cgroup, slot);
            let stamp = SockStamp {
                sock_cgroup: cgroup,
                guard_cgroup: guard.unwrap_or(0),
                generation: cfg.generation,
                guarded: if guard.is_some() { STAMP_GUARDED } else { STAMP_UNGUARDED },
                _pad: 0,
            };
            let _ = PG_SOCK_STAMPS.insert(&cookie, &stamp, 0);
            (cgroup, guard?)
        }
    };
    let key = GuardKey { cgroup_id: guard_cgroup, slot, _pad: 0 };
    // SAFETY: PG_GUARDS is not preallocated, so a value we read is never
    // recycled under us; we copy it out at once.
    let info = unsafe { PG_GUARDS.get(&key) }.copied();
    Some(Guarded { sock_cgroup, guard_cgroup, info })
}

/// Nearest guarded ancestor (or the cgroup itself) of `cgroup`, using the
/// ancestry recorded when a socket was created there.
#[inline(always)]
fn resolve_recorded(cgroup: u64, slot: u32) -> Option<u64> {
    // SAFETY: LRU values can be recycled under a reader; a torn read here can
    // only pick a wrong *ancestor list*, which the fallback below also risks.
    match unsafe { PG_ANCESTRY.get(&cgroup) } {
        Some(ancestry) => nearest_guard(ancestry, slot),
        None => {
            bump(&PG_STATS, stats::ANCESTRY_MISSES);
            if unsafe { bpf_get_current_cgroup_id() } == cgroup {
                record_current_ancestry(cgroup);
                if let Some(ancestry) = unsafe { PG_ANCESTRY.get(&cgroup) } {
                    return nearest_guard(ancestry, slot);
                }
            }
            nearest_guard_of_current(slot)
        }
    }
}

#[inline(always)]
fn nearest_guard(ancestry: &Ancestry, slot: u32) -> Option<u64> {
    let depth = ancestry.depth as usize;
    for i in 0..MAX_CGROUP_DEPTH {
        let level = MAX_CGROUP_DEPTH - 1 - i;
        if level >= depth {
            continue;
        }
        let id = ancestry.ids[level];
        let key = GuardKey { cgroup_id: id, slot, _pad: 0 };
        if PG_GUARDS.get_ptr(&key).is_some() {
            return Some(id);
        }
    }
    None
}

/// Last resort when no ancestry is recorded: walk the calling task's
/// cgroup. Wrong only for a socket that changed hands *and* lost its record.
#[inline(always)]
fn nearest_guard_of_current(slot: u32) -> Option<u64> {
    let mut found = None;
    for level in 0..MAX_CGROUP_DEPTH {
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        if id == 0 {
            break;
        }
        let key = GuardKey { cgroup_id: id, slot, _pad: 0 };
        if PG_GUARDS.get_ptr(&key).is_some() {
            found = Some(id);
        }
    }
    found
}

#[inline(always)]
fn record_current_ancestry(cgroup: u64) {
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
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        if id == 0 {
            break;
        }
        a.ids[level] = id;
        a.depth = level as u32 + 1;
    }
    let _ = PG_ANCESTRY.insert(&cgroup, &*a, BPF_NOEXIST);
}
