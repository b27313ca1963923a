//! The port inventory: every live port, who holds it, and whether the
//! policy approves it. `portguard scan` takes it from /proc once; the agent
//! keeps it live from kernel events (`live`).

mod brief_baseline;
pub(crate) mod live;
pub(crate) mod procfs;
mod sock_diag;

use std::net::IpAddr;

use portguard_common::Transport;

use serde::{Deserialize, Serialize};

use crate::policy::{
    Catalog, Mode, Policy,
    eval::{Action, Judgement},
};

/// Whether a live port is one the policy approves: the one spelling, in
/// the trail and `scan` (`approved`...), and in the metric's label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Approval {
    /// A rule of its guard allows it.
    Approved,
    /// Its guard has no rule for it: bound before the policy, or in audit mode.
    Unapproved,
    /// No guard covers its cgroup.
    Unguarded,
}

impl Approval {
    /// As the trail and `scan` say it (the serde spelling).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Approval::Approved => "approved",
            Approval::Unapproved => "unapproved",
            Approval::Unguarded => "unguarded",
        }
    }

    /// The `approved` label of `portguard_listeners`, which alert rules
    /// match: `true`, `false` or `unguarded`.
    pub(crate) fn metric_label(self) -> &'static str {
        match self {
            Approval::Approved => "true",
            Approval::Unapproved => "false",
            Approval::Unguarded => "unguarded",
        }
    }
}

/// The rule that approves a port, with its catalog entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RuleInfo {
    /// 1-based, as `portguard check` numbers rules.
    pub(crate) number: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) owner: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) purpose: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) approved_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ticket: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) expires: Option<String>,
}

impl RuleInfo {
    pub(crate) fn new(index: usize, c: &Catalog) -> RuleInfo {
        RuleInfo {
            number: index + 1,
            owner: c.owner.clone(),
            purpose: c.purpose.clone(),
            approved_by: c.approved_by.clone(),
            ticket: c.ticket.clone(),
            expires: c.expires.map(|e| e.to_string()),
        }
    }
}

/// Who may reach a live port under the policy (README, Semantics): in
/// the trail and `scan` as `"any"`, `{"from": [...]}` or `"nobody"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Audience {
    /// Every peer: a rule without `from`, or no guard.
    Any,
    /// The `from` of the rule approving the port.
    From(Vec<ipnet::IpNet>),
    /// No rule approves the port: a TCP listener receives no connection,
    /// a UDP socket hears only the peers it sent to (the reply window).
    Nobody,
}

impl std::fmt::Display for Audience {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Audience::Any => f.write_str("any"),
            Audience::Nobody => f.write_str("nobody"),
            Audience::From(nets) => {
                f.write_str(&nets.iter().map(ToString::to_string).collect::<Vec<_>>().join(","))
            }
        }
    }
}

/// A live port's standing under a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Standing {
    pub(crate) status: Approval,
    pub(crate) guard: Option<String>,
    pub(crate) guard_cgroup: Option<String>,
    pub(crate) mode: Option<Mode>,
    pub(crate) rule: Option<RuleInfo>,
    /// Who may reach it; in audit mode, who could without being reported.
    pub(crate) audience: Audience,
}

/// How `policy` sees a port live in `cgroup` (relative to the attach root;
/// `None` for a cgroup outside it, which no guard covers).
/// `reported` is the guard an event named, for pod guards.
pub(crate) fn standing(
    policy: &Policy,
    cgroup: Option<&str>,
    reported: Option<&str>,
    proto: Transport,
    addr: IpAddr,
    port: u16,
) -> Standing {
    let judgement = match cgroup {
        Some(cg) => policy.judge_observed(cg, reported, Action::Bind, proto, addr, port),
        None => Judgement::Unguarded,
    };
    standing_of(judgement)
}

pub(crate) fn standing_of(judgement: Judgement<'_>) -> Standing {
    let guard = judgement.guard();
    let (status, rule, audience) = match judgement {
        Judgement::Unguarded => (Approval::Unguarded, None, Audience::Any),
        Judgement::Allowed { guard, rule } => (
            Approval::Approved,
            Some(RuleInfo::new(rule, &guard.bind[rule].catalog)),
            guard.bind[rule].from.clone().map_or(Audience::Any, Audience::From),
        ),
        // A kernel-chosen port is allowed but was never catalogued, and
        // no rule names who may reach it.
        Judgement::AllowedEphemeral { .. } | Judgement::Violation { .. } => {
            (Approval::Unapproved, None, Audience::Nobody)
        }
    };
    Standing {
        status,
        guard: guard.map(|g| g.name.clone()),
        guard_cgroup: guard.and_then(|g| g.target.cgroup().map(str::to_owned)),
        mode: guard.map(|g| g.mode),
        rule,
        audience,
    }
}

/// One `portguard_listeners` series.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ListenerKey {
    /// Empty for ports no guard covers.
    pub(crate) guard: String,
    pub(crate) proto: Transport,
    pub(crate) port: u16,
    pub(crate) approved: Approval,
}

/// `path` (relative to the cgroup2 mount) relative to the attach root,
/// itself given relative to the mount; `None` when it lies outside.
pub(crate) fn relative_to_root(path: &str, root_in_mount: &str) -> Option<String> {
    if root_in_mount == "/" || root_in_mount.is_empty() {
        return Some(path.to_owned());
    }
    let rest = path.strip_prefix(root_in_mount.trim_end_matches('/'))?;
    match rest {
        "" => Some("/".to_owned()),
        r if r.starts_with('/') => Some(r.to_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_port_s_audience_is_the_from_of_its_rule() {
        let (p, _) = crate::policy::parse_and_compile(
            "p.toml",
            "[[guard]]\nname = \"db\"\ncgroup = \"/db\"\nallow_ephemeral_bind = true\n[[guard.bind]]\nports = [5432]\nfrom = [\"10.0.1.0/24\", \"::1\"]\n[[guard.bind]]\nports = [80]\n",
        )
        .unwrap();
        let any: IpAddr = "0.0.0.0".parse().unwrap();
        let at = |cg: &str, port| standing(&p, Some(cg), None, Transport::Tcp, any, port).audience;
        assert_eq!(
            at("/db", 5432),
            Audience::From(vec!["10.0.1.0/24".parse().unwrap(), "::1/128".parse().unwrap()])
        );
        assert_eq!(at("/db", 5432).to_string(), "10.0.1.0/24,::1/128");
        assert_eq!(at("/db", 80), Audience::Any);
        assert_eq!(at("/db", 81), Audience::Nobody, "a listener no rule approves receives nothing");
        assert_eq!(at("/web", 81), Audience::Any, "unguarded");
        assert_eq!(
            serde_json::to_value(at("/db", 5432)).unwrap(),
            serde_json::json!({"from": ["10.0.1.0/24", "::1/128"]})
        );
        assert_eq!(serde_json::to_value(Audience::Nobody).unwrap(), serde_json::json!("nobody"));
    }

    #[test]
    fn paths_are_taken_relative_to_the_attach_root() {
        assert_eq!(relative_to_root("/a/b", "/"), Some("/a/b".into()));
        assert_eq!(relative_to_root("/root/a", "/root"), Some("/a".into()));
        assert_eq!(relative_to_root("/root", "/root"), Some("/".into()));
        assert_eq!(relative_to_root("/rootless/a", "/root"), None);
        assert_eq!(relative_to_root("/other", "/root"), None);
    }
}
