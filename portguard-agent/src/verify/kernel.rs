//! "The kernel holds exactly this policy": the live slot of each policy map
//! against what the policy compiles to, and each guarded cgroup's hooks
//! against the programs the agent loaded.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv6Addr},
    os::fd::AsFd as _,
    path::Path,
};

use portguard_common::{
    BIND_ADDR_ANY, BindKey, ConnectKey, GUARD_ALLOW_EPHEMERAL_BIND, GUARD_ALLOW_OTHER_SOCKETS,
    GUARD_HAS_NAMES, GUARD_HAS_WILDCARDS, GuardInfo, MODE_AUDIT, Transport, map_names,
};

use super::report::{Check, Outcome};
use crate::bpf::{self, KernelPolicy};

/// At most this many entries are named per difference; the rest are counted.
const NAMED: usize = 6;

/// The entries of one guard (by guard id) in a kernel policy.
fn of_guard(
    k: &KernelPolicy,
    guard_id: u32,
    cgroups: &BTreeSet<u64>,
) -> (Vec<String>, Vec<String>, Vec<String>, Vec<String>) {
    let mut guards: Vec<String> = k
        .guards
        .iter()
        .filter(|(cg, info)| info.guard_id == guard_id || cgroups.contains(cg))
        .map(|(cg, info)| guard_entry(*cg, info))
        .collect();
    let mut bind: Vec<String> =
        k.bind.iter().filter(|(b, _)| b.guard_id == guard_id).map(|(b, _)| bind_entry(b)).collect();
    let mut connect: Vec<String> =
        k.connect.iter().filter(|(c, _)| c.guard_id == guard_id).map(|(c, p)| connect_entry(c, p)).collect();
    let mut names: Vec<String> = (k.names.iter())
        .filter(|((g, _, _), _)| *g == guard_id)
        .map(|((_, proto, name), p)| name_entry(*proto, name, p))
        .collect();
    guards.sort();
    bind.sort();
    connect.sort();
    names.sort();
    (guards, bind, connect, names)
}

fn name_entry(proto: u8, name: &str, ports: &portguard_common::PortSet) -> String {
    format!("connect {} name {name} ports {}", Transport::from(proto), port_list(ports))
}

fn port_list(ports: &portguard_common::PortSet) -> String {
    let ranges: Vec<String> = ports.ranges[..(ports.count as usize).min(ports.ranges.len())]
        .iter()
        .map(|r| if r.first == r.last { r.first.to_string() } else { format!("{}-{}", r.first, r.last) })
        .collect();
    ranges.join(",")
}

pub(super) fn guard_entry(cgroup_id: u64, info: &GuardInfo) -> String {
    let mode = if info.mode == MODE_AUDIT { "audit" } else { "enforce" };
    let mut flags = Vec::new();
    if info.flags & GUARD_ALLOW_EPHEMERAL_BIND != 0 {
        flags.push("allow_ephemeral_bind");
    }
    if info.flags & GUARD_ALLOW_OTHER_SOCKETS != 0 {
        flags.push("allow_raw_sockets");
    }
    if info.flags & GUARD_HAS_NAMES != 0 {
        flags.push("dns_names");
    }
    if info.flags & GUARD_HAS_WILDCARDS != 0 {
        flags.push("dns_wildcards");
    }
    let lens = |n: u8, l: &[u8]| {
        l[..usize::from(n).min(l.len())].iter().map(u8::to_string).collect::<Vec<_>>().join(",")
    };
    format!(
        "cgroup id {cgroup_id} -> guard id {} {mode}{}{} prefixes v4 [{}] v6 [{}]",
        info.guard_id,
        if flags.is_empty() { "" } else { " " },
        flags.join(" "),
        lens(info.v4_prefix_count, &info.v4_prefix_lens),
        lens(info.v6_prefix_count, &info.v6_prefix_lens),
    )
}

fn bind_entry(k: &BindKey) -> String {
    let proto = Transport::from(k.proto);
    if k.addr_kind == BIND_ADDR_ANY {
        return format!("bind {proto} port {} any address", k.port);
    }
    let addr = Ipv6Addr::from(k.addr);
    let addr: IpAddr = addr.to_ipv4_mapped().map_or(IpAddr::V6(addr), IpAddr::V4);
    format!("bind {proto} port {} address {addr}", k.port)
}

fn connect_entry(k: &ConnectKey, ports: &portguard_common::PortSet) -> String {
    let proto = Transport::from(k.proto);
    let addr = crate::policy::connect_addr(k);
    format!("connect {proto} {addr}/{} ports {}", k.prefix_len, port_list(ports))
}

fn named(entries: &[String]) -> String {
    let mut s: Vec<String> = entries.iter().take(NAMED).cloned().collect();
    if entries.len() > NAMED {
        s.push(format!("and {} more", entries.len() - NAMED));
    }
    s.join("; ")
}

