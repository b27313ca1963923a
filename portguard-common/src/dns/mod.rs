//! DNS names for connect rules (issue #17, `docs/design/dns-names.md`): the
//! keyed name hash the agent and the kernel share, and the walk of a DNS
//! answer that the receive path runs one step per `bpf_loop` iteration.
//!
//! The kernel side is `portguard-ebpf/src/dns.rs`: egress records queries
//! ([`PendingQueries`]), ingress walks answers and writes [`Learned`]
//! entries, connect and sendmsg read them. The walk is written in the shape the verifier accepts (the
//! stage-0 spike verified the same structure at 7,934 instructions): the
//! message sits in a buffer of [`MSG_BUF`] bytes, every index is masked
//! right before use, all state is one `#[repr(C)]` struct (a per-CPU map
//! value in the kernel, so every iteration starts from the same verifier
//! state), and each step does one bounded thing: one label, one compression
//! pointer, or the fixed part of a question or record. The tests below run
//! the very code the kernel will, so what a message teaches is pinned here.
//!
//! What an answer teaches: the A and AAAA records of the answer section
//! whose owner is the question name, or the target of a CNAME record read
//! before them that itself continued the chain (one pass in message order,
//! as RFC 1034 4.3.2 has servers write them), each with the minimum TTL of
//! the chain links up to it. Anything the walk does not parse stops it:
//! what was learned before stays learned (each address was checked on its
//! own), nothing after is. It never reads the authority or additional
//! sections.

/// Bytes of a message the kernel copies and walks (a power of two: indices
/// are masked with `MSG_BUF - 1`). Records past it teach nothing.
pub const MSG_BUF: usize = 4096;
const MASK: u32 = MSG_BUF as u32 - 1;
/// The buffer holds [`MSG_BUF`] bytes of message and 8 of slack, so an
/// 8-byte read at any masked index stays inside it.
pub const BUF_LEN: usize = MSG_BUF + 8;
/// The buffer a message is copied into for the walk.
pub type Buf = [u8; BUF_LEN];
/// Labels of a question name the walk keeps a hash of (the policy's limit).
pub const MAX_QUESTION_LABELS: usize = 32;
/// Compression pointers followed within one name.
pub const MAX_POINTER_HOPS: u32 = 16;
/// CNAME links followed from the question.
pub const MAX_CNAME_LINKS: u32 = 8;
/// Steps the kernel gives one message (`bpf_loop`'s count).
pub const MAX_STEPS: u32 = 512;
/// A name's wire length, length bytes and root included (RFC 1035 3.1).
const MAX_NAME_WIRE: u32 = 255;

const TYPE_A: u32 = 1;
const TYPE_CNAME: u32 = 5;
const TYPE_AAAA: u32 = 28;
const CLASS_IN: u32 = 1;

/// What a step leaves for its caller.
pub mod step {
    /// Go on.
    pub const CONTINUE: u32 = 0;
    /// The question is read: `question` and `qtype` are set. The caller
    /// compares it with the query it recorded and stops unless it matches.
    pub const QUESTION: u32 = 1;
    /// `addr`/`addr_len` hold an address the answer gives for the chain,
    /// `ttl` its chain's minimum TTL in seconds.
    pub const ADDRESS: u32 = 2;
    /// The answer section is read.
    pub const DONE: u32 = 3;
    /// The walk stopped on something it does not parse: `stop` says what.
    pub const STOP: u32 = 4;
}

/// Why a walk stopped (counted by the kernel as `not_parsed`).
pub mod stop {
    pub const NOT_A_RESPONSE: u32 = 1;
    pub const NOT_A_QUERY: u32 = 2;
    /// RCODE other than NOERROR: nothing to learn.
    pub const RCODE: u32 = 3;
    pub const QDCOUNT: u32 = 4;
    /// The message ends inside a name or record.
    pub const TRUNCATED: u32 = 5;
    /// A label type other than a length or a pointer (0x40, 0x80).
    pub const LABEL_TYPE: u32 = 6;
    /// A pointer that does not go strictly backwards.
    pub const POINTER: u32 = 7;
    pub const TOO_MANY_HOPS: u32 = 8;
    pub const LONG_NAME: u32 = 9;
    pub const TOO_MANY_LABELS: u32 = 10;
    pub const CLASS: u32 = 11;
    pub const CHAIN_TOO_LONG: u32 = 12;
    /// An answer to no query of this socket (or to one already answered):
    /// set by the caller, which compares the question with its pending
    /// queries.
    pub const NO_QUERY: u32 = 13;
}

