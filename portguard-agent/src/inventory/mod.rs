//! The port inventory: every live port, who holds it, and whether the
//! policy approves it. `portguard scan` takes it from /proc once; the agent
//! keeps it live from kernel events (see `agent::listeners`).

pub mod procfs;
mod sock_diag;

use std::net::IpAddr;

use crate::{
    policy::{
        Policy, Proto,
        eval::{Action, Judgement},
    },
    trail::{PortStatus, RuleInfo},
};

/// A live port's standing under a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    pub status: PortStatus,
    pub guard: Option<String>,
    pub guard_cgroup: Option<String>,
    pub mode: Option<&'static str>,
    pub rule: Option<RuleInfo>,
}

/// How `policy` sees a port live in `cgroup` (relative to the attach root;
/// `None` for a cgroup outside it, which no guard covers).
/// `reported` is the guard an event named, for pod guards.
pub fn standing(
    policy: &Policy,
    cgroup: Option<&str>,
    reported: Option<&str>,
    proto: Proto,
    addr: IpAddr,
    port: u16,
) -> Standing {
    let judgement = match cgroup {
        Some(cg) => policy.judge_reported(cg, reported, Action::Bind, proto, addr, port),
        None => Judgement::Unguarded,
    };
    standing_of(judgement)
}

pub fn standing_of(judgement: Judgement<'_>) -> Standing {
    let guard = judgement.guard();
    let (status, rule) = match judgement {
        Judgement::Unguarded => (PortStatus::Unguarded, None),
        Judgement::Allowed { guard, rule } => {
            (PortStatus::Approved, Some(RuleInfo::new(rule, &guard.bind[rule].catalog)))
        }
        // A kernel-chosen port is allowed but was never catalogued.
        Judgement::AllowedEphemeral { .. } | Judgement::Violation { .. } => (PortStatus::Unapproved, None),
    };
    Standing {
        status,
        guard: guard.map(|g| g.name.clone()),
        guard_cgroup: guard.and_then(|g| g.target.cgroup().map(str::to_owned)),
        mode: guard.map(|g| g.mode.as_str()),
        rule,
    }
}

/// `path` (relative to the cgroup2 mount) relative to the attach root,
/// itself given relative to the mount; `None` when it lies outside.
pub fn relative_to_root(path: &str, root_in_mount: &str) -> Option<String> {
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
