//! Turns a validated policy into the entries the kernel looks up.
//!
//! Entries are computed per guard without guard ids or slots; the map layer
//! stamps those on when it writes a slot, so a compiled policy can be
//! compared with what a slot already holds and only the difference written.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

// FxHash: these maps hold up to hundreds of thousands of small fixed-size
// keys built from our own policy; SipHash's DoS resistance buys nothing here
// and costs several times the hashing time on every reload.
use rustc_hash::FxHashMap as HashMap;

use ipnet::IpNet;
use portguard_common::{
    AF_INET, AF_INET6, BIND_ADDR_ANY, BIND_ADDR_EXACT, BindKey, ConnectKey, FromKey,
    GUARD_ALLOW_EPHEMERAL_BIND, GUARD_ALLOW_OTHER_SOCKETS, GUARD_HAS_NAMES, GUARD_HAS_WILDCARDS,
    MAX_BIND_ENTRIES, MAX_CONNECT_ENTRIES, MAX_FROM_ENTRIES, MAX_PORT_RANGES, MAX_PREFIX_LENS, PortRange,
    PortSet, RULE_HAS_FROM, RuleRef,
    dns::{MAX_NAME_ENTRIES, MAX_NAMES_PER_GUARD},
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
    /// Who may reach each bind rule's ports, by rule index: `None` for any
    /// peer, else the rule's `from` networks (v4-mapped ones as IPv4,
    /// sorted, deduplicated). What the kernel holds in `from`.
    pub bind_from: Vec<Option<Vec<IpNet>>>,
    /// `PG_FROM_RULES` keys (`guard_id`, `slot` left zero).
    pub from: HashMap<FromKey, u32>,
    pub connect: HashMap<ConnectKey, PortSet>,
    /// The ports each (protocol, DNS name) allows to the addresses the
    /// guard's workloads learn for the name.
    pub names: BTreeMap<(u8, String), PortSet>,
    /// The names of rules with `resolve = "agent"`: the agent resolves
    /// them itself and installs the answers.
    pub agent_names: BTreeSet<String>,
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

    pub fn from_entries(&self) -> usize {
        self.guards.iter().map(|g| g.from.len()).sum()
    }

    pub fn connect_entries(&self) -> usize {
        self.guards.iter().map(|g| g.connect.len()).sum()
    }

    /// (name, protocol) entries of every guard.
    pub fn name_entries(&self) -> usize {
        self.guards.iter().map(|g| g.names.len()).sum()
    }

    /// True when a guard selects pods, which needs the Kubernetes API.
    pub(crate) fn has_pod_guards(&self) -> bool {
        self.guards.iter().any(|g| matches!(g.target, Target::Pods(_)))
    }
}

