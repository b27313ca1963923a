//! A test object, never attached anywhere: runs `portguard_common::dns`'s
//! answer walk in the kernel on a UDP datagram that BPF_PROG_TEST_RUN hands
//! it, one step per `bpf_loop` iteration, as the receive path will (#17).
//! The agent's tests load it to learn whether the verifier accepts the walk
//! (and at what instruction count) and check that the kernel learns exactly
//! what the userspace walk learns from the same bytes.
#![no_std]
#![no_main]

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext as _,
    helpers::generated::{bpf_loop, bpf_skb_load_bytes},
    macros::{cgroup_skb, map},
    maps::Array,
    programs::SkBuffContext,
};
use portguard_common::dns::{self, Buf, DnsWalk, MSG_BUF, NameKey};

/// The message and the walk's state: a map value, not the stack.
#[repr(C)]
pub struct Scratch {
    buf: Buf,
    walk: DnsWalk,
}

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
    let off = u32::from(v & 0x0f) * 4 + 8;
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
    // SAFETY: map values of this run; the helper writes n <= MSG_BUF bytes
    // into the buffer.
    unsafe {
        (*log).question = 0;
        (*log).qtype = 0;
        (*log).stop = 0;
        (*log).steps = 0;
        (*log).count = 0;
        if bpf_skb_load_bytes(ctx.as_ptr(), off, (*s).buf.as_mut_ptr().cast(), n) != 0 {
            return None;
        }
        if (*s).walk.start(&(*s).buf, n) == dns::step::STOP {
            (*log).stop = (*s).walk.stop;
            return None;
        }
        bpf_loop(dns::MAX_STEPS, walk_step as *mut c_void, core::ptr::null_mut(), 0);
    }
    Some(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
