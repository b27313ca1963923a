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
}