const PHASE_QNAME: u32 = 0;
const PHASE_QFIXED: u32 = 1;
const PHASE_OWNER: u32 = 2;
const PHASE_RR_FIXED: u32 = 3;
const PHASE_CNAME_TARGET: u32 = 4;
const PHASE_DONE: u32 = 5;

/// A SipHash-1-3 key: made once by the agent from the kernel's random
/// source and pinned, so names cannot be chosen to collide.
pub type NameKey = [u64; 2];

/// SipHash-1-3 over a stream of bytes or words (no_std, no allocation).
#[derive(Clone, Copy)]
struct Sip {
    v: [u64; 4],
    tail: u64,
    len: u64,
}

impl Sip {
    #[inline(always)]
    fn new(key: &NameKey) -> Sip {
        Sip {
            v: [
                key[0] ^ 0x736f_6d65_7073_6575,
                key[1] ^ 0x646f_7261_6e64_6f6d,
                key[0] ^ 0x6c79_6765_6e65_7261,
                key[1] ^ 0x7465_6462_7974_6573,
            ],
            tail: 0,
            len: 0,
        }
    }

    #[inline(always)]
    fn round(&mut self) {
        let v = &mut self.v;
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }

    #[inline(always)]
    fn compress(&mut self, m: u64) {
        self.v[3] ^= m;
        self.round();
        self.v[0] ^= m;
    }

    #[inline(always)]
    fn byte(&mut self, b: u8) {
        self.tail |= u64::from(b) << (8 * (self.len & 7));
        self.len += 1;
        if self.len & 7 == 0 {
            self.compress(self.tail);
            self.tail = 0;
        }
    }

    #[inline(always)]
    fn word(&mut self, w: u64) {
        // Only at word boundaries (fold): no tail to merge.
        self.compress(w);
        self.len += 8;
    }

    #[inline(always)]
    fn finish(mut self) -> u64 {
        self.compress(self.tail | (self.len << 56));
        self.v[2] ^= 0xff;
        self.round();
        self.round();
        self.round();
        self.v[0] ^ self.v[1] ^ self.v[2] ^ self.v[3]
    }
}

/// ASCII lower case: DNS compares names case-insensitively in ASCII only
/// (RFC 4343).
#[inline(always)]
fn lower(b: u8) -> u8 {
    if b.is_ascii_uppercase() { b + 32 } else { b }
}

/// Two hashes folded into one, in order.
#[inline(always)]
fn fold(key: &NameKey, a: u64, b: u64) -> u64 {
    let mut s = Sip::new(key);
    s.word(a);
    s.word(b);
    s.finish()
}

/// The hash of one label, case folded.
pub fn label_hash(key: &NameKey, label: &[u8]) -> u64 {
    let mut s = Sip::new(key);
    for &b in label {
        s.byte(lower(b));
    }
    s.finish()
}

/// A name's identity in the kernel's maps: its label hashes folded from
/// the right (`S_n = 0`, `S_i = fold(S_(i+1), label_i)`), so the hash of
/// every suffix of a question is on the way to the whole name's (wildcard
/// rules look those up). `labels` come left to right, without the root.
pub fn name_hash<'a>(key: &NameKey, labels: impl DoubleEndedIterator<Item = &'a [u8]>) -> u64 {
    labels.rev().fold(0, |s, l| fold(key, s, label_hash(key, l)))
}

/// A `*.suffix` pattern: exactly one label before the suffix.
pub const WILDCARD_ONE: u64 = 1;
/// A `**.suffix` pattern: one or more labels before the suffix.
pub const WILDCARD_MANY: u64 = 2;

/// The kernel's identity of a wildcard pattern: the suffix's
/// [`name_hash`] folded with the kind. A label hash is never 1 or 2 but by
/// a 2^-63 chance, so no literal name takes a pattern's identity.
#[inline(always)]
pub fn wildcard_hash(key: &NameKey, suffix: u64, kind: u64) -> u64 {
    fold(key, suffix, kind)
}

