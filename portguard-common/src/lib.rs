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
//! * The programs are attached at guarded cgroups only: a socket no guard
//!   covers runs none of them. `SK_STAMPS` (socket-local storage)
//!   remembers, per socket of a guarded subtree, the cgroup the socket was
//!   created in and the guard that covers it (resolved once per
//!   generation), so an operation costs one socket-storage lookup (a
//!   pointer walk, no hashing, no locks) plus its rule lookups.
//! * `ANCESTRY` records each socket-creating cgroup's ancestor ids at the time
//!   a socket is created there (the creating task is then in that cgroup), so
//!   a socket can be re-resolved after a policy change even when the process
//!   that holds it has moved to another cgroup.
//! * Rules are exact-match hash lookups: bind by (guard, proto, port[, addr]),
//!   connect by (guard, proto, family, prefix length, masked address) for each
//!   prefix length the guard uses. Cost depends on the number of distinct
//!   prefix lengths (at most [`MAX_PREFIX_LENS`]), never on the rule count.
#![cfg_attr(not(any(feature = "user", test)), no_std)]

mod attach_type;
pub mod dns;
mod events;
mod keys;
mod transport;

pub use attach_type::attach_type_number;
pub use events::*;
pub use keys::*;
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
    pub const LIVE_PORTS: &str = "PG_LIVE_PORTS";
    pub const BRIEF_PORTS: &str = "PG_BRIEF_PORTS";
    pub const FROM_RULES: &str = "PG_FROM_RULES";
    pub const UDP_PEERS: &str = "PG_UDP_PEERS";
    pub const DNS_KEY: &str = "PG_DNS_KEY";
    pub const DNS_NAMES: &str = "PG_DNS_NAMES";
    pub const DNS_LEARNED: &str = "PG_DNS_LEARNED";
    pub const SK_DNS: &str = "PG_SK_DNS";
}

/// Version of the map layouts below. Bump it with any change to a map's
/// key, value or size: the agent then pins fresh maps instead of reusing
/// the ones an older agent left behind.
pub const MAP_ABI_VERSION: u32 = 7;

/// Number of policy slots (double buffering for atomic switches).
pub const SLOTS: u32 = 2;
/// Guards a policy may hold (guard ids are `0..MAX_GUARDS`).
pub const MAX_GUARDS: u32 = 1024;
/// Bind entries one slot may hold (a port range costs one entry per port).
pub const MAX_BIND_ENTRIES: u32 = 262_144;
/// Connect entries one slot may hold (one per distinct peer prefix, proto).
pub const MAX_CONNECT_ENTRIES: u32 = 262_144;
/// `from` entries one slot may hold (one per network per bind rule).
pub const MAX_FROM_ENTRIES: u32 = 262_144;
/// (UDP socket, peer) pairs remembered for replies (LRU beyond this).
pub const UDP_PEER_ENTRIES: u32 = 65_536;
/// How long after a peer's accepted datagram the socket may answer it
/// (and after the socket sent to a peer, the peer may answer): 30 s, the
/// order of the UDP conntrack timeout (net.netfilter.nf_conntrack_udp_timeout)
/// that stateful firewalls use for the same question, and far above any
/// request/response round trip (DNS, NTP, SNMP answer within seconds).
pub const UDP_REPLY_WINDOW_NS: u64 = 30_000_000_000;
/// A `PG_UDP_PEERS` time is rewritten only when older than this, so a busy
/// socket writes once per peer per second, not once per packet.
pub const UDP_PEER_REFRESH_NS: u64 = 1_000_000_000;
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
/// A kind of denial (guard, op, proto, port, verdict) is reported as an
/// event at most once per interval per CPU; the rest only bump exact
/// counters. A flood then costs a map lookup per denial, not an event.
pub const DENIAL_EVENT_INTERVAL_NS: u64 = 1_000_000_000;
/// Closes of ports that lived at least [`BRIEF_PORT_NS`] have their own
/// ring buffer, so a process that opens and closes ports in a loop can
/// never crowd out denial events.
pub const PORT_EVENTS_BYTES: u32 = 1 << 18;
/// Live ports of guarded cgroups the kernel keeps (`PG_LIVE_PORTS`); a port
/// going live past this is counted in `stats::LIVE_PORTS_FULL` and left to
/// the agent's socket-table reads.
pub const LIVE_PORT_ENTRIES: u32 = 65_536;
/// A port that closes sooner than this after going live is *brief*: the
/// kernel only counts it (`PG_BRIEF_PORTS`), and the agent writes only
/// ports live this long as `port_opened`. Shared by both sides.
pub const BRIEF_PORT_NS: u64 = 1_000_000_000;
/// Distinct (cgroup, guard, proto, port, address) brief-port counters kept;
/// the least recently bumped is evicted past this.
pub const BRIEF_PORT_ENTRIES: u32 = 16_384;

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
/// `GuardInfo::flags`: the guard allows raw, SCTP, packet and ICMP ping
/// sockets, whose bind/connect/send the sock_addr hooks never see.
pub const GUARD_ALLOW_OTHER_SOCKETS: u32 = 2;
/// `GuardInfo::flags`: the guard's connect rules list DNS names, so its
/// sockets' DNS queries are recorded, answers to them learned from, and
/// connects checked against what was learned.
pub const GUARD_HAS_NAMES: u32 = 4;
/// `GuardInfo::flags`: some of those names are wildcard patterns, so an
/// answer's question is also looked up by its suffixes.
pub const GUARD_HAS_WILDCARDS: u32 = 8;
pub const SOCK_DGRAM: u32 = 2;
pub const SOCK_RAW: u32 = 3;
pub const IPPROTO_ICMP: u32 = 1;
pub const IPPROTO_ICMPV6: u32 = 58;
pub const IPPROTO_SCTP: u32 = 132;
/// Multipath TCP: its own protocol number on the socket the application
/// holds; its subflows are plain TCP sockets. Judged as TCP.
pub const IPPROTO_MPTCP: u32 = 262;

