//! Peers by DNS name (#17): the kernel learns, per guarded cgroup, the
//! addresses that DNS answers gave it for its guard's names, and connect and
//! sendmsg allow those addresses on the names' ports until the answer
//! expires.
//!
//! * `cgroup_skb/egress` ([`note_query`]): a UDP datagram a guarded socket
//!   sends to port 53 of a resolver its guard may reach is a query: its
//!   transaction id, resolver and question go into the socket's own
//!   pending table (socket storage, freed with the socket).
//! * `cgroup_skb/ingress` ([`after_ingress`]): a datagram from port 53 is
//!   walked before the kernel queues it to the socket, so the addresses are
//!   in `PG_DNS_LEARNED` before `recvmsg` can return the answer: there is no
//!   window in which the workload holds an address connect would refuse.
//!   It teaches something only if it takes a pending query of the same
//!   socket (id, resolver address and port, question, type) and its
//!   question is one of the guard's names.
//! * connect4/6 and sendmsg4/6 ([`learned_allows`]): after the address
//!   rules, an address learned for a name whose rule allows the port.
//!
//! The walk itself is `portguard_common::dns`, one step per `bpf_loop`
//! iteration with its state in a per-CPU map value (one per direction:
//! a receive in softirq can interrupt a send on the same CPU, and a busy
//! flag makes a nested run on the same CPU skip instead of clobbering).

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_SK_STORAGE_GET_F_CREATE, bpf_sock},
    btf_maps::SkStorage,
    helpers::generated::{
        bpf_ktime_get_boot_ns, bpf_loop, bpf_sk_fullsock, bpf_sk_storage_get, bpf_skb_load_bytes,
    },
    macros::{btf_map, cgroup_skb, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::SkBuffContext,
};
use portguard_common::{
    AF_INET, AF_INET6, GUARD_HAS_NAMES, GUARD_HAS_WILDCARDS, GuardInfo, IPPROTO_TCP, IPPROTO_UDP, PortSet,
    REASON_DNS_EXPIRED, REASON_DNS_NEVER, REASON_DNS_OTHER_PORT, REASON_NONE, STAMP_GUARDED,
    dns::{
        self, Buf, DnsNameKey, DnsWalk, LEARNED_ENTRIES, Learned, LearnedKey, MAX_NAME_ENTRIES,
        MAX_QUESTION_LABELS, MSG_BUF, NAMES_PER_ADDRESS, NameKey, PENDING_QUERIES, PendingQueries,
        PendingQuery,
    },
    stats,
};

use crate::{
    addr::Addr,
    decide::{connect_allowed, port_in},
    identity::{Socket, refresh, stamp_of_sock},
    inbound::{BPF_TCP_CLOSE, BPF_TCP_ESTABLISHED},
    maps::{PG_STATS, bump},
    packet::{ip_header, load},
    read_config,
};

pub(crate) const DNS_PORT: u16 = 53;

/// Policy maps are written while programs read them (see maps.rs).
const BPF_F_NO_PREALLOC: u32 = 1;
/// Map update flag: create only.
const BPF_NOEXIST: u64 = 1;

/// The pinned SipHash key names are hashed with (made once by the agent).
#[map(name = "PG_DNS_KEY")]
pub(crate) static PG_DNS_KEY: Array<NameKey> = Array::with_max_entries(1, 0);

/// The guards' names, per slot and protocol, with the ports allowed to
/// their addresses.
#[map(name = "PG_DNS_NAMES")]
pub(crate) static PG_DNS_NAMES: HashMap<DnsNameKey, PortSet> =
    HashMap::with_max_entries(portguard_common::SLOTS * MAX_NAME_ENTRIES, BPF_F_NO_PREALLOC);

/// Addresses learned per guarded cgroup. LRU: when full, the entry used
/// least recently makes room; a workload that then connects to it again
/// must resolve it again (refused until it does, never opened wider).
#[map(name = "PG_DNS_LEARNED")]
pub(crate) static PG_DNS_LEARNED: LruHashMap<LearnedKey, Learned> =
    LruHashMap::with_max_entries(LEARNED_ENTRIES, 0);

