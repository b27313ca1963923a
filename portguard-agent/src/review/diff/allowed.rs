//! What each guard effectively allows, merged so that two ways of writing
//! the same rules build the same tables, and the rule-level changes
//! between two such tables.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    ops::Bound,
};

use ipnet::IpNet;

use super::{
    BindAddress, Effect, Note, Peer, Ports, Protos, Region,
    inbound::{self, ReachTable},
    tidy::{tidy, tidy_notes},
};
use crate::policy::{GuardSpec, Proto, eval::canonical};

/// The two transport protocols rules distinguish; index into per-protocol tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Transport {
    Tcp = 0,
    Udp = 1,
}

pub(super) const TRANSPORTS: [Transport; 2] = [Transport::Tcp, Transport::Udp];

impl Transport {
    pub(super) fn of(proto: Proto) -> &'static [Transport] {
        match proto {
            Proto::Tcp => &[Transport::Tcp],
            Proto::Udp => &[Transport::Udp],
            Proto::Both => &TRANSPORTS,
        }
    }

    pub(super) fn protos(self) -> Protos {
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
pub(super) struct Allowed {
    bind: [BindTable; 2],
    connect: [PeerTable; 2],
    /// Ports per DNS name (normalised), per protocol.
    names: [BTreeMap<String, Ports>; 2],
    /// Names the agent resolves itself (`resolve = "agent"`).
    agent_names: BTreeSet<String>,
    reach: [ReachTable; 2],
    ephemeral_bind: bool,
    raw_sockets: bool,
}

impl Allowed {
    pub(super) fn of(g: &GuardSpec) -> Allowed {
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
                    Some(ip) => table.at.entry(canonical(ip)).or_default().add(&ports),
                }
                a.reach[t as usize].add(rule.address.map(canonical), rule.from.as_deref(), &ports);
            }
        }
        for rule in &g.connect {
            if rule.agent_resolves {
                a.agent_names.extend(rule.names.iter().cloned());
            }
            let ports = Ports::from_specs(&rule.ports);
            for &t in Transport::of(rule.proto) {
                for &net in &rule.peers {
                    a.connect[t as usize].add(net, &ports);
                }
                for name in &rule.names {
                    let merged = a.names[t as usize].entry(name.clone()).or_default();
                    *merged = merged.union(&ports);
                }
            }
        }
        a
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

/// The rule-level changes between two guards on one cgroup, in one mode.
#[derive(Debug, Default)]
pub(super) struct RuleChanges {
    pub(super) opens: Vec<Effect>,
    pub(super) closes: Vec<Effect>,
    pub(super) notes: Vec<Note>,
}

impl RuleChanges {
    pub(super) fn new_redundancies(self) -> Vec<Note> {
        self.notes.into_iter().filter(|n| matches!(n, Note::Shadowed { .. })).collect()
    }
}

/// What NEW's rules allow that OLD's do not (opens), and the reverse
/// (closes). Each newly allowed (address, port) is reported once, under the
/// broadest rule that allows it; narrower parts that do not change are
/// listed in the effect's `except`.
pub(super) fn rule_changes(old: &Allowed, new: &Allowed) -> RuleChanges {
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
        name_changes(t, &old.names[t as usize], &new.names[t as usize], &new.connect[t as usize], &mut c);
        inbound::changes(t, &old.reach[t as usize], &new.reach[t as usize], &mut c);
    }
    if let Some(note) = resolver_change(old, new) {
        c.notes.push(note);
    }
    let (gained, lost): (Vec<String>, Vec<String>) = (
        new.agent_names.difference(&old.agent_names).cloned().collect(),
        old.agent_names.difference(&new.agent_names).cloned().collect(),
    );
    if !gained.is_empty() || !lost.is_empty() {
        c.notes.push(Note::AgentResolves { gained, lost });
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

/// The networks a guard may send DNS queries to (udp/53).
fn resolvers(a: &Allowed) -> Vec<IpNet> {
    let udp = &a.connect[Transport::Udp as usize];
    udp.nets.iter().filter(|(_, p)| p.contains(53)).map(|(n, _)| *n).collect()
}

/// For a guard with names before and after: the resolver networks gained
/// and lost, as the kernel's resolver epoch sees them (a network is lost
/// when no network of the other side contains it).
fn resolver_change(old: &Allowed, new: &Allowed) -> Option<Note> {
    let has_names = |a: &Allowed| a.names.iter().any(|n| !n.is_empty());
    if !has_names(old) || !has_names(new) {
        return None;
    }
    let (before, after) = (resolvers(old), resolvers(new));
    let outside = |nets: &[IpNet], of: &[IpNet]| -> Vec<String> {
        crate::bpf::uncovered_resolvers(nets, of).into_iter().map(IpNet::to_string).collect()
    };
    let (gained, lost) = (outside(&after, &before), outside(&before, &after));
    (!gained.is_empty() || !lost.is_empty()).then_some(Note::ResolversChanged { gained, lost })
}

/// Names opened and closed, port by port. A name's addresses are known
/// only from DNS answers, so a changed name beside networks that allow
/// some of the same ports gets a note instead of a verdict.
fn name_changes(
    t: Transport,
    old: &BTreeMap<String, Ports>,
    new: &BTreeMap<String, Ports>,
    nets: &PeerTable,
    c: &mut RuleChanges,
) {
    let proto = t.protos();
    let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for name in names {
        let before = old.get(name).cloned().unwrap_or_default();
        let after = new.get(name).cloned().unwrap_or_default();
        for (ports, out) in [(after.minus(&before), &mut c.opens), (before.minus(&after), &mut c.closes)] {
            if ports.is_empty() {
                continue;
            }
            let networks: Vec<Region> = (nets.nets.iter())
                .filter(|(_, p)| p.overlaps(&ports))
                .map(|(n, p)| Region { at: n.to_string(), ports: p.intersect(&ports) })
                .collect();
            let rule = Effect::ConnectName { name: name.clone(), proto, ports };
            if !networks.is_empty() {
                c.notes.push(Note::NameMeetsNetworks { rule: rule.clone(), networks });
            }
            out.push(rule);
        }
    }
}
