//! Folding effects that read better as one: the same effect on 0.0.0.0/0
//! and ::/0 is one on `any` peer, and the same effect for tcp and udp is
//! one for both. Presentation only: what is allowed does not change.

use std::collections::BTreeSet;

use ipnet::IpNet;

use super::{Effect, Note, Peer, Protos, Region};

/// Sorts effects and folds pairs that read better as one: the same effect
/// on 0.0.0.0/0 and ::/0 is one on `any` peer, and the same effect for tcp
/// and udp is one for both.
pub(super) fn tidy(effects: Vec<Effect>) -> Vec<Effect> {
    let mut out = merge_any_peer(effects);
    out.sort();
    let mut out = merge_protocols(out, effect_proto, with_proto);
    out.sort();
    out
}

pub(super) fn tidy_notes(notes: Vec<Note>) -> Vec<Note> {
    let proto_of = |n: &Note| match n {
        Note::Shadowed { rule, .. }
        | Note::StillAllowed { rule, .. }
        | Note::NameMeetsNetworks { rule, .. } => effect_proto(rule),
        Note::ResolversChanged { .. } | Note::AgentResolves { .. } => None,
    };
    let with = |n: &Note, p| match n {
        Note::Shadowed { rule, by } => Note::Shadowed { rule: with_proto(rule, p), by: by.clone() },
        Note::StillAllowed { rule, by } => Note::StillAllowed { rule: with_proto(rule, p), by: by.clone() },
        Note::NameMeetsNetworks { rule, networks } => {
            Note::NameMeetsNetworks { rule: with_proto(rule, p), networks: networks.clone() }
        }
        Note::ResolversChanged { .. } | Note::AgentResolves { .. } => n.clone(),
    };
    let mut out = merge_protocols(notes, proto_of, with);
    out.sort();
    out
}

fn effect_proto(e: &Effect) -> Option<Protos> {
    match e {
        Effect::Bind { proto, .. }
        | Effect::Connect { proto, .. }
        | Effect::ConnectName { proto, .. }
        | Effect::Inbound { proto, .. } => Some(*proto),
        _ => None,
    }
}

fn with_proto(e: &Effect, p: Protos) -> Effect {
    let mut e = e.clone();
    if let Effect::Bind { proto, .. }
    | Effect::Connect { proto, .. }
    | Effect::ConnectName { proto, .. }
    | Effect::Inbound { proto, .. } = &mut e
    {
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

/// Folds a connect (or inbound) effect on 0.0.0.0/0 and one on ::/0 that
/// are otherwise the same into one on `any` (what `peer = "any"` writes).
fn merge_any_peer(effects: Vec<Effect>) -> Vec<Effect> {
    let v4_any: IpNet = "0.0.0.0/0".parse().expect("a valid network");
    let v6_any: IpNet = "::/0".parse().expect("a valid network");
    let mut out = Vec::with_capacity(effects.len());
    let mut v6_halves: Vec<Effect> = Vec::new();
    let mut rest = Vec::new();
    for e in effects {
        match peer_of(&e) {
            Some(n) if n == v6_any => v6_halves.push(e),
            _ => rest.push(e),
        }
    }
    for e in rest {
        if peer_of(&e) == Some(v4_any)
            && let Some(i) = v6_halves.iter().position(|v6| on_any(v6).0 == on_any(&e).0)
        {
            let (mut merged, mut except) = on_any(&e);
            except.extend(on_any(&v6_halves.remove(i)).1);
            except.sort();
            set_except(&mut merged, except);
            out.push(merged);
            continue;
        }
        out.push(e);
    }
    out.extend(v6_halves);
    out
}

fn peer_of(e: &Effect) -> Option<IpNet> {
    match e {
        Effect::Connect { peer: Peer::Net(n), .. } | Effect::Inbound { from: Peer::Net(n), .. } => Some(*n),
        _ => None,
    }
}

/// `e` on `any` peer without its `except`, and that `except`.
fn on_any(e: &Effect) -> (Effect, Vec<Region>) {
    let mut e = e.clone();
    let except = match &mut e {
        Effect::Connect { peer, except, .. } | Effect::Inbound { from: peer, except, .. } => {
            *peer = Peer::Any;
            std::mem::take(except)
        }
        _ => Vec::new(),
    };
    (e, except)
}

fn set_except(e: &mut Effect, regions: Vec<Region>) {
    if let Effect::Connect { except, .. } | Effect::Inbound { except, .. } = e {
        *except = regions;
    }
}
