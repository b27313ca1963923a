//! The policy's meaning in plain Rust: which guard covers a cgroup, and
//! which rule (if any) allows an operation. The kernel decides from the
//! compiled maps; this decides from the validated policy, for the tools that
//! reason about operations away from the kernel (scan, the live inventory,
//! replay, suggest). The differential test keeps its own, independent copy.

use std::net::IpAddr;

use portguard_common::Transport;

use super::{GuardSpec, Mode, Policy, Proto};

/// What a policy says about one operation.
#[derive(Debug, Clone, Copy)]
pub enum Judgement<'p> {
    /// No guard covers the cgroup: never judged.
    Unguarded,
    /// A rule allows it: `rule` indexes the guard's bind or connect rules.
    Allowed { guard: &'p GuardSpec, rule: usize },
    /// Kernel-chosen port with `allow_ephemeral_bind`.
    AllowedEphemeral { guard: &'p GuardSpec },
    /// No rule allows it: refused in enforce mode, reported in audit mode.
    Violation { guard: &'p GuardSpec },
}

impl<'p> Judgement<'p> {
    pub(crate) fn guard(&self) -> Option<&'p GuardSpec> {
        match *self {
            Judgement::Unguarded => None,
            Judgement::Allowed { guard, .. }
            | Judgement::AllowedEphemeral { guard }
            | Judgement::Violation { guard } => Some(guard),
        }
    }

    /// Whether the operation goes through (audit mode lets violations pass).
    pub(crate) fn passes(&self) -> bool {
        match self {
            Judgement::Violation { guard } => guard.mode == Mode::Audit,
            _ => true,
        }
    }

    /// Whether a rule (or no guard at all) allows it: what "approved" means.
    pub(crate) fn allowed(&self) -> bool {
        !matches!(self, Judgement::Violation { .. })
    }
}

/// The operation kinds a policy rules on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    Bind,
    /// connect() or an unconnected sendto/sendmsg: judged alike.
    Connect,
}

impl Policy {
    /// The guard covering `cgroup` (a path relative to the attach root):
    /// its nearest guarded ancestor, or itself.
    pub(crate) fn guard_for(&self, cgroup: &str) -> Option<&GuardSpec> {
        // Pod guards are found through the pods the agent follows, not by
        // path: see `guard_covering`.
        self.guards
            .iter()
            .filter_map(|g| g.target.cgroup().map(|path| (g, path)))
            .filter(|(_, path)| is_within(cgroup, path))
            .max_by_key(|(_, path)| path.len())
            .map(|(g, _)| g)
    }

    /// The guard covering `cgroup`, where a pod guard can only be known
    /// from `reported` (the guard the agent or the kernel said covered it):
    /// cgroup paths first, then a pod guard of that name.
    pub(crate) fn guard_covering(&self, cgroup: &str, reported: Option<&str>) -> Option<&GuardSpec> {
        self.guard_for(cgroup).or_else(|| {
            let name = reported?;
            self.guards.iter().find(|g| g.name == name && matches!(g.target, super::Target::Pods(_)))
        })
    }

    pub fn judge(
        &self,
        cgroup: &str,
        action: Action,
        proto: Proto,
        addr: IpAddr,
        port: u16,
    ) -> Judgement<'_> {
        self.judge_reported(cgroup, None, action, proto, addr, port)
    }

    /// `judge`, with the guard a report named (see `guard_covering`).
    pub(crate) fn judge_reported(
        &self,
        cgroup: &str,
        reported: Option<&str>,
        action: Action,
        proto: Proto,
        addr: IpAddr,
        port: u16,
    ) -> Judgement<'_> {
        match self.guard_covering(cgroup, reported) {
            None => Judgement::Unguarded,
            Some(guard) => guard.judge(action, proto, addr, port),
        }
    }
}

