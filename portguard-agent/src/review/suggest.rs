//! `portguard suggest --events TRAIL`: a draft policy from what workloads
//! did while their guard ran in audit mode. Ports become port lists,
//! peers become hosts or networks, kernel-chosen ports become
//! `allow_ephemeral_bind`, and every rule's owner and purpose are TODO
//! markers that `portguard check --strict` refuses until a person fills
//! them in.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::IpAddr,
    ops::RangeInclusive,
    path::Path,
    process::ExitCode,
};

use ipnet::IpNet;

use crate::{
    EXIT_BAD_INPUT,
    trail::{self, DnsNoteState, Record, RecordKind, RecordOp},
};

/// More distinct hosts than this in one /24 (v4) or /64 (v6) on the same
/// port become that network instead of a list of hosts.
const HOSTS_BEFORE_NETWORK: usize = 4;

#[derive(Debug, Default)]
struct Observed {
    /// The TOML line that says what the guard covers.
    target: String,
    ephemeral_bind: bool,
    /// (proto, bind address or None for any) -> ports.
    binds: BTreeMap<(String, Option<IpAddr>), BTreeSet<u16>>,
    /// (proto, port) -> peers.
    connects: BTreeMap<(String, u16), BTreeSet<IpAddr>>,
    /// (proto, port) -> the guard's DNS names (or patterns) the peers were
    /// answers for: drafted as names, not addresses, which move.
    connect_names: BTreeMap<(String, u16), BTreeSet<String>>,
    /// (proto, local port) -> peers the kernel reported reaching it
    /// (audited or refused inbound connections and datagrams).
    inbound: BTreeMap<(String, u16), BTreeSet<IpAddr>>,
    /// (proto, port) of listeners seen only by their inbound connections.
    listeners: BTreeSet<(String, u16)>,
    records: u64,
}

pub(crate) struct Options {
    /// Only this guard; all guards with records otherwise.
    pub guard: Option<String>,
    /// The policy the records were made under: each draft guard keeps its
    /// target from there (its `unit`, or the selector of a pod guard, which
    /// no record carries). Without it, the guard cgroup the agent recorded.
    pub current: Option<crate::policy::Policy>,
    pub mode: crate::policy::Mode,
    /// The kernel's local port range: binds in it are kernel-chosen.
    pub ephemeral: RangeInclusive<u16>,
}

pub(crate) fn suggest(records: &[Record], opts: &Options) -> String {
    let mut guards: BTreeMap<String, Observed> = BTreeMap::new();
    for r in records {
        let Some(guard) = &r.guard else { continue };
        if opts.guard.as_ref().is_some_and(|g| g != guard) || r.proto().is_none() {
            continue;
        }
        let target = match opts.current.as_ref().and_then(|p| p.guards.iter().find(|g| &g.name == guard)) {
            Some(g) => target_line(g),
            None => match &r.guard_cgroup {
                Some(c) => format!("cgroup = {}", quote(c)),
                // A pod guard, and no policy to take its selector from.
                None => continue,
            },
        };
        let o = guards.entry(guard.clone()).or_insert_with(|| Observed { target, ..Default::default() });
        o.records += r.count;
        match (r.event, r.op) {
            (RecordKind::PortClosed, _) => {}
            (_, RecordOp::Bind) => {
                if r.port == 0
                    || (matches!(r.event, RecordKind::PortOpened | RecordKind::PortBrief)
                        && opts.ephemeral.contains(&r.port))
                {
                    o.ephemeral_bind = true;
                } else {
                    let addr = crate::policy::eval::canonical(r.addr);
                    let addr = (!addr.is_unspecified()).then_some(addr);
                    o.binds.entry((r.proto.to_string(), addr)).or_default().insert(r.port);
                }
            }
            (RecordKind::Denied | RecordKind::Audited, RecordOp::Accept | RecordOp::Receive) => {
                // A TCP connection to a port no rule approves shows a
                // listener; a UDP datagram shows no server (a client hears
                // from peers too), only where a port went live.
                if r.op == RecordOp::Accept && !opts.ephemeral.contains(&r.port) {
                    o.listeners.insert((r.proto.to_string(), r.port));
                }
                o.inbound
                    .entry((r.proto.to_string(), r.port))
                    .or_default()
                    .insert(crate::policy::eval::canonical(r.addr));
            }
            (RecordKind::Denied | RecordKind::Audited, RecordOp::Connect | RecordOp::Sendmsg) => {
                let key = (r.proto.to_string(), r.port);
                match r.dns.as_ref().filter(|d| d.state != DnsNoteState::Never && !d.names.is_empty()) {
                    // The workload reached an address a DNS answer gave it
                    // for one of the guard's names: the name is the peer.
                    Some(note) => o.connect_names.entry(key).or_default().extend(note.names.iter().cloned()),
                    None => {
                        o.connects.entry(key).or_default().insert(crate::policy::eval::canonical(r.addr));
                    }
                }
            }
            _ => {}
        }
    }
    let mut out = String::from(
        "# Draft policy written by `portguard suggest` from an audit trail.\n\
         # Review every rule, fill in each TODO (check --strict refuses them),\n\
         # then switch mode to \"enforce\".\nversion = 1\n",
    );
    for (name, o) in &guards {
        write_guard(&mut out, name, o, opts);
    }
    out
}

