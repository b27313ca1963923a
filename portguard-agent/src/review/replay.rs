//! `portguard replay --policy NEW --events TRAIL`: what a policy change
//! would have done to operations a running agent recorded. Each distinct
//! operation in the trail (ports that went live, refused and audited
//! operations, inbound connections and datagrams refused or audited) is
//! judged under NEW and compared with what happened.

use std::{collections::BTreeMap, net::IpAddr, ops::RangeInclusive, path::Path, process::ExitCode};

use portguard_common::Transport;
use serde::Serialize;

use crate::{
    EXIT_BAD_INPUT,
    cli::OutputFormat,
    policy::{self, Policy, Proto, eval::Judgement},
    trail::{self, DnsNoteState, InboundReason, Record, RecordKind, RecordOp},
};

/// What happened to an operation, or would under NEW.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Outcome {
    /// A rule allowed it, or no guard covered it.
    Allowed,
    /// No rule allowed it; an audit-mode guard let it through.
    Audited,
    /// Refused.
    Denied,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub(crate) struct Operation {
    pub cgroup: String,
    pub op: RecordOp,
    pub proto: String,
    pub addr: IpAddr,
    pub port: u16,
    /// A refused connect to an address the workload held a valid DNS
    /// answer for: the guard's names (or patterns) it answered, as the
    /// trail recorded them. NEW allows it when one of its rules allows the
    /// port to one of these names.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub answered_for: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Change {
    #[serde(flatten)]
    pub operation: Operation,
    pub recorded: Outcome,
    pub new: Outcome,
    /// The guard judging it under NEW.
    pub guard: Option<String>,
    /// Inbound records NEW refuses: why (`not_from`, `unapproved_port`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_reason: Option<InboundReason>,
    /// Times it was recorded.
    pub count: u64,
    pub comm: String,
}

#[derive(Debug, Default, Serialize)]
pub(crate) struct Replay {
    /// Went through when recorded (allowed or audited); NEW refuses it.
    pub newly_denied: Vec<Change>,
    /// Refused or audited when recorded; a rule of NEW allows it.
    pub newly_allowed: Vec<Change>,
    /// Allowed when recorded; under NEW it only passes because its guard audits.
    pub newly_audited: Vec<Change>,
    pub unchanged: usize,
    /// Trail lines that name no judgeable operation (closes, socket kinds).
    pub skipped: usize,
}

/// `ephemeral` is the kernel's local port range: a port that went live in
/// it is taken as kernel-chosen (a bind to port 0) when no rule lists it,
/// since the trail records the port the kernel picked.
pub(crate) fn replay(policy: &Policy, records: &[Record], ephemeral: RangeInclusive<u16>) -> Replay {
    // Operation -> (most permissive recorded outcome, count, comm, went live,
    // the guard the agent reported: the only way to know a pod guard).
    let mut ops: BTreeMap<Operation, (Outcome, u64, String, bool, Option<String>)> = BTreeMap::new();
    let mut out = Replay::default();
    for r in records {
        let recorded = match r.event {
            RecordKind::PortOpened | RecordKind::PortBrief => Outcome::Allowed,
            RecordKind::Audited => Outcome::Audited,
            RecordKind::Denied => Outcome::Denied,
            RecordKind::PortClosed => {
                out.skipped += 1;
                continue;
            }
        };
        if r.op.action().is_none() && !r.op.is_inbound() {
            out.skipped += 1;
            continue;
        }
        let addr = crate::policy::eval::canonical(r.addr);
        // Only a live answer counts: an expired one is refused under any
        // policy until the workload resolves again.
        let answered_for = match &r.dns {
            Some(note) if note.state == DnsNoteState::OtherPort => note.names.clone(),
            _ => Vec::new(),
        };
        let key = Operation {
            cgroup: r.cgroup.clone(),
            op: r.op,
            proto: r.proto.to_string(),
            addr,
            port: r.port,
            answered_for,
        };
        let e = ops.entry(key).or_insert((recorded, 0, r.comm.clone(), false, r.guard.clone()));
        e.3 |= matches!(r.event, RecordKind::PortOpened | RecordKind::PortBrief);
        // The most permissive recorded outcome stands for the operation.
        e.0 = e.0.min(recorded);
        e.1 += r.count;
    }
    let locals = local_addresses(records);
    for (operation, (recorded, count, comm, went_live, reported)) in ops {
        // Another protocol than TCP and UDP matches no rule: never TCP's.
        let transport = operation.proto.parse().unwrap_or(Transport::Other(0));
        let (cgroup, reported) = (&operation.cgroup, reported.as_deref());
        let mut new_reason = None;
        let j = match operation.op.action() {
            Some(action) => {
                let judge =
                    |port| policy.judge_observed(cgroup, reported, action, transport, operation.addr, port);
                let mut j = judge(operation.port);
                if !j.allowed() && went_live && ephemeral.contains(&operation.port) {
                    j = judge(0);
                }
                if let (Judgement::Violation { guard }, Some(proto)) = (j, Proto::of(transport))
                    && let Some(rule) = guard.allows_by_name(proto, operation.port, &operation.answered_for)
                {
                    j = Judgement::Allowed { guard, rule };
                }
                j
            }
            // Inbound: `addr` is the peer, `port` the local port. The
            // kernel judges only TCP and UDP sockets' packets.
            None => match Proto::of(transport) {
                Some(proto) => {
                    let local = locals.get(&(cgroup.clone(), transport, operation.port)).copied().flatten();
                    let inbound =
                        policy.judge_inbound(cgroup, reported, proto, local, operation.port, operation.addr);
                    new_reason = inbound.refused;
                    inbound.judgement
                }
                None => Judgement::Unguarded,
            },
        };
        let new = if j.allowed() {
            Outcome::Allowed
        } else if j.passes() {
            Outcome::Audited
        } else {
            Outcome::Denied
        };
        let guard = j.guard().map(|g| g.name.clone());
        let change = Change { operation, recorded, new, guard, new_reason, count, comm };
        match (recorded, new) {
            (a, b) if a == b => out.unchanged += 1,
            (Outcome::Allowed | Outcome::Audited, Outcome::Denied) => out.newly_denied.push(change),
            (Outcome::Denied | Outcome::Audited, Outcome::Allowed) => out.newly_allowed.push(change),
            (Outcome::Allowed, Outcome::Audited) => out.newly_audited.push(change),
            // Denied before, audited now: it goes through again, reported.
            _ => out.newly_allowed.push(change),
        }
    }
    out
}