/// Each guarded socket's queries in flight.
#[btf_map(name = "PG_SK_DNS")]
pub(crate) static PG_SK_DNS: SkStorage<PendingQueries> = SkStorage::new();

/// A message, its walk, and what the walk's callback needs to match and
/// learn: the callback may touch only maps, never the socket.
#[repr(C)]
pub(crate) struct Scratch {
    buf: Buf,
    walk: DnsWalk,
    /// A copy of the socket's pending queries (ingress).
    pending: PendingQueries,
    /// The answer's resolver, as a pending query names it (`sent_ns` 0).
    answer: PendingQuery,
    guard_cgroup: u64,
    now_ns: u64,
    guard_id: u32,
    slot: u32,
    /// Set while a run uses this CPU's scratch.
    busy: u32,
    /// The walk reached the question ([`dns::step::QUESTION`]).
    asked: u32,
    /// The pending slot the answer matched, or `PENDING_QUERIES`.
    matched: u32,
    /// `stats::DNS_ANSWERS_*` of an answer that taught nothing, or 0.
    refused: u32,
    /// Addresses written by this answer.
    learned: u32,
    /// The guard lists wildcard patterns (`GUARD_HAS_WILDCARDS`).
    wildcards: u32,
    /// The guard's names and patterns the question matches (identities as
    /// `PG_DNS_NAMES` keys them), most specific first.
    names: [u64; NAMES_PER_ADDRESS],
    name_count: u32,
    /// While wildcards are being matched: the suffix to try next (labels
    /// dropped from the question's left); 0 otherwise.
    suffix_at: u32,
    /// While an address's further names are being noted: the next one.
    note_at: u32,
    /// The guard's resolver epoch (`GuardInfo::dns_epoch`).
    epoch: u32,
}

#[map(name = "PG_DNS_SCRATCH_OUT")]
static SCRATCH_OUT: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "PG_DNS_SCRATCH_IN")]
static SCRATCH_IN: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// The far end of a UDP datagram (the destination of one sent, the source
/// of one received) and where its payload starts.
struct Datagram {
    peer: Addr,
    port: u16,
    payload: u32,
}

/// Reads the IP and UDP headers (a cgroup_skb program sees the packet from
/// its network header). `None` for anything but UDP directly after an
/// IPv4 or IPv6 header (IPv6 extension headers: not read, nothing learned).
#[inline(always)]
fn datagram(ctx: &SkBuffContext, sent: bool) -> Option<Datagram> {
    let ip = ip_header(ctx, sent)?;
    if ip.next != IPPROTO_UDP {
        return None;
    }
    let udp: [u8; 4] = load(ctx, ip.l4)?;
    let port = if sent { u16::from_be_bytes([udp[2], udp[3]]) } else { u16::from_be_bytes([udp[0], udp[1]]) };
    Some(Datagram { peer: ip.peer, port, payload: ip.l4 + 8 })
}

/// Copies the payload into the scratch buffer; returns its length, in
/// 1..=MSG_BUF.
#[inline(always)]
fn copy_payload(ctx: &SkBuffContext, s: &mut Scratch, payload: u32) -> Option<u32> {
    let total = ctx.len();
    if total <= payload {
        return None;
    }
    let len = total - payload;
    let n = if len > MSG_BUF as u32 { MSG_BUF as u32 } else { len };
    // The verifier loses `n >= 1` through the subtraction: state [1, MSG_BUF].
    let n = ((n - 1) & (MSG_BUF as u32 - 1)) + 1;
    // SAFETY: the helper writes n <= MSG_BUF bytes into the buffer.
    let rc = unsafe { bpf_skb_load_bytes(ctx.as_ptr(), payload, s.buf.as_mut_ptr().cast(), n) };
    (rc == 0).then_some(n)
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_boot_ns() }
}

