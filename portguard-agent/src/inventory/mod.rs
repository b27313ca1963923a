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

/// A live port's standing under a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Standing {
    pub(crate) status: Approval,
    pub(crate) guard: Option<String>,
    pub(crate) guard_cgroup: Option<String>,
    pub(crate) mode: Option<Mode>,
    pub(crate) rule: Option<RuleInfo>,
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
    let (status, rule) = match judgement {
        Judgement::Unguarded => (Approval::Unguarded, None),
        Judgement::Allowed { guard, rule } => {
            (Approval::Approved, Some(RuleInfo::new(rule, &guard.bind[rule].catalog)))
        }
        // A kernel-chosen port is allowed but was never catalogued.
        Judgement::AllowedEphemeral { .. } | Judgement::Violation { .. } => (Approval::Unapproved, None),
    };
    Standing {
        status,
        guard: guard.map(|g| g.name.clone()),
        guard_cgroup: guard.and_then(|g| g.target.cgroup().map(str::to_owned)),
        mode: guard.map(|g| g.mode),
        rule,
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
    fn paths_are_taken_relative_to_the_attach_root() {
        assert_eq!(relative_to_root("/a/b", "/"), Some("/a/b".into()));
        assert_eq!(relative_to_root("/root/a", "/root"), Some("/a".into()));
        assert_eq!(relative_to_root("/root", "/root"), Some("/".into()));
        assert_eq!(relative_to_root("/rootless/a", "/root"), None);
        assert_eq!(relative_to_root("/other", "/root"), None);
    }
}
