//! What the kernel reports: decisions (counted, and the first of a kind
//! per interval sent as a [`DecisionEvent`]), the live ports it keeps
//! ([`LivePort`]), the closes of ports that lived long enough
//! ([`PortEvent`]) and the brief ones it counts ([`BriefPortKey`]). One
//! event type per ring buffer.

/// Operations a guard judges, as counted and reported.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(Hash, PartialOrd, Ord))]
pub enum Op {
    Bind = 0,
    Connect = 1,
    Sendmsg = 2,
    /// Creating a socket of a kind the sock_addr hooks cannot see (raw,
    /// SCTP, packet) in a guarded cgroup.
    Socket = 3,
    /// listen() on a socket that no judged bind gave its port.
    Listen = 4,
    /// An inbound TCP connection (its SYN) to a listener in a guarded
    /// cgroup. `port` is the local port, the peer's port is `peer_port`.
    Accept = 5,
    /// An inbound UDP datagram to a socket in a guarded cgroup; ports as
    /// for `Accept`.
    Receive = 6,
}
/// Number of [`Op`] variants: the counter array has a row per op.
pub const OP_COUNT: usize = 7;

impl Op {
    pub const ALL: [Op; OP_COUNT] =
        [Op::Bind, Op::Connect, Op::Sendmsg, Op::Socket, Op::Listen, Op::Accept, Op::Receive];

    /// Inbound: the address is the peer's, the port the local one.
    pub const fn is_inbound(self) -> bool {
        matches!(self, Op::Accept | Op::Receive)
    }

    pub fn from_u8(v: u8) -> Option<Op> {
        Op::ALL.into_iter().find(|op| *op as u8 == v)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Bind => "bind",
            Op::Connect => "connect",
            Op::Sendmsg => "sendmsg",
            Op::Socket => "socket",
            Op::Listen => "listen",
            Op::Accept => "accept",
            Op::Receive => "receive",
        }
    }
}

/// Verdicts, as counted and reported.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(Hash, PartialOrd, Ord))]
pub enum Verdict {
    Allowed = 0,
    Denied = 1,
    /// A violation let through because the guard is in audit mode.
    Audited = 2,
}
/// Number of [`Verdict`] variants: the counter array has a column per verdict.
pub const VERDICT_COUNT: usize = 3;

impl Verdict {
    pub const ALL: [Verdict; VERDICT_COUNT] = [Verdict::Allowed, Verdict::Denied, Verdict::Audited];

    pub fn from_u8(v: u8) -> Option<Verdict> {
        Verdict::ALL.into_iter().find(|verdict| *verdict as u8 == v)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allowed => "allowed",
            Verdict::Denied => "denied",
            Verdict::Audited => "audited",
        }
    }
}

/// A denial or an audit-mode violation, sent through `PG_EVENTS`: the
/// first of its kind on its CPU in an interval (see
/// [`crate::keys::DenialCount`]); `count` says how many it stands for.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DecisionEvent {
    /// The cgroup the socket belongs to.
    pub sock_cgroup: u64,
    /// The guarded cgroup whose policy was consulted.
    pub guard_cgroup: u64,
    pub pid_tgid: u64,
    pub generation: u64,
    /// Decisions of this kind on this CPU since the previous event of the
    /// kind, this one included (>= 1).
    pub count: u64,
    pub guard_id: u32,
    pub port: u16,
    /// An [`Op`].
    pub op: u8,
    /// `AF_INET` or `AF_INET6`: the family of `addr` as judged (a v4-mapped
    /// peer is reported as `AF_INET`).
    pub family: u8,
    /// The IP protocol number.
    pub proto: u8,
    /// A [`Verdict`].
    pub verdict: u8,
    /// For inbound ops: the peer's port (then `port` is the local port).
    pub peer_port: u16,
    /// `REASON_*`: why an inbound packet was refused.
    pub reason: u8,
    pub _pad: [u8; 3],
    pub comm: [u8; 16],
    /// v4 addresses in the first 4 bytes.
    pub addr: [u8; 16],
}

/// A live port of a guarded cgroup (a TCP listener, a bound UDP socket),
/// as the kernel keeps it in `PG_LIVE_PORTS`, keyed by socket cookie, from
/// the moment it goes live until its socket is released.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LivePort {
    pub sock_cgroup: u64,
    /// 0 when no guard covers the socket.
    pub guard_cgroup: u64,
    /// The task that made it live.
    pub pid_tgid: u64,
    pub generation: u64,
    /// The socket cookie (also the map key).
    pub cookie: u64,
    /// When it went live: `bpf_ktime_get_boot_ns()` (CLOCK_BOOTTIME), so the
    /// trail dates a port by the kernel, not by when the agent read it
    /// (the agent may have been down then).
    pub opened_boot_ns: u64,
    /// `UNGUARDED_ID` when no guard covers the socket.
    pub guard_id: u32,
    pub port: u16,
    pub family: u8,
    pub proto: u8,
    pub comm: [u8; 16],
    /// v4 addresses in the first 4 bytes.
    pub addr: [u8; 16],
}

/// A port that lived at least `BRIEF_PORT_NS` closing, sent through
/// `PG_PORT_EVENTS` with its whole `PG_LIVE_PORTS` entry (the release hook
/// cannot read the address, the entry has it). Brief ports send nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PortEvent {
    pub live: LivePort,
    /// When the socket was released (CLOCK_BOOTTIME).
    pub closed_boot_ns: u64,
    /// The task that released it (it may differ from the one that opened).
    pub pid_tgid: u64,
    pub comm: [u8; 16],
}

/// `PG_BRIEF_PORTS` key: ports that closed within `BRIEF_PORT_NS`, counted
/// per CPU (a `u64` per key and CPU), never sent.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(Hash))]
pub struct BriefPortKey {
    pub sock_cgroup: u64,
    pub guard_id: u32,
    pub port: u16,
    pub proto: u8,
    pub family: u8,
    pub addr: [u8; 16],
}