/// Takes this CPU's scratch of one direction, unless a run on this CPU
/// already holds it. Every caller releases it with [`release`].
#[inline(always)]
fn acquire(map: &PerCpuArray<Scratch>) -> Option<&'static mut Scratch> {
    let s = map.get_ptr_mut(0)?;
    // SAFETY: this CPU's value, valid for the run; the busy flag keeps a
    // nested run on this CPU out of it.
    let s = unsafe { &mut *s };
    if s.busy != 0 {
        return None;
    }
    s.busy = 1;
    s.asked = 0;
    s.learned = 0;
    s.refused = 0;
    s.suffix_at = 0;
    s.note_at = 0;
    Some(s)
}

#[inline(always)]
fn release(s: &mut Scratch) {
    s.busy = 0;
}

/// Walks a query up to its question.
#[inline(never)]
extern "C" fn query_step(_index: u64, _ctx: *mut c_void) -> i64 {
    let (Some(s), Some(key)) = (SCRATCH_OUT.get_ptr_mut(0), PG_DNS_KEY.get(0)) else { return 1 };
    // SAFETY: this CPU's scratch, held by the run that called bpf_loop.
    let s = unsafe { &mut *s };
    match s.walk.step(key, &s.buf) {
        dns::step::CONTINUE => 0,
        dns::step::QUESTION => {
            s.asked = 1;
            1
        }
        _ => 1,
    }
}

/// Walks an answer: at its question, matches it with the socket's pending
/// queries and the guard's names (and stops the walk unless both agree);
/// then writes each address into `PG_DNS_LEARNED`.
#[inline(never)]
extern "C" fn answer_step(_index: u64, _ctx: *mut c_void) -> i64 {
    let (Some(s), Some(key)) = (SCRATCH_IN.get_ptr_mut(0), PG_DNS_KEY.get(0)) else { return 1 };
    // SAFETY: this CPU's scratch, held by the run that called bpf_loop.
    let s = unsafe { &mut *s };
    if s.suffix_at != 0 {
        return match_suffix(s, key);
    }
    if s.note_at != 0 {
        note_name(s, s.note_at);
        s.note_at += 1;
        if s.note_at >= s.name_count {
            s.note_at = 0;
        }
        return 0;
    }
    match s.walk.step(key, &s.buf) {
        dns::step::CONTINUE => 0,
        dns::step::QUESTION => {
            s.asked = 1;
            s.answer.question = s.walk.question;
            s.answer.txid = s.walk.txid as u16;
            s.answer.qtype = s.walk.qtype as u16;
            let Some(i) = s.pending.find(&s.answer, s.now_ns) else {
                s.refused = stats::DNS_ANSWERS_NO_QUERY;
                return 1;
            };
            s.matched = i as u32;
            s.name_count = 0;
            consider(s, s.walk.question);
            if s.wildcards != 0 {
                // Wildcards are matched one suffix per iteration (below),
                // so the verifier walks that code once, not once per label.
                s.suffix_at = 1;
                return 0;
            }
            names_found(s)
        }
        dns::step::ADDRESS => {
            note_name(s, 0);
            s.learned += 1;
            // The address's other names, one per iteration, as for suffixes.
            if s.name_count > 1 {
                s.note_at = 1;
            }
            0
        }
        _ => 1,
    }
}

/// Notes that the walk's current address is an answer for the matched
/// name `j`.
#[inline(always)]
fn note_name(s: &Scratch, j: u32) {
    let mut key =
        LearnedKey { guard_cgroup: s.guard_cgroup, family: AF_INET6, _pad: [0; 7], addr: s.walk.addr };
    // An AAAA of a v4-mapped address is learned as the IPv4 address a
    // dual-stack connect to it is judged as. In place: this runs in the
    // walk's callback, whose frame shares the 512-byte stack.
    if s.walk.addr_len == 4 || dns::unmap_v4(&mut key.addr) {
        key.family = AF_INET;
    }
    let name = s.names[j as usize & (NAMES_PER_ADDRESS - 1)];
    let expires = dns::expiry(s.now_ns, s.walk.ttl);
    if let Some(v) = PG_DNS_LEARNED.get_ptr_mut(&key) {
        // SAFETY: a value of the LRU map, valid for this run; two CPUs
        // noting the same address at once may lose one extension, never
        // allow a name that was not answered.
        unsafe {
            let slot = (*v).note(s.epoch, name, expires, s.now_ns);
            // The workload's own answer: no longer only the agent's.
            (*v).by_agent &= !(1 << (slot & (NAMES_PER_ADDRESS - 1)));
        }
    } else if PG_DNS_LEARNED.insert(&key, &Learned::first(s.epoch, name, expires), BPF_NOEXIST).is_ok() {
        // Counted only when created here: another CPU that created the
        // same entry a moment before counted it (this answer's name is
        // then lost from it, as for two extensions at once).
        bump(&PG_STATS, stats::DNS_LEARNED_ENTRIES);
    }
}

