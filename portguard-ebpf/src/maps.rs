//! Every map the programs use. Names match `portguard_common::map_names`.

use aya_ebpf::{
    btf_maps::SkStorage,
    macros::{btf_map, map},
    maps::{Array, HashMap, LruHashMap, LruPerCpuHashMap, PerCpuArray, RingBuf},
};
use portguard_common::{
    Ancestry, BRIEF_PORT_ENTRIES, BindKey, BriefPortKey, COUNTER_ENTRIES, Config, ConnectKey,
    DEFAULT_ANCESTRY_ENTRIES, DENIAL_COUNT_ENTRIES, DenialCount, DenialKey, EVENTS_BYTES, FromKey, GuardInfo,
    GuardKey, LIVE_PORT_ENTRIES, LivePort, MAX_BIND_ENTRIES, MAX_CONNECT_ENTRIES, MAX_FROM_ENTRIES,
    MAX_GUARDS, PORT_EVENTS_BYTES, PortSet, RuleRef, SLOTS, SockStamp, UDP_PEER_ENTRIES, UdpPeerKey,
    UdpPeerSeen, stats,
};

/// Policy maps are written while programs read them; without preallocation
/// the kernel frees deleted elements after an RCU grace period, so a reader
/// never sees an element reused under it.
const BPF_F_NO_PREALLOC: u32 = 1;

#[map(name = "PG_CONFIG")]
pub(crate) static PG_CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map(name = "PG_GUARDS")]
pub(crate) static PG_GUARDS: HashMap<GuardKey, GuardInfo> =
    HashMap::with_max_entries(SLOTS * MAX_GUARDS, BPF_F_NO_PREALLOC);

#[map(name = "PG_BIND_RULES")]
pub(crate) static PG_BIND_RULES: HashMap<BindKey, RuleRef> =
    HashMap::with_max_entries(SLOTS * MAX_BIND_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "PG_FROM_RULES")]
pub(crate) static PG_FROM_RULES: HashMap<FromKey, u32> =
    HashMap::with_max_entries(SLOTS * MAX_FROM_ENTRIES, BPF_F_NO_PREALLOC);

/// UDP peers per socket: when each last sent the socket an accepted
/// datagram and when the socket last sent to it, for the reply window.
/// LRU: a busy server's oldest peers make room; a peer evicted within its
/// window is judged as a new one (rules, not the window), which can only
/// refuse, never open.
#[map(name = "PG_UDP_PEERS")]
pub(crate) static PG_UDP_PEERS: LruHashMap<UdpPeerKey, UdpPeerSeen> =
    LruHashMap::with_max_entries(UDP_PEER_ENTRIES, 0);

#[map(name = "PG_CONNECT_RULES")]
pub(crate) static PG_CONNECT_RULES: HashMap<ConnectKey, PortSet> =
    HashMap::with_max_entries(SLOTS * MAX_CONNECT_ENTRIES, BPF_F_NO_PREALLOC);

/// Socket-local storage: one stamp per socket, freed with the socket, so
/// there is nothing to evict and nothing to clean up on close.
#[btf_map(name = "PG_SK_STAMPS")]
pub(crate) static PG_SK_STAMPS: SkStorage<SockStamp> = SkStorage::new();

#[map(name = "PG_ANCESTRY")]
pub(crate) static PG_ANCESTRY: LruHashMap<u64, Ancestry> =
    LruHashMap::with_max_entries(DEFAULT_ANCESTRY_ENTRIES, 0);

/// `PG_PREFIX_MASKS[n]`: the 16-byte mask keeping the first n bits (0..=128),
/// filled by the agent at load.
#[map(name = "PG_PREFIX_MASKS")]
pub(crate) static PG_PREFIX_MASKS: Array<[u8; 16]> = Array::with_max_entries(129, 0);

/// Scratch space to build an `Ancestry` (264 bytes) off the 512-byte stack.
#[map(name = "PG_SCRATCH")]
pub(crate) static PG_SCRATCH: PerCpuArray<Ancestry> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "PG_COUNTERS")]
pub(crate) static PG_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_ENTRIES, 0);

#[map(name = "PG_DENIAL_COUNTS")]
pub(crate) static PG_DENIAL_COUNTS: LruPerCpuHashMap<DenialKey, DenialCount> =
    LruPerCpuHashMap::with_max_entries(DENIAL_COUNT_ENTRIES, 0);

#[map(name = "PG_STATS")]
pub(crate) static PG_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stats::COUNT, 0);

#[map(name = "PG_EVENTS")]
pub(crate) static PG_EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

#[map(name = "PG_PORT_EVENTS")]
pub(crate) static PG_PORT_EVENTS: RingBuf = RingBuf::with_byte_size(PORT_EVENTS_BYTES, 0);

/// Live ports of guarded cgroups by socket cookie: inserted when a port goes
/// live, deleted when its socket is released. The agent reads it on a timer,
/// so a port costs it nothing until it has lived `BRIEF_PORT_NS`. Not
/// preallocated: a host with few listeners pays for few entries.
#[map(name = "PG_LIVE_PORTS")]
pub(crate) static PG_LIVE_PORTS: HashMap<u64, LivePort> =
    HashMap::with_max_entries(LIVE_PORT_ENTRIES, BPF_F_NO_PREALLOC);

/// Ports that closed within `BRIEF_PORT_NS`, counted per CPU (no atomics);
/// the agent sums the CPUs and writes the difference since its last read.
#[map(name = "PG_BRIEF_PORTS")]
pub(crate) static PG_BRIEF_PORTS: LruPerCpuHashMap<BriefPortKey, u64> =
    LruPerCpuHashMap::with_max_entries(BRIEF_PORT_ENTRIES, 0);

#[inline(always)]
pub(crate) fn bump(map: &PerCpuArray<u64>, index: u32) {
    if let Some(slot) = map.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot; the program cannot migrate mid-run, so
        // nothing else writes it concurrently.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
pub(crate) fn add(map: &PerCpuArray<u64>, index: u32, n: u64) {
    if let Some(slot) = map.get_ptr_mut(index) {
        // SAFETY: as in `bump`.
        unsafe { *slot += n };
    }
}
