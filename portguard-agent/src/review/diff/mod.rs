//! `portguard diff OLD NEW`: what a policy change opens and closes, per guard.
//!
//! The diff compares what each policy *allows*, not the files' text.
//! Reordering, splitting or merging rules, or editing `owner` and `purpose`,
//! changes nothing. A rule whose ports a broader rule already allows changes
//! nothing either, and is pointed out instead.
//!
//! A guard is in one of three states: absent (its cgroup is not judged),
//! audit (nothing is refused, so in effect everything is allowed) or
//! enforce (only its rules are allowed). Opens and closes follow from the
//! change of state, and between two enforce states from the rules.

mod ports;
mod text;

#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
    ops::Bound,
    path::Path,
    process::ExitCode,
};

use ipnet::IpNet;
use serde::Serialize;

pub use self::ports::Ports;
use crate::{
    EXIT_BAD_INPUT,
    cli::OutputFormat,
    policy::{self, GuardSpec, Mode, Policy, Proto},
};

/// Runs `portguard diff OLD NEW`: 0 once the diff is printed, whether or not
/// anything changed; 2 when either policy cannot be used.
pub fn run(old: &Path, new: &Path, format: OutputFormat) -> ExitCode {
    let loaded = policy::load(old).and_then(|(old, _)| Ok((old, policy::load(new)?.0)));
    let (old, new) = match loaded {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("portguard: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let diff = diff(&old, &new);
    match format {
        OutputFormat::Text => print!("{}", text::render(&diff)),
        OutputFormat::Json => {
            println!("{}", serde_json::to_string_pretty(&diff).expect("the diff serialises"))
        }
    }
    ExitCode::SUCCESS
}

/// What changes between two policies, guard by guard (sorted by name).
#[derive(Debug, Clone, Serialize)]
pub struct PolicyDiff {
    pub guards: Vec<GuardDiff>,
    pub summary: Summary,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Effects that allow more, over guards whose changes are not reports only.
    pub opens: usize,
    pub closes: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct GuardDiff {
    pub name: String,
    pub change: Change,
    pub mode: OldNew<&'static str>,
    pub cgroup: OldNew<String>,
    /// Audit in both policies: the opens and closes change only what is
    /// reported, since an audit guard refuses nothing.
    pub reports_only: bool,
    pub opens: Vec<Effect>,
    pub closes: Vec<Effect>,
    /// What stays allowed when the change closes everything else (a guard
    /// now enforced on a cgroup that was unguarded or audited).
    pub allowed: Vec<Effect>,
    pub notes: Vec<Note>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Added,
    Removed,
    Changed,
    Unchanged,
}

/// A guard attribute in OLD and NEW; `None` where the guard is absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OldNew<T> {
    pub old: Option<T>,
    pub new: Option<T>,
}

/// One thing a change allows (in `opens`, `allowed`) or refuses (in `closes`).
/// Field order is sort order: bind output is sorted by address, connect
/// output by peer, then protocol.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Effect {
    /// Every operation in `cgroup`: no longer refused (`reason` unguarded or
    /// audit), or refused except what the guard lists (`reason` enforce).
    Everything { cgroup: String, reason: Reason },
    /// `bind()` to port 0 (`allow_ephemeral_bind`).
    EphemeralBind,
    /// Raw, SCTP and packet sockets (`allow_raw_sockets`).
    RawSockets,
    Bind {
        address: BindAddress,
        proto: Protos,
        ports: Ports,
        /// Addresses where some of these ports do not change: already
        /// allowed (in opens) or still allowed (in closes).
        except: Vec<Region>,
    },
    Connect {
        peer: Peer,
        proto: Protos,
        ports: Ports,
        /// Narrower peers where some of these ports do not change: already
        /// allowed (in opens) or still allowed (in closes).
        except: Vec<Region>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Unguarded,
    Audit,
    Enforce,
}

/// Something a reviewer should see that opens or closes nothing.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Note {
    /// A rule in NEW whose ports broader rules in NEW already allow: it is
    /// redundant. Only redundancies the change introduces are noted.
    Shadowed { rule: Effect, by: Vec<Region> },
    /// A rule no longer listed in NEW whose ports broader rules in NEW
    /// still allow, so removing it closes nothing.
    StillAllowed { rule: Effect, by: Vec<Region> },
}

/// Ports at one address or peer network ("any" for every address).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Region {
    pub at: String,
    pub ports: Ports,
}