/// The state of one walk. In the kernel it is a per-CPU map value that the
/// `bpf_loop` callback reads and writes; nothing lives on the stack across
/// steps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsWalk {
    /// Next byte to read, and the message's length (at most [`MSG_BUF`]).
    pub pos: u32,
    pub len: u32,
    /// A pointer must point below this: the start of the run of labels
    /// being read (the name's start, then each pointer's target), so
    /// pointers go strictly backwards and a walk cannot loop.
    pub seg_start: u32,
    /// Where to go on after a name that followed a pointer (0: it did not).
    pub resume: u32,
    pub phase: u32,
    /// Answer records not yet read.
    pub left: u32,
    pub hops: u32,
    pub name_wire: u32,
    pub labels: u32,
    pub links: u32,
    /// Minimum TTL along the chain so far (seconds).
    pub chain_ttl: u32,
    /// End of the record whose CNAME target is being read.
    pub rr_end: u32,
    pub qtype: u32,
    /// Set with [`step::STOP`].
    pub stop: u32,
    /// The message's transaction id.
    pub txid: u32,
    /// Set with [`step::ADDRESS`]: 4 (IPv4) or 16 (IPv6) bytes of `addr`.
    pub addr_len: u32,
    pub ttl: u32,
    pub addr: [u8; 16],
    /// Left fold of the labels of the name being read (compared, never
    /// looked up: owner names against `chain`).
    pub name: u64,
    /// The name whose records count: the question's, then each CNAME
    /// target that continued it.
    pub chain: u64,
    /// The question's [`name_hash`], set with [`step::QUESTION`].
    pub question: u64,
    /// The question's label hashes, left to right.
    pub qlabels: [u64; MAX_QUESTION_LABELS],
    /// Set with [`step::QUESTION`]: the question's label count.
    pub question_labels: u32,
    pub _pad: u32,
    /// Set with [`step::QUESTION`]: `suffixes[i]` is the [`name_hash`] of
    /// the question without its first `i` labels (`suffixes[0] ==
    /// question`), what wildcard patterns are looked up by.
    pub suffixes: [u64; MAX_QUESTION_LABELS],
}

/// Reads byte `i` of the message; the mask keeps every index inside the
/// buffer whatever `i` is (the verifier sees the bound), the callers keep
/// it below `len`.
#[inline(always)]
fn at(buf: &Buf, i: u32) -> u32 {
    u32::from(buf[(i & MASK) as usize])
}

#[inline(always)]
fn be16(buf: &Buf, i: u32) -> u32 {
    (at(buf, i) << 8) | at(buf, i + 1)
}

/// Eight bytes of a label from `start`, lower-cased, little-endian, as
/// SipHash reads a byte stream; bytes past `n` (< 8: a tail) are zero.
/// One unaligned read and no per-byte branch: the verifier walks it once.
#[inline(always)]
fn label_word(buf: &Buf, start: u32, n: u32) -> u64 {
    let i = (start & MASK) as usize;
    // SAFETY: i < MSG_BUF, and the buffer has 8 bytes of slack past it.
    let m = u64::from_le(unsafe { core::ptr::read_unaligned(buf.as_ptr().add(i).cast::<u64>()) });
    // ASCII upper case to lower case, eight bytes at once: 0x20 added where
    // a byte is 'A'..='Z' (high bit clear, >= 0x41 and <= 0x5a).
    let low7 = m & 0x7f7f_7f7f_7f7f_7f7f;
    let above_z = low7.wrapping_add(0x2525_2525_2525_2525);
    let from_a = low7.wrapping_add(0x3f3f_3f3f_3f3f_3f3f);
    let upper = !m & (from_a ^ above_z) & 0x8080_8080_8080_8080;
    let m = m | (upper >> 2);
    if n < 8 { m & ((1u64 << (8 * n)) - 1) } else { m }
}

/// [`label_hash`] of the `len`-byte label at `start`, a word at a time:
/// the same value as byte by byte, with at most 8 compressions and
/// constant-bound loops the verifier walks cheaply.
#[inline(always)]
fn label_at(key: &NameKey, buf: &Buf, start: u32, len: u32) -> u64 {
    let mut s = Sip::new(key);
    let full = len / 8;
    let mut w = 0;
    // A label is at most 63 bytes: at most 7 full words.
    while w < 7 {
        if w >= full {
            break;
        }
        s.compress(label_word(buf, start + w * 8, 8));
        w += 1;
    }
    s.tail = label_word(buf, start + full * 8, len - full * 8);
    s.len = u64::from(len);
    s.finish()
}

