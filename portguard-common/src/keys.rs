//! Keys and values of the maps both sides read and write. Each is
//! `#[repr(C)]`, made of fixed-size integers, with padding spelled out.

use crate::{MAX_CGROUP_DEPTH, MAX_PORT_RANGES, MAX_PREFIX_LENS};

/// `PG_SK_STAMPS` value: socket-local storage, created with the socket
/// and freed with it by the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SockStamp {
    /// The cgroup the socket was created in.
    pub sock_cgroup: u64,
    /// The guarded cgroup that covers it, valid when `guarded == STAMP_GUARDED`.
    pub guard_cgroup: u64,
    /// Generation under which the fields below were resolved.
    pub generation: u64,
    pub guarded: u32,
    /// `STAMP_BOUND`: a bind hook allowed (or audited) an explicit bind, so
    /// a later listen() is on a port the policy saw.
    pub flags: u32,
    /// The covering guard as the generation's slot holds it, cached so that
    /// an operation costs no guard lookup.
    pub guard: GuardInfo,
}

/// `PG_ANCESTRY` value, keyed by cgroup id (u64): `ids[level]` is the id of
/// the ancestor at that level (0 = hierarchy root, `depth - 1` = the cgroup).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Ancestry {
    pub depth: u32,
    pub _pad: u32,
    pub ids: [u64; MAX_CGROUP_DEPTH],
}

/// `PG_GUARDS` key: a guarded cgroup in one slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(Hash, PartialOrd, Ord))]
pub struct GuardKey {
    pub cgroup_id: u64,
    pub slot: u32,
    pub _pad: u32,
}

/// `PG_GUARDS` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuardInfo {
    pub guard_id: u32,
    /// `MODE_ENFORCE` or `MODE_AUDIT`.
    pub mode: u32,
    pub flags: u32,
    pub v4_prefix_count: u8,
    pub v6_prefix_count: u8,
    pub _pad: u16,
    /// Which resolvers the guard's DNS learning trusts, as an epoch: the
    /// agent keeps it across a reload that leaves every resolver the guard
    /// could query reachable, and draws a new one when one is taken away
    /// (or the cgroup passes to a guard that reaches fewer). Queries and
    /// learned addresses carry the epoch they were made under; one of
    /// another epoch teaches or allows nothing.
    pub dns_epoch: u32,
    pub _pad2: u32,
    /// Peer prefix lengths with connect entries, longest first.
    pub v4_prefix_lens: [u8; MAX_PREFIX_LENS],
    pub v6_prefix_lens: [u8; MAX_PREFIX_LENS],
}

/// `PG_BIND_RULES` key. v4 addresses are stored v4-mapped (::ffff:a.b.c.d),
/// so a bind to a mapped address on a v6 socket meets the same rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(Hash, PartialOrd, Ord))]
pub struct BindKey {
    pub guard_id: u32,
    pub slot: u8,
    pub proto: u8,
    /// `BIND_ADDR_ANY` (then `addr` is all zero) or `BIND_ADDR_EXACT`.
    pub addr_kind: u8,
    pub _pad: u8,
    pub port: u16,
    pub _pad2: u16,
    pub addr: [u8; 16],
}

/// `PG_BIND_RULES` value: which policy rule allowed it (for reports), and
/// who may reach the port. With `RULE_HAS_FROM` set, a packet's source
/// must match a `PG_FROM_RULES` entry of this rule at one of the prefix
/// lengths listed here (longest first); without it, any peer may.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleRef {
    pub rule_index: u32,
    /// `RULE_HAS_FROM` or 0.
    pub flags: u8,
    pub v4_from_count: u8,
    pub v6_from_count: u8,
    pub _pad: u8,
    pub v4_from_lens: [u8; MAX_PREFIX_LENS],
    pub v6_from_lens: [u8; MAX_PREFIX_LENS],
}

/// `PG_FROM_RULES` key: one network of a bind rule's `from`, `addr`
/// masked to `prefix_len` bits, v4 networks in the first 4 bytes. The
/// value (a `u32`, always 1) only marks presence.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(Hash, PartialOrd, Ord))]
pub struct FromKey {
    pub guard_id: u32,
    pub rule_index: u32,
    pub slot: u8,
    pub family: u8,
    pub prefix_len: u8,
    pub _pad: u8,
    pub addr: [u8; 16],
}

/// `PG_UDP_PEERS` key: a UDP socket (by cookie) and a peer (address as
/// judged, v4 in the first 4 bytes, and port, host order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(Hash))]
pub struct UdpPeerKey {
    pub cookie: u64,
    pub port: u16,
    pub family: u8,
    pub _pad: [u8; 5],
    pub addr: [u8; 16],
}

/// `PG_UDP_PEERS` value: when (`bpf_ktime_get_ns`) the peer last sent the
/// socket an accepted datagram, and when the socket last sent to the peer;
/// 0 for never. Written at most once per `UDP_PEER_REFRESH_NS` per field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UdpPeerSeen {
    pub heard_ns: u64,
    pub sent_ns: u64,
}

/// `PG_CONNECT_RULES` key; `addr` is masked to `prefix_len` bits, v4 peers
/// use the first 4 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(Hash, PartialOrd, Ord))]
pub struct ConnectKey {
    pub guard_id: u32,
    pub slot: u8,
    pub proto: u8,
    pub family: u8,
    pub prefix_len: u8,
    pub addr: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(Hash, PartialOrd, Ord))]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// A range with no port in it (first > last): fills unused slots, so
    /// the kernel can test every slot without looking at the count.
    pub const EMPTY: PortRange = PortRange { first: 1, last: 0 };
}

/// `PG_CONNECT_RULES` value: the ports allowed to peers in that prefix.
/// Slots past `count` hold [`PortRange::EMPTY`], which contains no port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortSet {
    pub count: u32,
    pub ranges: [PortRange; MAX_PORT_RANGES],
}

#[cfg(feature = "user")]
impl PortSet {
    /// Whether one of the set's ranges holds `port`.
    pub fn contains(&self, port: u16) -> bool {
        let used = (self.count as usize).min(MAX_PORT_RANGES);
        self.ranges[..used].iter().any(|r| r.first <= port && port <= r.last)
    }
}

/// `PG_DENIAL_COUNTS` key: exact per-port counts of denials and audit-mode
/// violations, kept in the kernel so they survive a full ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(Hash, PartialOrd, Ord))]
pub struct DenialKey {
    pub guard_id: u32,
    pub port: u16,
    pub op: u8,
    pub proto: u8,
    pub verdict: u8,
    /// `REASON_*`: inbound refusals of different causes count apart.
    pub reason: u8,
    pub _pad: [u8; 2],
}

/// `PG_DENIAL_COUNTS` value, one per CPU: the exact count of one kind of
/// denial, and what the kernel last reported of it. A kind is reported as
/// an event at most once per [`crate::DENIAL_EVENT_INTERVAL_NS`] per CPU;
/// the rest only count, and the next event of the kind says how many it
/// stands for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DenialCount {
    /// Every denial of this kind on this CPU (exact).
    pub count: u64,
    /// `count` when the last event of this kind was queued.
    pub reported: u64,
    /// `bpf_ktime_get_ns()` of the last event of this kind queued.
    pub last_event_ns: u64,
}