/// The address a bind effect is about. `Any` is what address-less rules
/// allow: every address, including ones no rule names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BindAddress {
    Any,
    Ip(IpAddr),
}

/// The peers a connect effect is about: all of IPv4 and IPv6, or one network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    Any,
    Net(IpNet),
}

/// The protocols an effect covers; `Both` when tcp and udp have the same effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protos {
    Tcp,
    Udp,
    Both,
}

impl fmt::Display for BindAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindAddress::Any => f.write_str("any"),
            BindAddress::Ip(ip) => ip.fmt(f),
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Any => f.write_str("any"),
            Peer::Net(net) => net.fmt(f),
        }
    }
}

impl fmt::Display for Protos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protos::Tcp => "tcp",
            Protos::Udp => "udp",
            Protos::Both => "tcp+udp",
        })
    }
}

macro_rules! serialize_as_display {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    )*};
}
serialize_as_display!(BindAddress, Peer, Protos);

impl PolicyDiff {
    pub fn is_empty(&self) -> bool {
        self.summary.opens == 0 && self.summary.closes == 0
    }
}

/// The diff between two validated policies. Guards are matched by name.
pub fn diff(old: &Policy, new: &Policy) -> PolicyDiff {
    let by_name = |p: &'_ Policy| -> BTreeMap<String, GuardSpec> {
        p.guards.iter().map(|g| (g.name.clone(), g.clone())).collect()
    };
    let (old, new) = (by_name(old), by_name(new));
    let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let guards: Vec<GuardDiff> =
        names.into_iter().map(|name| diff_guard(name, old.get(name), new.get(name))).collect();
    let counted = guards.iter().filter(|g| !g.reports_only);
    let summary = Summary {
        opens: counted.clone().map(|g| g.opens.len()).sum(),
        closes: counted.map(|g| g.closes.len()).sum(),
    };
    PolicyDiff { guards, summary }
}

fn diff_guard(name: &str, old: Option<&GuardSpec>, new: Option<&GuardSpec>) -> GuardDiff {
    let mut d = GuardDiff {
        name: name.to_owned(),
        change: match (old, new) {
            (None, _) => Change::Added,
            (_, None) => Change::Removed,
            _ => Change::Unchanged, // refined below
        },
        mode: OldNew { old: old.map(|g| g.mode.as_str()), new: new.map(|g| g.mode.as_str()) },
        cgroup: OldNew { old: old.map(covered), new: new.map(covered) },
        reports_only: false,
        opens: Vec::new(),
        closes: Vec::new(),
        allowed: Vec::new(),
        notes: Vec::new(),
    };
    let (old_rules, new_rules) = (old.map(Allowed::of), new.map(Allowed::of));
    let none = Allowed::default();
    match (old, new) {
        (Some(o), Some(n)) if o.target == n.target => {
            let (old_rules, new_rules) =
                (old_rules.as_ref().unwrap_or(&none), new_rules.as_ref().unwrap_or(&none));
            match (o.mode, n.mode) {
                (Mode::Enforce, Mode::Enforce) | (Mode::Audit, Mode::Audit) => {
                    let changes = rule_changes(old_rules, new_rules);
                    (d.opens, d.closes, d.notes) = (changes.opens, changes.closes, changes.notes);
                    d.reports_only = n.mode == Mode::Audit;
                }
                (Mode::Enforce, Mode::Audit) => {
                    d.opens.push(Effect::Everything { cgroup: covered(n), reason: Reason::Audit });
                    d.notes = rule_changes(old_rules, new_rules).new_redundancies();
                }
                (Mode::Audit, Mode::Enforce) => {
                    d.closes.push(Effect::Everything { cgroup: covered(n), reason: Reason::Enforce });
                    d.allowed = rule_changes(&none, new_rules).opens;
                    d.notes = rule_changes(old_rules, new_rules).new_redundancies();
                }
            }
        }
        // Added, removed, or moved to another cgroup: the old cgroup is no
        // longer guarded and the new one is guarded from scratch.
        _ => {
            if let Some(o) = old.filter(|o| o.mode == Mode::Enforce) {
                d.opens.push(Effect::Everything { cgroup: covered(o), reason: Reason::Unguarded });
            }
            if let Some(n) = new {
                let new_rules = new_rules.as_ref().unwrap_or(&none);
                let changes = rule_changes(&none, new_rules);
                if n.mode == Mode::Enforce {
                    d.closes.push(Effect::Everything { cgroup: covered(n), reason: Reason::Enforce });
                    d.allowed = changes.opens.clone();
                }
                d.notes = changes.new_redundancies();
            }
        }
    }
    if d.change == Change::Unchanged
        && (d.mode.old != d.mode.new
            || d.cgroup.old != d.cgroup.new
            || !d.opens.is_empty()
            || !d.closes.is_empty())
    {
        d.change = Change::Changed;
    }
    d
}

