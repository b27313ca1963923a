//! Checks across fields, and the validated policy the rest of the agent uses.

use std::{collections::HashMap, hash::Hash, net::IpAddr, ops::Range};

use ipnet::IpNet;
use portguard_common::{MAX_CGROUP_DEPTH, MAX_GUARDS};

use super::{
    PolicyError, Source,
    dns_name::Wildcard,
    model::{self, Expiry, Mode, PodSelector, PortSpec, Proto},
};

/// A policy that passed every check.
#[derive(Debug, Clone)]
pub struct Policy {
    pub guards: Vec<GuardSpec>,
}

impl Policy {
    /// Guards that select Kubernetes pods (and so need the API).
    pub fn pod_guards(&self) -> impl Iterator<Item = &GuardSpec> {
        self.guards.iter().filter(|g| matches!(g.target, Target::Pods(_)))
    }
}

/// What a guard covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One cgroup, by its normalised path relative to the attach root
    /// ("/a/b", or "/").
    Cgroup(String),
    /// Every pod on this node the selector matches, each by its pod-level
    /// cgroup (which holds all of the pod's containers).
    Pods(PodSelector),
}

impl Target {
    pub fn cgroup(&self) -> Option<&str> {
        match self {
            Target::Cgroup(c) => Some(c),
            Target::Pods(_) => None,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Cgroup(c) => write!(f, "cgroup {c}"),
            Target::Pods(sel) => write!(f, "pods {sel}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct GuardSpec {
    pub name: String,
    pub target: Target,
    /// The unit name when the guard was written with `unit = ...`.
    pub unit: Option<String>,
    pub mode: Mode,
    pub allow_ephemeral_bind: bool,
    pub allow_raw_sockets: bool,
    pub bind: Vec<BindRuleSpec>,
    pub connect: Vec<ConnectRuleSpec>,
}

/// Who owns a rule's port or peer, why it exists, and who approved it until
/// when. Informational for the kernel; `portguard check --strict` enforces it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    pub owner: Option<String>,
    pub purpose: Option<String>,
    pub approved_by: Option<String>,
    pub ticket: Option<String>,
    pub expires: Option<Expiry>,
}

#[derive(Debug, Clone)]
pub struct BindRuleSpec {
    pub ports: Vec<PortSpec>,
    pub proto: Proto,
    pub address: Option<IpAddr>,
    /// Peers that may reach the rule's ports; `None`: any peer. Never an
    /// empty list (refused), so "nobody" cannot be written by accident.
    pub from: Option<Vec<IpNet>>,
    pub catalog: Catalog,
    /// Where the rule is, for compile-time errors and catalog findings.
    pub span: std::ops::Range<usize>,
}

#[derive(Debug, Clone)]
pub struct ConnectRuleSpec {
    pub peers: Vec<IpNet>,
    /// DNS names and wildcard patterns (normalised, as `NamePattern`
    /// displays them): the addresses a workload learns for them from DNS
    /// answers, while the answers last.
    pub names: Vec<String>,
    /// `resolve = "agent"`: the agent resolves `names` itself, periodically,
    /// and installs the answers for the guard's workloads as if they had
    /// received them (marked as the agent's).
    pub agent_resolves: bool,
    pub ports: Vec<PortSpec>,
    pub proto: Proto,
    pub catalog: Catalog,
    pub span: std::ops::Range<usize>,
}

pub(super) fn validate(src: &Source, raw: model::PolicyFile) -> Result<Policy, PolicyError> {
    check_version(src, raw.version.as_ref())?;
    check_guard_count(src, raw.guards.len())?;
    let mut claims = Claims::default();
    let guards = raw.guards.into_iter().map(|g| guard(src, g, &mut claims)).collect::<Result<_, _>>()?;
    Ok(Policy { guards })
}

fn check_version(src: &Source, version: Option<&toml::Spanned<u32>>) -> Result<(), PolicyError> {
    if let Some(v) = version
        && *v.get_ref() != 1
    {
        return Err(src.error_at(
            Some(v.span()),
            format!("version: unsupported policy version {} (this portguard reads version 1)", v.get_ref()),
        ));
    }
    Ok(())
}

fn check_guard_count(src: &Source, count: usize) -> Result<(), PolicyError> {
    if count > MAX_GUARDS as usize {
        return Err(src.error_at(None, format!("{count} guards; portguard holds at most {MAX_GUARDS}")));
    }
    Ok(())
}

/// What the guards checked so far hold, each by one guard only: their
/// names, cgroups and pod selectors, with the guard's name and where it is.
#[derive(Default)]
struct Claims {
    names: HashMap<String, (String, usize)>,
    cgroups: HashMap<String, (String, usize)>,
    selectors: HashMap<PodSelector, (String, usize)>,
}

/// Records that guard `name`, whose name starts at byte `at`, holds `key`.
/// Returns the guard that held it first and the line that guard is on.
fn claim<K: Eq + Hash>(
    src: &Source,
    held: &mut HashMap<K, (String, usize)>,
    key: K,
    name: &str,
    at: usize,
) -> Option<(String, usize)> {
    let (first, first_at) = held.insert(key, (name.to_owned(), at))?;
    Some((first, super::line_col(src.text, first_at).0))
}

fn guard(src: &Source, g: model::Guard, claims: &mut Claims) -> Result<GuardSpec, PolicyError> {
    let name = guard_name(src, &g.name, claims)?;
    let name_span = g.name.span();
    let (target, unit) = target(src, &name, &g)?;
    one_guard_per_target(src, &name, name_span, &target, claims)?;
    let bind = bind_rules(src, &name, g.bind)?;
    let connect = connect_rules(src, &name, g.connect)?;
    Ok(GuardSpec {
        name,
        target,
        unit,
        mode: g.mode,
        allow_ephemeral_bind: g.allow_ephemeral_bind,
        allow_raw_sockets: g.allow_raw_sockets,
        bind,
        connect,
    })
}

/// A guard's name: non-empty, in a small character set, and unique.
fn guard_name(
    src: &Source,
    name: &toml::Spanned<String>,
    claims: &mut Claims,
) -> Result<String, PolicyError> {
    let (name_span, name) = (name.span(), name.get_ref().clone());
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return Err(src.error_at(
            Some(name_span),
            format!("guard name {name:?} must be non-empty and use only A-Z a-z 0-9 - _ ."),
        ));
    }
    if let Some((_, line)) = claim(src, &mut claims.names, name.clone(), &name, name_span.start) {
        return Err(src.error_at(
            Some(name_span),
            format!("guard {name:?}: duplicate guard name (first defined at line {line})"),
        ));
    }
    Ok(name)
}

/// What a guard covers, from exactly one of `cgroup`, `unit` or `pods`, and
/// the unit's name when it was given as one.
fn target(src: &Source, name: &str, g: &model::Guard) -> Result<(Target, Option<String>), PolicyError> {
    Ok(match (&g.cgroup, &g.unit, &g.pods) {
        (Some(c), None, None) => (Target::Cgroup(normalise_cgroup(src, name, c)?), None),
        (None, Some(u), None) => (Target::Cgroup(unit_cgroup(src, name, u)?), Some(u.get_ref().clone())),
        (None, None, Some(p)) => {
            if p.get_ref().is_empty() {
                return Err(src.error_at(
                    Some(p.span()),
                    format!(
                        "guard {name:?}: pods selects every pod; give a namespace, labels, or both (a cgroup guard on /kubepods.slice covers every pod)"
                    ),
                ));
            }
            (Target::Pods(p.get_ref().clone()), None)
        }
        (None, None, None) => {
            return Err(src.error_at(
                Some(g.name.span()),
                format!(
                    "guard {name:?}: missing cgroup (a cgroup path), unit (a systemd unit) or pods (a pod selector)"
                ),
            ));
        }
        _ => {
            // Point at the second of the keys given.
            let spans = [
                g.cgroup.as_ref().map(|c| c.span()),
                g.unit.as_ref().map(|u| u.span()),
                g.pods.as_ref().map(|p| p.span()),
            ];
            let second = spans.into_iter().flatten().nth(1);
            return Err(src.error_at(
                second,
                format!("guard {name:?}: give exactly one of cgroup, unit or pods, not both"),
            ));
        }
    })
}

/// One guard per cgroup, and one per pod selector.
fn one_guard_per_target(
    src: &Source,
    name: &str,
    name_span: Range<usize>,
    target: &Target,
    claims: &mut Claims,
) -> Result<(), PolicyError> {
    let at = name_span.start;
    let first = match target {
        Target::Cgroup(cgroup) => claim(src, &mut claims.cgroups, cgroup.clone(), name, at),
        Target::Pods(sel) => claim(src, &mut claims.selectors, sel.clone(), name, at),
    };
    let Some((other, line)) = first else { return Ok(()) };
    let message = match target {
        Target::Cgroup(cgroup) => format!(
            "guard {name:?}: cgroup {cgroup} is already guarded by {other:?} (line {line}); one guard per cgroup"
        ),
        Target::Pods(sel) => format!(
            "guard {name:?}: pods {sel} are already selected by {other:?} (line {line}); one guard per pod"
        ),
    };
    Err(src.error_at(Some(name_span), message))
}

/// Bind rules, each with at least one port.
fn bind_rules(
    src: &Source,
    name: &str,
    rules: Vec<model::BindRule>,
) -> Result<Vec<BindRuleSpec>, PolicyError> {
    rules
        .into_iter()
        .map(|r| {
            let span = r.ports.span();
            if r.ports.get_ref().is_empty() {
                return Err(
                    src.error_at(Some(span), format!("guard {name:?}: bind rule with an empty ports list"))
                );
            }
            let address = r.address.map(|a| a.into_inner());
            let from = match r.from {
                None => None,
                Some(from) => Some(from_peers(src, name, address, from)?),
            };
            Ok(BindRuleSpec {
                ports: r.ports.into_inner(),
                proto: r.proto,
                address,
                from,
                catalog: catalog(r.owner, r.purpose, r.approved_by, r.ticket, r.expires),
                span,
            })
        })
        .collect()
}

/// A bind rule's `from`: at least one peer, and at least one that can
/// reach the rule's address. A socket bound to an IPv4 address receives
/// only IPv4 packets, one bound to an IPv6 address (not v4-mapped) only
/// IPv6 ones; a `from` that lists only the other family describes a rule
/// that can never receive, which is a mistake, not a policy. Every bind
/// rule can receive otherwise (a TCP port listens, a UDP port receives),
/// so no other rule is refused.
fn from_peers(
    src: &Source,
    name: &str,
    address: Option<IpAddr>,
    from: toml::Spanned<model::Peers>,
) -> Result<Vec<IpNet>, PolicyError> {
    let span = from.span();
    let from = from.into_inner();
    if let Some(pattern) = from.names.first() {
        return Err(src.error_at(
            Some(span),
            format!(
                "guard {name:?}: from takes addresses and networks, not names (\"{pattern}\"): inbound peers are judged by source address"
            ),
        ));
    }
    // v4-mapped networks are judged as the IPv4 networks they stand for,
    // as the kernel judges a v4 packet to a dual-stack socket.
    let mut peers: Vec<IpNet> = from.nets.into_iter().map(unmap).collect();
    peers.sort();
    peers.dedup();
    if peers.is_empty() {
        return Err(src.error_at(
            Some(span),
            format!(
                "guard {name:?}: bind rule with an empty from list (leave from out to let any peer reach the port)"
            ),
        ));
    }
    let only_v4 = match address.map(canonical_ip) {
        Some(IpAddr::V4(_)) => Some(true),
        Some(IpAddr::V6(_)) => Some(false),
        None => None,
    };
    if let Some(v4) = only_v4
        && !peers.iter().any(|p| matches!(p, IpNet::V4(_)) == v4)
    {
        let (bound, listed) = if v4 { ("IPv4", "IPv6") } else { ("IPv6", "IPv4") };
        return Err(src.error_at(
            Some(span),
            format!(
                "guard {name:?}: from lists only {listed} peers, but the rule's address is {bound}: the port could never be reached"
            ),
        ));
    }
    Ok(peers)
}

/// `::ffff:a.b.c.d/n` (n >= 96) as `a.b.c.d/(n - 96)`.
fn unmap(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(n) if n.prefix_len() >= 96 => match n.network().to_ipv4_mapped() {
            Some(v4) => IpNet::V4(ipnet::Ipv4Net::new(v4, n.prefix_len() - 96).expect("prefix <= 32")),
            None => net,
        },
        _ => net,
    }
}