fn write_guard(out: &mut String, name: &str, o: &Observed, opts: &Options) {
    let _ = write!(
        out,
        "\n# {} recorded operations.\n[[guard]]\nname = {}\n{}\nmode = \"{}\"\n",
        o.records,
        quote(name),
        o.target,
        opts.mode.as_str()
    );
    if o.ephemeral_bind {
        out.push_str(
            "# It bound kernel-chosen ports (port 0 or the local port range).\nallow_ephemeral_bind = true\n",
        );
    }
    // A listener seen only by the connections it was offered listens on
    // every address, as far as the trail tells.
    let mut observed = o.binds.clone();
    for (proto, port) in &o.listeners {
        if !o.binds.iter().any(|((p, _), ports)| p == proto && ports.contains(port)) {
            observed.entry((proto.clone(), None)).or_default().insert(*port);
        }
    }
    // Each port's draft `from`, then ports grouped by address and `from`;
    // same ports on tcp and udp read better as one rule.
    let mut by_from: BTreeMap<Audience, BTreeMap<String, BTreeSet<u16>>> = BTreeMap::new();
    for ((proto, addr), ports) in &observed {
        for &port in ports {
            let from = draft_from(o, opts, name, proto, *addr, port);
            by_from.entry((*addr, from)).or_default().entry(proto.clone()).or_default().insert(port);
        }
    }
    let mut binds: BTreeMap<(Audience, Vec<u16>), BTreeSet<String>> = BTreeMap::new();
    for ((addr, from), by_proto) in by_from {
        for (proto, ports) in by_proto {
            binds.entry(((addr, from.clone()), ports.into_iter().collect())).or_default().insert(proto);
        }
    }
    for (((addr, from), ports), protos) in &binds {
        let _ = write!(out, "\n  [[guard.bind]]\n  ports = {}\n", ports_toml(ports));
        write_proto(out, protos);
        if let Some(a) = addr {
            let _ = writeln!(out, "  address = \"{a}\"");
        }
        if !from.is_empty() {
            let list: Vec<String> = from.iter().map(|p| quote(p)).collect();
            let _ = writeln!(
                out,
                "  # The peers seen reaching it (and its current from); review before enforcing.\n  from = [{}]",
                list.join(", ")
            );
        }
        out.push_str(TODO);
    }
    // peers (names first, then addresses and networks) -> (proto -> ports)
    let mut connects: BTreeMap<Vec<String>, BTreeMap<String, BTreeSet<u16>>> = BTreeMap::new();
    let keys: BTreeSet<&(String, u16)> = o.connects.keys().chain(o.connect_names.keys()).collect();
    for key in keys {
        let mut peers: Vec<String> = o.connect_names.get(key).into_iter().flatten().cloned().collect();
        peers.extend(o.connects.get(key).map(aggregate).unwrap_or_default());
        let (proto, port) = key;
        connects.entry(peers).or_default().entry(proto.clone()).or_default().insert(*port);
    }
    for (peers, by_proto) in &connects {
        let mut rules: BTreeMap<Vec<u16>, BTreeSet<String>> = BTreeMap::new();
        for (proto, ports) in by_proto {
            rules.entry(ports.iter().copied().collect()).or_default().insert(proto.clone());
        }
        for (ports, protos) in rules {
            let peer_list: Vec<String> = peers.iter().map(|p| quote(p)).collect();
            let _ = write!(
                out,
                "\n  [[guard.connect]]\n  peer = [{}]\n  ports = {}\n",
                peer_list.join(", "),
                ports_toml(&ports)
            );
            write_proto(out, &protos);
            out.push_str(TODO);
        }
    }
}

/// The draft `from` of a port: the peers the kernel reported reaching
/// it, with the networks of the `from` it has in the current policy (whose
/// peers were let in unreported), coalesced as connect peers are. Empty
/// (no `from`: any peer) when no peer was reported: an audited port
/// without `from` reports none, so the trail cannot tell its audience.
fn draft_from(
    o: &Observed,
    opts: &Options,
    guard: &str,
    proto: &str,
    addr: Option<IpAddr>,
    port: u16,
) -> Vec<String> {
    let Some(peers) = o.inbound.get(&(proto.to_owned(), port)) else { return Vec::new() };
    let mut out: BTreeSet<String> = aggregate(peers).into_iter().collect();
    let rule_proto = if proto == "udp" { crate::policy::Proto::Udp } else { crate::policy::Proto::Tcp };
    let current = opts.current.as_ref().and_then(|p| p.guards.iter().find(|g| g.name == guard));
    if let Some(g) = current {
        let local = addr.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        if let Some(nets) = g.approving_rule(rule_proto, local, port).and_then(|r| g.bind[r].from.as_ref()) {
            out.extend(nets.iter().map(ToString::to_string));
        }
    }
    out.into_iter().collect()
}