/// The two transport protocols rules distinguish; index into per-protocol tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Transport {
    Tcp = 0,
    Udp = 1,
}

const TRANSPORTS: [Transport; 2] = [Transport::Tcp, Transport::Udp];

impl Transport {
    fn of(proto: Proto) -> &'static [Transport] {
        match proto {
            Proto::Tcp => &[Transport::Tcp],
            Proto::Udp => &[Transport::Udp],
            Proto::Both => &TRANSPORTS,
        }
    }

    fn protos(self) -> Protos {
        match self {
            Transport::Tcp => Protos::Tcp,
            Transport::Udp => Protos::Udp,
        }
    }
}

/// What one guard's rules allow, with ports merged per (protocol, address)
/// and per (protocol, peer network), so that two ways of writing the same
/// rules build the same tables.
#[derive(Debug, Default)]
struct Allowed {
    bind: [BindTable; 2],
    connect: [PeerTable; 2],
    ephemeral_bind: bool,
    raw_sockets: bool,
}

impl Allowed {
    fn of(g: &GuardSpec) -> Allowed {
        let mut a = Allowed {
            ephemeral_bind: g.allow_ephemeral_bind,
            raw_sockets: g.allow_raw_sockets,
            ..Allowed::default()
        };
        for rule in &g.bind {
            let ports = Ports::from_specs(&rule.ports);
            for &t in Transport::of(rule.proto) {
                let table = &mut a.bind[t as usize];
                match rule.address {
                    None => table.any.add(&ports),
                    Some(ip) => table.at.entry(canonical_ip(ip)).or_default().add(&ports),
                }
            }
        }
        for rule in &g.connect {
            let ports = Ports::from_specs(&rule.ports);
            for &t in Transport::of(rule.proto) {
                for &net in &rule.peers {
                    a.connect[t as usize].add(net, &ports);
                }
            }
        }
        a
    }
}

/// The kernel judges `::ffff:a.b.c.d` as `a.b.c.d`, and keys a bind rule's
/// IPv4 address as its mapped form, so the two spellings are one address.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Bind rules of one protocol: ports allowed on every address, and ports
/// allowed on one specific address only.
#[derive(Debug, Default)]
struct BindTable {
    any: Ports,
    at: BTreeMap<IpAddr, Ports>,
}

impl BindTable {
    fn listed(&self, ip: &IpAddr) -> Ports {
        self.at.get(ip).cloned().unwrap_or_default()
    }

    /// Everything a bind to `ip` may use.
    fn allowed_at(&self, ip: &IpAddr) -> Ports {
        self.any.union(&self.listed(ip))
    }
}

/// Connect rules of one protocol, merged per peer network. Networks are
/// either nested or disjoint, so "at every address of X" means "by X or a
/// network containing X".
#[derive(Debug, Default)]
struct PeerTable {
    nets: BTreeMap<IpNet, Ports>,
    /// (is IPv6, prefix length) of every network, to find containing ones
    /// by lookup rather than by scanning the table.
    prefix_lens: BTreeSet<(bool, u8)>,
}

