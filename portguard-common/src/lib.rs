//! Types shared by portguard's kernel programs and its agent.
//!
//! Every type here crosses the user/kernel boundary as raw bytes, so each is
//! `#[repr(C)]`, made only of fixed-size integers, and padded by hand: the
//! kernel hashes keys byte for byte, and implicit padding would hold garbage.
//!
//! # How a decision is found (and why the maps look like this)
//!
//! * `CONFIG[0]` holds the policy generation; its parity is the *active
//!   slot* (0 or 1). Every policy map key carries a slot; a program reads the
//!   generation once (one aligned 8-byte load, so never torn) and judges the
//!   whole operation with that slot's entries. The agent writes a new policy
//!   into the inactive slot and then bumps the generation: one 8-byte write
//!   switches every guard and every rule at once.
//! * `SK_STAMPS` (socket-local storage) remembers, per socket, the cgroup
//!   the socket was created in and the guard that covers it (resolved once
//!   per generation). The common, unguarded case costs one socket-storage
//!   lookup per operation: a pointer walk, no hashing, no locks.
//! * `ANCESTRY` records each socket-creating cgroup's ancestor ids at the time
//!   a socket is created there (the creating task is then in that cgroup), so
//!   a socket can be re-resolved after a policy change even when the process
//!   that holds it has moved to another cgroup.
//! * Rules are exact-match hash lookups: bind by (guard, proto, port[, addr]),
//!   connect by (guard, proto, family, prefix length, masked address) for each
//!   prefix length the guard uses. Cost depends on the number of distinct
//!   prefix lengths (at most [`MAX_PREFIX_LENS`]), never on the rule count.
#![cfg_attr(not(any(feature = "user", test)), no_std)]

mod transport;
pub use transport::{Transport, UnknownTransport};

/// Map names, spelled once for both sides.
pub mod map_names {
    pub const CONFIG: &str = "PG_CONFIG";
    pub const GUARDS: &str = "PG_GUARDS";
    pub const BIND_RULES: &str = "PG_BIND_RULES";
    pub const CONNECT_RULES: &str = "PG_CONNECT_RULES";
    pub const SK_STAMPS: &str = "PG_SK_STAMPS";
    pub const ANCESTRY: &str = "PG_ANCESTRY";
    pub const COUNTERS: &str = "PG_COUNTERS";
    pub const STATS: &str = "PG_STATS";
    pub const EVENTS: &str = "PG_EVENTS";
    pub const PORT_EVENTS: &str = "PG_PORT_EVENTS";
    pub const DENIAL_COUNTS: &str = "PG_DENIAL_COUNTS";
    pub const PREFIX_MASKS: &str = "PG_PREFIX_MASKS";
}

/// Version of the map layouts below. Bump it with any change to a map's
/// key, value or size: the agent then pins fresh maps instead of reusing
/// the ones an older agent left behind.
pub const MAP_ABI_VERSION: u32 = 3;

/// Number of policy slots (double buffering for atomic switches).
pub const SLOTS: u32 = 2;
/// Guards a policy may hold (guard ids are `0..MAX_GUARDS`).
pub const MAX_GUARDS: u32 = 1024;
/// Bind entries one slot may hold (a port range costs one entry per port).
pub const MAX_BIND_ENTRIES: u32 = 262_144;
/// Connect entries one slot may hold (one per distinct peer prefix, proto).
pub const MAX_CONNECT_ENTRIES: u32 = 262_144;
/// Cgroup levels recorded per cgroup; guards must sit above this depth.
pub const MAX_CGROUP_DEPTH: usize = 32;
/// Distinct port ranges one (guard, proto, peer prefix) may allow.
pub const MAX_PORT_RANGES: usize = 32;
/// Distinct peer prefix lengths one guard may use per address family.
pub const MAX_PREFIX_LENS: usize = 8;
/// Cgroups whose ancestry is remembered (LRU beyond this).
pub const DEFAULT_ANCESTRY_ENTRIES: u32 = 16_384;
/// Distinct (guard, op, proto, port, verdict) denial counters kept; the
/// least recently bumped is evicted past this (bounds metric label sets).
pub const DENIAL_COUNT_ENTRIES: u32 = 16_384;
/// Ring buffer size in bytes for denial events.
pub const EVENTS_BYTES: u32 = 1 << 20;
/// Port-lifecycle events have their own ring buffer, so a process that
/// opens and closes ports in a loop can never crowd out denial events.
pub const PORT_EVENTS_BYTES: u32 = 1 << 18;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

