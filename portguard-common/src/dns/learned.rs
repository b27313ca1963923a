//! What a guarded workload has learned: the addresses DNS answers gave it
//! for the names its guard's connect rules list, each until its answer
//! expires. The receive path writes these entries in the kernel before the
//! answer reaches the socket; connect and sendmsg read them. Entries are
//! keyed by the guarded cgroup that received the answer (a path guard's
//! cgroup, or one pod's), so nothing one workload learned ever opens
//! anything for another.

/// A learned address is kept at least this long, whatever the answer's
/// TTL: resolver libraries and runtimes cache answers past a TTL of 0 or 1
/// (the JVM keeps them 30 s, Go's and glibc's callers connect a few ms
/// later), and an entry that lapses before the workload connects is an
/// outage, not a security gain: the workload could ask again at once.
pub const LEARNED_TTL_FLOOR_S: u32 = 30;
/// And at most this long: a day. Answers with longer TTLs are rare and an
/// address that moves to another owner should not stay open for weeks.
pub const LEARNED_TTL_CAP_S: u32 = 86_400;
/// Added to every expiry, so that a connection opened just before the
/// answer expires (a client that resolved at the very end of the TTL) is
/// still judged with it.
pub const LEARNED_GRACE_S: u32 = 5;
/// Names one learned address can stand for at once (an address shared by
/// several names a guard lists, e.g. a load balancer): past this, the
/// entry that expires first makes room.
pub const NAMES_PER_ADDRESS: usize = 4;
/// Learned (guarded cgroup, address) entries the kernel keeps for the
/// whole host (an LRU: the least recently used entry makes room).
pub const LEARNED_ENTRIES: u32 = 65_536;
/// DNS names (literal, per protocol) one policy slot may hold.
pub const MAX_NAME_ENTRIES: u32 = 65_536;
/// DNS names one guard may list. A connect never looks names up (only
/// the learned address's own names), so the count costs the kernel
/// nothing per connect; it bounds the map and each answer's lookups do
/// not depend on it.
pub const MAX_NAMES_PER_GUARD: usize = 16_384;

/// `PG_DNS_NAMES` key: one name of a guard's connect rules, by protocol.
/// The value is the `PortSet` the rules allow to its addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(Hash, PartialOrd, Ord))]
pub struct DnsNameKey {
    pub guard_id: u32,
    pub slot: u8,
    pub proto: u8,
    pub _pad: u16,
    /// `name_hash` of the name under the pinned `PG_DNS_KEY`.
    pub hash: u64,
}

/// `PG_DNS_LEARNED` key: an address a guarded cgroup received in an
/// answer (IPv4 in the first 4 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(Hash))]
pub struct LearnedKey {
    /// The guarded cgroup (the guard's, or the pod's) whose socket
    /// received the answer.
    pub guard_cgroup: u64,
    pub family: u8,
    pub _pad: [u8; 7],
    pub addr: [u8; 16],
}

/// `PG_DNS_LEARNED` value: the names (their `name_hash`) the address was
/// an answer for, each with its expiry (CLOCK_BOOTTIME ns; 0: empty slot),
/// under the guard's resolver epoch (`GuardInfo::dns_epoch`) at the time:
/// an entry of another epoch allows nothing and the next answer replaces
/// it whole.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Learned {
    pub names: [u64; NAMES_PER_ADDRESS],
    pub expires_ns: [u64; NAMES_PER_ADDRESS],
    pub epoch: u32,
    /// Bit i: slot i was last written by the agent's own lookup (a rule
    /// with `resolve = "agent"`), not by an answer the workload received.
    pub by_agent: u32,
}

/// The expiry of an answer received at `now_ns` with `ttl` seconds.
#[inline(always)]
pub fn expiry(now_ns: u64, ttl: u32) -> u64 {
    let ttl = ttl.clamp(LEARNED_TTL_FLOOR_S, LEARNED_TTL_CAP_S);
    now_ns + u64::from(ttl + LEARNED_GRACE_S) * 1_000_000_000
}

/// Turns a v4-mapped IPv6 address (::ffff:a.b.c.d) into the IPv4 form
/// (a.b.c.d in the first 4 bytes, the rest zero) in place; returns whether
/// it was one. Branch-light and in place, for the kernel's stack.
#[inline(always)]
pub fn unmap_v4(addr: &mut [u8; 16]) -> bool {
    let mut zero = 0u8;
    let mut i = 0;
    while i < 10 {
        zero |= addr[i];
        i += 1;
    }
    if zero != 0 || addr[10] != 0xff || addr[11] != 0xff {
        return false;
    }
    let v4 = [addr[12], addr[13], addr[14], addr[15]];
    *addr = [0; 16];
    addr[..4].copy_from_slice(&v4);
    true
}