/// A bind rule's local address (`None`: any) and draft `from`.
type Audience = (Option<IpAddr>, Vec<String>);

const TODO: &str = "  owner = \"TODO: who owns this\"\n  purpose = \"TODO: why it exists\"\n";

fn write_proto(out: &mut String, protos: &BTreeSet<String>) {
    match (protos.contains("tcp"), protos.contains("udp")) {
        (true, true) => out.push_str("  proto = \"both\"\n"),
        (false, true) => out.push_str("  proto = \"udp\"\n"),
        _ => {}
    }
}

/// Hosts, or their /24 (v4) or /64 (v6) when there are many in one; all of
/// IPv4 loopback as 127.0.0.0/8.
fn aggregate(peers: &BTreeSet<IpAddr>) -> Vec<String> {
    let mut nets: BTreeMap<IpNet, BTreeSet<IpAddr>> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for &p in peers {
        match p {
            IpAddr::V4(a) if a.is_loopback() => {
                out.insert("127.0.0.0/8".to_owned());
            }
            IpAddr::V4(_) => {
                nets.entry(IpNet::new(p, 24).expect("valid").trunc()).or_default().insert(p);
            }
            IpAddr::V6(_) => {
                nets.entry(IpNet::new(p, 64).expect("valid").trunc()).or_default().insert(p);
            }
        }
    }
    for (net, hosts) in nets {
        if hosts.len() > HOSTS_BEFORE_NETWORK {
            out.insert(net.to_string());
        } else {
            out.extend(hosts.iter().map(ToString::to_string));
        }
    }
    out.into_iter().collect()
}

/// Ports as a TOML list, consecutive runs as "a-b" ranges.
fn ports_toml(ports: &[u16]) -> String {
    let mut items: Vec<String> = Vec::new();
    let mut i = 0;
    while i < ports.len() {
        let mut j = i;
        while j + 1 < ports.len() && ports[j + 1] == ports[j] + 1 {
            j += 1;
        }
        items.push(if j > i { format!("\"{}-{}\"", ports[i], ports[j]) } else { ports[i].to_string() });
        i = j + 1;
    }
    format!("[{}]", items.join(", "))
}

/// What `g` covers, as its policy line: `unit`, `cgroup` or `pods`.
fn target_line(g: &crate::policy::GuardSpec) -> String {
    use crate::policy::Target;
    match (&g.unit, &g.target) {
        (Some(unit), _) => format!("unit = {}", quote(unit)),
        (None, Target::Cgroup(c)) => format!("cgroup = {}", quote(c)),
        (None, Target::Pods(sel)) => {
            let mut parts = Vec::new();
            if let Some(ns) = &sel.namespace {
                parts.push(format!("namespace = {}", quote(&ns.0)));
            }
            let labels: Vec<String> =
                sel.labels.iter().map(|(k, v)| format!("{} = {}", quote(&k.0), quote(&v.0))).collect();
            if !labels.is_empty() {
                parts.push(format!("labels = {{ {} }}", labels.join(", ")));
            }
            format!("pods = {{ {} }}", parts.join(", "))
        }
    }
}

fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

// The command line: read the trail, write the draft, answer with an exit
// code. `local_port_range` is what the commands pass as `ephemeral`.

/// The kernel's local port range (where kernel-chosen ports come from).
pub(crate) fn local_port_range() -> RangeInclusive<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|v| v.parse::<u16>().ok());
            Some(it.next()??..=it.next()??)
        })
        .unwrap_or(32768..=60999)
}

/// Runs `portguard suggest --events TRAIL`: 0 once the draft is written, 2
/// when the trail cannot be read or the output cannot be written.
pub(crate) fn run(events: &Path, opts: &Options, output: Option<&Path>) -> ExitCode {
    let records = match trail::read_records(events) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("portguard: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let text = suggest(&records, opts);
    // The draft must itself be a valid policy; anything else is our bug.
    if let Err(e) = crate::policy::parse_and_compile("suggested policy", &text) {
        eprintln!("portguard: internal error, the suggested policy does not load: {e}");
        return ExitCode::FAILURE;
    }
    match output {
        Some(path) => {
            if let Err(e) = std::fs::write(path, &text) {
                eprintln!("portguard: {}: {e}", path.display());
                return ExitCode::from(EXIT_BAD_INPUT);
            }
        }
        None => print!("{text}"),
    }
    ExitCode::SUCCESS
}
