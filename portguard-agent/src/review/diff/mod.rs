//! `portguard diff OLD NEW`: what a policy change opens and closes, per guard.
//!
//! The diff compares what each policy *allows*, not the files' text.
//! Reordering, splitting or merging rules, or editing `owner` and `purpose`,
//! changes nothing. A rule whose ports a broader rule already allows changes
//! nothing either, and is pointed out instead.
//!
//! A guard is in one of three states: absent (its cgroup is not judged),
//! audit (nothing is refused, so in effect everything is allowed) or
//! enforce (only its rules are allowed). Opens and closes follow from the
//! change of state, and between two enforce states from the rules.

mod allowed;
mod cli;
mod inbound;
mod model;
mod ports;
mod text;
mod tidy;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use self::allowed::{Allowed, rule_changes};
pub(crate) use self::cli::run;
pub(crate) use self::{
    model::{
        BindAddress, Change, Effect, GuardDiff, Note, OldNew, Peer, PolicyDiff, Protos, Reason, Region,
        Summary,
    },
    ports::Ports,
};
use crate::policy::{GuardSpec, Mode, Policy};

/// The diff between two validated policies. Guards are matched by name.
pub(crate) fn diff(old: &Policy, new: &Policy) -> PolicyDiff {
    let by_name = |p: &'_ Policy| -> BTreeMap<String, GuardSpec> {
        p.guards.iter().map(|g| (g.name.clone(), g.clone())).collect()
    };
    let (old, new) = (by_name(old), by_name(new));
    let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let guards: Vec<GuardDiff> =
        names.into_iter().map(|name| diff_guard(name, old.get(name), new.get(name))).collect();
    let counted = guards.iter().filter(|g| !g.reports_only);
    let summary = Summary {
        opens: counted.clone().map(|g| g.opens.len()).sum(),
        closes: counted.map(|g| g.closes.len()).sum(),
    };
    PolicyDiff { guards, summary }
}

fn diff_guard(name: &str, old: Option<&GuardSpec>, new: Option<&GuardSpec>) -> GuardDiff {
    let mut d = GuardDiff {
        name: name.to_owned(),
        change: match (old, new) {
            (None, _) => Change::Added,
            (_, None) => Change::Removed,
            _ => Change::Unchanged, // refined below
        },
        mode: OldNew { old: old.map(|g| g.mode.as_str()), new: new.map(|g| g.mode.as_str()) },
        cgroup: OldNew { old: old.map(covered), new: new.map(covered) },
        reports_only: false,
        opens: Vec::new(),
        closes: Vec::new(),
        allowed: Vec::new(),
        notes: Vec::new(),
    };
    let (old_rules, new_rules) = (old.map(Allowed::of), new.map(Allowed::of));
    let none = Allowed::default();
    match (old, new) {
        (Some(o), Some(n)) if o.target == n.target => {
            let (old_rules, new_rules) =
                (old_rules.as_ref().unwrap_or(&none), new_rules.as_ref().unwrap_or(&none));
            match (o.mode, n.mode) {
                (Mode::Enforce, Mode::Enforce) | (Mode::Audit, Mode::Audit) => {
                    let changes = rule_changes(old_rules, new_rules);
                    (d.opens, d.closes, d.notes) = (changes.opens, changes.closes, changes.notes);
                    d.reports_only = n.mode == Mode::Audit;
                }
                (Mode::Enforce, Mode::Audit) => {
                    d.opens.push(Effect::Everything { cgroup: covered(n), reason: Reason::Audit });
                    d.notes = rule_changes(old_rules, new_rules).new_redundancies();
                }
                (Mode::Audit, Mode::Enforce) => {
                    d.closes.push(Effect::Everything { cgroup: covered(n), reason: Reason::Enforce });
                    d.allowed = rule_changes(&none, new_rules).opens;
                    d.notes = rule_changes(old_rules, new_rules).new_redundancies();
                }
            }
        }
        // Added, removed, or moved to another cgroup: the old cgroup is no
        // longer guarded and the new one is guarded from scratch.
        _ => {
            if let Some(o) = old.filter(|o| o.mode == Mode::Enforce) {
                d.opens.push(Effect::Everything { cgroup: covered(o), reason: Reason::Unguarded });
            }
            if let Some(n) = new {
                let new_rules = new_rules.as_ref().unwrap_or(&none);
                let changes = rule_changes(&none, new_rules);
                if n.mode == Mode::Enforce {
                    d.closes.push(Effect::Everything { cgroup: covered(n), reason: Reason::Enforce });
                    d.allowed = changes.opens.clone();
                }
                d.notes = changes.new_redundancies();
            }
        }
    }
    if d.change == Change::Unchanged
        && (d.mode.old != d.mode.new
            || d.cgroup.old != d.cgroup.new
            || !d.opens.is_empty()
            || !d.closes.is_empty())
    {
        d.change = Change::Changed;
    }
    d
}

/// What a guard covers, as the report names it: a cgroup path, or the pods
/// a selector picks.
fn covered(g: &GuardSpec) -> String {
    match &g.target {
        crate::policy::Target::Cgroup(c) => c.clone(),
        pods => pods.to_string(),
    }
}
