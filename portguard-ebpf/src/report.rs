//! Counting every guarded decision and reporting violations.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
};
use portguard_common::{
    DENIAL_EVENT_INTERVAL_NS, DecisionEvent, DenialCount, DenialKey, GuardInfo, LivePort, MODE_AUDIT, Op,
    PORT_EVENTS_BYTES, PortEvent, REASON_NONE, Verdict, counter_index, stats,
};

use crate::{
    addr::Addr,
    identity::Guarded,
    maps::{PG_COUNTERS, PG_DENIAL_COUNTS, PG_EVENTS, PG_PORT_EVENTS, PG_STATS, bump},
};

pub(crate) struct Decision<'a> {
    pub(crate) op: Op,
    pub(crate) verdict: Verdict,
    pub(crate) guard_id: u32,
    pub(crate) guarded: &'a Guarded,
    pub(crate) generation: u64,
    pub(crate) proto: u8,
    pub(crate) addr: &'a Addr,
    pub(crate) port: u16,
    /// Inbound ops only: the peer's port (`port` is then the local one).
    pub(crate) peer_port: u16,
    /// `REASON_*`; `REASON_NONE` outside inbound ops.
    pub(crate) reason: u8,
}

/// A violation of `info`'s guard by a socket-level operation (no peer, no
/// port): denied in enforce mode, audited in audit mode; recorded either way.
#[inline(always)]
pub(crate) fn record_violation(
    op: Op,
    sock_cgroup: u64,
    guard_cgroup: u64,
    info: &GuardInfo,
    generation: u64,
    proto: u8,
    family: u8,
) -> Verdict {
    let verdict = if info.mode == MODE_AUDIT { Verdict::Audited } else { Verdict::Denied };
    let guarded = Guarded { sock_cgroup, guard_cgroup, info: Some(*info) };
    record(&Decision {
        op,
        verdict,
        guard_id: info.guard_id,
        guarded: &guarded,
        generation,
        proto,
        addr: &Addr { family, bytes: [0; 16] },
        port: 0,
        peer_port: 0,
        reason: REASON_NONE,
    });
    verdict
}

/// Counts the decision (exact, per CPU). A denial or audit-mode violation
/// is also sent as an event when it is the first of its kind on this CPU
/// in [`DENIAL_EVENT_INTERVAL_NS`]: a flood of identical denials costs a
/// counter bump each, not a ring-buffer event with the process name each.
/// A full ring buffer loses the event, never the count.
#[inline(always)]
pub(crate) fn record(d: &Decision) {
    bump(&PG_COUNTERS, counter_index(d.guard_id, d.op, d.verdict));
    if d.verdict == Verdict::Allowed {
        return;
    }
    let Some(count) = count_denial(d) else {
        return;
    };
    let Some(mut entry) = PG_EVENTS.reserve::<DecisionEvent>(0) else {
        bump(&PG_STATS, stats::EVENTS_LOST);
        return;
    };
    // A packet is judged in softirq context, where the current task is
    // whoever was interrupted (on loopback often the sender): no task is
    // named for inbound decisions. `op` is a constant at every call site,
    // so the packet program never contains these helpers.
    let (pid_tgid, comm) = if d.op.is_inbound() {
        (0, [0; 16])
    } else {
        (bpf_get_current_pid_tgid(), bpf_get_current_comm().unwrap_or([0; 16]))
    };
    entry.write(DecisionEvent {
        sock_cgroup: d.guarded.sock_cgroup,
        guard_cgroup: d.guarded.guard_cgroup,
        pid_tgid,
        generation: d.generation,
        count,
        guard_id: d.guard_id,
        port: d.port,
        op: d.op as u8,
        family: d.addr.family,
        proto: d.proto,
        verdict: d.verdict as u8,
        peer_port: d.peer_port,
        reason: d.reason,
        _pad: [0; 3],
        comm,
        addr: d.addr.bytes,
    });
    entry.submit(0);
}

/// Bumps this CPU's count for the denial's (guard, op, proto, port,
/// verdict), a per-CPU LRU hash: no atomics, and bounded. Returns how many
/// denials an event sent now stands for, or `None` while the kind's
/// interval runs.
#[inline(always)]
fn count_denial(d: &Decision) -> Option<u64> {
    const BPF_NOEXIST: u64 = 1;
    let key = DenialKey {
        guard_id: d.guard_id,
        port: d.port,
        op: d.op as u8,
        proto: d.proto,
        verdict: d.verdict as u8,
        reason: d.reason,
        _pad: [0; 2],
    };
    let mut slot = PG_DENIAL_COUNTS.get_ptr_mut(&key);
    if slot.is_none() {
        // Another CPU may insert the key between our lookup and insert; then
        // the insert fails and this CPU's copy (zeroed by the kernel) is there.
        let _ = PG_DENIAL_COUNTS.insert(&key, &DenialCount::default(), BPF_NOEXIST);
        slot = PG_DENIAL_COUNTS.get_ptr_mut(&key);
    }
    let c = slot?;
    // SAFETY: this CPU's copy of the value; nothing else writes it, and the
    // program cannot migrate to another CPU mid-run.
    let c = unsafe { &mut *c };
    c.count += 1;
    // SAFETY: helper with no arguments, valid in every program type.
    let now = unsafe { bpf_ktime_get_ns() };
    if c.reported != 0 && now.wrapping_sub(c.last_event_ns) < DENIAL_EVENT_INTERVAL_NS {
        return None;
    }
    let stands_for = c.count - c.reported;
    c.reported = c.count;
    c.last_event_ns = now;
    Some(stands_for)
}

/// Sends the close of a port that lived at least `BRIEF_PORT_NS` on its own
/// ring buffer, with its whole `PG_LIVE_PORTS` entry. Not counted per guard:
/// the agent's inventory is the count. A full ring buffer loses the event
/// (counted in `PORT_EVENTS_LOST`).
#[inline(always)]
pub(crate) fn record_port_closed(live: &LivePort, closed_boot_ns: u64) {
    let Some(mut entry) = PG_PORT_EVENTS.reserve::<PortEvent>(0) else {
        bump(&PG_STATS, stats::PORT_EVENTS_LOST);
        return;
    };
    entry.write(PortEvent {
        live: *live,
        closed_boot_ns,
        pid_tgid: bpf_get_current_pid_tgid(),
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    });
    // Wake the agent only once the ring is a quarter full: it collects port
    // events on a timer anyway, and a wake-up per event would cost a loop
    // of ports a context switch per close.
    let wake = if PG_PORT_EVENTS.query(BPF_RB_AVAIL_DATA.into()) >= u64::from(PORT_EVENTS_BYTES / 4) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(wake.into());
}