/// One check per policy map: the guard's entries in the live slot equal the
/// compiled ones, entry for entry.
pub(super) fn map_checks(
    expected: &KernelPolicy,
    live: &KernelPolicy,
    guard_id: u32,
    cgroups: &BTreeSet<u64>,
) -> Vec<Check> {
    let (eg, eb, ec, en) = of_guard(expected, guard_id, cgroups);
    let (lg, lb, lc, ln) = of_guard(live, guard_id, cgroups);
    [
        (map_names::GUARDS, eg, lg),
        (map_names::BIND_RULES, eb, lb),
        (map_names::CONNECT_RULES, ec, lc),
        (map_names::DNS_NAMES, en, ln),
    ]
    .into_iter()
    .map(|(map, want, have)| {
        let (want_set, have_set): (BTreeSet<&String>, BTreeSet<&String>) =
            (want.iter().collect(), have.iter().collect());
        let missing: Vec<String> = want_set.difference(&have_set).map(|s| (*s).clone()).collect();
        let extra: Vec<String> = have_set.difference(&want_set).map(|s| (*s).clone()).collect();
        if missing.is_empty() && extra.is_empty() {
            Check::new(
                format!("map {map}"),
                "live slot",
                Outcome::Pass,
                format!("{} entries as compiled", want.len()),
                format!("{} entries as compiled", have.len()),
            )
        } else {
            let mut got = Vec::new();
            if !missing.is_empty() {
                got.push(format!("missing {}: {}", missing.len(), named(&missing)));
            }
            if !extra.is_empty() {
                got.push(format!("extra {}: {}", extra.len(), named(&extra)));
            }
            Check::new(
                format!("map {map}"),
                "live slot",
                Outcome::Fail,
                format!("exactly the {} entries the policy compiles to", want.len()),
                got.join("; "),
            )
        }
    })
    .collect()
}

/// Entries in the live slot of guard ids no guard of the agent's state has:
/// allows nobody verifies.
pub(super) fn unknown_entries(live: &KernelPolicy, known: &BTreeSet<u32>) -> Check {
    let mut extra: Vec<String> = live
        .guards
        .iter()
        .filter(|(_, i)| !known.contains(&i.guard_id))
        .map(|(c, i)| guard_entry(*c, i))
        .collect();
    extra.extend(
        live.bind
            .keys()
            .filter(|k| !known.contains(&k.guard_id))
            .map(|k| format!("guard id {}: {}", k.guard_id, bind_entry(k))),
    );
    extra.extend(
        live.connect
            .iter()
            .filter(|(k, _)| !known.contains(&k.guard_id))
            .map(|(k, p)| format!("guard id {}: {}", k.guard_id, connect_entry(k, p))),
    );
    extra.extend(
        (live.names.iter())
            .filter(|((g, _, _), _)| !known.contains(g))
            .map(|((g, proto, name), p)| format!("guard id {g}: {}", name_entry(*proto, name, p))),
    );
    if extra.is_empty() {
        Check::new("maps", "entries of unknown guards", Outcome::Pass, "none", "none")
    } else {
        extra.sort();
        Check::new(
            "maps",
            "entries of unknown guards",
            Outcome::Fail,
            "none",
            format!("{}: {}", extra.len(), named(&extra)),
        )
    }
}

/// Every cgroup hook at `cgroup` runs the agent's program through the link
/// the agent pinned for it.
pub(super) fn hook_check(
    pin_dir: &Path,
    cgroup_path: &Path,
    rel: &str,
    cgroup_id: u64,
    programs: &BTreeMap<String, u32>,
) -> Check {
    let cgroup = match std::fs::File::open(cgroup_path) {
        Ok(f) => f,
        Err(e) => {
            return Check::new(
                "hooks",
                rel,
                Outcome::Fail,
                "portguard's programs attached",
                format!("cannot open {}: {e}", cgroup_path.display()),
            );
        }
    };
    let mut problems = Vec::new();
    let mut ids = Vec::new();
    for hook in bpf::cgroup_hooks() {
        let name = hook.program;
        let Some(attach_type) = bpf::attach_type_number(hook) else { continue };
        let pin = bpf::link_pin(pin_dir, cgroup_id, hook);
        let link = match bpf::cgroup_link(&pin) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                problems.push(format!("{name} ({}): no pinned link (detached)", hook.attach_type));
                continue;
            }
            Err(e) => {
                problems.push(format!("{name}: cannot read link {}: {e}", pin.display()));
                continue;
            }
        };
        if link.cgroup_id != cgroup_id || link.attach_type != attach_type {
            problems.push(format!(
                "{name}: link {} is on cgroup id {} attach type {}, not cgroup id {cgroup_id} {}",
                link.id, link.cgroup_id, link.attach_type, hook.attach_type
            ));
            continue;
        }
        if let Some(&want) = programs.get(name)
            && want != link.prog_id
        {
            problems.push(format!(
                "{name}: link {} runs program id {}, not portguard's program id {want}",
                link.id, link.prog_id
            ));
            continue;
        }
        match bpf::cgroup_programs(cgroup.as_fd(), attach_type) {
            Ok(attached) if attached.contains(&link.prog_id) => ids.push(format!("{name}={}", link.prog_id)),
            Ok(attached) => problems.push(format!(
                "{name}: program id {} is not attached at the cgroup (attached: {attached:?})",
                link.prog_id
            )),
            Err(e) => problems.push(format!("{name}: BPF_PROG_QUERY: {e}")),
        }
    }
    if problems.is_empty() {
        Check::new(
            "hooks",
            rel,
            Outcome::Pass,
            "portguard's programs attached",
            format!("program ids {}", ids.join(" ")),
        )
    } else {
        Check::new(
            "hooks",
            rel,
            Outcome::Fail,
            "portguard's programs attached at every hook",
            problems.join("; "),
        )
    }
}