/// A v4-mapped IPv6 address as the IPv4 address it stands for.
fn canonical_ip(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    }
}

/// Connect rules, each with at least one peer and one port.
fn connect_rules(
    src: &Source,
    name: &str,
    rules: Vec<model::ConnectRule>,
) -> Result<Vec<ConnectRuleSpec>, PolicyError> {
    rules
        .into_iter()
        .map(|r| {
            let span = r.peer.span();
            if r.peer.get_ref().is_empty() {
                return Err(
                    src.error_at(Some(span), format!("guard {name:?}: connect rule with an empty peer list"))
                );
            }
            if r.ports.get_ref().is_empty() {
                return Err(src.error_at(
                    Some(r.ports.span()),
                    format!(
                        "guard {name:?}: connect rule with an empty ports list (use \"any\" for every port)"
                    ),
                ));
            }
            let peers = r.peer.into_inner();
            let agent_resolves = match &r.resolve {
                None => false,
                Some(v) if v.get_ref() == "workload" => false,
                Some(v) if v.get_ref() == "agent" => {
                    if peers.names.is_empty() {
                        return Err(src.error_at(
                            Some(v.span()),
                            format!("guard {name:?}: resolve = \"agent\" on a rule without DNS names"),
                        ));
                    }
                    if let Some(p) = peers.names.iter().find(|p| p.wildcard != Wildcard::None) {
                        return Err(src.error_at(
                            Some(v.span()),
                            format!(
                                "guard {name:?}: the agent cannot resolve the pattern \"{p}\": list the names it stands for, or let the workload resolve them"
                            ),
                        ));
                    }
                    true
                }
                Some(v) => {
                    return Err(src.error_at(
                        Some(v.span()),
                        format!(
                            "guard {name:?}: resolve is \"workload\" (the default) or \"agent\", not {:?}",
                            v.get_ref()
                        ),
                    ));
                }
            };
            Ok(ConnectRuleSpec {
                peers: peers.nets,
                names: peers.names.iter().map(ToString::to_string).collect(),
                agent_resolves,
                ports: r.ports.into_inner(),
                proto: r.proto,
                catalog: catalog(r.owner, r.purpose, r.approved_by, r.ticket, r.expires),
                span,
            })
        })
        .collect()
}

