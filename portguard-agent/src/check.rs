//! `portguard check`: validate a policy and show what it would enforce.

use std::{path::Path, process::ExitCode};

use crate::{
    EXIT_BAD_INPUT,
    policy::{self, Policy},
};

pub fn run(path: &Path) -> ExitCode {
    match policy::load(path) {
        Ok((policy, compiled)) => {
            print!("{}", describe(&policy));
            println!(
                "ok: {} guards, {} bind entries, {} connect entries",
                policy.guards.len(),
                compiled.bind_entries(),
                compiled.connect_entries()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("portguard: {e}");
            ExitCode::from(EXIT_BAD_INPUT)
        }
    }
}

/// A human summary of a policy, one line per rule.
pub fn describe(policy: &Policy) -> String {
    let mut out = String::new();
    for g in &policy.guards {
        let unit = g.unit.as_deref().map(|u| format!(" (unit {u})")).unwrap_or_default();
        out.push_str(&format!("guard {:?}: {}{unit}, mode {}\n", g.name, g.target, g.mode.as_str()));
        if g.bind.is_empty() && !g.allow_ephemeral_bind {
            out.push_str("  bind: nothing\n");
        }
        if g.allow_ephemeral_bind {
            out.push_str("  bind: port 0 (kernel-chosen)\n");
        }
        for r in &g.bind {
            let ports: Vec<String> = r.ports.iter().map(ToString::to_string).collect();
            let addr = r.address.map(|a| format!(" on {a}")).unwrap_or_default();
            out.push_str(&format!(
                "  bind {} {}{addr}{}\n",
                r.proto.as_str(),
                ports.join(","),
                catalog(&r.owner, &r.purpose)
            ));
        }
        if g.connect.is_empty() {
            out.push_str("  connect: nothing\n");
        }
        for r in &g.connect {
            let ports: Vec<String> = r.ports.iter().map(ToString::to_string).collect();
            let peers: Vec<String> = r.peers.iter().map(ToString::to_string).collect();
            out.push_str(&format!(
                "  connect {} {} ports {}{}\n",
                r.proto.as_str(),
                peers.join(","),
                ports.join(","),
                catalog(&r.owner, &r.purpose)
            ));
        }
    }
    out
}

fn catalog(owner: &Option<String>, purpose: &Option<String>) -> String {
    match (owner, purpose) {
        (None, None) => String::new(),
        (o, p) => {
            format!("  [owner: {}; purpose: {}]", o.as_deref().unwrap_or("-"), p.as_deref().unwrap_or("-"))
        }
    }
}