/// One wildcard step: the patterns the question's suffix without its
/// first `suffix_at` labels may stand for (`*.suffix` for the suffix one
/// label shorter than the question, `**.suffix` for every suffix of two
/// labels or more), most specific first. Returns the callback's value.
#[inline(always)]
fn match_suffix(s: &mut Scratch, key: &NameKey) -> i64 {
    let i = s.suffix_at as usize;
    // A pattern's suffix has at least two labels.
    if i >= MAX_QUESTION_LABELS || i + 2 > s.walk.question_labels as usize {
        s.suffix_at = 0;
        return names_found(s);
    }
    let suffix = s.walk.suffixes[i & (MAX_QUESTION_LABELS - 1)];
    if i == 1 {
        consider(s, dns::wildcard_hash(key, suffix, dns::WILDCARD_ONE));
    }
    consider(s, dns::wildcard_hash(key, suffix, dns::WILDCARD_MANY));
    s.suffix_at += 1;
    0
}

/// The end of matching: go on to the addresses if the question is one of
/// the guard's names, else stop.
#[inline(always)]
fn names_found(s: &mut Scratch) -> i64 {
    if s.name_count == 0 {
        s.refused = stats::DNS_ANSWERS_NOT_IN_POLICY;
        return 1;
    }
    0
}

#[inline(always)]
fn consider(s: &mut Scratch, hash: u64) {
    let n = s.name_count as usize;
    if n < NAMES_PER_ADDRESS && is_name_of(s.guard_id, s.slot, hash) {
        s.names[n & (NAMES_PER_ADDRESS - 1)] = hash;
        s.name_count += 1;
    }
}

/// Whether `hash` is one of the guard's names (for either protocol).
#[inline(always)]
fn is_name_of(guard_id: u32, slot: u32, hash: u64) -> bool {
    let mut key = DnsNameKey { guard_id, slot: slot as u8, proto: IPPROTO_TCP, _pad: 0, hash };
    if PG_DNS_NAMES.get_ptr(&key).is_some() {
        return true;
    }
    key.proto = IPPROTO_UDP;
    PG_DNS_NAMES.get_ptr(&key).is_some()
}

/// Packets a guarded cgroup's sockets send. Attached at every guarded
/// cgroup with the other hooks (a guard gaining names by reload must not
/// wait for an attach); it never drops (cgroup_skb: 1 passes), and does
/// work only for UDP to port 53 of sockets whose guard lists names.
#[cgroup_skb(egress)]
pub(crate) fn pg_sock_egress(ctx: SkBuffContext) -> i32 {
    // SAFETY: `sk` of the context is a socket pointer or null, which the
    // verifier tracks; reading it is a checked context load.
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return 1;
    }
    // A connected socket talks to one port: anything but a resolver passes
    // after two loads (TCP streams included, ESTABLISHED as well).
    // SAFETY: a non-null socket pointer; checked loads of sock_common fields.
    let (state, dst_port) = unsafe { ((*sk).state, (*sk).dst_port) };
    let to_resolver = state == BPF_TCP_ESTABLISHED && dst_port == DNS_PORT.to_be();
    if !to_resolver && state != BPF_TCP_CLOSE {
        return 1;
    }
    // SAFETY: helper taking the socket pointer the verifier tracks.
    let sk = unsafe { bpf_sk_fullsock(sk) };
    if sk.is_null() {
        return 1;
    }
    // SAFETY: a full socket; a checked load.
    if unsafe { (*sk).protocol } != u32::from(IPPROTO_UDP) {
        return 1;
    }
    let Some(cfg) = read_config() else { return 1 };
    let Some(stamp) = stamp_of_sock(sk.cast()) else { return 1 };
    let slot = cfg.active_slot();
    refresh(stamp, slot, &cfg, &Socket(sk.cast()));
    if stamp.guarded == STAMP_GUARDED {
        let _ = note_query(&ctx, sk, &stamp.guard, slot);
    }
    1
}