/// Guard modes. Zero is deliberately not a mode: an all-zero entry must never
/// read as "allow".
pub const MODE_ENFORCE: u32 = 1;
pub const MODE_AUDIT: u32 = 2;

/// `GuardInfo::flags`: the guard allows `bind()` to port 0 (kernel-chosen).
pub const GUARD_ALLOW_EPHEMERAL_BIND: u32 = 1;
/// `GuardInfo::flags`: the guard allows raw and SCTP sockets, whose
/// bind/connect the sock_addr hooks never see.
pub const GUARD_ALLOW_OTHER_SOCKETS: u32 = 2;
pub const SOCK_RAW: u32 = 3;
pub const IPPROTO_SCTP: u32 = 132;

/// `BindKey::addr_kind`: the rule allows any local address, or one address.
pub const BIND_ADDR_ANY: u8 = 1;
pub const BIND_ADDR_EXACT: u8 = 2;

/// `SockStamp::guarded` values; zero is "not resolved yet", never "unguarded".
pub const STAMP_UNRESOLVED: u32 = 0;
pub const STAMP_GUARDED: u32 = 1;
pub const STAMP_UNGUARDED: u32 = 2;
/// `SockStamp::flags`: the socket was bound through a judged bind.
pub const STAMP_BOUND: u32 = 1;
/// `SockStamp::flags`: the socket holds a live port (a TCP listener or a
/// bound UDP socket) that was reported; its release is reported too.
pub const STAMP_LIVE: u32 = 2;
/// `Event::guard_id` of a port-lifecycle event on an unguarded socket.
pub const UNGUARDED_ID: u32 = u32::MAX;

/// Operations, as counted and reported.
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
    /// Not judged: a port went live (a TCP listen, a bound UDP socket).
    /// Reported for every socket, guarded or not, for the inventory.
    PortOpened = 5,
    /// Not judged: a socket reported by `PortOpened` was released.
    PortClosed = 6,
}
pub const OP_COUNT: usize = 8;

impl Op {
    pub const ALL: [Op; 5] = [Op::Bind, Op::Connect, Op::Sendmsg, Op::Socket, Op::Listen];

