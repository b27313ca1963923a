//! How long a policy takes to apply: from scratch at start-up, and a
//! one-rule change on top (the live-update issue's goals: a full 100,000-rule
//! apply under 1 s, a one-rule change under 50 ms).

use std::time::{Duration, Instant};

use portguard_tests::Sandbox;
use serde_json::{Value, json};

use super::{Section, median, workloads::filler_connect_rules};

/// A policy with one guard and `rules` connect rules, one /32 peer each.
/// `variant` changes exactly one rule.
pub(super) fn connect_policy(rules: usize, variant: u8) -> String {
    let mut s = String::with_capacity(rules * 80);
    s.push_str("[[guard]]\nname = \"bench\"\ncgroup = \"/bench\"\n");
    // Rule 0's peer lies outside the 10/8 block the others fill, so each
    // variant is a peer no other rule names.
    s.push_str(&format!("[[guard.connect]]\npeer = \"192.168.{variant}.1\"\nports = [5432]\n"));
    s.push_str(&filler_connect_rules(rules));
    s
}

fn apply_us(line: &Value) -> u64 {
    line["apply_us"].as_u64().unwrap_or(0)
}

struct Run {
    startup: Duration,
    full_apply_us: u64,
    change_apply_us: Vec<u64>,
    change_compile_us: Vec<u64>,
    change_reload: Vec<Duration>,
    change_written: u64,
}

fn measure(rules: usize) -> Run {
    let mut sb = Sandbox::new("bench-apply");
    sb.cgroup("/bench");
    sb.write_policy(&connect_policy(rules, 0));
    let t = Instant::now();
    sb.start_agent_with(&[]);
    let startup = t.elapsed();
    let full = sb.agent().wait_for("full apply", |l| l["message"] == "policy applied to the kernel maps");
    let mut change_apply_us = Vec::new();
    let mut change_reload = Vec::new();
    let mut change_written = 0;
    let mut change_compile_us = Vec::new();
    for round in 1..=5u8 {
        let mark = sb.agent().mark();
        let t = Instant::now();
        // A new variant each round: every change really differs from both
        // slots, so each writes one entry and deletes one.
        sb.rename_policy_over(&connect_policy(rules, round));
        let applied = sb
            .agent()
            .wait_for_after(mark, "one-rule apply", |l| l["message"] == "policy applied to the kernel maps");
        let reloaded = sb.agent().wait_for_after(mark, "reload", |l| l["message"] == "policy reloaded");
        change_reload.push(t.elapsed());
        change_compile_us.push(reloaded["compile_us"].as_u64().unwrap_or(0));
        change_apply_us.push(apply_us(&applied));
        change_written = applied["written"].as_u64().unwrap_or(0) + applied["deleted"].as_u64().unwrap_or(0);
    }
    Run {
        startup,
        full_apply_us: apply_us(&full),
        change_apply_us,
        change_compile_us,
        change_reload,
        change_written,
    }
}

pub(super) fn run() -> Section {
    let mut rows = Vec::new();
    let mut md = String::from(
        "## Applying a policy\n\n\
         One guard with N connect rules (one /32 peer each). *Start-up* is from spawning the agent to its \
         `portguard is enforcing` line (load, verify, parse, compile, apply, attach). *Full apply* and \
         *one-rule apply* are building the kernel entries, diffing them against the slot being written and \
         writing the difference (`apply_us` in the agent's log). *Re-parse* is reading, parsing and compiling \
         the whole edited file. *One-rule reload* is from renaming the edited file into place to the \
         `policy reloaded` line: the 20 ms quiet-period debounce + re-parse + apply. Medians of 5 changes, each \
         different from both slots.\n\n\
         | rules | start-up | full apply | one-rule apply | entries written | re-parse | one-rule reload (end to end) |\n\
         | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for rules in [10_000usize, 100_000] {
        let r = measure(rules);
        let change_apply = median(r.change_apply_us.iter().map(|&u| u as f64).collect());
        let change_reload = median(r.change_reload.iter().map(|d| d.as_secs_f64() * 1e3).collect());
        let reparse = median(r.change_compile_us.iter().map(|&u| u as f64 / 1e3).collect());
        md.push_str(&format!(
            "| {rules} | {:.0} ms | {:.1} ms | {:.2} ms | {} | {:.0} ms | {:.0} ms |\n",
            r.startup.as_secs_f64() * 1e3,
            r.full_apply_us as f64 / 1e3,
            change_apply / 1e3,
            r.change_written,
            reparse,
            change_reload
        ));
        rows.push(json!({
            "rules": rules,
            "startup_ms": r.startup.as_secs_f64() * 1e3,
            "full_apply_ms": r.full_apply_us as f64 / 1e3,
            "one_rule_apply_ms": change_apply / 1e3,
            "one_rule_entries_written": r.change_written,
            "one_rule_reparse_ms": reparse,
            "one_rule_reload_ms": change_reload,
        }));
    }
    Section { markdown: md, json: json!({ "policy_apply": rows }) }
}