fn catalog(
    owner: Option<String>,
    purpose: Option<String>,
    approved_by: Option<String>,
    ticket: Option<String>,
    expires: Option<toml::Spanned<Expiry>>,
) -> Catalog {
    Catalog { owner, purpose, approved_by, ticket, expires: expires.map(toml::Spanned::into_inner) }
}

/// "/a/b" stays "/a/b"; "a/b", "/a/../b", "/a//b" and "/a/./b" are refused:
/// a guard must name one cgroup unambiguously.
fn normalise_cgroup(src: &Source, guard: &str, c: &toml::Spanned<String>) -> Result<String, PolicyError> {
    let path = c.get_ref();
    let err = |why: &str| src.error_at(Some(c.span()), format!("guard {guard:?}: cgroup {path:?} {why}"));
    if !path.starts_with('/') {
        return Err(err("must be an absolute path such as \"/system.slice/nginx.service\""));
    }
    if path == "/" {
        return Ok(path.clone());
    }
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    if parts.iter().any(|p| p.is_empty() || *p == "." || *p == "..") {
        return Err(err("must not contain empty, \".\" or \"..\" components"));
    }
    if parts.len() >= MAX_CGROUP_DEPTH {
        return Err(err(&format!("is deeper than portguard follows ({} levels)", MAX_CGROUP_DEPTH - 1)));
    }
    Ok(format!("/{}", parts.join("/")))
}

/// systemd places a unit's cgroup by its type: services, sockets and scopes
/// of the system manager live in system.slice; a slice "a-b.slice" nests as
/// "/a.slice/a-b.slice".
fn unit_cgroup(src: &Source, guard: &str, u: &toml::Spanned<String>) -> Result<String, PolicyError> {
    let unit = u.get_ref();
    let bad = |why: &str| src.error_at(Some(u.span()), format!("guard {guard:?}: unit {unit:?} {why}"));
    if unit.is_empty() || unit.contains('/') {
        return Err(bad("is not a unit name"));
    }
    if let Some(stem) = unit.strip_suffix(".slice") {
        let mut path = String::new();
        let mut prefix = String::new();
        for part in stem.split('-') {
            if part.is_empty() {
                return Err(bad("is not a valid slice name"));
            }
            if !prefix.is_empty() {
                prefix.push('-');
            }
            prefix.push_str(part);
            path.push_str(&format!("/{prefix}.slice"));
        }
        return Ok(path);
    }
    if [".service", ".scope", ".socket"].iter().any(|s| unit.ends_with(s)) {
        return Ok(format!("/system.slice/{unit}"));
    }
    Err(bad("must end in .service, .socket, .scope or .slice"))
}