    pub fn from_u8(v: u8) -> Option<Op> {
        match v {
            0 => Some(Op::Bind),
            1 => Some(Op::Connect),
            2 => Some(Op::Sendmsg),
            3 => Some(Op::Socket),
            4 => Some(Op::Listen),
            5 => Some(Op::PortOpened),
            6 => Some(Op::PortClosed),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Bind => "bind",
            Op::Connect => "connect",
            Op::Sendmsg => "sendmsg",
            Op::Socket => "socket",
            Op::Listen => "listen",
            Op::PortOpened => "port_opened",
            Op::PortClosed => "port_closed",
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
pub const VERDICT_COUNT: usize = 4;

impl Verdict {
    pub const ALL: [Verdict; 3] = [Verdict::Allowed, Verdict::Denied, Verdict::Audited];

    pub fn from_u8(v: u8) -> Option<Verdict> {
        match v {
            0 => Some(Verdict::Allowed),
            1 => Some(Verdict::Denied),
            2 => Some(Verdict::Audited),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allowed => "allowed",
            Verdict::Denied => "denied",
            Verdict::Audited => "audited",
        }
    }
}

/// Counters per guard: one per (op, verdict).
pub const COUNTERS_PER_GUARD: u32 = (OP_COUNT * VERDICT_COUNT) as u32;
/// Guard id used for decisions taken without a guard record (fail closed).
pub const ORPHAN_GUARD_ID: u32 = MAX_GUARDS;
pub const COUNTER_ENTRIES: u32 = (MAX_GUARDS + 1) * COUNTERS_PER_GUARD;

pub const fn counter_index(guard_id: u32, op: Op, verdict: Verdict) -> u32 {
    guard_id * COUNTERS_PER_GUARD + (op as u32) * (VERDICT_COUNT as u32) + verdict as u32
}

/// Indexes of `PG_STATS`, a per-CPU array of u64.
pub mod stats {
    /// Events lost because the ring buffer was full.
    pub const EVENTS_LOST: u32 = 0;
    /// Operations on sockets with no stamp (created before portguard was
    /// attached): judged by the calling task's cgroup, then stamped.
    pub const STAMP_MISSES: u32 = 1;
    /// Re-resolutions that found no recorded ancestry for the socket's cgroup.
    pub const ANCESTRY_MISSES: u32 = 2;
    /// Sockets the kernel had no memory to stamp (their operation was
    /// refused, whatever their cgroup).
    pub const STAMP_FAILURES: u32 = 3;
    /// Port-lifecycle events lost because their ring buffer was full.
    pub const PORT_EVENTS_LOST: u32 = 4;
    pub const COUNT: u32 = 5;
}

/// `PG_CONFIG[0]`: which policy is live.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// 0: no policy applied, nothing is guarded. Otherwise increases by one
    /// with every applied policy; stamps resolved under an older generation
    /// are re-resolved. A single field on purpose: the slot is derived from
    /// it, so a reader can never see a slot and a generation that disagree.
    pub generation: u64,
}

impl Config {
    pub const fn active_slot(&self) -> u32 {
        (self.generation & 1) as u32
    }
}

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

/// `PG_BIND_RULES` value: which policy rule allowed it (for reports).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleRef {
    pub rule_index: u32,
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
    pub _pad: [u8; 3],
}

/// A denial, an audit-mode violation or a port-lifecycle change, sent
/// through `PG_EVENTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Event {
    /// The cgroup the socket belongs to.
    pub sock_cgroup: u64,
    /// The guarded cgroup whose policy was consulted.
    pub guard_cgroup: u64,
    pub pid_tgid: u64,
    pub generation: u64,
    pub guard_id: u32,
    pub port: u16,
    pub op: u8,
    /// `AF_INET` or `AF_INET6`: the family of `addr` as judged (a v4-mapped
    /// peer is reported as `AF_INET`).
    pub family: u8,
    pub proto: u8,
    pub verdict: u8,
    pub _pad: u16,
    pub _pad2: u32,
    pub comm: [u8; 16],
    /// v4 addresses in the first 4 bytes.
    pub addr: [u8; 16],
    /// The socket cookie: pairs a port-lifecycle event with its close.
    pub cookie: u64,
}

#[cfg(feature = "user")]
mod user {
    use super::*;

    // SAFETY: all of these are #[repr(C)], made of fixed-size integers and
    // arrays of them, with every padding byte spelled out as a field.
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for SockStamp {}
    unsafe impl aya::Pod for Ancestry {}
    unsafe impl aya::Pod for GuardKey {}
    unsafe impl aya::Pod for GuardInfo {}
    unsafe impl aya::Pod for BindKey {}
    unsafe impl aya::Pod for RuleRef {}
    unsafe impl aya::Pod for ConnectKey {}
    unsafe impl aya::Pod for PortRange {}
    unsafe impl aya::Pod for PortSet {}
    unsafe impl aya::Pod for Event {}
    unsafe impl aya::Pod for DenialKey {}
}

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    /// Sizes are part of the kernel ABI: a change here must be deliberate.
    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<Config>(), 8);
        assert_eq!(size_of::<SockStamp>(), 32 + size_of::<GuardInfo>());
        assert_eq!(size_of::<Ancestry>(), 8 + 8 * MAX_CGROUP_DEPTH);
        assert_eq!(size_of::<GuardKey>(), 16);
        assert_eq!(size_of::<GuardInfo>(), 16 + 2 * MAX_PREFIX_LENS);
        assert_eq!(size_of::<BindKey>(), 28);
        assert_eq!(size_of::<ConnectKey>(), 24);
        assert_eq!(size_of::<PortSet>(), 4 + 4 * MAX_PORT_RANGES);
        assert_eq!(size_of::<Event>(), 88);
        assert_eq!(size_of::<DenialKey>(), 12);
    }

    #[test]
    fn counter_indexes_do_not_collide() {
        let last = counter_index(ORPHAN_GUARD_ID, Op::Listen, Verdict::Audited);
        assert!(last < COUNTER_ENTRIES);
        assert_ne!(
            counter_index(0, Op::Connect, Verdict::Allowed),
            counter_index(0, Op::Bind, Verdict::Denied)
        );
    }
}