impl GuardSpec {
    /// `proto` is the operation's own protocol (Tcp or Udp), never Both.
    pub(crate) fn judge(&self, action: Action, proto: Proto, addr: IpAddr, port: u16) -> Judgement<'_> {
        let addr = canonical(addr);
        let covers = |p: Proto| p == proto || p == Proto::Both;
        let in_ports = |specs: &[super::PortSpec]| specs.iter().any(|s| (s.first..=s.last).contains(&port));
        let rule = match action {
            Action::Bind if port == 0 => {
                return if self.allow_ephemeral_bind {
                    Judgement::AllowedEphemeral { guard: self }
                } else {
                    Judgement::Violation { guard: self }
                };
            }
            Action::Bind => self.bind.iter().position(|r| {
                covers(r.proto) && in_ports(&r.ports) && r.address.is_none_or(|a| canonical(a) == addr)
            }),
            Action::Connect => {
                let peer = unspecified_as_loopback(addr);
                self.connect.iter().position(|r| {
                    covers(r.proto) && in_ports(&r.ports) && r.peers.iter().any(|n| n.contains(&peer))
                })
            }
        };
        match rule {
            Some(rule) => Judgement::Allowed { guard: self, rule },
            None => Judgement::Violation { guard: self },
        }
    }
}

impl GuardSpec {
    /// A connect rule that allows `proto`/`port` to the addresses the
    /// workload learned for one of `names` (names and patterns as the
    /// policy writes them, normalised): the index of the first such rule.
    pub(crate) fn allows_by_name(&self, proto: Proto, port: u16, names: &[String]) -> Option<usize> {
        self.connect.iter().position(|r| {
            (r.proto == proto || r.proto == Proto::Both)
                && r.ports.iter().any(|s| (s.first..=s.last).contains(&port))
                && r.names.iter().any(|n| names.contains(n))
        })
    }
}

impl Proto {
    /// The rule protocol an observed operation's transport is judged by;
    /// `None` for a protocol no rule can name, which no rule matches.
    pub fn of(transport: Transport) -> Option<Proto> {
        match transport {
            Transport::Tcp => Some(Proto::Tcp),
            Transport::Udp => Some(Proto::Udp),
            Transport::Other(_) => None,
        }
    }
}

impl Policy {
    /// `judge_reported` for an operation the kernel observed: a transport
    /// other than TCP and UDP matches no rule (never TCP's).
    pub fn judge_observed(
        &self,
        cgroup: &str,
        reported: Option<&str>,
        action: Action,
        transport: Transport,
        addr: IpAddr,
        port: u16,
    ) -> Judgement<'_> {
        match self.guard_covering(cgroup, reported) {
            None => Judgement::Unguarded,
            Some(guard) => guard.judge_observed(action, transport, addr, port),
        }
    }
}

impl GuardSpec {
    /// `judge` for an operation the kernel observed (see `Policy::judge_observed`).
    pub fn judge_observed(
        &self,
        action: Action,
        transport: Transport,
        addr: IpAddr,
        port: u16,
    ) -> Judgement<'_> {
        match Proto::of(transport) {
            Some(proto) => self.judge(action, proto, addr, port),
            None => Judgement::Violation { guard: self },
        }
    }
}

/// Why an inbound connection or datagram is refused: the trail's (and the
/// kernel's) reasons, one spelling.
pub(crate) use crate::trail::InboundReason;

/// What a policy says about an inbound TCP connection (its SYN) or UDP
/// datagram: the judgement (`Allowed` names the bind rule whose `from`
/// admitted the peer), and why it is refused when it is.
#[derive(Debug, Clone, Copy)]
pub struct Inbound<'p> {
    pub judgement: Judgement<'p>,
    pub(crate) refused: Option<InboundReason>,
}