/// Egress: records a DNS query a guarded socket sends. `sk` is a full UDP
/// socket whose stamp resolved to `guard` under `slot`.
#[inline(always)]
pub(crate) fn note_query(ctx: &SkBuffContext, sk: *mut bpf_sock, guard: &GuardInfo, slot: u32) -> Option<()> {
    if guard.flags & GUARD_HAS_NAMES == 0 {
        return None;
    }
    let mut d = datagram(ctx, true)?;
    if let Some((peer, port)) = connected_peer(sk) {
        d.peer = peer;
        d.port = port;
    }
    if d.port != DNS_PORT {
        return None;
    }
    // Only a resolver the guard may query teaches it anything, in audit
    // mode too: what an audit guard learned stays learned when it switches
    // to enforce.
    if !connect_allowed(guard, slot, IPPROTO_UDP, &d.peer, DNS_PORT) {
        return None;
    }
    let s = acquire(&SCRATCH_OUT)?;
    let r = record_query(ctx, sk, s, &d, guard.dns_epoch);
    release(s);
    r
}

/// The peer a connected socket was connected to, as connect4/6 judged it.
/// NAT in the sender's OUTPUT path (Docker's resolver at 127.0.0.11, a
/// Kubernetes ClusterIP) has rewritten the packet's destination by the
/// time egress sees it, but not the socket's; the answer comes back with
/// the source rewritten to the socket's peer again, so that is what the
/// query must record. An unconnected socket has no peer to go by: its
/// packet's destination is all there is (behind such NAT it learns
/// nothing, see docs/src/policy.md).
#[inline(always)]
fn connected_peer(sk: *mut bpf_sock) -> Option<(Addr, u16)> {
    // SAFETY: a full socket the verifier tracks; checked 4-byte loads of
    // sock_common fields.
    let (state, family, port) = unsafe { ((*sk).state, (*sk).family, (*sk).dst_port) };
    if state != BPF_TCP_ESTABLISHED {
        return None;
    }
    let peer = if family == u32::from(AF_INET) {
        // SAFETY: as above.
        Addr::v4(unsafe { (*sk).dst_ip4 }.to_ne_bytes())
    } else {
        // SAFETY: as above, word by word.
        let w = unsafe { [(*sk).dst_ip6[0], (*sk).dst_ip6[1], (*sk).dst_ip6[2], (*sk).dst_ip6[3]] };
        Addr::v6_words([w[0].to_ne_bytes(), w[1].to_ne_bytes(), w[2].to_ne_bytes(), w[3].to_ne_bytes()])
    };
    Some((peer, u16::from_be(port)))
}