impl PeerTable {
    fn add(&mut self, net: IpNet, ports: &Ports) {
        self.nets.entry(net).or_default().add(ports);
        self.prefix_lens.insert((is_v6(&net), net.prefix_len()));
    }

    fn listed(&self, net: &IpNet) -> Ports {
        self.nets.get(net).cloned().unwrap_or_default()
    }

    /// Networks strictly containing `net`, broadest first.
    fn broader(&self, net: &IpNet) -> impl Iterator<Item = (IpNet, &Ports)> {
        let (v6, len) = (is_v6(net), net.prefix_len());
        let lens = self.prefix_lens.range((v6, 0)..(v6, len)).map(|&(_, l)| l);
        lens.filter_map(move |l| {
            let wider = IpNet::new(net.addr(), l).expect("a shorter prefix is valid").trunc();
            self.nets.get_key_value(&wider).map(|(n, p)| (*n, p))
        })
    }

    /// Ports allowed to every address of `net` by broader networks.
    fn broader_ports(&self, net: &IpNet) -> Ports {
        self.broader(net).fold(Ports::new(), |acc, (_, p)| acc.union(p))
    }

    /// Ports allowed to every address of `net`.
    fn allowed_throughout(&self, net: &IpNet) -> Ports {
        self.broader_ports(net).union(&self.listed(net))
    }

    /// Networks strictly inside `net`. Networks sort by (address, prefix
    /// length) and have no host bits, so those inside `net` are exactly the
    /// ones from `net` itself up to (its last address, longest prefix).
    fn narrower(&self, net: &IpNet) -> impl Iterator<Item = (IpNet, &Ports)> {
        let last = IpNet::new(net.broadcast(), net.max_prefix_len()).expect("the longest prefix is valid");
        self.nets.range((Bound::Excluded(*net), Bound::Included(last))).map(|(n, p)| (*n, p))
    }
}

fn is_v6(net: &IpNet) -> bool {
    matches!(net, IpNet::V6(_))
}

/// What a guard covers, as the report names it: a cgroup path, or the pods
/// a selector picks.
fn covered(g: &GuardSpec) -> String {
    match &g.target {
        crate::policy::Target::Cgroup(c) => c.clone(),
        pods => pods.to_string(),
    }
}

/// The rule-level changes between two guards on one cgroup, in one mode.
#[derive(Debug, Default)]
struct RuleChanges {
    opens: Vec<Effect>,
    closes: Vec<Effect>,
    notes: Vec<Note>,
}

impl RuleChanges {
    fn new_redundancies(self) -> Vec<Note> {
        self.notes.into_iter().filter(|n| matches!(n, Note::Shadowed { .. })).collect()
    }
}

/// What NEW's rules allow that OLD's do not (opens), and the reverse
/// (closes). Each newly allowed (address, port) is reported once, under the
/// broadest rule that allows it; narrower parts that do not change are
/// listed in the effect's `except`.
fn rule_changes(old: &Allowed, new: &Allowed) -> RuleChanges {
    let mut c = RuleChanges::default();
    for (flag_old, flag_new, effect) in [
        (old.ephemeral_bind, new.ephemeral_bind, Effect::EphemeralBind),
        (old.raw_sockets, new.raw_sockets, Effect::RawSockets),
    ] {
        match (flag_old, flag_new) {
            (false, true) => c.opens.push(effect),
            (true, false) => c.closes.push(effect),
            _ => {}
        }
    }
    for t in TRANSPORTS {
        bind_changes(t, &old.bind[t as usize], &new.bind[t as usize], &mut c);
        connect_changes(t, &old.connect[t as usize], &new.connect[t as usize], &mut c);
    }
    c.opens = tidy(c.opens);
    c.closes = tidy(c.closes);
    c.notes = tidy_notes(c.notes);
    c
}