impl<'p> Inbound<'p> {
    fn allowed(guard: &'p GuardSpec, rule: usize) -> Inbound<'p> {
        Inbound { judgement: Judgement::Allowed { guard, rule }, refused: None }
    }

    fn refused(guard: &'p GuardSpec, reason: InboundReason) -> Inbound<'p> {
        Inbound { judgement: Judgement::Violation { guard }, refused: Some(reason) }
    }
}

impl Policy {
    /// An inbound TCP SYN or UDP datagram from `peer` (its port does not
    /// matter) to a socket of `cgroup` bound to local `proto`, `local`,
    /// `port`: judged by the socket's guard (see `GuardSpec::judge_inbound`).
    /// `reported` as for `judge_reported`.
    pub fn judge_inbound(
        &self,
        cgroup: &str,
        reported: Option<&str>,
        proto: Proto,
        local: Option<IpAddr>,
        port: u16,
        peer: IpAddr,
    ) -> Inbound<'_> {
        match self.guard_covering(cgroup, reported) {
            None => Inbound { judgement: Judgement::Unguarded, refused: None },
            Some(guard) => guard.judge_inbound(proto, local, port, peer),
        }
    }
}

impl GuardSpec {
    /// The bind rule approving a socket bound to (`proto`, `local`,
    /// `port`), as the kernel finds it: an address-less rule first, then
    /// one for the address. Whichever it finds, the audience is the same
    /// (compile refuses rules that approve one port with different `from`).
    pub(crate) fn approving_rule(&self, proto: Proto, local: IpAddr, port: u16) -> Option<usize> {
        let local = canonical(local);
        let covers = |r: &super::BindRuleSpec| {
            (r.proto == proto || r.proto == Proto::Both)
                && r.ports.iter().any(|s| (s.first..=s.last).contains(&port))
        };
        (self.bind.iter().position(|r| covers(r) && r.address.is_none())).or_else(|| {
            self.bind.iter().position(|r| covers(r) && r.address.is_some_and(|a| canonical(a) == local))
        })
    }

    /// An inbound TCP SYN or UDP datagram from `peer` to a socket of this
    /// guard bound to (`proto`, `local`, `port`), as README's Semantics
    /// say: accepted when the rule approving the port has no `from`, or
    /// `from` holds the peer (a v4-mapped peer judged as IPv4); refused
    /// when it does not, and when no rule approves the port (a listener
    /// that went live without a judged bind receives nothing). Audit mode
    /// lets a refusal through (`Judgement::passes`).
    ///
    /// Judged as a first packet: a UDP socket also hears, for 30 s, the
    /// peers it sent to (the kernel's reply window), which is state, not
    /// policy, and not modelled here. Established connections are never
    /// judged. `local` is `None` when the socket's address is unknown (an
    /// inbound trail record carries only the port): the port's rules at
    /// any address then decide, and the peer is admitted only when every
    /// one of them admits it.
    pub(crate) fn judge_inbound(
        &self,
        proto: Proto,
        local: Option<IpAddr>,
        port: u16,
        peer: IpAddr,
    ) -> Inbound<'_> {
        let peer = canonical(peer);
        let admits = |rule: usize| {
            self.bind[rule].from.as_ref().is_none_or(|nets| nets.iter().any(|n| n.contains(&peer)))
        };
        let rule = match local {
            Some(local) => self.approving_rule(proto, local, port),
            None => {
                let approving: Vec<usize> = (0..self.bind.len())
                    .filter(|&i| {
                        let r = &self.bind[i];
                        (r.proto == proto || r.proto == Proto::Both)
                            && r.ports.iter().any(|s| (s.first..=s.last).contains(&port))
                    })
                    .collect();
                match approving.iter().find(|&&i| !admits(i)) {
                    Some(&refusing) => Some(refusing),
                    None => approving.first().copied(),
                }
            }
        };
        match rule {
            None => Inbound::refused(self, InboundReason::UnapprovedPort),
            Some(rule) if admits(rule) => Inbound::allowed(self, rule),
            Some(_) => Inbound::refused(self, InboundReason::NotFrom),
        }
    }
}

