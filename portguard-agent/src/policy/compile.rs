//! Turns a validated policy into the entries the kernel looks up.
//!
//! Entries are computed per guard without guard ids or slots; the map layer
//! stamps those on when it writes a slot, so a compiled policy can be
//! compared with what a slot already holds and only the difference written.

use std::{collections::BTreeSet, net::IpAddr};

// FxHash: these maps hold up to hundreds of thousands of small fixed-size
// keys built from our own policy; SipHash's DoS resistance buys nothing here
// and costs several times the hashing time on every reload.
use rustc_hash::FxHashMap as HashMap;

use ipnet::IpNet;
use portguard_common::{
    AF_INET, AF_INET6, BIND_ADDR_ANY, BIND_ADDR_EXACT, BindKey, ConnectKey, GUARD_ALLOW_EPHEMERAL_BIND,
    GUARD_ALLOW_OTHER_SOCKETS, MAX_BIND_ENTRIES, MAX_CONNECT_ENTRIES, MAX_PORT_RANGES, MAX_PREFIX_LENS,
    PortRange, PortSet, RuleRef,
};

use super::{
    Mode, PolicyError, Source,
    validate::{Policy, Target},
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledGuard {
    pub name: String,
    pub target: Target,
    pub mode: Mode,
    pub flags: u32,
    /// Keys with `guard_id` and `slot` left zero.
    pub bind: HashMap<BindKey, RuleRef>,
    pub connect: HashMap<ConnectKey, PortSet>,
    /// Prefix lengths with connect entries, longest first.
    pub v4_prefix_lens: Vec<u8>,
    pub v6_prefix_lens: Vec<u8>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompiledPolicy {
    pub guards: Vec<CompiledGuard>,
}

impl CompiledPolicy {
    pub fn bind_entries(&self) -> usize {
        self.guards.iter().map(|g| g.bind.len()).sum()
    }

    pub fn connect_entries(&self) -> usize {
        self.guards.iter().map(|g| g.connect.len()).sum()
    }

    /// True when a guard selects pods, which needs the Kubernetes API.
    pub(crate) fn has_pod_guards(&self) -> bool {
        self.guards.iter().any(|g| matches!(g.target, Target::Pods(_)))
    }
}

pub(super) fn compile(src: &Source, policy: &Policy) -> Result<CompiledPolicy, PolicyError> {
    let mut guards = Vec::with_capacity(policy.guards.len());
    let (mut bind_total, mut connect_total) = (0usize, 0usize);
    for g in &policy.guards {
        let mut bind = HashMap::default();
        for (index, rule) in g.bind.iter().enumerate() {
            let (addr_kind, addr) = match rule.address {
                None => (BIND_ADDR_ANY, [0u8; 16]),
                Some(IpAddr::V4(a)) => (BIND_ADDR_EXACT, a.to_ipv6_mapped().octets()),
                Some(IpAddr::V6(a)) => (BIND_ADDR_EXACT, a.octets()),
            };
            for &proto in rule.proto.ip_protocols() {
                for spec in &rule.ports {
                    for port in spec.first..=spec.last {
                        let key = BindKey { proto, addr_kind, port, addr, ..BindKey::default() };
                        bind.entry(key).or_insert(RuleRef { rule_index: index as u32 });
                    }
                }
            }
            if bind_total + bind.len() > MAX_BIND_ENTRIES as usize {
                return Err(src.error_at(
                    Some(rule.span.clone()),
                    format!(
                        "guard {:?}: the policy needs more than {MAX_BIND_ENTRIES} bind entries (each port of a range is one entry)",
                        g.name
                    ),
                ));
            }
        }
        bind_total += bind.len();

        // Ports per (proto, family, prefix), merged across rules.
        let mut ports: HashMap<ConnectKey, (Vec<PortRange>, std::ops::Range<usize>)> = HashMap::default();
        for rule in &g.connect {
            for net in &rule.peers {
                let (family, prefix_len, addr) = connect_prefix(net);
                for &proto in rule.proto.ip_protocols() {
                    let key = ConnectKey { proto, family, prefix_len, addr, ..ConnectKey::default() };
                    let entry = ports.entry(key).or_insert_with(|| (Vec::new(), rule.span.clone()));
                    entry.0.extend(rule.ports.iter().map(|p| PortRange { first: p.first, last: p.last }));
                }
            }
        }
        let mut connect = HashMap::with_capacity_and_hasher(ports.len(), Default::default());
        let (mut v4, mut v6) = (BTreeSet::new(), BTreeSet::new());
        for (key, (ranges, span)) in ports {
            let merged = merge_ranges(ranges);
            if merged.len() > MAX_PORT_RANGES {
                return Err(src.error_at(
                    Some(span),
                    format!(
                        "guard {:?}: a peer allows {} separate port ranges; portguard holds at most {MAX_PORT_RANGES} per peer and protocol",
                        g.name,
                        merged.len()
                    ),
                ));
            }
            let mut set = PortSet { count: merged.len() as u32, ranges: [PortRange::EMPTY; MAX_PORT_RANGES] };
            set.ranges[..merged.len()].copy_from_slice(&merged);
            if key.family == AF_INET {
                v4.insert(key.prefix_len)
            } else {
                v6.insert(key.prefix_len)
            };
            connect.insert(key, set);
        }
        for (family, lens) in [("IPv4", &v4), ("IPv6", &v6)] {
            if lens.len() > MAX_PREFIX_LENS {
                return Err(src.error_at(
                    g.connect.first().map(|r| r.span.clone()),
                    format!(
                        "guard {:?}: connect rules use {} distinct {family} prefix lengths; portguard supports at most {MAX_PREFIX_LENS} per guard",
                        g.name,
                        lens.len()
                    ),
                ));
            }
        }
        connect_total += connect.len();
        if connect_total > MAX_CONNECT_ENTRIES as usize {
            return Err(src.error_at(
                g.connect.first().map(|r| r.span.clone()),
                format!(
                    "guard {:?}: the policy needs more than {MAX_CONNECT_ENTRIES} connect entries",
                    g.name
                ),
            ));
        }
        guards.push(CompiledGuard {
            name: g.name.clone(),
            target: g.target.clone(),
            mode: g.mode,
            flags: (if g.allow_ephemeral_bind { GUARD_ALLOW_EPHEMERAL_BIND } else { 0 })
                | (if g.allow_raw_sockets { GUARD_ALLOW_OTHER_SOCKETS } else { 0 }),
            bind,
            connect,
            v4_prefix_lens: v4.into_iter().rev().collect(),
            v6_prefix_lens: v6.into_iter().rev().collect(),
        });
    }
    Ok(CompiledPolicy { guards })
}

/// (family, prefix length, address bytes) as the kernel keys a peer; v4
/// addresses take the first four bytes. Networks are already truncated.
pub(crate) fn connect_prefix(net: &IpNet) -> (u8, u8, [u8; 16]) {
    let mut addr = [0u8; 16];
    match net {
        IpNet::V4(n) => {
            addr[..4].copy_from_slice(&n.network().octets());
            (AF_INET, n.prefix_len(), addr)
        }
        IpNet::V6(n) => (AF_INET6, n.prefix_len(), n.network().octets()),
    }
}

/// Sorts and coalesces overlapping or adjacent ranges.
pub(crate) fn merge_ranges(mut ranges: Vec<PortRange>) -> Vec<PortRange> {
    ranges.sort();
    let mut out: Vec<PortRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            // u32: `last + 1` must not wrap at 65535.
            Some(last) if u32::from(r.first) <= u32::from(last.last) + 1 => {
                last.last = last.last.max(r.last);
            }
            _ => out.push(r),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_overlapping_and_adjacent_ranges() {
        let r = |first, last| PortRange { first, last };
        assert_eq!(merge_ranges(vec![r(10, 20), r(21, 30), r(5, 12), r(40, 40)]), vec![r(5, 30), r(40, 40)]);
        assert_eq!(merge_ranges(vec![r(1, 65535), r(80, 80)]), vec![r(1, 65535)]);
    }
}