/// The local address of each (socket cgroup, protocol, port) that went
/// live in the trail, for judging inbound records (which carry only the
/// local port): `None` when it went live on more than one address.
fn local_addresses(records: &[Record]) -> BTreeMap<(String, Transport, u16), Option<IpAddr>> {
    let mut out: BTreeMap<(String, Transport, u16), Option<IpAddr>> = BTreeMap::new();
    for r in records.iter().filter(|r| matches!(r.event, RecordKind::PortOpened | RecordKind::PortBrief)) {
        let addr = crate::policy::eval::canonical(r.addr);
        out.entry((r.cgroup.clone(), r.proto, r.port))
            .and_modify(|seen| {
                if *seen != Some(addr) {
                    *seen = None;
                }
            })
            .or_insert(Some(addr));
    }
    out
}

fn text(r: &Replay) -> String {
    let mut out = String::new();
    let mut section = |title: &str, changes: &[Change]| {
        if changes.is_empty() {
            return;
        }
        out.push_str(&format!("{title}:\n"));
        for c in changes {
            let o = &c.operation;
            let peer = match o.addr {
                IpAddr::V6(a) => format!("[{a}]:{}", o.port),
                a => format!("{a}:{}", o.port),
            };
            let what = if o.op.is_inbound() {
                // No process is named for a packet: the socket's cgroup is.
                let peer = match o.addr {
                    IpAddr::V6(a) => format!("[{a}]"),
                    a => a.to_string(),
                };
                format!("{} {}/{} from {peer} in {}", op_str(o.op), o.port, o.proto, o.cgroup)
            } else {
                let names = if o.answered_for.is_empty() {
                    String::new()
                } else {
                    format!(" (answered for {})", o.answered_for.join(", "))
                };
                format!("{} {peer}/{} from {} ({}){names}", op_str(o.op), o.proto, o.cgroup, c.comm)
            };
            let why = c.new_reason.map_or(String::new(), |r| format!(" (now: {})", r.explain()));
            out.push_str(&format!(
                "  {what}: guard {}, seen {} times, recorded {}{why}\n",
                c.guard.as_deref().unwrap_or("(none)"),
                c.count,
                outcome_str(c.recorded)
            ));
        }
    };
    section("newly denied", &r.newly_denied);
    section("newly allowed", &r.newly_allowed);
    section("newly audited (allowed, now only reported)", &r.newly_audited);
    out.push_str(&format!(
        "summary: {} newly denied, {} newly allowed, {} newly audited, {} unchanged\n",
        r.newly_denied.len(),
        r.newly_allowed.len(),
        r.newly_audited.len(),
        r.unchanged
    ));
    out
}

