//! What a verification found: per guard, each check with its result, and
//! the text and JSON forms `portguard verify` prints.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Outcome {
    Pass,
    Fail,
    /// Not meaningful for this guard (the rules allow it, the cgroup does
    /// not exist, the host has no IPv6), or not wired yet.
    Skip,
}

impl Outcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::Skip => "skip",
        }
    }
}

/// One check: what was looked at, what had to hold, what was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Check {
    /// The kind of check: `cgroup`, `generation`, `map PG_BIND_RULES`,
    /// `hooks`, `probe refused`, `probe allowed`, ...
    pub(crate) check: String,
    /// What exactly: a cgroup, a hook, a probe attempt.
    pub(crate) subject: String,
    pub(crate) outcome: Outcome,
    pub(crate) expected: String,
    pub(crate) got: String,
}

impl Check {
    pub(crate) fn new(
        check: impl Into<String>,
        subject: impl Into<String>,
        outcome: Outcome,
        expected: impl Into<String>,
        got: impl Into<String>,
    ) -> Check {
        Check {
            check: check.into(),
            subject: subject.into(),
            outcome,
            expected: expected.into(),
            got: got.into(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct GuardReport {
    pub(crate) guard: String,
    pub(crate) mode: String,
    /// The cgroups it covers now, relative to the cgroup root.
    pub(crate) cgroups: Vec<String>,
    /// Every check passed or was skipped.
    pub(crate) verified: bool,
    pub(crate) checks: Vec<Check>,
}

impl GuardReport {
    pub(crate) fn new(guard: &str, mode: &str, cgroups: Vec<String>, checks: Vec<Check>) -> GuardReport {
        GuardReport {
            guard: guard.to_owned(),
            mode: mode.to_owned(),
            cgroups,
            verified: checks.iter().all(|c| c.outcome != Outcome::Fail),
            checks,
        }
    }

    pub(crate) fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.outcome == Outcome::Fail)
    }
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    /// Every guard and host check holds.
    pub(crate) verified: bool,
    pub(crate) generation: u64,
    pub(crate) policy: String,
    /// Seconds since the Unix epoch when the verification started.
    pub(crate) started_at: u64,
    pub(crate) duration_ms: u64,
    /// Checks that belong to no one guard: entries of unknown guards, the
    /// policy file's permissions, the audit trail's chain.
    pub(crate) host: Vec<Check>,
    pub(crate) guards: Vec<GuardReport>,
}

impl Report {
    pub(crate) fn finish(mut self) -> Report {
        self.verified =
            self.guards.iter().all(|g| g.verified) && self.host.iter().all(|c| c.outcome != Outcome::Fail);
        self
    }

    /// Every check, host ones first.
    pub(crate) fn checks(&self) -> impl Iterator<Item = &Check> {
        self.host.iter().chain(self.guards.iter().flat_map(|g| g.checks.iter()))
    }

    pub(crate) fn render_text(&self) -> String {
        let mut out = format!(
            "portguard verify: policy {} (generation {}), {} guard(s), {} ms\n",
            self.policy,
            self.generation,
            self.guards.len(),
            self.duration_ms
        );
        let line = |out: &mut String, c: &Check| {
            let mark = match c.outcome {
                Outcome::Pass => "ok  ",
                Outcome::Fail => "FAIL",
                Outcome::Skip => "skip",
            };
            out.push_str(&format!("  {mark} {}: {}", c.check, c.subject));
            match c.outcome {
                Outcome::Pass => out.push_str(&format!(" ({})\n", c.got)),
                Outcome::Skip => out.push_str(&format!(" ({})\n", c.got)),
                Outcome::Fail => out.push_str(&format!(
                    "\n         expected: {}\n         got:      {}\n",
                    c.expected, c.got
                )),
            }
        };
        if !self.host.is_empty() {
            out.push_str("host\n");
            for c in &self.host {
                line(&mut out, c);
            }
        }
        for g in &self.guards {
            let cgroups =
                if g.cgroups.is_empty() { "no cgroup now".to_owned() } else { g.cgroups.join(", ") };
            out.push_str(&format!(
                "guard {} [{}] {}: {}\n",
                g.guard,
                g.mode,
                cgroups,
                if g.verified { "verified" } else { "NOT VERIFIED" }
            ));
            for c in &g.checks {
                line(&mut out, c);
            }
        }
        out.push_str(if self.verified {
            "result: every guard holds\n"
        } else {
            "result: NOT VERIFIED (see FAIL above)\n"
        });
        out
    }
}
