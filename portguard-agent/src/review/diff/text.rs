//! The human form of a diff, compact enough for a pull-request comment:
//! one block per guard that changed, one line per effect, then a summary.

use std::fmt::Write as _;

use super::{
    BindAddress, Change, Effect, GuardDiff, Note, OldNew, PolicyDiff, Ports, Protos, Reason, Region,
};

pub(crate) fn render(diff: &PolicyDiff) -> String {
    let mut out = String::new();
    for g in &diff.guards {
        if g.change == Change::Unchanged && g.notes.is_empty() {
            continue;
        }
        let has_lines = !(g.opens.is_empty() && g.closes.is_empty() && g.notes.is_empty());
        out.push_str(&header(g, has_lines));
        for e in &g.opens {
            line(&mut out, "opens", &effect(e, "already allowed"));
        }
        for e in &g.closes {
            line(&mut out, "closes", &effect(e, "still allowed"));
            if matches!(e, Effect::Everything { reason: Reason::Enforce, .. }) {
                for a in &g.allowed {
                    line(&mut out, "allows", &effect(a, ""));
                }
            }
        }
        for n in &g.notes {
            line(&mut out, "note", &note(n));
        }
    }
    out.push_str(&summary(diff));
    out
}

fn line(out: &mut String, label: &str, text: &str) {
    let _ = writeln!(out, "  {label:<7} {text}");
}

fn header(g: &GuardDiff, has_lines: bool) -> String {
    let cgroup = match &g.cgroup {
        OldNew { old: Some(o), new: Some(n) } if o != n => format!("{o} -> {n}"),
        OldNew { old, new } => new.as_ref().or(old.as_ref()).cloned().unwrap_or_default(),
    };
    let mode = match (g.mode.old, g.mode.new) {
        (None, Some("audit")) => "new, audit, refuses nothing".to_owned(),
        (None, Some(m)) => format!("new, {m}"),
        (Some("audit"), None) => "removed, was audit, refused nothing".to_owned(),
        (Some(m), None) => format!("removed, was {m}"),
        (Some(o), Some(n)) if o != n => format!("{o} -> {n}"),
        (_, Some(m)) => m.to_owned(),
        (None, None) => String::new(),
    };
    let reports = if g.reports_only { "; changes what is reported only" } else { "" };
    let colon = if has_lines { ":" } else { "" };
    format!("guard {:?} (cgroup {cgroup}, {mode}{reports}){colon}\n", g.name)
}

/// One effect; `unchanged` says how its `except` regions read ("already
/// allowed" in opens, "still allowed" in closes).
fn effect(e: &Effect, unchanged: &str) -> String {
    let except = |ports: &Ports, except: &[Region]| {
        if except.is_empty() {
            return String::new();
        }
        let regions: Vec<String> = except.iter().map(|r| region(r, Some(ports))).collect();
        format!(" ({} {unchanged})", regions.join("; "))
    };
    match e {
        Effect::Everything { cgroup, reason: Reason::Unguarded } => {
            format!("everything in {cgroup} (no longer guarded)")
        }
        Effect::Everything { cgroup, reason: Reason::Audit } => {
            format!("everything in {cgroup} (audit: reported, not refused)")
        }
        Effect::Everything { cgroup, reason: Reason::Enforce } => {
            format!("everything in {cgroup} except what the guard lists")
        }
        Effect::EphemeralBind => "bind to port 0, kernel-chosen (allow_ephemeral_bind)".to_owned(),
        Effect::RawSockets => "raw, SCTP and packet sockets (allow_raw_sockets)".to_owned(),
        Effect::Bind { address, proto, ports, except: ex } => {
            let on = match address {
                BindAddress::Any => "any address".to_owned(),
                BindAddress::Ip(ip) => ip.to_string(),
            };
            format!("bind {proto} {ports} on {on}{}", except(ports, ex))
        }
        Effect::Connect { peer, proto, ports, except: ex } => {
            format!("connect {proto} {peer} ports {ports}{}", except(ports, ex))
        }
        Effect::ConnectName { name, proto, ports } => format!("connect {proto} name {name} ports {ports}"),
        Effect::Inbound { address, from, proto, ports, except: ex } => {
            // The kernel's op names: a TCP connection is accepted, a UDP
            // datagram received.
            let op = match proto {
                Protos::Tcp => "accept",
                Protos::Udp => "receive",
                Protos::Both => "accept/receive",
            };
            let on = match address {
                BindAddress::Any => String::new(),
                BindAddress::Ip(ip) => format!(" on {ip}"),
            };
            format!("{op} {proto} {ports}{on} from {from}{}", except(ports, ex))
        }
    }
}

/// "10.0.1.0/24", or "10.0.1.0/24 ports 80" when only some of `whole` is meant.
fn region(r: &Region, whole: Option<&Ports>) -> String {
    let at = if r.at == "any" { "any address" } else { &r.at };
    if whole == Some(&r.ports) { at.to_owned() } else { format!("{at} ports {}", r.ports) }
}

fn note(n: &Note) -> String {
    let by = |by: &[Region]| by.iter().map(|r| region(r, None)).collect::<Vec<_>>().join(" and ");
    match n {
        Note::Shadowed { rule, by: b } => format!("{} is shadowed by {}", effect(rule, ""), by(b)),
        Note::StillAllowed { rule, by: b } => {
            format!("{} is no longer listed but still allowed by broader {}", effect(rule, ""), by(b))
        }
        Note::NameMeetsNetworks { rule, networks } => format!(
            "{} and {} may overlap: it depends on DNS answers, not decided here",
            effect(rule, ""),
            networks.iter().map(|r| region(r, None)).collect::<Vec<_>>().join(" and ")
        ),
        Note::ResolversChanged { gained, lost } => {
            let mut parts = Vec::new();
            if !gained.is_empty() {
                parts.push(format!("names are now also learned from resolvers at {}", gained.join(", ")));
            }
            if !lost.is_empty() {
                parts.push(format!(
                    "resolvers at {} are no longer trusted: every address learned before stops counting \
                     until the workloads resolve again",
                    lost.join(", ")
                ));
            }
            parts.join("; ")
        }
        Note::AgentResolves { gained, lost } => {
            let mut parts = Vec::new();
            if !gained.is_empty() {
                parts.push(format!(
                    "the agent now resolves {} itself: their addresses open without the workload's own lookup",
                    gained.join(", ")
                ));
            }
            if !lost.is_empty() {
                parts.push(format!("the agent no longer resolves {}", lost.join(", ")));
            }
            parts.join("; ")
        }
    }
}

fn summary(diff: &PolicyDiff) -> String {
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    if diff.is_empty() {
        let reports = diff.guards.iter().filter(|g| g.reports_only && g.change == Change::Changed).count();
        return match reports {
            0 => "no change in what is allowed\n".to_owned(),
            n => format!(
                "no change in what is allowed; what is reported changes for {}\n",
                plural(n, "audit guard")
            ),
        };
    }
    let guards = diff
        .guards
        .iter()
        .filter(|g| !g.reports_only && (!g.opens.is_empty() || !g.closes.is_empty()))
        .count();
    format!(
        "summary: {}, {} across {}\n",
        plural(diff.summary.opens, "open"),
        plural(diff.summary.closes, "close"),
        plural(guards, "guard")
    )
}