fn bind_changes(t: Transport, old: &BindTable, new: &BindTable, c: &mut RuleChanges) {
    let proto = t.protos();
    let bind = |address, ports: Ports, except| Effect::Bind { address, proto, ports, except };
    let addresses: BTreeSet<&IpAddr> = old.at.keys().chain(new.at.keys()).collect();

    // Address-less rules: a change there applies at every address except
    // those whose own rules already (or still) allow the port.
    let except = |ports: &Ports, table: &BindTable| -> Vec<Region> {
        (addresses.iter())
            .map(|ip| Region { at: ip.to_string(), ports: ports.intersect(&table.listed(ip)) })
            .filter(|r| !r.ports.is_empty())
            .collect()
    };
    let opened = new.any.minus(&old.any);
    if !opened.is_empty() {
        c.opens.push(bind(BindAddress::Any, opened.clone(), except(&opened, old)));
    }
    let closed = old.any.minus(&new.any);
    if !closed.is_empty() {
        c.closes.push(bind(BindAddress::Any, closed.clone(), except(&closed, new)));
    }

    for &ip in addresses {
        let at = BindAddress::Ip(ip);
        // Ports the address-less rules allow are reported above.
        let opened = new.listed(&ip).minus(&new.any).minus(&old.allowed_at(&ip));
        if !opened.is_empty() {
            c.opens.push(bind(at, opened, Vec::new()));
        }
        let closed = old.listed(&ip).minus(&old.any).minus(&new.allowed_at(&ip));
        if !closed.is_empty() {
            c.closes.push(bind(at, closed, Vec::new()));
        }
        let any = || vec![Region { at: BindAddress::Any.to_string(), ports: new.any.clone() }];
        let still = old.listed(&ip).minus(&new.listed(&ip)).intersect(&new.any);
        if !still.is_empty() {
            c.notes.push(Note::StillAllowed { rule: bind(at, still, Vec::new()), by: any() });
        }
        let listed = new.listed(&ip);
        let was_redundant = old.listed(&ip) == listed && listed.is_subset(&old.any);
        if !listed.is_empty() && listed.is_subset(&new.any) && !was_redundant {
            c.notes.push(Note::Shadowed { rule: bind(at, listed, Vec::new()), by: any() });
        }
    }
}

fn connect_changes(t: Transport, old: &PeerTable, new: &PeerTable, c: &mut RuleChanges) {
    let proto = t.protos();
    let connect = |net, ports, except| Effect::Connect { peer: Peer::Net(net), proto, ports, except };
    // Parts of `ports` that narrower networks of `table` allow.
    let inside = |net: &IpNet, ports: &Ports, table: &PeerTable| -> Vec<Region> {
        (table.narrower(net))
            .map(|(n, p)| Region { at: n.to_string(), ports: ports.intersect(p) })
            .filter(|r| !r.ports.is_empty())
            .collect()
    };
    // Broader networks of `table` that allow some of `ports`, as they are written.
    let covering = |net: &IpNet, ports: &Ports, table: &PeerTable| -> Vec<Region> {
        (table.broader(net))
            .filter(|(_, p)| p.overlaps(ports))
            .map(|(n, p)| Region { at: n.to_string(), ports: p.clone() })
            .collect()
    };

    for (net, ports) in &new.nets {
        // What broader NEW networks allow is reported under them.
        let opened = ports.minus(&old.allowed_throughout(net)).minus(&new.broader_ports(net));
        if !opened.is_empty() {
            c.opens.push(connect(*net, opened.clone(), inside(net, &opened, old)));
        }
        let redundant = |table: &PeerTable| ports.is_subset(&table.broader_ports(net));
        let was_redundant = old.listed(net) == *ports && redundant(old);
        if redundant(new) && !was_redundant {
            c.notes.push(Note::Shadowed {
                rule: connect(*net, ports.clone(), Vec::new()),
                by: covering(net, ports, new),
            });
        }
    }
    for (net, ports) in &old.nets {
        let closed = ports.minus(&new.allowed_throughout(net)).minus(&old.broader_ports(net));
        if !closed.is_empty() {
            c.closes.push(connect(*net, closed.clone(), inside(net, &closed, new)));
        }
        let still = ports.minus(&new.listed(net)).intersect(&new.broader_ports(net));
        if !still.is_empty() {
            c.notes.push(Note::StillAllowed {
                by: covering(net, &still, new),
                rule: connect(*net, still, Vec::new()),
            });
        }
    }
}