#[inline(always)]
fn record_query(
    ctx: &SkBuffContext,
    sk: *mut bpf_sock,
    s: &mut Scratch,
    d: &Datagram,
    epoch: u32,
) -> Option<()> {
    let n = copy_payload(ctx, s, d.payload)?;
    if s.walk.start_query(&s.buf, n) == dns::step::STOP {
        return None;
    }
    // SAFETY: helper; a static callback and no context.
    unsafe { bpf_loop(dns::MAX_STEPS, query_step as *mut c_void, core::ptr::null_mut(), 0) };
    if s.asked == 0 {
        return None;
    }
    // SAFETY: `sk` is a full socket the verifier tracks; the storage is
    // created empty (zeroed) on the socket's first query.
    let pending = unsafe {
        bpf_sk_storage_get(
            core::ptr::addr_of!(PG_SK_DNS) as *mut c_void,
            sk.cast(),
            core::ptr::null_mut(),
            BPF_SK_STORAGE_GET_F_CREATE.into(),
        )
    }
    .cast::<PendingQueries>();
    // SAFETY: null or this socket's storage, valid for this run.
    let pending = unsafe { pending.as_mut() }?;
    pending.record(PendingQuery {
        sent_ns: now(),
        question: s.walk.question,
        resolver: d.peer.bytes,
        txid: s.walk.txid as u16,
        port: d.port,
        qtype: s.walk.qtype as u16,
        family: d.peer.family,
        _pad: 0,
        epoch,
        _pad2: 0,
    });
    bump(&PG_STATS, stats::DNS_QUERIES);
    Some(())
}

/// Ingress, after the inbound filter let the packet through: a datagram
/// from port 53 to a guarded UDP socket (connected to it, or not connected
/// at all) of a guard with names is an answer to learn from. Never changes
/// the packet's verdict. Returns the number of addresses learned.
///
/// A subprogram of its own, for the stack (see `inbound::filter`). Its
/// caller must use the value it returns: LLVM drops an unused return value
/// of an internal function, r0 then holds whatever it held last (here a
/// stack pointer), and the verifier refuses a subprogram that returns one.
#[inline(never)]
pub(crate) fn after_ingress(ctx: &SkBuffContext) -> u64 {
    learn_from(ctx).unwrap_or(0)
}

#[inline(always)]
fn learn_from(ctx: &SkBuffContext) -> Option<u64> {
    // SAFETY: `sk` of the context is a socket pointer or null, which the
    // verifier tracks; reading it is a checked context load.
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return None;
    }
    // SAFETY: a non-null socket pointer; checked loads of sock_common fields.
    let (state, dst_port) = unsafe { ((*sk).state, (*sk).dst_port) };
    let from_resolver = state == BPF_TCP_ESTABLISHED && dst_port == DNS_PORT.to_be();
    if !from_resolver && state != BPF_TCP_CLOSE {
        return None;
    }
    // SAFETY: helper taking the socket pointer the verifier tracks.
    let sk = unsafe { bpf_sk_fullsock(sk) };
    if sk.is_null() {
        return None;
    }
    // SAFETY: a full socket; a checked load.
    if unsafe { (*sk).protocol } != u32::from(IPPROTO_UDP) {
        return None;
    }
    let d = datagram(ctx, false)?;
    if d.port != DNS_PORT {
        return None;
    }
    let cfg = read_config()?;
    let stamp = stamp_of_sock(sk.cast())?;
    let slot = cfg.active_slot();
    refresh(stamp, slot, &cfg, &Socket(sk.cast()));
    if stamp.guarded != STAMP_GUARDED || stamp.guard.flags & GUARD_HAS_NAMES == 0 {
        return None;
    }
    // SAFETY: `sk` is a full socket the verifier tracks.
    let pending = unsafe {
        bpf_sk_storage_get(core::ptr::addr_of!(PG_SK_DNS) as *mut c_void, sk.cast(), core::ptr::null_mut(), 0)
    }
    .cast::<PendingQueries>();
    // SAFETY: null (the socket never sent a recorded query) or this
    // socket's storage, valid for this run.
    let Some(pending) = (unsafe { pending.as_mut() }) else {
        bump(&PG_STATS, stats::DNS_ANSWERS_NO_QUERY);
        return None;
    };
    let Some(s) = acquire(&SCRATCH_IN) else {
        // A run on this CPU holds the scratch (a task preempted mid-walk
        // on a preemptible kernel): this answer goes unread, and counted.
        bump(&PG_STATS, stats::DNS_ANSWERS_NOT_PARSED);
        return None;
    };
    learn(ctx, s, pending, &d, &stamp.guard, stamp.guard_cgroup, slot);
    let learned = s.learned;
    release(s);
    Some(u64::from(learned))
}

