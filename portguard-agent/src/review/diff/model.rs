//! What `portguard diff` reports: per guard, what a change opens and
//! closes, and notes that open and close nothing. Serialised as the JSON
//! output; `text` renders the same model for people.

use std::{fmt, net::IpAddr};

use ipnet::IpNet;
use serde::Serialize;

use super::Ports;

/// What changes between two policies, guard by guard (sorted by name).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PolicyDiff {
    pub guards: Vec<GuardDiff>,
    pub summary: Summary,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct Summary {
    /// Effects that allow more, over guards whose changes are not reports only.
    pub opens: usize,
    pub closes: usize,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct GuardDiff {
    pub name: String,
    pub change: Change,
    pub mode: OldNew<&'static str>,
    pub cgroup: OldNew<String>,
    /// Audit in both policies: the opens and closes change only what is
    /// reported, since an audit guard refuses nothing.
    pub reports_only: bool,
    pub opens: Vec<Effect>,
    pub closes: Vec<Effect>,
    /// What stays allowed when the change closes everything else (a guard
    /// now enforced on a cgroup that was unguarded or audited).
    pub allowed: Vec<Effect>,
    pub notes: Vec<Note>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Change {
    Added,
    Removed,
    Changed,
    Unchanged,
}

/// A guard attribute in OLD and NEW; `None` where the guard is absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct OldNew<T> {
    pub old: Option<T>,
    pub new: Option<T>,
}

/// One thing a change allows (in `opens`, `allowed`) or refuses (in `closes`).
/// Field order is sort order: bind output is sorted by address, connect
/// output by peer, then protocol.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Effect {
    /// Every operation in `cgroup`: no longer refused (`reason` unguarded or
    /// audit), or refused except what the guard lists (`reason` enforce).
    Everything { cgroup: String, reason: Reason },
    /// `bind()` to port 0 (`allow_ephemeral_bind`).
    EphemeralBind,
    /// Raw, SCTP and packet sockets (`allow_raw_sockets`).
    RawSockets,
    Bind {
        address: BindAddress,
        proto: Protos,
        ports: Ports,
        /// Addresses where some of these ports do not change: already
        /// allowed (in opens) or still allowed (in closes).
        except: Vec<Region>,
    },
    Connect {
        peer: Peer,
        proto: Protos,
        ports: Ports,
        /// Narrower peers where some of these ports do not change: already
        /// allowed (in opens) or still allowed (in closes).
        except: Vec<Region>,
    },
    /// `connect()`/`sendto()` to the addresses the guard's workloads learn
    /// for a DNS name from the answers they receive.
    ConnectName { name: String, proto: Protos, ports: Ports },
    /// Peers that may reach ports the guard approves (a TCP connection,
    /// a UDP datagram), by the bind rules' `from` (see `inbound`).
    Inbound {
        /// The socket's address: `Any` for address-less rules.
        address: BindAddress,
        from: Peer,
        proto: Protos,
        ports: Ports,
        /// Narrower peers where these ports do not change.
        except: Vec<Region>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Reason {
    Unguarded,
    Audit,
    Enforce,
}

/// Something a reviewer should see that opens or closes nothing.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Note {
    /// A rule in NEW whose ports broader rules in NEW already allow: it is
    /// redundant. Only redundancies the change introduces are noted.
    Shadowed { rule: Effect, by: Vec<Region> },
    /// A rule no longer listed in NEW whose ports broader rules in NEW
    /// still allow, so removing it closes nothing.
    StillAllowed { rule: Effect, by: Vec<Region> },
    /// A name rule that changed beside network rules of the same protocol
    /// and ports: whether the name's addresses fall in those networks
    /// depends on DNS answers, so the diff cannot say what it adds.
    NameMeetsNetworks { rule: Effect, networks: Vec<Region> },
    /// The resolvers a guard with DNS names may query (udp/53) changed:
    /// its names are learned from answers of the `gained` networks too;
    /// what the kernel learned before stops counting once any network is
    /// `lost` (its workloads must resolve again).
    ResolversChanged { gained: Vec<String>, lost: Vec<String> },
    /// Names the agent now resolves itself (`resolve = "agent"`): their
    /// addresses open without the workload's own lookup; and names it no
    /// longer resolves.
    AgentResolves { gained: Vec<String>, lost: Vec<String> },
}

/// Ports at one address or peer network ("any" for every address).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub(crate) struct Region {
    pub at: String,
    pub ports: Ports,
}

/// The address a bind effect is about. `Any` is what address-less rules
/// allow: every address, including ones no rule names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum BindAddress {
    Any,
    Ip(IpAddr),
}

/// The peers a connect effect is about: all of IPv4 and IPv6, or one network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Peer {
    Any,
    Net(IpNet),
}

/// The protocols an effect covers; `Both` when tcp and udp have the same effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Protos {
    Tcp,
    Udp,
    Both,
}

impl fmt::Display for BindAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindAddress::Any => f.write_str("any"),
            BindAddress::Ip(ip) => ip.fmt(f),
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Any => f.write_str("any"),
            Peer::Net(net) => net.fmt(f),
        }
    }
}

impl fmt::Display for Protos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protos::Tcp => "tcp",
            Protos::Udp => "udp",
            Protos::Both => "tcp+udp",
        })
    }
}

macro_rules! serialize_as_display {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    )*};
}
serialize_as_display!(BindAddress, Peer, Protos);

impl PolicyDiff {
    pub(crate) fn is_empty(&self) -> bool {
        self.summary.opens == 0 && self.summary.closes == 0
    }
}
