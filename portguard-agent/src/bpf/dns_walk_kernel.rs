//! The DNS answer walk of `portguard_common::dns` run in the kernel (#17):
//! the verifier accepts it, within a budget, and for the same bytes the
//! kernel learns exactly what the userspace walk learns. The test object
//! `portguard-dns-walk` is never attached; BPF_PROG_TEST_RUN feeds it
//! packets. Needs root (CI runs it; elsewhere it says why it skips).

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::{
    Ebpf,
    maps::{Array, MapData},
    programs::CgroupSkb,
};
use portguard_common::dns::{
    self, MAX_STEPS, NameKey,
    message::{Learned, Msg, long_answer, mutants, run},
};

use super::syscall::bpf;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portguard-dns-walk"));

const KEY: NameKey = [0x1122_3344_5566_7788, 0x99aa_bbcc_ddee_ff00];
/// Size of the object's `WalkLog` (dns_walk.rs): five header words, then
/// 64 entries of (16-byte address, length, TTL).
const LOG_BYTES: usize = 24 + 64 * 24;
/// A verifier budget far below its 1,000,000 limit, so growth shows early.
const MAX_VERIFIED_INSNS: u32 = 200_000;

const BPF_PROG_TEST_RUN: libc::c_long = 10;

#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
}

const RESOLVER: [u8; 4] = [127, 0, 0, 53];
const CLIENT: [u8; 4] = [127, 0, 0, 1];

/// Ethernet + IPv4 + UDP around a DNS message, `from` -> `to`.
fn packet(dns: &[u8], from: ([u8; 4], u16), to: ([u8; 4], u16)) -> Vec<u8> {
    let mut p = vec![0u8; 12];
    p.extend(0x0800u16.to_be_bytes());
    let total = (20 + 8 + dns.len()) as u16;
    p.extend([0x45, 0]);
    p.extend(total.to_be_bytes());
    p.extend([0, 0, 0, 0, 64, 17, 0, 0]);
    p.extend(from.0);
    p.extend(to.0);
    p.extend(from.1.to_be_bytes());
    p.extend(to.1.to_be_bytes());
    p.extend(((8 + dns.len()) as u16).to_be_bytes());
    p.extend([0, 0]);
    p.extend(dns);
    p
}

/// An answer from the resolver to the client.
fn answer(dns: &[u8]) -> Vec<u8> {
    packet(dns, (RESOLVER, 53), (CLIENT, 40000))
}

/// The query `response` answers, from the client to the resolver.
fn query_of(response: &[u8], to: [u8; 4]) -> Vec<u8> {
    let mut q = response.to_vec();
    q[2] = 0x01;
    q[3] = 0x00;
    packet(&q, (CLIENT, 40000), (to, 53))
}

struct Kernel {
    _ebpf: Ebpf,
    prog_fd: i32,
    log: Array<MapData, [u8; LOG_BYTES]>,
    matching: Array<MapData, u32>,
}

impl Kernel {
    fn load() -> (Kernel, u32) {
        let mut ebpf = Ebpf::load(OBJECT).expect("load the dns-walk object");
        let prog: &mut CgroupSkb =
            ebpf.program_mut("pg_dns_walk").expect("pg_dns_walk").try_into().expect("cgroup_skb");
        prog.load().unwrap_or_else(|e| panic!("the verifier refused the walk: {e:?}"));
        let insns = prog.info().expect("info").verified_instruction_count().unwrap_or(0);
        let prog_fd = prog.fd().expect("fd").as_fd().as_raw_fd();
        let mut key: Array<_, NameKey> =
            Array::try_from(ebpf.take_map("DNS_KEY").expect("DNS_KEY")).expect("array");
        key.set(0, KEY, 0).expect("set the key");
        let log = Array::try_from(ebpf.take_map("DNS_LOG").expect("DNS_LOG")).expect("array");
        let matching = Array::try_from(ebpf.take_map("DNS_MATCH").expect("DNS_MATCH")).expect("array");
        (Kernel { _ebpf: ebpf, prog_fd, log, matching }, insns)
    }

    /// Whether an answer must take a recorded query to teach anything.
    fn match_queries(&mut self, on: bool) {
        self.matching.set(0, u32::from(on), 0).expect("set DNS_MATCH");
    }

    /// Runs the program on an answer from the resolver.
    fn walk(&self, dns: &[u8]) -> Learned {
        self.run(&answer(dns))
    }