pub(super) fn compile(src: &Source, policy: &Policy) -> Result<CompiledPolicy, PolicyError> {
    let mut guards = Vec::with_capacity(policy.guards.len());
    let (mut bind_total, mut connect_total, mut from_total) = (0usize, 0usize, 0usize);
    let mut names_total = 0usize;
    let mut agent_total = 0usize;
    for g in &policy.guards {
        let mut bind = HashMap::default();
        let mut from = HashMap::default();
        let mut bind_from = Vec::with_capacity(g.bind.len());
        for (index, rule) in g.bind.iter().enumerate() {
            let (addr_kind, addr) = match rule.address {
                None => (BIND_ADDR_ANY, [0u8; 16]),
                Some(IpAddr::V4(a)) => (BIND_ADDR_EXACT, a.to_ipv6_mapped().octets()),
                Some(IpAddr::V6(a)) => (BIND_ADDR_EXACT, a.octets()),
            };
            let rule_ref = from_entries(src, g, index, &mut from)?;
            bind_from.push(rule.from.clone());
            for &proto in rule.proto.ip_protocols() {
                for spec in &rule.ports {
                    for port in spec.first..=spec.last {
                        let key = BindKey { proto, addr_kind, port, addr, ..BindKey::default() };
                        let first = *bind.entry(key).or_insert(rule_ref);
                        same_audience(src, g, first.rule_index as usize, index, proto, port)?;
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
        // A port reachable on every address and also through a rule for one
        // address: the kernel consults the any-address rule first, so both
        // must name the same audience.
        for key in bind.keys().filter(|k| k.addr_kind == BIND_ADDR_EXACT) {
            let any = BindKey { addr_kind: BIND_ADDR_ANY, addr: [0; 16], ..*key };
            if let Some(r) = bind.get(&any) {
                let exact = bind[key].rule_index as usize;
                same_audience(src, g, r.rule_index as usize, exact, key.proto, key.port)?;
            }
        }
        from_total += from.len();
        if from_total > MAX_FROM_ENTRIES as usize {
            return Err(src.error_at(
                g.bind.first().map(|r| r.span.clone()),
                format!("guard {:?}: the policy needs more than {MAX_FROM_ENTRIES} from entries", g.name),
            ));
        }

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
        let names = name_entries(src, g)?;
        names_total += names.len();
        if names_total > MAX_NAME_ENTRIES as usize {
            return Err(src.error_at(
                g.connect.first().map(|r| r.span.clone()),
                format!("guard {:?}: the policy needs more than {MAX_NAME_ENTRIES} DNS name entries", g.name),
            ));
        }
        let mut connect = HashMap::with_capacity_and_hasher(ports.len(), Default::default());
        let (mut v4, mut v6) = (BTreeSet::new(), BTreeSet::new());
        for (key, (ranges, span)) in ports {
            let set = port_set(src, g, ranges, span)?;
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
                | (if g.allow_raw_sockets { GUARD_ALLOW_OTHER_SOCKETS } else { 0 })
                | (if names.is_empty() { 0 } else { GUARD_HAS_NAMES })
                | (if names.keys().any(|(_, n)| n.starts_with('*')) { GUARD_HAS_WILDCARDS } else { 0 }),
            bind,
            bind_from,
            from,
            connect,
            names,
            agent_names: agent_names(src, g, &mut agent_total)?,
            v4_prefix_lens: v4.into_iter().rev().collect(),
            v6_prefix_lens: v6.into_iter().rev().collect(),
        });
    }
    Ok(CompiledPolicy { guards })
}

/// Names the agent resolves, across the policy (each is looked up again
/// every few seconds, from the agent's own resolver).
pub(crate) const MAX_AGENT_NAMES: usize = 256;

fn agent_names(
    src: &Source,
    g: &super::GuardSpec,
    total: &mut usize,
) -> Result<BTreeSet<String>, PolicyError> {
    let rules = g.connect.iter().filter(|r| r.agent_resolves);
    let mut out = BTreeSet::new();
    for rule in rules {
        out.extend(rule.names.iter().cloned());
        if *total + out.len() > MAX_AGENT_NAMES {
            return Err(src.error_at(
                Some(rule.span.clone()),
                format!(
                    "guard {:?}: the policy lists more than {MAX_AGENT_NAMES} names the agent resolves",
                    g.name
                ),
            ));
        }
    }
    *total += out.len();
    Ok(out)
}

/// The ports each (protocol, name) of the guard's connect rules allows,
/// merged across rules as for addresses.
fn name_entries(src: &Source, g: &super::GuardSpec) -> Result<BTreeMap<(u8, String), PortSet>, PolicyError> {
    let mut ports: BTreeMap<(u8, String), (Vec<PortRange>, std::ops::Range<usize>)> = BTreeMap::new();
    for rule in &g.connect {
        for name in &rule.names {
            for &proto in rule.proto.ip_protocols() {
                let entry =
                    ports.entry((proto, name.clone())).or_insert_with(|| (Vec::new(), rule.span.clone()));
                entry.0.extend(rule.ports.iter().map(|p| PortRange { first: p.first, last: p.last }));
            }
        }
    }
    let distinct: BTreeSet<&str> = ports.keys().map(|(_, n)| n.as_str()).collect();
    if distinct.len() > MAX_NAMES_PER_GUARD {
        return Err(src.error_at(
            g.connect.first().map(|r| r.span.clone()),
            format!(
                "guard {:?}: connect rules list {} DNS names; portguard supports at most {MAX_NAMES_PER_GUARD} per guard",
                g.name,
                distinct.len()
            ),
        ));
    }
    let mut out = BTreeMap::new();
    for (key, (ranges, span)) in ports {
        out.insert(key, port_set(src, g, ranges, span)?);
    }
    Ok(out)
}

/// The kernel's form of a peer's port ranges, merged.
fn port_set(
    src: &Source,
    g: &super::GuardSpec,
    ranges: Vec<PortRange>,
    span: std::ops::Range<usize>,
) -> Result<PortSet, PolicyError> {
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
    Ok(set)
}

/// Adds the `PG_FROM_RULES` entries of bind rule `index` of `g` to `from`
/// and returns the rule's `PG_BIND_RULES` value.
fn from_entries(
    src: &Source,
    g: &super::GuardSpec,
    index: usize,
    from: &mut HashMap<FromKey, u32>,
) -> Result<RuleRef, PolicyError> {
    let rule = &g.bind[index];
    let mut rule_ref = RuleRef { rule_index: index as u32, ..RuleRef::default() };
    let Some(nets) = &rule.from else { return Ok(rule_ref) };
    rule_ref.flags = RULE_HAS_FROM;
    let (mut v4, mut v6) = (BTreeSet::new(), BTreeSet::new());
    for net in nets {
        let (family, prefix_len, addr) = connect_prefix(net);
        if family == AF_INET {
            v4.insert(prefix_len)
        } else {
            v6.insert(prefix_len)
        };
        let key = FromKey { rule_index: index as u32, family, prefix_len, addr, ..FromKey::default() };
        from.insert(key, 1);
    }
    for (family, lens, count, out) in [
        ("IPv4", &v4, &mut rule_ref.v4_from_count, &mut rule_ref.v4_from_lens),
        ("IPv6", &v6, &mut rule_ref.v6_from_count, &mut rule_ref.v6_from_lens),
    ] {
        if lens.len() > MAX_PREFIX_LENS {
            return Err(src.error_at(
                Some(rule.span.clone()),
                format!(
                    "guard {:?}: from uses {} distinct {family} prefix lengths; portguard supports at most {MAX_PREFIX_LENS} per bind rule",
                    g.name,
                    lens.len()
                ),
            ));
        }
        // Longest first, as for connect rules.
        for (slot, len) in out.iter_mut().zip(lens.iter().rev()) {
            *slot = *len;
        }
        *count = lens.len() as u8;
    }
    Ok(rule_ref)
}

/// Two bind rules approving the same port must let the same peers reach
/// it: the kernel keeps one rule per port, and a reviewer reading either
/// rule must not be misled about who can reach it.
fn same_audience(
    src: &Source,
    g: &super::GuardSpec,
    first: usize,
    other: usize,
    proto: u8,
    port: u16,
) -> Result<(), PolicyError> {
    if first == other || g.bind[first].from == g.bind[other].from {
        return Ok(());
    }
    // Point at the later rule, naming the earlier one.
    let (first, other) = (first.min(other), first.max(other));
    let line = super::line_col(src.text, g.bind[first].span.start).0;
    Err(src.error_at(
        Some(g.bind[other].span.clone()),
        format!(
            "guard {:?}: port {port}/{} is also approved by the bind rule at line {line} with a different from; give the port one rule (or the same from)",
            g.name,
            portguard_common::Transport::from(proto)
        ),
    ))
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

/// The network address of a connect entry: `connect_prefix` read back
/// (its length is `key.prefix_len`).
pub(crate) fn connect_addr(key: &ConnectKey) -> IpAddr {
    if key.family == AF_INET {
        IpAddr::from([key.addr[0], key.addr[1], key.addr[2], key.addr[3]])
    } else {
        IpAddr::from(key.addr)
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
