//! Rule lookups: does a guard allow this bind or this connect?

use portguard_common::{
    AF_INET, BIND_ADDR_ANY, BIND_ADDR_EXACT, BindKey, ConnectKey, FromKey, GUARD_ALLOW_EPHEMERAL_BIND,
    GuardInfo, MAX_PORT_RANGES, MAX_PREFIX_LENS, PortSet, RuleRef,
};

use crate::{
    addr::{Addr, masked},
    maps::{PG_BIND_RULES, PG_CONNECT_RULES, PG_FROM_RULES},
};

#[inline(always)]
pub(crate) fn bind_allowed(guard: &GuardInfo, slot: u32, proto: u8, local: &Addr, port: u16) -> bool {
    if port == 0 {
        return guard.flags & GUARD_ALLOW_EPHEMERAL_BIND != 0;
    }
    bind_rule(guard, slot, proto, local, port).is_some()
}

/// The bind rule approving (`proto`, `local`, `port`), any-address rules
/// first: bind judges with it, and inbound packets to the port go to the
/// rule's `from`.
#[inline(always)]
pub(crate) fn bind_rule(guard: &GuardInfo, slot: u32, proto: u8, local: &Addr, port: u16) -> Option<RuleRef> {
    let mut key = BindKey {
        guard_id: guard.guard_id,
        slot: slot as u8,
        proto,
        addr_kind: BIND_ADDR_ANY,
        _pad: 0,
        port,
        _pad2: 0,
        addr: [0; 16],
    };
    // SAFETY: not preallocated (see maps.rs): copied out at once.
    if let Some(r) = unsafe { PG_BIND_RULES.get(&key) } {
        return Some(*r);
    }
    key.addr_kind = BIND_ADDR_EXACT;
    key.addr = local.as_mapped();
    // SAFETY: as above.
    unsafe { PG_BIND_RULES.get(&key) }.copied()
}

/// Whether `peer` is inside the `from` of `rule` (a rule with one): one
/// exact-match lookup per prefix length the rule uses, as for connect
/// rules, so the cost does not grow with the number of networks.
#[inline(always)]
pub(crate) fn from_allowed(guard_id: u32, slot: u32, rule: &RuleRef, peer: &Addr) -> bool {
    let (count, lens) = if peer.family == AF_INET {
        (rule.v4_from_count as usize, &rule.v4_from_lens)
    } else {
        (rule.v6_from_count as usize, &rule.v6_from_lens)
    };
    #[expect(
        clippy::needless_range_loop,
        reason = "a constant trip count with an early break is the shape the verifier bounds"
    )]
    for i in 0..MAX_PREFIX_LENS {
        if i >= count {
            break;
        }
        let prefix_len = lens[i];
        let key = FromKey {
            guard_id,
            rule_index: rule.rule_index,
            slot: slot as u8,
            family: peer.family,
            prefix_len,
            _pad: 0,
            addr: masked(&peer.bytes, prefix_len),
        };
        if PG_FROM_RULES.get_ptr(&key).is_some() {
            return true;
        }
    }
    false
}

#[inline(always)]
pub(crate) fn connect_allowed(guard: &GuardInfo, slot: u32, proto: u8, peer: &Addr, port: u16) -> bool {
    let (count, lens) = if peer.family == AF_INET {
        (guard.v4_prefix_count as usize, &guard.v4_prefix_lens)
    } else {
        (guard.v6_prefix_count as usize, &guard.v6_prefix_lens)
    };
    #[expect(
        clippy::needless_range_loop,
        reason = "a constant trip count with an early break is the shape the verifier bounds"
    )]
    for i in 0..MAX_PREFIX_LENS {
        if i >= count {
            break;
        }
        let prefix_len = lens[i];
        let key = ConnectKey {
            guard_id: guard.guard_id,
            slot: slot as u8,
            proto,
            family: peer.family,
            prefix_len,
            addr: masked(&peer.bytes, prefix_len),
        };
        // SAFETY: not preallocated (see maps.rs); read-only use.
        if let Some(ports) = unsafe { PG_CONNECT_RULES.get(&key) }
            && port_in(ports, port)
        {
            return true;
        }
    }
    false
}

/// Whether `port` lies in one of the set's ranges. Branch-free over all
/// slots (unused ones hold the empty range 1..=0), so the verifier walks it
/// once rather than once per possible range count.
#[inline(always)]
pub(crate) fn port_in(ports: &PortSet, port: u16) -> bool {
    let port = i32::from(port);
    let mut hit = 0i32;
    for i in 0..MAX_PORT_RANGES {
        let r = ports.ranges[i];
        // Both differences are >= 0 exactly when first <= port <= last;
        // their OR has the sign bit clear exactly then.
        let outside = (port - i32::from(r.first)) | (i32::from(r.last) - port);
        hit |= !outside >> 31 & 1;
    }
    hit != 0
}
