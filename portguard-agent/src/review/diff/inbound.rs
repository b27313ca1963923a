//! Who may reach the ports a guard approves (`from` on bind rules), and
//! how a change moves it: "opens accept tcp 5432 from 10.0.2.0/24".
//!
//! A port newly approved without `from` (or with `from = "any"`) is
//! reported by its bind line alone: reachable by every peer is what a bind
//! line means. A port newly approved with `from` gets an inbound line
//! naming its audience too; a port approved before and after gets inbound
//! lines for the peers that gain or lose reach. Lines on one address are
//! about the ports that address's own rules approve where no address-less
//! rule does (in OLD or NEW); the address-less lines are about every other
//! (address, port).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use ipnet::IpNet;

use super::{
    BindAddress, Effect, Peer, Ports, Region,
    allowed::{RuleChanges, Transport},
};

/// Who may reach a port: every peer, or these networks (none inside
/// another, so that two ways of writing one audience compare equal).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Audience {
    Any,
    Nets(Vec<IpNet>),
}

fn everything() -> [IpNet; 2] {
    ["0.0.0.0/0".parse().expect("a valid network"), "::/0".parse().expect("a valid network")]
}

impl Audience {
    fn of(from: Option<&[IpNet]>) -> Audience {
        let Some(from) = from else { return Audience::Any };
        let nets = outermost(from);
        if everything().iter().all(|n| nets.contains(n)) { Audience::Any } else { Audience::Nets(nets) }
    }

    fn nets(&self) -> Vec<IpNet> {
        match self {
            Audience::Any => everything().to_vec(),
            Audience::Nets(n) => n.clone(),
        }
    }
}

/// The networks of `nets` that no other of them contains, sorted.
fn outermost(nets: &[IpNet]) -> Vec<IpNet> {
    let set: BTreeSet<IpNet> = nets.iter().copied().collect();
    set.iter().filter(|n| !set.iter().any(|o| o != *n && o.contains(*n))).copied().collect()
}

/// Bind rules of one protocol by audience: ports address-less rules
/// approve, and ports rules for one address approve.
#[derive(Debug, Default)]
pub(super) struct ReachTable {
    any: BTreeMap<Audience, Ports>,
    at: BTreeMap<IpAddr, BTreeMap<Audience, Ports>>,
}

impl ReachTable {
    /// `address` canonical (v4-mapped as IPv4), as the bind table keys it.
    pub(super) fn add(&mut self, address: Option<IpAddr>, from: Option<&[IpNet]>, ports: &Ports) {
        let table = match address {
            None => &mut self.any,
            Some(ip) => self.at.entry(ip).or_default(),
        };
        table.entry(Audience::of(from)).or_default().add(ports);
    }

    fn any_at(&self, port: u16) -> Option<&Audience> {
        audience_in(&self.any, port)
    }

    fn listed_at(&self, ip: &IpAddr, port: u16) -> Option<&Audience> {
        self.at.get(ip).and_then(|t| audience_in(t, port))
    }

    /// The audience of `port` on `ip`, found as the kernel finds the rule:
    /// address-less rules first.
    fn at(&self, ip: &IpAddr, port: u16) -> Option<&Audience> {
        self.any_at(port).or_else(|| self.listed_at(ip, port))
    }

    /// Whether `ip`'s own rules decide `port` (no address-less rule does).
    fn own(&self, ip: &IpAddr, port: u16) -> bool {
        self.any_at(port).is_none() && self.listed_at(ip, port).is_some()
    }

    fn tables(&self) -> impl Iterator<Item = &BTreeMap<Audience, Ports>> {
        std::iter::once(&self.any).chain(self.at.values())
    }
}

fn audience_in(table: &BTreeMap<Audience, Ports>, port: u16) -> Option<&Audience> {
    table.iter().find(|(_, p)| p.contains(port)).map(|(a, _)| a)
}

/// Peers `after` admits that `before` does not, as networks of `after`
/// with the networks of `before` inside them (which do not change).
/// `None` is a port no rule approves; a port newly approved for any peer
/// is left to its bind line.
fn gained(before: Option<&Audience>, after: Option<&Audience>) -> Vec<(IpNet, Vec<IpNet>)> {
    let Some(after) = after else { return Vec::new() };
    let Some(before) = before else {
        return match after {
            Audience::Any => Vec::new(),
            Audience::Nets(nets) => nets.iter().map(|n| (*n, Vec::new())).collect(),
        };
    };
    let (before, after) = (before.nets(), after.nets());
    after
        .into_iter()
        .filter(|n| !before.iter().any(|o| o.contains(n)))
        .map(|n| (n, before.iter().filter(|o| n.contains(*o)).copied().collect()))
        .collect()
}

/// (address, network, unchanged networks inside it) -> ports.
type Lines = BTreeMap<(BindAddress, IpNet, Vec<IpNet>), Ports>;

/// The inbound lines of one protocol between OLD and NEW.
pub(super) fn changes(t: Transport, old: &ReachTable, new: &ReachTable, c: &mut RuleChanges) {
    // Ports where some table's audience may change: between consecutive
    // range bounds every table is constant.
    let mut bounds: BTreeSet<u32> = BTreeSet::from([1, 65536]);
    for table in old.tables().chain(new.tables()) {
        for ports in table.values() {
            for (first, last) in ports.bounds() {
                bounds.extend([u32::from(first), u32::from(last) + 1]);
            }
        }
    }
    let addresses: BTreeSet<&IpAddr> = old.at.keys().chain(new.at.keys()).collect();
    let (mut opens, mut closes) = (Lines::new(), Lines::new());
    let bounds: Vec<u32> = bounds.into_iter().collect();
    for w in bounds.windows(2) {
        let (first, last) = (w[0] as u16, (w[1] - 1) as u16);
        let segment = Ports::from_ranges(vec![(first, last)]);
        let mut note = |address: BindAddress, was: Option<&Audience>, is: Option<&Audience>| {
            for (lines, before, after) in [(&mut opens, was, is), (&mut closes, is, was)] {
                for (net, inside) in gained(before, after) {
                    lines.entry((address, net, inside)).or_default().add(&segment);
                }
            }
        };
        note(BindAddress::Any, old.any_at(first), new.any_at(first));
        for &ip in &addresses {
            if old.own(ip, first) || new.own(ip, first) {
                note(BindAddress::Ip(*ip), old.at(ip, first), new.at(ip, first));
            }
        }
    }
    let proto = t.protos();
    let effects = |lines: Lines| {
        lines.into_iter().map(move |((address, net, inside), ports)| Effect::Inbound {
            address,
            from: Peer::Net(net),
            proto,
            except: inside.iter().map(|n| Region { at: n.to_string(), ports: ports.clone() }).collect(),
            ports,
        })
    };
    c.opens.extend(effects(opens));
    c.closes.extend(effects(closes));
}
