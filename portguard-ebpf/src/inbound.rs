//! Who may reach a guarded socket: `cgroup_skb/ingress`, judged per packet
//! with the receiving socket at hand.
//!
//! The kernel runs a socket's cgroup programs for the packets it receives,
//! so only sockets created in a guarded subtree run this program. Fast
//! paths first: a TCP socket that is not listening (established, in the
//! handshake, closing) and a connected UDP socket pass at once; a
//! tightened policy refuses new connections, it does not cut live ones.
//! What remains is a TCP listener (the SYN and the handshake's last ACK
//! both arrive there) or an unconnected UDP socket:
//!
//! * the bind rule approving the socket's local address and port, under
//!   the live generation, is looked up as bind judged it;
//! * no rule: a TCP listener that went live without a judged bind
//!   (listen() without bind(), io_uring) receives nothing; a UDP socket (a
//!   client on a kernel-chosen port) hears only peers it sent to within
//!   the reply window;
//! * a rule without `from`: any peer;
//! * a rule with `from`: only sources inside it (a v4 packet is judged as
//!   IPv4 whatever the socket's family), and for UDP also peers the socket
//!   sent to within the window.
//!
//! A cgroup_skb program drops with 0 and passes with 1.

use aya_ebpf::{
    EbpfContext,
    bindings::bpf_sock,
    helpers::generated::{bpf_get_socket_cookie, bpf_sk_fullsock},
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use portguard_common::{
    AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP, MODE_AUDIT, Op, REASON_NONE, REASON_NOT_FROM,
    REASON_UNAPPROVED_PORT, RULE_HAS_FROM, STAMP_GUARDED, Verdict, stats,
};

use crate::{
    addr::Addr,
    decide::{bind_rule, from_allowed},
    dns,
    identity::{Guarded, Socket, refresh, stamp_of_sock},
    maps::{PG_STATS, add, bump},
    packet::{IpHeader, ip_header, load},
    read_config,
    report::{Decision, record},
    udp_peers,
};

const PASS: i32 = 1;
const DROP: i32 = 0;

/// `struct bpf_sock::state` values (the kernel's TCP states, which UDP
/// sockets use too: ESTABLISHED when connected, CLOSE when not).
pub(crate) const BPF_TCP_ESTABLISHED: u32 = 1;
pub(crate) const BPF_TCP_CLOSE: u32 = 7;
const BPF_TCP_LISTEN: u32 = 10;

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// `filter`'s verdict for a packet that passes and cannot be a DNS answer
/// to learn from (an established stream, a socket connected to anything
/// but port 53): the DNS step is not even called.
const PASS_ONLY: i32 = 2;

#[cgroup_skb(ingress)]
pub(crate) fn pg_sock_ingress(ctx: SkBuffContext) -> i32 {
    let verdict = filter(&ctx);
    // One call site: the DNS walk's callback is verified once.
    if verdict == PASS {
        let learned = dns::after_ingress(&ctx);
        if learned != 0 {
            bump(&PG_STATS, stats::DNS_ANSWERS_LEARNED);
            add(&PG_STATS, stats::DNS_ADDRESSES_LEARNED, learned);
        }
    }
    if verdict == DROP { DROP } else { PASS }
}

/// Its own function (a BPF subprogram): its stack frame and the DNS walk's
/// are never on the stack at once, and together they would not fit in 512
/// bytes.
#[inline(never)]
fn filter(ctx: &SkBuffContext) -> i32 {
    // SAFETY: `sk` of the context is a socket pointer or null, which the
    // verifier tracks; reading it is a checked context load.
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return PASS_ONLY;
    }
    // `state` and `dst_port` are readable on any socket the kernel hands
    // over (request and timewait sockets included): the established fast
    // path needs no full-socket lookup.
    // SAFETY: a non-null socket pointer; checked loads of sock_common fields.
    let (state, dst_port) = unsafe { ((*sk).state, (*sk).dst_port) };
    if state != BPF_TCP_LISTEN && state != BPF_TCP_CLOSE {
        // A socket connected to port 53 may be a resolver's client.
        return if dst_port == dns::DNS_PORT.to_be() { PASS } else { PASS_ONLY };
    }
    // SAFETY: helper taking the socket pointer the verifier tracks.
    let sk = unsafe { bpf_sk_fullsock(sk) };
    if sk.is_null() {
        return PASS_ONLY;
    }
    // SAFETY: a full socket; checked loads.
    let protocol = unsafe { (*sk).protocol };
    let proto = if protocol == u32::from(IPPROTO_TCP) && state == BPF_TCP_LISTEN {
        IPPROTO_TCP
    } else if protocol == u32::from(IPPROTO_UDP) && state == BPF_TCP_CLOSE {
        IPPROTO_UDP
    } else {
        // A closed TCP socket, or another protocol: nothing to judge.
        return PASS_ONLY;
    };
    judge(ctx, sk, proto)
}

/// The packet's source and, when the transport header is one we read, the
/// peer's port and whether it opens a connection.
struct Packet {
    peer: Addr,
    peer_port: u16,
    /// A TCP SYN (without ACK), or any UDP datagram: what is counted.
    opens: bool,
}