    fn run(&self, data: &[u8]) -> Learned {
        let mut out = vec![0u8; data.len() + 256];
        let mut attr = TestRunAttr {
            prog_fd: self.prog_fd as u32,
            data_size_in: data.len() as u32,
            data_size_out: out.len() as u32,
            data_in: data.as_ptr() as u64,
            data_out: out.as_mut_ptr() as u64,
            repeat: 1,
            ..Default::default()
        };
        bpf(BPF_PROG_TEST_RUN, &mut attr).expect("BPF_PROG_TEST_RUN");
        let log = self.log.get(&0, 0).expect("read DNS_LOG");
        let word = |at: usize| u32::from_ne_bytes(log[at..at + 4].try_into().expect("4 bytes"));
        let question = u64::from_ne_bytes(log[..8].try_into().expect("8 bytes"));
        let (qtype, stop, steps, count) = (word(8), word(12), word(16), word(20));
        let addrs = (0..count.min(64) as usize)
            .map(|i| {
                let e = 24 + i * 24;
                (log[e..e + word(e + 16) as usize].to_vec(), word(e + 20))
            })
            .collect();
        Learned {
            question: (question != 0).then_some((question, qtype)),
            addrs,
            stop: (stop != 0).then_some(stop),
            steps,
        }
    }
}

fn root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        assert!(std::env::var_os("CI").is_none(), "CI runs the kernel's DNS walk test as root");
        eprintln!("skipped: loading BPF programs needs root");
    }
    root
}

/// Question, addresses with TTLs, stop reason and step count (one
/// `bpf_loop` iteration per userspace step) all equal.
fn same(kernel: &Learned, user: &Learned, msg: &[u8]) {
    assert_eq!(kernel, user, "kernel and userspace walks differ on {msg:02x?}");
}

#[test]
fn the_kernel_learns_from_an_answer_what_userspace_learns() {
    if !root() {
        return;
    }
    let (mut kernel, insns) = Kernel::load();
    kernel.match_queries(false);
    eprintln!("dns walk: {insns} instructions verified");
    assert!(insns > 0 && insns < MAX_VERIFIED_INSNS, "verified_insns {insns}");

    // A CNAME chain, then many records: the answers the walk is for.
    let base = long_answer();
    let user = run(&KEY, &base.0, MAX_STEPS);
    assert_eq!(user.addrs.len(), 39, "{user:?}");
    same(&kernel.walk(&base.0), &user, &base.0);
    // Mutants: whatever the bytes, the kernel and userspace agree.
    for m in mutants(&base.0, 2_000, 0x2545_f491_4f6c_dd1d) {
        same(&kernel.walk(&m), &run(&KEY, &m, MAX_STEPS), &m);
    }
}

#[test]
fn an_answer_teaches_only_when_it_takes_a_query_of_the_socket() {
    if !root() {
        return;
    }
    let (mut kernel, _) = Kernel::load();
    kernel.match_queries(true);
    let mut m = Msg::response("api.vendor.example", 1, 1);
    m.a(12, 60, [192, 0, 2, 10]);
    let taught = run(&KEY, &m.0, MAX_STEPS);
    let no_query = |l: &Learned| l.stop == Some(dns::stop::NO_QUERY) && l.addrs.is_empty();

    // Unsolicited: nothing.
    assert!(no_query(&kernel.walk(&m.0)), "{:?}", kernel.walk(&m.0));
    // Asked, then answered: learned, once.
    kernel.run(&query_of(&m.0, RESOLVER));
    assert_eq!(kernel.walk(&m.0), taught);
    assert!(no_query(&kernel.walk(&m.0)), "a second answer with the same id teaches nothing");

    // Asked of one resolver: an answer from another, or with another id,
    // or for another question teaches nothing, and leaves the query for
    // the real answer.
    kernel.run(&query_of(&m.0, RESOLVER));
    assert!(no_query(&kernel.run(&packet(&m.0, ([127, 0, 0, 54], 53), (CLIENT, 40000)))));
    let mut other_id = m.0.clone();
    other_id[1] ^= 1;
    assert!(no_query(&kernel.walk(&other_id)));
    let mut other_question = Msg::response("api.vendor.exampla", 1, 1);
    other_question.a(12, 60, [192, 0, 2, 10]);
    assert!(no_query(&kernel.walk(&other_question.0)));
    assert_eq!(kernel.walk(&m.0), taught);
}