impl Learned {
    /// A fresh entry holding one name.
    #[inline(always)]
    pub fn first(epoch: u32, name: u64, expires_ns: u64) -> Learned {
        let mut l = Learned { epoch, ..Learned::default() };
        l.names[0] = name;
        l.expires_ns[0] = expires_ns;
        l
    }

    /// Notes that the address is an answer for `name` until `expires_ns`:
    /// the name's slot is extended (never shortened: a later answer with a
    /// shorter TTL does not cut a connection window an earlier one gave),
    /// else an empty or expired slot, else the one that expires first.
    /// Under a new epoch the entry starts over. Returns the slot written.
    #[inline(always)]
    pub fn note(&mut self, epoch: u32, name: u64, expires_ns: u64, now_ns: u64) -> usize {
        if self.epoch != epoch {
            *self = Learned::first(epoch, name, expires_ns);
            return 0;
        }
        let mut pick = NAMES_PER_ADDRESS;
        let mut soonest = 0;
        let mut i = 0;
        while i < NAMES_PER_ADDRESS {
            if self.names[i] == name && self.expires_ns[i] != 0 {
                if self.expires_ns[i] < expires_ns {
                    self.expires_ns[i] = expires_ns;
                }
                return i;
            }
            // The first empty or expired slot, else the one that expires
            // first (masked index: the kernel build must see the bound).
            let free = self.expires_ns[i] <= now_ns;
            let pick_free =
                pick != NAMES_PER_ADDRESS && self.expires_ns[pick & (NAMES_PER_ADDRESS - 1)] <= now_ns;
            if pick == NAMES_PER_ADDRESS || (!pick_free && (free || self.expires_ns[i] < soonest)) {
                pick = i;
                soonest = self.expires_ns[i];
            }
            i += 1;
        }
        let i = pick & (NAMES_PER_ADDRESS - 1);
        self.names[i] = name;
        self.expires_ns[i] = expires_ns;
        i
    }

    /// The name in slot `i` if it has not expired at `now_ns` (the caller
    /// checks the epoch).
    #[inline(always)]
    pub fn live(&self, i: usize, now_ns: u64) -> Option<u64> {
        let i = i & (NAMES_PER_ADDRESS - 1);
        (self.expires_ns[i] > now_ns).then_some(self.names[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const E: u32 = 7;

    #[test]
    fn ttls_are_clamped_and_graced() {
        assert_eq!(expiry(0, 0), u64::from(LEARNED_TTL_FLOOR_S + LEARNED_GRACE_S) * S);
        assert_eq!(expiry(7, 300), 7 + 305 * S);
        assert_eq!(expiry(0, u32::MAX), u64::from(LEARNED_TTL_CAP_S + LEARNED_GRACE_S) * S);
    }

    #[test]
    fn a_name_is_extended_never_shortened() {
        let mut l = Learned::first(E, 1, 100 * S);
        l.note(E, 1, 50 * S, 10 * S);
        assert_eq!(l.expires_ns[0], 100 * S);
        l.note(E, 1, 200 * S, 10 * S);
        assert_eq!(l.expires_ns[0], 200 * S);
        assert_eq!(l.names[1..], [0, 0, 0]);
    }

    #[test]
    fn names_share_an_address_and_the_soonest_to_expire_makes_room() {
        let now = 10 * S;
        let mut l = Learned::first(E, 1, 100 * S);
        for (name, exp) in [(2, 50 * S), (3, 300 * S), (4, 400 * S)] {
            l.note(E, name, exp, now);
        }
        assert_eq!(l.names, [1, 2, 3, 4]);
        l.note(E, 5, 500 * S, now);
        assert_eq!(l.names, [1, 5, 3, 4], "name 2 expired first");
        // An expired slot is reused before a live one.
        l.note(E, 6, 600 * S, 120 * S);
        assert_eq!(l.names, [6, 5, 3, 4]);
        assert_eq!(l.live(0, 120 * S), Some(6));
        assert_eq!(l.live(1, 600 * S), None);
    }

    #[test]
    fn v4_mapped_addresses_are_unmapped_in_place() {
        let mut mapped = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3];
        assert!(unmap_v4(&mut mapped));
        assert_eq!(mapped, [10, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let v6 = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3];
        let mut same = v6;
        assert!(!unmap_v4(&mut same));
        assert_eq!(same, v6, "a v6 address is left alone");
    }

    #[test]
    fn a_new_epoch_starts_the_entry_over() {
        let mut l = Learned::first(E, 1, 100 * S);
        l.note(E, 2, 100 * S, 10 * S);
        l.note(E + 1, 3, 50 * S, 10 * S);
        assert_eq!(l, Learned::first(E + 1, 3, 50 * S), "names of the old epoch are gone");
    }
}