#[inline(always)]
fn judge(ctx: &SkBuffContext, sk: *mut bpf_sock, proto: u8) -> i32 {
    let Some(cfg) = read_config() else { return PASS };
    // No stamp: a socket created before portguard was attached, or not an
    // inet socket; nothing guarded it at its bind either.
    let Some(stamp) = stamp_of_sock(sk.cast()) else { return PASS };
    let slot = cfg.active_slot();
    refresh(stamp, slot, &cfg, &Socket(sk.cast()));
    if stamp.guarded != STAMP_GUARDED {
        return PASS;
    }
    let guard = stamp.guard;
    let Some(pkt) = parse(ctx, proto) else { return PASS };
    let (local, local_port) = local_of(sk);
    let rule = bind_rule(&guard, slot, proto, &local, local_port);
    let cookie_key = || {
        // SAFETY: the context is what the helper expects; it names the
        // packet's socket.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        udp_peers::key(cookie, &pkt.peer, pkt.peer_port)
    };
    let (allowed, reason) = match rule {
        Some(r) if r.flags & RULE_HAS_FROM == 0 => (true, REASON_NONE),
        Some(r) => {
            let ok = from_allowed(guard.guard_id, slot, &r, &pkt.peer)
                || (proto == IPPROTO_UDP && udp_peers::sent_lately(&cookie_key()));
            (ok, REASON_NOT_FROM)
        }
        None => {
            let ok = proto == IPPROTO_UDP && udp_peers::sent_lately(&cookie_key());
            (ok, REASON_UNAPPROVED_PORT)
        }
    };
    let verdict = if allowed {
        Verdict::Allowed
    } else if guard.mode == MODE_AUDIT {
        Verdict::Audited
    } else {
        Verdict::Denied
    };
    if proto == IPPROTO_UDP && rule.is_some() && verdict != Verdict::Denied {
        udp_peers::note_heard(&cookie_key());
    }
    if pkt.opens {
        let guarded =
            Guarded { sock_cgroup: stamp.sock_cgroup, guard_cgroup: stamp.guard_cgroup, info: Some(guard) };
        record(&Decision {
            op: if proto == IPPROTO_TCP { Op::Accept } else { Op::Receive },
            verdict,
            guard_id: guard.guard_id,
            guarded: &guarded,
            generation: cfg.generation,
            proto,
            addr: &pkt.peer,
            port: local_port,
            peer_port: pkt.peer_port,
            reason: if allowed { REASON_NONE } else { reason },
        });
    }
    if verdict == Verdict::Denied { DROP } else { PASS }
}

/// The socket's local address (v4-mapped made v4, as bind judged it) and
/// port.
#[inline(always)]
fn local_of(sk: *mut bpf_sock) -> (Addr, u16) {
    // SAFETY: a full socket; each field is one checked load (the verifier
    // allows only 4-byte loads of the address words).
    let (family, port, ip4) = unsafe { ((*sk).family, (*sk).src_port, (*sk).src_ip4) };
    let mut bytes = [0u8; 16];
    if family == u32::from(AF_INET) {
        bytes[..4].copy_from_slice(&ip4.to_ne_bytes());
        return (Addr { family: AF_INET, bytes }, port as u16);
    }
    // SAFETY: as above, word by word.
    let w = unsafe {
        [
            core::ptr::read_volatile(&(*sk).src_ip6[0]),
            core::ptr::read_volatile(&(*sk).src_ip6[1]),
            core::ptr::read_volatile(&(*sk).src_ip6[2]),
            core::ptr::read_volatile(&(*sk).src_ip6[3]),
        ]
    };
    let (w2, w3) = (w[2].to_ne_bytes(), w[3].to_ne_bytes());
    if w[0] == 0 && w[1] == 0 && w2 == [0, 0, 0xff, 0xff] {
        bytes[..4].copy_from_slice(&w3);
        return (Addr { family: AF_INET, bytes }, port as u16);
    }
    for (i, word) in w.iter().enumerate() {
        bytes[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    (Addr { family: AF_INET6, bytes }, port as u16)
}

/// Reads the network header (at offset 0 in a cgroup_skb program) and the
/// transport ports. `None` for a packet that is neither IPv4 nor IPv6.
#[inline(always)]
fn parse(ctx: &SkBuffContext, proto: u8) -> Option<Packet> {
    let IpHeader { peer, l4, next } = ip_header(ctx, false)?;
    // An IPv6 packet with extension headers before the transport header:
    // judged by its source alone, and counted as a connection attempt.
    if next != proto {
        return Some(Packet { peer, peer_port: 0, opens: true });
    }
    let ports: Option<[u8; 2]> = load(ctx, l4);
    let peer_port = ports.map_or(0, u16::from_be_bytes);
    let opens = if proto == IPPROTO_TCP {
        let flags: Option<[u8; 1]> = load(ctx, l4 + 13);
        flags.is_none_or(|f| f[0] & TCP_SYN != 0 && f[0] & TCP_ACK == 0)
    } else {
        true
    };
    Some(Packet { peer, peer_port, opens })
}