/// `path` is `dir` or lies below it.
pub(crate) fn is_within(path: &str, dir: &str) -> bool {
    dir == "/" || path == dir || path.strip_prefix(dir).is_some_and(|rest| rest.starts_with('/'))
}

/// v4-mapped v6 is judged as the v4 address it carries: the kernel judges
/// `::ffff:a.b.c.d` as `a.b.c.d`, and keys a bind rule's IPv4 address as its
/// mapped form, so the two spellings are one address.
pub(crate) fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

/// Connecting to the unspecified address reaches loopback.
fn unspecified_as_loopback(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        a => a,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
[[guard]]
name = "outer"
cgroup = "/app"
  [[guard.bind]]
  ports = [8080]
[[guard]]
name = "inner"
cgroup = "/app/db"
mode = "audit"
allow_ephemeral_bind = true
  [[guard.bind]]
  ports = [5432]
  address = "127.0.0.1"
  [[guard.connect]]
  peer = "10.0.0.0/8"
  ports = ["5000-5010"]
  proto = "both"
"#;

    fn policy() -> Policy {
        super::super::parse_and_compile("p.toml", POLICY).unwrap().0
    }

    #[test]
    fn the_nearest_guarded_ancestor_decides() {
        let p = policy();
        assert_eq!(p.guard_for("/app").unwrap().name, "outer");
        assert_eq!(p.guard_for("/app/web/x").unwrap().name, "outer");
        assert_eq!(p.guard_for("/app/db/worker").unwrap().name, "inner");
        assert!(p.guard_for("/application").is_none());
        assert!(p.guard_for("/").is_none());
    }

    #[test]
    fn rules_match_as_the_readme_says() {
        let p = policy();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let j = |cg, action, proto, addr: &str, port| p.judge(cg, action, proto, ip(addr), port);
        assert!(matches!(
            j("/app", Action::Bind, Proto::Tcp, "0.0.0.0", 8080),
            Judgement::Allowed { rule: 0, .. }
        ));
        assert!(matches!(j("/app", Action::Bind, Proto::Udp, "0.0.0.0", 8080), Judgement::Violation { .. }));
        // The inner guard's rules replace the outer's.
        assert!(!j("/app/db", Action::Bind, Proto::Tcp, "0.0.0.0", 8080).allowed());
        assert!(j("/app/db", Action::Bind, Proto::Tcp, "0.0.0.0", 8080).passes(), "audit mode lets it pass");
        assert!(j("/app/db", Action::Bind, Proto::Tcp, "::ffff:127.0.0.1", 5432).allowed());
        assert!(!j("/app/db", Action::Bind, Proto::Tcp, "::", 5432).allowed());
        assert!(matches!(
            j("/app/db", Action::Bind, Proto::Tcp, "::", 0),
            Judgement::AllowedEphemeral { .. }
        ));
        assert!(j("/app/db", Action::Connect, Proto::Udp, "10.9.9.9", 5005).allowed());
        assert!(!j("/app/db", Action::Connect, Proto::Tcp, "10.9.9.9", 5011).allowed());
        assert!(matches!(j("/elsewhere", Action::Connect, Proto::Tcp, "1.1.1.1", 443), Judgement::Unguarded));
    }

    const INBOUND: &str = r#"
[[guard]]
name = "db"
cgroup = "/db"
  [[guard.bind]]
  ports = [5432]
  from = ["10.0.1.0/24", "fd00:1::/64", "127.0.0.1"]
  [[guard.bind]]
  ports = [8080]
  proto = "both"
  [[guard.bind]]
  ports = [9000]
  address = "127.0.0.1"
  from = "127.0.0.0/8"
  [[guard.bind]]
  ports = [9000]
  address = "::1"
[[guard]]
name = "audit"
cgroup = "/audit"
mode = "audit"
  [[guard.bind]]
  ports = [53]
  proto = "udp"
  from = "10.0.0.0/8"
"#;

    #[test]
    fn inbound_follows_the_from_of_the_rule_approving_the_port() {
        let p = super::super::parse_and_compile("p.toml", INBOUND).unwrap().0;
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let j = |cg, proto, local: &str, port, peer: &str| {
            p.judge_inbound(cg, None, proto, Some(ip(local)), port, ip(peer))
        };
        let reason = |i: Inbound<'_>| (i.judgement.allowed(), i.judgement.passes(), i.refused);
        use InboundReason::*;
        // Inside from, v4-mapped judged as IPv4, IPv6 inside from.
        assert_eq!(reason(j("/db/x", Proto::Tcp, "0.0.0.0", 5432, "10.0.1.7")), (true, true, None));
        assert_eq!(reason(j("/db", Proto::Tcp, "::", 5432, "::ffff:10.0.1.7")), (true, true, None));
        assert_eq!(reason(j("/db", Proto::Tcp, "::", 5432, "fd00:1::9")), (true, true, None));
        // Loopback is an ordinary address: listed 127.0.0.1 yes, ::1 no.
        assert_eq!(reason(j("/db", Proto::Tcp, "0.0.0.0", 5432, "127.0.0.1")), (true, true, None));
        assert_eq!(reason(j("/db", Proto::Tcp, "::", 5432, "::1")), (false, false, Some(NotFrom)));
        assert_eq!(reason(j("/db", Proto::Tcp, "0.0.0.0", 5432, "10.0.2.1")), (false, false, Some(NotFrom)));
        // The rule is tcp only: a UDP socket on 5432 has no rule.
        assert_eq!(
            reason(j("/db", Proto::Udp, "0.0.0.0", 5432, "10.0.1.7")),
            (false, false, Some(UnapprovedPort))
        );
        // No from: any peer, both protocols.
        assert!(j("/db", Proto::Udp, "0.0.0.0", 8080, "192.0.2.1").judgement.allowed());
        // A listener on a port no rule approves (listen() without bind()) receives nothing.
        assert_eq!(
            reason(j("/db", Proto::Tcp, "0.0.0.0", 41000, "127.0.0.1")),
            (false, false, Some(UnapprovedPort))
        );
        // The socket's address picks the rule.
        assert!(!j("/db", Proto::Tcp, "127.0.0.1", 9000, "10.0.1.7").judgement.allowed());
        assert!(j("/db", Proto::Tcp, "::ffff:127.0.0.1", 9000, "127.0.0.5").judgement.allowed());
        assert!(j("/db", Proto::Tcp, "::1", 9000, "fd00::5").judgement.allowed());
        assert_eq!(
            reason(j("/db", Proto::Tcp, "10.0.0.1", 9000, "127.0.0.1")),
            (false, false, Some(UnapprovedPort))
        );
        // Audit mode accepts and reports.
        assert_eq!(reason(j("/audit", Proto::Udp, "0.0.0.0", 53, "192.0.2.1")), (false, true, Some(NotFrom)));
        // Unguarded sockets are never judged.
        assert!(matches!(
            j("/web", Proto::Tcp, "0.0.0.0", 5432, "192.0.2.1").judgement,
            Judgement::Unguarded
        ));
    }

    #[test]
    fn an_unknown_local_address_admits_only_what_every_rule_for_the_port_admits() {
        let p = super::super::parse_and_compile("p.toml", INBOUND).unwrap().0;
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let j = |port, peer: &str| p.judge_inbound("/db", None, Proto::Tcp, None, port, ip(peer));
        // 9000: 127.0.0.1's rule admits 127.0.0.0/8 only, ::1's rule any peer.
        assert!(j(9000, "127.0.0.9").judgement.allowed());
        assert_eq!(j(9000, "10.0.0.1").refused, Some(InboundReason::NotFrom));
        assert!(j(5432, "10.0.1.1").judgement.allowed());
        assert_eq!(j(5433, "10.0.1.1").refused, Some(InboundReason::UnapprovedPort));
    }
}
