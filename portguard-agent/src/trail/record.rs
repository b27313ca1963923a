//! One line of the audit trail: what the agent saw, in a form that
//! `replay` and `suggest` read back. The schema is the README's.

use std::net::IpAddr;

use portguard_common::Transport;
use serde::{Deserialize, Serialize};

use crate::{
    inventory::{Approval, Audience, RuleInfo},
    policy::{Proto, eval::Action},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RecordKind {
    /// A port went live: a TCP listen or a bound UDP socket.
    PortOpened,
    /// A port reported by `port_opened` closed.
    PortClosed,
    /// Ports live for less than a second, summed: `count` of them opened
    /// and closed since the last such line (a bind-and-close loop).
    PortBrief,
    /// An operation an enforcing guard refused.
    Denied,
    /// An operation an auditing guard would have refused, let through.
    Audited,
}

/// The operation as judged. `port_opened`/`port_closed` carry `bind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RecordOp {
    Bind,
    Connect,
    Sendmsg,
    Socket,
    Listen,
    /// An inbound TCP connection: `addr` is the peer's, `port` the local
    /// (approved) port, `peer_port` the peer's.
    Accept,
    /// An inbound UDP datagram, fields as for `accept`.
    Receive,
}

/// Why an inbound connection or datagram was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum InboundReason {
    /// The source is not in the `from` of the rule approving the port.
    NotFrom,
    /// No bind rule approves the port: a TCP listener that went live
    /// without a judged bind, or a UDP client socket hearing from a peer
    /// it did not send to.
    UnapprovedPort,
}

impl InboundReason {
    pub(crate) fn from_kernel(reason: u8) -> Option<InboundReason> {
        match reason {
            portguard_common::REASON_NOT_FROM => Some(InboundReason::NotFrom),
            portguard_common::REASON_UNAPPROVED_PORT => Some(InboundReason::UnapprovedPort),
            _ => None,
        }
    }

    /// As the log line says it.
    pub(crate) fn explain(self) -> &'static str {
        match self {
            InboundReason::NotFrom => "the peer is not in the from of the rule approving the port",
            InboundReason::UnapprovedPort => {
                "no bind rule approves the port (a listener that went live without a judged bind, or a UDP client hearing from a peer it did not send to)"
            }
        }
    }
}

/// For a refused or audited connect/send of a guard with DNS names: what
/// the kernel had learned for the peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DnsNote {
    pub state: DnsNoteState,
    /// The guard's names the peer was an answer for (none for `never`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// For `expired`: how long ago the last of those answers expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired_ago_s: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum DnsNoteState {
    /// No answer for one of the guard's names gave the workload this
    /// address (or its entry was evicted).
    Never,
    /// It did, and every such answer expired.
    Expired,
    /// It did, for names whose rules do not allow this port or protocol.
    OtherPort,
}

impl DnsNoteState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DnsNoteState::Never => "never",
            DnsNoteState::Expired => "expired",
            DnsNoteState::OtherPort => "other_port",
        }
    }
}

impl DnsNote {
    /// As the log line says it.
    pub(crate) fn explain(&self) -> String {
        match self.state {
            DnsNoteState::Never => {
                "no DNS answer for a name of the guard gave the workload this address".to_owned()
            }
            DnsNoteState::Expired => format!(
                "the workload's DNS answers for {} gave this address, but expired {} s ago",
                self.names.join(", "),
                self.expired_ago_s.unwrap_or(0)
            ),
            DnsNoteState::OtherPort => format!(
                "the address is an answer for {}, whose rules do not allow this port or protocol",
                self.names.join(", ")
            ),
        }
    }
}

impl RecordOp {
    /// A packet received (`accept`, `receive`): `addr` is the peer's and
    /// `port` the local one.
    pub(crate) fn is_inbound(self) -> bool {
        matches!(self, RecordOp::Accept | RecordOp::Receive)
    }

    /// The rule kind that decides it, if a rule can.
    pub(crate) fn action(self) -> Option<Action> {
        match self {
            RecordOp::Bind => Some(Action::Bind),
            RecordOp::Connect | RecordOp::Sendmsg => Some(Action::Connect),
            RecordOp::Socket | RecordOp::Listen | RecordOp::Accept | RecordOp::Receive => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    /// RFC 3339, UTC.
    pub time: String,
    pub event: RecordKind,
    /// The guard covering the socket; absent when unguarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard_cgroup: Option<String>,
    /// "enforce" or "audit", the guard's mode at the time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// The socket's cgroup, relative to the agent's cgroup root.
    pub cgroup: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    pub pid: u32,
    pub comm: String,
    pub op: RecordOp,
    /// "tcp", "udp", or "proto-N" for another IP protocol ("other" from
    /// older agents reads as `Other(0)`).
    #[serde(with = "transport_text")]
    pub proto: Transport,
    pub addr: IpAddr,
    pub port: u16,
    /// How many identical operations this line stands for (denials are
    /// coalesced per second).
    #[serde(default = "one")]
    pub count: u64,
    /// For port events: approved, unapproved or unguarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Approval>,
    /// For approved ports: the rule, with its catalog entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<RuleInfo>,
    /// For port events: who may reach the port (`inventory::Audience`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<Audience>,
    /// For `port_closed`: seconds the port was live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_seconds: Option<u64>,
    /// For `accept` and `receive`: the peer's port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_port: Option<u16>,
    /// For refused or audited `accept` and `receive`: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<InboundReason>,
    /// For refused or audited connects and sends of guards with DNS names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsNote>,
}

fn one() -> u64 {
    1
}

impl Record {
    /// A line about one operation, stamped now and standing for one
    /// occurrence. The arguments are the fields every line has, in the
    /// struct's order; guard, mode, status, rule and duration start empty,
    /// for each caller to set what it knows.
    #[expect(clippy::too_many_arguments, reason = "one per field every record has; the rest start empty")]
    pub(crate) fn new(
        event: RecordKind,
        cgroup: String,
        unit: Option<String>,
        pod_uid: Option<String>,
        pid: u32,
        comm: String,
        op: RecordOp,
        proto: Transport,
        addr: IpAddr,
        port: u16,
    ) -> Record {
        Record {
            time: super::now_rfc3339(),
            event,
            guard: None,
            guard_cgroup: None,
            mode: None,
            cgroup,
            unit,
            pod_uid,
            pid,
            comm,
            op,
            proto,
            addr,
            port,
            count: 1,
            status: None,
            rule: None,
            audience: None,
            open_seconds: None,
            peer_port: None,
            reason: None,
            dns: None,
        }
    }

    /// The rule protocol it is judged by; `None` for one no rule names.
    pub(crate) fn proto(&self) -> Option<Proto> {
        Proto::of(self.proto)
    }
}

/// `Transport` in the trail as its text (`Display`/`FromStr`), so the
/// JSON stays what it was for TCP and UDP.
mod transport_text {
    use portguard_common::Transport;
    use serde::{Deserialize as _, Deserializer, Serializer, de::Error as _};

    pub(super) fn serialize<S: Serializer>(t: &Transport, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(t)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Transport, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(d)?;
        text.parse().map_err(|e| D::Error::custom(format!("proto {text:?}: {e}")))
    }
}

/// Reads a JSON-lines trail; a line that is not a record is an error that
/// names the line, so a truncated or foreign file is never half-read.
pub(crate) fn read_records(path: &std::path::Path) -> Result<Vec<Record>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read events: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !super::verification::is_verification(l))
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| format!("{}:{}: not a portguard event: {e}", path.display(), i + 1))
        })
        .collect()
}
