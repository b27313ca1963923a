//! The catalog side of a policy: every rule should say who owns it and why
//! it exists, and an approval with an end date stops counting after it.
//!
//! Findings never change what the kernel enforces. `portguard check` prints
//! them as warnings; `check --strict` fails on them, so CI can hold every
//! open port to an owner, a purpose and a live approval. A bind rule's
//! `from` (who may reach its ports) is part of its entry: an approved rule
//! without one is pointed out, as a reminder.

use serde::Serialize;

use super::{Policy, Source, validate::Catalog};

/// An approval this close to its end is flagged (but does not fail --strict).
pub(crate) const EXPIRY_WARNING_DAYS: i64 = 14;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Finding {
    pub guard: String,
    /// "bind" or "connect".
    pub rule_kind: &'static str,
    /// 0-based position among the guard's rules of that kind.
    pub rule_index: usize,
    pub line: usize,
    pub column: usize,
    #[serde(flatten)]
    pub kind: FindingKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "finding", rename_all = "snake_case")]
pub(crate) enum FindingKind {
    /// The field is absent, empty, or still a TODO marker.
    Missing {
        field: &'static str,
    },
    Expired {
        expires: String,
    },
    ExpiresSoon {
        expires: String,
        days_left: i64,
    },
    /// An approved bind rule (`approved_by`) without `from`: its approval
    /// does not say who may reach the port. A warning, also under
    /// `--strict`: policies approved before `from` existed must keep
    /// passing, and `from = "any"` states a public port.
    AudienceUnstated,
}

impl Finding {
    /// Whether `check --strict` fails on it. A near expiry is a reminder.
    pub(crate) fn fails_strict(&self) -> bool {
        !matches!(self.kind, FindingKind::ExpiresSoon { .. } | FindingKind::AudienceUnstated)
    }

    pub(crate) fn message(&self) -> String {
        let what = match &self.kind {
            FindingKind::Missing { field } => format!("has no {field}"),
            FindingKind::Expired { expires } => format!("approval expired on {expires}"),
            FindingKind::ExpiresSoon { expires, days_left } => {
                format!("approval expires on {expires} ({days_left} days left)")
            }
            FindingKind::AudienceUnstated => {
                "is approved but does not say who may reach its ports (add from; from = \"any\" for every peer)"
                    .to_owned()
            }
        };
        format!("guard {:?}: {} rule #{} {what}", self.guard, self.rule_kind, self.rule_index + 1)
    }
}

/// A catalog value that is empty or still says TODO was never filled in;
/// `portguard suggest` writes TODO markers exactly so this catches them.
pub(crate) fn is_unfilled(value: &Option<String>) -> bool {
    value.as_deref().map(str::trim).is_none_or(|v| v.is_empty() || v.to_ascii_uppercase().starts_with("TODO"))
}

pub(crate) fn findings(src: &Source, policy: &Policy, today: time::Date) -> Vec<Finding> {
    let mut out = Vec::new();
    for g in &policy.guards {
        let rules = g
            .bind
            .iter()
            .enumerate()
            .map(|(i, r)| ("bind", i, &r.catalog, r.span.start, r.from.is_some()))
            .chain(g.connect.iter().enumerate().map(|(i, r)| ("connect", i, &r.catalog, r.span.start, true)));
        for (rule_kind, rule_index, catalog, offset, audience_stated) in rules {
            let (line, column) = super::line_col(src.text, offset);
            let finding = |kind| Finding { guard: g.name.clone(), rule_kind, rule_index, line, column, kind };
            for kind in rule_findings(catalog, today) {
                out.push(finding(kind));
            }
            if !audience_stated && !is_unfilled(&catalog.approved_by) {
                out.push(finding(FindingKind::AudienceUnstated));
            }
        }
    }
    out
}

fn rule_findings(c: &Catalog, today: time::Date) -> Vec<FindingKind> {
    let mut out = Vec::new();
    if is_unfilled(&c.owner) {
        out.push(FindingKind::Missing { field: "owner" });
    }
    if is_unfilled(&c.purpose) {
        out.push(FindingKind::Missing { field: "purpose" });
    }
    if let Some(expires) = c.expires {
        let days_left = (expires.0 - today).whole_days();
        if days_left < 0 {
            out.push(FindingKind::Expired { expires: expires.to_string() });
        } else if days_left <= EXPIRY_WARNING_DAYS {
            out.push(FindingKind::ExpiresSoon { expires: expires.to_string(), days_left });
        }
    }
    out
}

/// Today in UTC, the calendar approvals are written in.
pub(crate) fn today() -> time::Date {
    time::OffsetDateTime::now_utc().date()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_approved_port_should_say_who_may_reach_it() {
        let text = r#"
[[guard]]
name = "db"
cgroup = "/db"
  [[guard.bind]]
  ports = [5432]
  owner = "data"
  purpose = "PostgreSQL"
  approved_by = "sec"
  [[guard.bind]]
  ports = [443]
  owner = "web"
  purpose = "public site"
  approved_by = "sec"
  from = "any"
  [[guard.bind]]
  ports = [8080]
  owner = "web"
  purpose = "debug"
"#;
        let (p, _) = super::super::parse_and_compile("p.toml", text).unwrap();
        let today = time::Date::from_calendar_date(2026, time::Month::December, 1).unwrap();
        let f = findings(&Source { file: "p.toml", text }, &p, today);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!((f[0].rule_index, &f[0].kind, f[0].line), (0, &FindingKind::AudienceUnstated, 6));
        assert!(!f[0].fails_strict(), "a reminder: policies from before from still pass --strict");
        assert_eq!(
            f[0].message(),
            "guard \"db\": bind rule #1 is approved but does not say who may reach its ports (add from; from = \"any\" for every peer)"
        );
    }
}