/// Sorts effects and folds pairs that read better as one: the same effect
/// on 0.0.0.0/0 and ::/0 is one on `any` peer, and the same effect for tcp
/// and udp is one for both.
fn tidy(effects: Vec<Effect>) -> Vec<Effect> {
    let mut out = merge_any_peer(effects);
    out.sort();
    let mut out = merge_protocols(out, effect_proto, with_proto);
    out.sort();
    out
}

fn tidy_notes(notes: Vec<Note>) -> Vec<Note> {
    let proto_of = |n: &Note| match n {
        Note::Shadowed { rule, .. } | Note::StillAllowed { rule, .. } => effect_proto(rule),
    };
    let with = |n: &Note, p| match n {
        Note::Shadowed { rule, by } => Note::Shadowed { rule: with_proto(rule, p), by: by.clone() },
        Note::StillAllowed { rule, by } => Note::StillAllowed { rule: with_proto(rule, p), by: by.clone() },
    };
    let mut out = merge_protocols(notes, proto_of, with);
    out.sort();
    out
}

fn effect_proto(e: &Effect) -> Option<Protos> {
    match e {
        Effect::Bind { proto, .. } | Effect::Connect { proto, .. } => Some(*proto),
        _ => None,
    }
}

fn with_proto(e: &Effect, p: Protos) -> Effect {
    let mut e = e.clone();
    if let Effect::Bind { proto, .. } | Effect::Connect { proto, .. } = &mut e {
        *proto = p;
    }
    e
}

/// Replaces each tcp item that has a udp twin (equal but for the protocol)
/// by one item for both. `items` must be sorted.
fn merge_protocols<T: Clone + Ord>(
    items: Vec<T>,
    proto_of: impl Fn(&T) -> Option<Protos>,
    with: impl Fn(&T, Protos) -> T,
) -> Vec<T> {
    let all: BTreeSet<&T> = items.iter().collect();
    let mut merged_udp = BTreeSet::new();
    let mut out = Vec::with_capacity(items.len());
    for item in &items {
        if proto_of(item) == Some(Protos::Tcp) {
            let twin = with(item, Protos::Udp);
            if all.contains(&twin) {
                out.push(with(item, Protos::Both));
                merged_udp.insert(twin);
                continue;
            }
        }
        out.push(item.clone());
    }
    out.retain(|i| !merged_udp.contains(i));
    out
}

/// Folds a connect effect on 0.0.0.0/0 and one on ::/0 with the same
/// protocol and ports into one on `any` (what `peer = "any"` writes).
fn merge_any_peer(effects: Vec<Effect>) -> Vec<Effect> {
    let v4_any: IpNet = "0.0.0.0/0".parse().expect("a valid network");
    let v6_any: IpNet = "::/0".parse().expect("a valid network");
    let mut out = Vec::with_capacity(effects.len());
    let mut v6_halves: Vec<Effect> = Vec::new();
    let mut rest = Vec::new();
    for e in effects {
        match &e {
            Effect::Connect { peer: Peer::Net(n), .. } if *n == v6_any => v6_halves.push(e),
            _ => rest.push(e),
        }
    }
    for e in rest {
        if let Effect::Connect { peer: Peer::Net(n), proto, ports, except } = &e
            && *n == v4_any
            && let Some(i) = v6_halves.iter().position(
                |v6| matches!(v6, Effect::Connect { proto: p6, ports: ports6, .. } if p6 == proto && ports6 == ports),
            )
            && let Effect::Connect { except: except6, .. } = v6_halves.remove(i)
        {
            let mut except = except.clone();
            except.extend(except6);
            except.sort();
            out.push(Effect::Connect { peer: Peer::Any, proto: *proto, ports: ports.clone(), except });
            continue;
        }
        out.push(e);
    }
    out.extend(v6_halves);
    out
}
