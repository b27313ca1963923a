//! The UDP reply window: which peers a UDP socket heard from or sent to
//! lately, by socket cookie, in `PG_UDP_PEERS`.
//!
//! A socket bound under an approved bind rule may answer a peer (address
//! and port) whose datagram it accepted within `UDP_REPLY_WINDOW_NS`,
//! without a connect rule: that is a reply, not a new flow. A socket on a
//! port no rule approves (a client) may hear only from peers it sent to
//! within the window. Both times live in one entry per (socket, peer) and
//! are rewritten at most once per `UDP_PEER_REFRESH_NS`, so a busy socket
//! writes once per peer per second, not per packet.

use aya_ebpf::helpers::generated::bpf_ktime_get_ns;
use portguard_common::{UDP_PEER_REFRESH_NS, UDP_REPLY_WINDOW_NS, UdpPeerKey, UdpPeerSeen};

use crate::{addr::Addr, maps::PG_UDP_PEERS};

#[inline(always)]
pub(crate) fn key(cookie: u64, peer: &Addr, port: u16) -> UdpPeerKey {
    UdpPeerKey { cookie, port, family: peer.family, _pad: [0; 5], addr: peer.bytes }
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper with no arguments, valid in every program type.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn within(t: u64, now: u64) -> bool {
    t != 0 && now.wrapping_sub(t) < UDP_REPLY_WINDOW_NS
}

/// The peer sent this socket an accepted datagram within the window.
#[inline(always)]
pub(crate) fn heard_lately(key: &UdpPeerKey) -> bool {
    // SAFETY: an LRU value may be recycled under a reader; a torn read can
    // only misjudge one packet's window, never open a rule.
    unsafe { PG_UDP_PEERS.get(key) }.is_some_and(|s| within(s.heard_ns, now()))
}

/// The socket sent to the peer within the window.
#[inline(always)]
pub(crate) fn sent_lately(key: &UdpPeerKey) -> bool {
    // SAFETY: as for `heard_lately`.
    unsafe { PG_UDP_PEERS.get(key) }.is_some_and(|s| within(s.sent_ns, now()))
}

/// Notes an accepted datagram from the peer.
#[inline(always)]
pub(crate) fn note_heard(key: &UdpPeerKey) {
    note(key, true);
}

/// Notes a send to the peer.
#[inline(always)]
pub(crate) fn note_sent(key: &UdpPeerKey) {
    note(key, false);
}

#[inline(always)]
fn note(key: &UdpPeerKey, heard: bool) {
    let now = now();
    if let Some(s) = PG_UDP_PEERS.get_ptr_mut(key) {
        // SAFETY: a value of this map, valid for this run; concurrent
        // writers store times of the same moment, so any of them is right.
        let s = unsafe { &mut *s };
        let t = if heard { &mut s.heard_ns } else { &mut s.sent_ns };
        if now.wrapping_sub(*t) >= UDP_PEER_REFRESH_NS {
            *t = now;
        }
        return;
    }
    let fresh = if heard {
        UdpPeerSeen { heard_ns: now, sent_ns: 0 }
    } else {
        UdpPeerSeen { heard_ns: 0, sent_ns: now }
    };
    // A full map evicts its least recently used entry; a failed insert
    // only means this peer is judged by the rules next time.
    let _ = PG_UDP_PEERS.insert(key, &fresh, 0);
}