impl DnsWalk {
    /// Starts a walk of a response of `len` bytes (the caller copied
    /// `min(len, MSG_BUF)` of them into `buf`), in place: in the kernel the
    /// walk lives in a map value, larger than a BPF stack frame allows to
    /// copy. Returns [`step::CONTINUE`], or [`step::STOP`] with `stop` set:
    /// not a response, not a standard query, an error RCODE (an answer with
    /// nothing to learn) or not exactly one question.
    pub fn start(&mut self, buf: &Buf, len: u32) -> u32 {
        self.start_message(buf, len, true)
    }

    /// Starts a walk of a query the workload sends (the egress side): a
    /// standard query with one question; the walk ends at
    /// [`step::QUESTION`] (no answer records are read).
    pub fn start_query(&mut self, buf: &Buf, len: u32) -> u32 {
        let rc = self.start_message(buf, len, false);
        self.left = 0;
        rc
    }

    fn start_message(&mut self, buf: &Buf, len: u32, response: bool) -> u32 {
        self.len = if len > MSG_BUF as u32 { MSG_BUF as u32 } else { len };
        self.pos = 12;
        self.phase = PHASE_QNAME;
        self.links = 0;
        self.chain_ttl = u32::MAX;
        self.stop = 0;
        self.qtype = 0;
        self.question = 0;
        self.chain = 0;
        self.begin_name();
        if self.len < 12 {
            return self.halt(stop::TRUNCATED);
        }
        self.txid = be16(buf, 0);
        let flags = be16(buf, 2);
        if (flags & 0x8000 != 0) != response {
            return self.halt(if response { stop::NOT_A_RESPONSE } else { stop::NOT_A_QUERY });
        }
        if (flags >> 11) & 0xf != 0 {
            return self.halt(stop::NOT_A_QUERY);
        }
        if flags & 0xf != 0 {
            return self.halt(stop::RCODE);
        }
        if be16(buf, 4) != 1 {
            return self.halt(stop::QDCOUNT);
        }
        self.left = be16(buf, 6);
        step::CONTINUE
    }

    fn halt(&mut self, why: u32) -> u32 {
        self.stop = why;
        self.phase = PHASE_DONE;
        step::STOP
    }

    /// Starts reading a name at `pos`.
    fn begin_name(&mut self) {
        self.seg_start = self.pos;
        self.resume = 0;
        self.hops = 0;
        self.name_wire = 0;
        self.labels = 0;
        self.name = 0;
    }

    /// One step: one label or pointer of a name, or the fixed part of the
    /// question or of a record. Returns a [`step`] code.
    pub fn step(&mut self, key: &NameKey, buf: &Buf) -> u32 {
        match self.phase {
            PHASE_QNAME | PHASE_OWNER | PHASE_CNAME_TARGET => self.name_step(key, buf),
            PHASE_QFIXED => self.question_fixed(key, buf),
            PHASE_RR_FIXED => self.record_fixed(buf),
            _ => step::DONE,
        }
    }

    fn name_step(&mut self, key: &NameKey, buf: &Buf) -> u32 {
        let pos = self.pos;
        // A CNAME's target lies inside its record's data until a pointer
        // leads elsewhere; every other name, inside the message.
        let end = if self.phase == PHASE_CNAME_TARGET && self.resume == 0 { self.rr_end } else { self.len };
        if pos >= end {
            return self.halt(stop::TRUNCATED);
        }
        let c = at(buf, pos);
        if c == 0 {
            self.name_wire += 1;
            self.pos = if self.resume != 0 { self.resume } else { pos + 1 };
            return self.name_done();
        }
        if c & 0xc0 == 0xc0 {
            if pos + 1 >= end {
                return self.halt(stop::TRUNCATED);
            }
            let target = ((c & 0x3f) << 8) | at(buf, pos + 1);
            // Strictly backwards, and never into the header.
            if target >= self.seg_start || target < 12 {
                return self.halt(stop::POINTER);
            }
            self.hops += 1;
            if self.hops > MAX_POINTER_HOPS {
                return self.halt(stop::TOO_MANY_HOPS);
            }
            if self.resume == 0 {
                self.resume = pos + 2;
            }
            self.seg_start = target;
            self.pos = target;
            return step::CONTINUE;
        }
        if c & 0xc0 != 0 {
            return self.halt(stop::LABEL_TYPE);
        }
        if pos + 1 + c > end {
            return self.halt(stop::TRUNCATED);
        }
        self.name_wire += c + 1;
        if self.name_wire + 1 > MAX_NAME_WIRE {
            return self.halt(stop::LONG_NAME);
        }
        let lh = label_at(key, buf, pos + 1, c);
        if self.phase == PHASE_QNAME {
            let n = self.labels as usize;
            if n >= MAX_QUESTION_LABELS {
                return self.halt(stop::TOO_MANY_LABELS);
            }
            self.qlabels[n] = lh;
        }
        self.labels += 1;
        self.name = fold(key, self.name, lh);
        self.pos = pos + 1 + c;
        step::CONTINUE
    }