fn op_str(op: RecordOp) -> &'static str {
    match op {
        RecordOp::Bind => "bind",
        RecordOp::Connect => "connect",
        RecordOp::Sendmsg => "sendmsg",
        RecordOp::Socket => "socket",
        RecordOp::Listen => "listen",
        RecordOp::Accept => "accept",
        RecordOp::Receive => "receive",
    }
}

fn outcome_str(o: Outcome) -> &'static str {
    match o {
        Outcome::Allowed => "allowed",
        Outcome::Audited => "audited",
        Outcome::Denied => "denied",
    }
}

// The command line: read the files, print the report, answer with an exit code.

/// Runs `portguard replay --policy NEW --events TRAIL`: 0 once the report is
/// printed, 2 when the policy or the trail cannot be read.
pub(crate) fn run(policy_path: &Path, events: &Path, format: OutputFormat) -> ExitCode {
    let loaded = policy::load(policy_path).map_err(|e| e.to_string()).and_then(|(p, _)| {
        let records = trail::read_records(events)?;
        Ok((p, records))
    });
    let (policy, records) = match loaded {
        Ok(v) => v,
        Err(e) => {
            eprintln!("portguard: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let r = replay(&policy, &records, super::suggest::local_port_range());
    match format {
        OutputFormat::Json => println!("{}", serde_json::to_string(&r).expect("serialisable")),
        OutputFormat::Text => print!("{}", text(&r)),
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An SCTP (or any non-TCP/UDP) operation a TCP rule would allow must
    /// not replay as TCP: it matches no rule, so enforcing NEW refuses it.
    #[test]
    fn another_protocol_matches_no_rule() {
        let (policy, _) = policy::parse_and_compile(
            "new.toml",
            "[[guard]]\nname = \"app\"\ncgroup = \"/app\"\n  [[guard.connect]]\n  peer = \"10.0.0.0/8\"\n  ports = [5432]\n",
        )
        .unwrap();
        for proto in ["proto-132", "other"] {
            let line = format!(
                r#"{{"time":"t","event":"audited","guard":"app","guard_cgroup":"/app","mode":"audit","cgroup":"/app","pid":1,"comm":"db","op":"connect","proto":"{proto}","addr":"10.1.2.3","port":5432}}"#
            );
            let record: Record = serde_json::from_str(&line).unwrap();
            let r = replay(&policy, &[record], 32768..=60999);
            assert!(r.newly_allowed.is_empty(), "{proto}: judged as TCP: {r:?}");
            assert_eq!(r.newly_denied.len(), 1, "{proto}: matches no rule, so NEW refuses it: {r:?}");
            assert_eq!(r.newly_denied[0].new, Outcome::Denied);
        }
    }

    /// A refused connect to an address the workload held a live answer
    /// for (a name whose rule did not allow the port) replays as allowed
    /// once NEW allows that port to that name; an expired answer does not.
    #[test]
    fn refusals_keep_the_name_their_address_was_answered_for() {
        let (policy, _) = policy::parse_and_compile(
            "new.toml",
            "[[guard]]\nname = \"app\"\ncgroup = \"/app\"\n  [[guard.connect]]\n  peer = \"DB.example.\"\n  ports = [5432]\n",
        )
        .unwrap();
        let record = |addr: &str, state: &str| -> Record {
            let line = format!(
                r#"{{"time":"t","event":"denied","guard":"app","guard_cgroup":"/app","mode":"enforce","cgroup":"/app","pid":1,"comm":"psql","op":"connect","proto":"tcp","addr":"{addr}","port":5432,"dns":{{"state":"{state}","names":["db.example"]}}}}"#
            );
            serde_json::from_str(&line).unwrap()
        };
        let r = replay(
            &policy,
            &[record("10.1.2.3", "other_port"), record("10.1.2.4", "expired")],
            32768..=60999,
        );
        assert_eq!(r.newly_allowed.len(), 1, "{r:?}");
        let allowed = &r.newly_allowed[0];
        assert_eq!(
            (allowed.operation.addr.to_string(), allowed.operation.answered_for.clone()),
            ("10.1.2.3".into(), vec!["db.example".to_owned()])
        );
        assert_eq!(r.unchanged, 1, "the expired answer stays refused: {r:?}");
        assert!(
            text(&r).contains("connect 10.1.2.3:5432/tcp from /app (psql) (answered for db.example)"),
            "{}",
            text(&r)
        );
    }
}