/// `RuleRef::flags`: the rule has a `from`: only listed peers reach it.
pub const RULE_HAS_FROM: u8 = 1;

/// `DecisionEvent::reason` of an inbound refusal (`Op::Accept`,
/// `Op::Receive`) or of a refused connect or send of a guard with DNS
/// names; 0 for every other decision.
pub const REASON_NONE: u8 = 0;
/// The source is not in the `from` of the rule approving the port.
pub const REASON_NOT_FROM: u8 = 1;
/// No bind rule approves the port: a TCP listener that went live without
/// a judged bind (listen() without bind(), io_uring), or a UDP socket on
/// an unapproved port (a client) hearing from a peer it did not send to.
pub const REASON_UNAPPROVED_PORT: u8 = 2;
/// A refused connect or send of a guard with DNS names, to an address no
/// answer for one of its names gave the workload (or whose entry was
/// evicted).
pub const REASON_DNS_NEVER: u8 = 3;
/// ... to an address such answers gave, all of them expired.
pub const REASON_DNS_EXPIRED: u8 = 4;
/// ... to an address answered for names whose rules do not allow the port
/// or protocol.
pub const REASON_DNS_OTHER_PORT: u8 = 5;

/// `BindKey::addr_kind`: the rule allows any local address, or one address.
pub const BIND_ADDR_ANY: u8 = 1;
pub const BIND_ADDR_EXACT: u8 = 2;