    fn name_done(&mut self) -> u32 {
        match self.phase {
            PHASE_QNAME => self.phase = PHASE_QFIXED,
            PHASE_OWNER => self.phase = PHASE_RR_FIXED,
            _ => {
                // A CNAME's target: it continues the chain.
                self.chain = self.name;
                self.pos = self.rr_end;
                self.next_record();
            }
        }
        step::CONTINUE
    }

    fn next_record(&mut self) {
        self.left = self.left.saturating_sub(1);
        if self.left == 0 {
            self.phase = PHASE_DONE;
        } else {
            self.phase = PHASE_OWNER;
            self.begin_name();
        }
    }

    fn question_fixed(&mut self, key: &NameKey, buf: &Buf) -> u32 {
        let pos = self.pos;
        if pos + 4 > self.len {
            return self.halt(stop::TRUNCATED);
        }
        if be16(buf, pos + 2) != CLASS_IN {
            return self.halt(stop::CLASS);
        }
        self.qtype = be16(buf, pos);
        // The policy's identity of the name: fold from the right.
        let mut s = 0;
        let mut i = MAX_QUESTION_LABELS;
        while i > 0 {
            i -= 1;
            if (i as u32) < self.labels {
                s = fold(key, s, self.qlabels[i]);
                self.suffixes[i] = s;
            }
        }
        self.question = s;
        self.question_labels = self.labels;
        self.chain = self.name;
        self.pos = pos + 4;
        if self.left == 0 {
            self.phase = PHASE_DONE;
        } else {
            self.phase = PHASE_OWNER;
            self.begin_name();
        }
        step::QUESTION
    }

    fn record_fixed(&mut self, buf: &Buf) -> u32 {
        let pos = self.pos;
        if pos + 10 > self.len {
            return self.halt(stop::TRUNCATED);
        }
        let rtype = be16(buf, pos);
        let class = be16(buf, pos + 2);
        let ttl = (be16(buf, pos + 4) << 16) | be16(buf, pos + 6);
        // RFC 2181 section 8: a TTL with the top bit set is read as zero.
        let ttl = if ttl & 0x8000_0000 != 0 { 0 } else { ttl };
        let rdlen = be16(buf, pos + 8);
        let data = pos + 10;
        if data + rdlen > self.len {
            return self.halt(stop::TRUNCATED);
        }
        let ours = class == CLASS_IN && self.name == self.chain;
        let ttl = if ttl < self.chain_ttl { ttl } else { self.chain_ttl };
        if ours && rtype == TYPE_CNAME {
            self.links += 1;
            if self.links > MAX_CNAME_LINKS {
                return self.halt(stop::CHAIN_TOO_LONG);
            }
            self.chain_ttl = ttl;
            self.rr_end = data + rdlen;
            self.pos = data;
            self.phase = PHASE_CNAME_TARGET;
            self.begin_name();
            return step::CONTINUE;
        }
        self.pos = data + rdlen;
        let addr_len = match rtype {
            TYPE_A if rdlen == 4 => 4,
            TYPE_AAAA if rdlen == 16 => 16,
            _ => 0,
        };
        if !ours || addr_len == 0 {
            self.next_record();
            return step::CONTINUE;
        }
        let mut i = 0;
        while i < 16 {
            self.addr[i as usize] = if i < addr_len { at(buf, data + i) as u8 } else { 0 };
            i += 1;
        }
        self.addr_len = addr_len;
        self.ttl = ttl;
        self.next_record();
        step::ADDRESS
    }
}

mod learned;
pub use learned::*;
mod pending;
pub use pending::{PENDING_QUERIES, PendingQueries, PendingQuery, QUERY_WINDOW_NS};

#[cfg(any(test, feature = "user"))]
pub mod message;
#[cfg(test)]
mod tests;
