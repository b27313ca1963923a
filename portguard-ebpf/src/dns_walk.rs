//! A test object, never attached anywhere: runs `portguard_common::dns` in
//! the kernel on UDP datagrams that BPF_PROG_TEST_RUN hands it, one walk
//! step per `bpf_loop` iteration, as the send and receive paths will (#17).
//! A datagram to port 53 is a query: its question is recorded in a pending
//! table (a map value here, socket storage in the real programs). One from
//! port 53 is an answer: with matching on, it teaches nothing unless it
//! takes a recorded query. The agent's tests load it to learn whether the
//! verifier accepts the walk (and at what instruction count) and check that
//! the kernel learns exactly what the userspace walk learns from the same
//! bytes.
#![no_std]
#![no_main]

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext as _,
    helpers::generated::{bpf_ktime_get_boot_ns, bpf_loop, bpf_skb_load_bytes},
    macros::{cgroup_skb, map},
    maps::Array,
    programs::SkBuffContext,
};
use portguard_common::{
    AF_INET,
    dns::{self, Buf, DnsWalk, MSG_BUF, NameKey, PendingQueries, PendingQuery},
};

/// The message, the walk's state and the datagram's peer: a map value,
/// not the stack.
#[repr(C)]
pub struct Scratch {
    buf: Buf,
    walk: DnsWalk,
    /// The resolver: destination of a query, source of an answer.
    peer: [u8; 16],
    peer_port: u32,
    query: u32,
}

/// Set by the test: 1 to require that an answer takes a recorded query.
#[map(name = "DNS_MATCH")]
static MATCH: Array<u32> = Array::with_max_entries(1, 0);
/// The pending queries of the one socket this stands for.
#[map(name = "DNS_PENDING")]
static PENDING: Array<PendingQueries> = Array::with_max_entries(1, 0);

/// One address the walk gave.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Learned {
    addr: [u8; 16],
    addr_len: u32,
    ttl: u32,
}

/// Addresses kept per run; the count goes on past it.
const LOG_ADDRS: usize = 64;

/// What one run learned, read back by the test.
#[repr(C)]
pub struct WalkLog {
    question: u64,
    qtype: u32,
    stop: u32,
    steps: u32,
    count: u32,
    addrs: [Learned; LOG_ADDRS],
}

#[map(name = "DNS_SCRATCH")]
static SCRATCH: Array<Scratch> = Array::with_max_entries(1, 0);
#[map(name = "DNS_KEY")]
static KEY: Array<NameKey> = Array::with_max_entries(1, 0);
#[map(name = "DNS_LOG")]
static LOG: Array<WalkLog> = Array::with_max_entries(1, 0);

#[inline(never)]
extern "C" fn walk_step(_index: u64, _ctx: *mut c_void) -> i64 {
    let (Some(s), Some(key), Some(log)) = (SCRATCH.get_ptr_mut(0), KEY.get(0), LOG.get_ptr_mut(0)) else {
        return 1;
    };
    // SAFETY: values of single-entry maps, valid for this run; the test
    // runs one program at a time.
    let (s, log) = unsafe { (&mut *s, &mut *log) };
    log.steps += 1;
    match s.walk.step(key, &s.buf) {
        dns::step::CONTINUE => 0,
        dns::step::QUESTION => {
            let Some(pending) = PENDING.get_ptr_mut(0) else { return 1 };
            // SAFETY: the single pending table, valid for this run.
            let pending = unsafe { &mut *pending };
            let seen = PendingQuery {
                // SAFETY: helper without arguments.
                sent_ns: unsafe { bpf_ktime_get_boot_ns() },
                question: s.walk.question,
                resolver: s.peer,
                txid: s.walk.txid as u16,
                port: s.peer_port as u16,
                qtype: s.walk.qtype as u16,
                family: AF_INET,
                ..PendingQuery::default()
            };
            if s.query != 0 {
                pending.record(seen);
                return 1;
            }
            if MATCH.get(0).is_some_and(|m| *m != 0) && pending.take(&seen, seen.sent_ns).is_none() {
                log.stop = dns::stop::NO_QUERY;
                return 1;
            }
            log.question = s.walk.question;
            log.qtype = s.walk.qtype;
            0
        }
        dns::step::ADDRESS => {
            let n = log.count as usize;
            if n < LOG_ADDRS {
                log.addrs[n] = Learned { addr: s.walk.addr, addr_len: s.walk.addr_len, ttl: s.walk.ttl };
            }
            log.count += 1;
            0
        }
        dns::step::DONE => 1,
        _ => {
            log.stop = s.walk.stop;
            1
        }
    }
}

#[cgroup_skb]
pub(crate) fn pg_dns_walk(ctx: SkBuffContext) -> i32 {
    let _ = run(&ctx);
    1
}

#[inline(always)]
fn run(ctx: &SkBuffContext) -> Option<()> {
    // BPF_PROG_TEST_RUN gives a cgroup_skb program the packet from its IP
    // header; the test sends IPv4 + UDP + DNS.
    let v: u8 = ctx.load(0).ok()?;
    if v >> 4 != 4 {
        return None;
    }
    let ihl = u32::from(v & 0x0f) * 4;
    let off = ihl + 8;
    let src: [u8; 4] = ctx.load(12).ok()?;
    let dst: [u8; 4] = ctx.load(16).ok()?;
    let sport = u16::from_be(ctx.load::<u16>(ihl as usize).ok()?);
    let dport = u16::from_be(ctx.load::<u16>(ihl as usize + 2).ok()?);
    let query = dport == 53;
    if !query && sport != 53 {
        return None;
    }
    let total = ctx.len();
    if total <= off {
        return None;
    }
    let len = total - off;
    let n = if len > MSG_BUF as u32 { MSG_BUF as u32 } else { len };
    // The verifier loses `n >= 1` through the subtraction: state [1, MSG_BUF].
    let n = ((n - 1) & (MSG_BUF as u32 - 1)) + 1;
    let s = SCRATCH.get_ptr_mut(0)?;
    let log = LOG.get_ptr_mut(0)?;
    // SAFETY: values of single-entry maps, valid for this run; the test
    // runs one program at a time.
    let (s, log) = unsafe { (&mut *s, &mut *log) };
    log.question = 0;
    log.qtype = 0;
    log.stop = 0;
    log.steps = 0;
    log.count = 0;
    // SAFETY: the helper writes n <= MSG_BUF bytes into the buffer.
    if unsafe { bpf_skb_load_bytes(ctx.as_ptr(), off, s.buf.as_mut_ptr().cast(), n) } != 0 {
        return None;
    }
    let (peer, port) = if query { (dst, dport) } else { (src, sport) };
    s.peer = [peer[0], peer[1], peer[2], peer[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    s.peer_port = u32::from(port);
    s.query = u32::from(query);
    let started = if query { s.walk.start_query(&s.buf, n) } else { s.walk.start(&s.buf, n) };
    if started == dns::step::STOP {
        log.stop = s.walk.stop;
        return None;
    }
    // SAFETY: helper; a static callback and no context.
    unsafe { bpf_loop(dns::MAX_STEPS, walk_step as *mut c_void, core::ptr::null_mut(), 0) };
    Some(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