/// `SockStamp::guarded` values; zero is "not resolved yet", never "unguarded".
pub const STAMP_UNRESOLVED: u32 = 0;
pub const STAMP_GUARDED: u32 = 1;
pub const STAMP_UNGUARDED: u32 = 2;
/// `SockStamp::flags`: the socket was bound through a judged bind.
pub const STAMP_BOUND: u32 = 1;
/// `SockStamp::flags`: an MPTCP socket. Its bind is judged on its first
/// subflow (a socket of its own), so `STAMP_BOUND` lands there, not here.
pub const STAMP_MPTCP: u32 = 4;
/// `SockStamp::flags`: the socket holds a live port (a TCP listener or a
/// bound UDP socket) that was reported; its release is reported too.
pub const STAMP_LIVE: u32 = 2;
/// `LivePort::guard_id` of a port on an unguarded socket.
pub const UNGUARDED_ID: u32 = u32::MAX;

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
    /// Ports that went live while `PG_LIVE_PORTS` was full (or the kernel
    /// had no memory for the entry): not tracked by the kernel.
    pub const LIVE_PORTS_FULL: u32 = 5;
    /// DNS queries recorded (a guarded socket of a guard with names sent
    /// them to port 53 of a resolver the guard may reach).
    pub const DNS_QUERIES: u32 = 6;
    /// Answers that matched a recorded query and taught addresses. Every
    /// answer to a guarded socket of a guard with names is counted under
    /// exactly one `DNS_ANSWERS_*`.
    pub const DNS_ANSWERS_LEARNED: u32 = 7;
    /// Answers that matched no recorded query (unsolicited, spoofed, late
    /// or repeated): nothing learned.
    pub const DNS_ANSWERS_NO_QUERY: u32 = 8;
    /// Answers whose question is none of the guard's names.
    pub const DNS_ANSWERS_NOT_IN_POLICY: u32 = 9;
    /// Answers the walk stopped on before it learned anything (an error
    /// RCODE such as NXDOMAIN, a malformed or unsupported message), or
    /// that arrived while this CPU's walk was busy.
    pub const DNS_ANSWERS_NOT_PARSED: u32 = 10;
    /// Addresses learned (an entry created or extended).
    pub const DNS_ADDRESSES_LEARNED: u32 = 11;
    /// Answers read to their end that matched a query and a name but held
    /// no A or AAAA record for it (NODATA: the name has no address of the
    /// type asked).
    pub const DNS_ANSWERS_NO_ADDRESS: u32 = 12;
    /// Entries created in `PG_DNS_LEARNED`. Nothing deletes an entry but
    /// the LRU making room, so this minus the entries the table holds is
    /// the number of evictions.
    pub const DNS_LEARNED_ENTRIES: u32 = 13;
    pub const COUNT: u32 = 14;
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

#[cfg(feature = "user")]
mod user {
    use super::*;

    /// One `unsafe impl` with its justification, for every map type.
    macro_rules! pod {
        ($($t:ty),* $(,)?) => {$(
            // SAFETY: each type is #[repr(C)], made of fixed-size integers and
            // arrays of them, with every padding byte spelled out as a field
            // (checked by the `layouts_have_no_implicit_padding` test).
            unsafe impl aya::Pod for $t {}
        )*};
    }

    pod!(
        Config,
        SockStamp,
        Ancestry,
        GuardKey,
        GuardInfo,
        BindKey,
        RuleRef,
        FromKey,
        UdpPeerKey,
        UdpPeerSeen,
        ConnectKey,
        PortRange,
        PortSet,
        DecisionEvent,
        PortEvent,
        LivePort,
        BriefPortKey,
        DenialCount,
        DenialKey,
        dns::DnsNameKey,
        dns::LearnedKey,
        dns::Learned,
        dns::PendingQueries,
    );
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
        assert_eq!(size_of::<GuardInfo>(), 24 + 2 * MAX_PREFIX_LENS);
        assert_eq!(size_of::<BindKey>(), 28);
        assert_eq!(size_of::<RuleRef>(), 8 + 2 * MAX_PREFIX_LENS);
        assert_eq!(size_of::<FromKey>(), 28);
        assert_eq!(size_of::<UdpPeerKey>(), 32);
        assert_eq!(size_of::<UdpPeerSeen>(), 16);
        assert_eq!(size_of::<ConnectKey>(), 24);
        assert_eq!(size_of::<PortSet>(), 4 + 4 * MAX_PORT_RANGES);
        assert_eq!(size_of::<DecisionEvent>(), 88);
        assert_eq!(size_of::<LivePort>(), 88);
        assert_eq!(size_of::<PortEvent>(), 120);
        assert_eq!(size_of::<BriefPortKey>(), 32);
        assert_eq!(size_of::<DenialCount>(), 24);
        assert_eq!(size_of::<DenialKey>(), 12);
        assert_eq!(size_of::<dns::DnsNameKey>(), 16);
        assert_eq!(size_of::<dns::LearnedKey>(), 32);
        assert_eq!(size_of::<dns::Learned>(), 72);
        assert_eq!(size_of::<dns::PendingQueries>(), 16 * 48 + 8);
    }

    #[test]
    fn counter_indexes_do_not_collide() {
        let last = counter_index(ORPHAN_GUARD_ID, Op::Receive, Verdict::Audited);
        assert!(last < COUNTER_ENTRIES);
        assert_ne!(
            counter_index(0, Op::Connect, Verdict::Allowed),
            counter_index(0, Op::Bind, Verdict::Denied)
        );
    }
}