#[inline(always)]
fn learn(
    ctx: &SkBuffContext,
    s: &mut Scratch,
    pending: &mut PendingQueries,
    d: &Datagram,
    guard: &GuardInfo,
    guard_cgroup: u64,
    slot: u32,
) {
    let (guard_id, flags, epoch) = (guard.guard_id, guard.flags, guard.dns_epoch);
    let Some(n) = copy_payload(ctx, s, d.payload) else { return };
    if s.walk.start(&s.buf, n) == dns::step::STOP {
        // An error RCODE, a malformed header, not one question.
        bump(&PG_STATS, stats::DNS_ANSWERS_NOT_PARSED);
        return;
    }
    s.pending = *pending;
    s.answer = PendingQuery {
        sent_ns: 0,
        question: 0,
        resolver: d.peer.bytes,
        txid: 0,
        port: d.port,
        qtype: 0,
        family: d.peer.family,
        _pad: 0,
        epoch,
        _pad2: 0,
    };
    s.epoch = epoch;
    s.guard_id = guard_id;
    s.wildcards = u32::from(flags & GUARD_HAS_WILDCARDS != 0);
    s.slot = slot;
    s.guard_cgroup = guard_cgroup;
    s.now_ns = now();
    s.matched = PENDING_QUERIES as u32;
    s.refused = 0;
    // SAFETY: helper; a static callback and no context.
    unsafe { bpf_loop(dns::MAX_STEPS, answer_step as *mut c_void, core::ptr::null_mut(), 0) };
    let i = s.matched as usize;
    if i < PENDING_QUERIES {
        // Taken once: a second answer with the same id teaches nothing.
        pending.clear_if(i, &s.pending.slots[i]);
    }
    // One result per answer; one that taught something is counted by the
    // caller as learned, whatever stopped the walk later.
    if s.asked == 0 {
        bump(&PG_STATS, stats::DNS_ANSWERS_NOT_PARSED);
    } else if s.refused != 0 {
        bump(&PG_STATS, s.refused);
    } else if s.learned == 0 {
        let result =
            if s.walk.stop != 0 { stats::DNS_ANSWERS_NOT_PARSED } else { stats::DNS_ANSWERS_NO_ADDRESS };
        bump(&PG_STATS, result);
    }
}

/// Connect/sendmsg: whether `peer` was learned by `guard_cgroup` for a
/// name whose rules allow `proto`/`port`, and has not expired. `Err` says
/// why not (a `REASON_DNS_*` for the report), for guards with names.
#[inline(always)]
pub(crate) fn learned_allows(
    guard: &GuardInfo,
    guard_cgroup: u64,
    slot: u32,
    proto: u8,
    peer: &Addr,
    port: u16,
) -> Result<(), u8> {
    if guard.flags & GUARD_HAS_NAMES == 0 {
        return Err(REASON_NONE);
    }
    let key = LearnedKey { guard_cgroup, family: peer.family, _pad: [0; 7], addr: peer.bytes };
    // SAFETY: an LRU value, copied out at once.
    let Some(learned) = (unsafe { PG_DNS_LEARNED.get(&key) }).copied() else { return Err(REASON_DNS_NEVER) };
    if learned.epoch != guard.dns_epoch {
        // Learned from a resolver the guard no longer trusts.
        return Err(REASON_DNS_EXPIRED);
    }
    let now_ns = now();
    let mut live = false;
    let mut i = 0;
    while i < dns::NAMES_PER_ADDRESS {
        if let Some(hash) = learned.live(i, now_ns) {
            live = true;
            let name = DnsNameKey { guard_id: guard.guard_id, slot: slot as u8, proto, _pad: 0, hash };
            // SAFETY: not preallocated; read-only use within this run.
            if let Some(ports) = unsafe { PG_DNS_NAMES.get(&name) }
                && port_in(ports, port)
            {
                return Ok(());
            }
        }
        i += 1;
    }
    Err(if live { REASON_DNS_OTHER_PORT } else { REASON_DNS_EXPIRED })
}
