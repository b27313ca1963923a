//! One log line per denial or audit-mode violation, with floods coalesced:
//! the first event of a kind is logged at once; identical events (same
//! cgroup, operation, protocol, peer, port and verdict) within the next
//! [`WINDOW`] only count, and one summary line with `repeats=N` (events)
//! and `count=M` (the denials they stand for) follows. The kernel already
//! sends only the first denial of a kind per CPU and second as an event.
//! A process looping on a denied connect costs one line per second, not
//! one per attempt.

use std::{
    collections::HashMap,
    net::IpAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use portguard_common::{
    ORPHAN_GUARD_ID, Op, REASON_DNS_EXPIRED, REASON_DNS_NEVER, REASON_DNS_OTHER_PORT, Transport, Verdict,
};

use super::applied::DnsNames;
use crate::{
    bpf::{DecodedEvent, LearnedAddresses, LearnedState},
    cgroup::{CgroupNames, workload},
    policy::Mode,
    trail::{DnsNote, DnsNoteState, InboundReason, Record, RecordKind, RecordOp},
};

pub(crate) const WINDOW: Duration = Duration::from_secs(1);
/// Distinct kinds tracked at once; reaching it summarises every tracked
/// kind at once and starts over, so memory stays bounded whatever the
/// traffic.
const MAX_KINDS: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Kind {
    sock_cgroup: u64,
    guard_id: u32,
    op: Option<Op>,
    verdict: Option<Verdict>,
    proto: Transport,
    addr: IpAddr,
    port: u16,
    /// Inbound refusals of different causes are logged apart; the peer's
    /// port is not part of the kind (each connection has its own).
    reason: u8,
}

struct Seen {
    first: Instant,
    /// Events of this kind since the line that was logged.
    repeats: u64,
    /// Denials those events stand for (the kernel counts some without an
    /// event: see `DecodedEvent::count`).
    count: u64,
    last: DecodedEvent,
}

pub(crate) struct DenialLog {
    names: CgroupNames,
    /// The kernel's learned DNS addresses: why a guard with names refused
    /// a peer (never answered, expired, another port).
    learned: Option<LearnedAddresses>,
    seen: HashMap<Kind, Seen>,
    /// Audit-trail records of what was logged, for the caller to write.
    pub(crate) records: Vec<Record>,
}

impl DenialLog {
    pub(crate) fn new(root: PathBuf, learned: Option<LearnedAddresses>) -> Self {
        DenialLog { names: CgroupNames::new(root), learned, seen: HashMap::new(), records: Vec::new() }
    }

    pub(crate) fn log(
        &mut self,
        e: &DecodedEvent,
        names: &HashMap<u32, String>,
        modes: &HashMap<u32, Mode>,
        dns: &DnsNames,
    ) {
        let kind = Kind {
            sock_cgroup: e.sock_cgroup,
            guard_id: e.guard_id,
            op: e.op,
            verdict: e.verdict,
            proto: e.proto,
            addr: e.addr,
            port: e.port,
            reason: e.reason,
        };
        if let Some(seen) = self.seen.get_mut(&kind) {
            seen.repeats += 1;
            seen.count += e.count;
            seen.last = e.clone();
            return;
        }
        if self.seen.len() >= MAX_KINDS {
            self.flush(names, modes, dns, Some(Instant::now()));
        }
        self.emit(e, names, modes, dns, 0, e.count);
        self.seen.insert(kind, Seen { first: Instant::now(), repeats: 0, count: 0, last: e.clone() });
    }

    /// Summarises kinds whose window has ended (all of them when `now` is
    /// None, e.g. at shutdown).
    pub(crate) fn flush(
        &mut self,
        names: &HashMap<u32, String>,
        modes: &HashMap<u32, Mode>,
        dns: &DnsNames,
        now: Option<Instant>,
    ) {
        let due: Vec<Kind> = self
            .seen
            .iter()
            .filter(|(_, s)| {
                now.is_none_or(|n| n.duration_since(s.first) >= WINDOW) || self.seen.len() >= MAX_KINDS
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            if let Some(s) = self.seen.remove(&k)
                && s.repeats > 0
            {
                self.emit(&s.last, names, modes, dns, s.repeats, s.count);
            }
        }
    }

    /// For a refused connect or send of a guard with DNS names: what the
    /// kernel had learned for the peer when it refused (the event's
    /// reason), with the names the learned entry holds now.
    fn dns_state(&self, e: &DecodedEvent, dns: &DnsNames) -> Option<DnsNote> {
        let outbound = matches!(e.op, Some(Op::Connect | Op::Sendmsg));
        let state = match e.reason {
            REASON_DNS_NEVER => DnsNoteState::Never,
            REASON_DNS_EXPIRED => DnsNoteState::Expired,
            REASON_DNS_OTHER_PORT => DnsNoteState::OtherPort,
            _ => return None,
        };
        if !outbound {
            return None;
        }
        let named = |hashes: &[u64]| -> Vec<String> {
            hashes
                .iter()
                .map(|h| dns.by_hash.get(h).cloned().unwrap_or_else(|| format!("{h:016x}")))
                .collect()
        };
        let (names, expired_ago_s) = match self.learned.as_ref().map(|l| l.state(e.guard_cgroup, e.addr)) {
            Some(LearnedState::Expired { names, ago_s }) => (named(&names), Some(ago_s)),
            Some(LearnedState::Live { names }) => (named(&names), None),
            Some(LearnedState::Never) | None => (Vec::new(), None),
        };
        let names = if state == DnsNoteState::Never { Vec::new() } else { names };
        let expired_ago_s = expired_ago_s.filter(|_| state == DnsNoteState::Expired);
        Some(DnsNote { state, names, expired_ago_s })
    }

    fn emit(
        &mut self,
        e: &DecodedEvent,
        names: &HashMap<u32, String>,
        modes: &HashMap<u32, Mode>,
        dns: &DnsNames,
        repeats: u64,
        count: u64,
    ) {
        let guard = if e.guard_id == ORPHAN_GUARD_ID {
            "(unknown guard)".to_owned()
        } else {
            names.get(&e.guard_id).cloned().unwrap_or_else(|| format!("guard-id:{}", e.guard_id))
        };
        let cgroup = self.names.name(e.sock_cgroup);
        let guard_cgroup = self.names.name(e.guard_cgroup);
        let w = workload::parse(&cgroup);
        // The thread's name says less than the process's (`isc-net-0000`
        // in `named`): both are logged when they differ.
        let process = if e.process == e.comm { "" } else { e.process.as_str() };
        let mode = modes.get(&e.guard_id).map_or("?", |m| m.as_str());
        let op = e.op.map_or("?", |o| o.as_str());
        let verdict = e.verdict.map_or("?", |v| v.as_str());
        let inbound = e.op.is_some_and(Op::is_inbound);
        // Inbound: the peer's address and port, then the local port.
        let peer_port = if inbound { e.peer_port } else { e.port };
        let peer = match e.addr {
            IpAddr::V4(a) => format!("{a}:{peer_port}"),
            IpAddr::V6(a) => format!("[{a}]:{peer_port}"),
        };
        let reason = InboundReason::from_kernel(e.reason).filter(|_| inbound);
        let target = if inbound {
            format!("{peer} -> port {}/{}", e.port, e.proto)
        } else {
            format!("{peer}/{}", e.proto)
        };
        let learned = self.dns_state(e, dns);
        let why = match (&reason, &learned) {
            (Some(r), _) => format!(": {}", r.explain()),
            (None, Some(l)) => format!(": {}", l.explain()),
            (None, None) => String::new(),
        };
        let what = match (e.verdict, e.op) {
            // A kernel-chosen port: nothing in the address says why, so say it.
            (Some(Verdict::Audited), Some(Op::Bind)) if e.port == 0 => format!(
                "audit: bind to port 0 would be refused: guard {guard} does not set allow_ephemeral_bind"
            ),
            (_, Some(Op::Bind)) if e.port == 0 => {
                format!("bind to port 0 refused: guard {guard} does not set allow_ephemeral_bind")
            }
            (Some(Verdict::Audited), _) => format!("audit: {op} {target} would be denied{why}"),
            _ => format!("denied {op} {target}{why}"),
        };
        // The kernel sends the first denial of a kind per interval and counts
        // the rest; an event may stand for several.
        let message = match (repeats, count) {
            (0, 1) => what,
            (0, n) => format!("{what} ({n} times)"),
            (_, n) => format!("{what} (repeated {n} more times)"),
        };
        let record_op = match e.op {
            Some(Op::Bind) => Some(RecordOp::Bind),
            Some(Op::Connect) => Some(RecordOp::Connect),
            Some(Op::Sendmsg) => Some(RecordOp::Sendmsg),
            Some(Op::Socket) => Some(RecordOp::Socket),
            Some(Op::Listen) => Some(RecordOp::Listen),
            Some(Op::Accept) => Some(RecordOp::Accept),
            Some(Op::Receive) => Some(RecordOp::Receive),
            None => None,
        };
        if let Some(op) = record_op {
            self.records.push(Record {
                guard: Some(guard.clone()),
                guard_cgroup: Some(guard_cgroup.clone()),
                mode: Some(mode.to_owned()),
                count: count.max(1),
                peer_port: inbound.then_some(e.peer_port),
                reason,
                dns: learned.clone(),
                ..Record::new(
                    if e.verdict == Some(Verdict::Audited) {
                        RecordKind::Audited
                    } else {
                        RecordKind::Denied
                    },
                    cgroup.clone(),
                    w.unit.clone(),
                    w.pod_uid.clone(),
                    e.pid,
                    e.comm.clone(),
                    op,
                    e.proto,
                    e.addr,
                    e.port,
                )
            });
        }
        tracing::warn!(
            event = "denial",
            guard = %guard,
            guard_cgroup = %guard_cgroup,
            mode,
            cgroup = %cgroup,
            unit = w.unit.as_deref().unwrap_or(""),
            pod_uid = w.pod_uid.as_deref().unwrap_or(""),
            container_id = w.container_id.as_deref().unwrap_or(""),
            pid = e.pid,
            comm = %e.comm,
            process,
            exe = %e.exe,
            op,
            proto = %e.proto,
            addr = %e.addr,
            port = e.port,
            peer_port = if inbound { e.peer_port } else { 0 },
            reason = reason.map_or("", |r| match r {
                InboundReason::NotFrom => "not_from",
                InboundReason::UnapprovedPort => "unapproved_port",
            }),
            dns = learned.as_ref().map_or("", |l| l.state.as_str()),
            dns_names = learned.as_ref().map_or(String::new(), |l| l.names.join(",")),
            verdict,
            repeats,
            count,
            generation = e.generation,
            "{message}"
        );
    }
}
