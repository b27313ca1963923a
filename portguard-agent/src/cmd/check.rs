//! `portguard check`: validate a policy, show what it would enforce, and
//! hold its catalog (owner, purpose, approval) to account.
//!
//! Exit status: 0 usable (catalog findings are warnings), 1 catalog
//! findings under `--strict`, 2 the policy cannot be used at all.

use std::path::Path;

use serde_json::json;

use super::{CmdError, EXIT_BAD_INPUT, EXIT_FINDINGS};
use crate::{
    cli::OutputFormat,
    policy::{self, Catalog, Policy, PolicyError, Source, catalog},
};

pub(super) fn run(path: &Path, strict: bool, format: OutputFormat) -> Result<(), CmdError> {
    let file = path.display().to_string();
    let loaded =
        policy::read(path).and_then(|text| policy::parse_and_compile(&file, &text).map(|p| (text, p)));
    let (text, (policy, compiled)) = match loaded {
        Ok(ok) => ok,
        Err(e) => {
            return Err(match format {
                OutputFormat::Text => CmdError::BadInput(e.to_string()),
                OutputFormat::Json => {
                    println!("{}", json!({ "ok": false, "error": error_json(&e) }));
                    CmdError::Reported(EXIT_BAD_INPUT)
                }
            });
        }
    };
    // A warning, not an error: `check` runs on drafts and CI checkouts,
    // whose owners and modes say nothing about the file the agent will
    // read. Run as root on the live file, it says what the agent refuses.
    let permissions = policy::permissions::check(path).err().map(|e| e.to_string());
    let findings = catalog::findings(&Source { file: &file, text: &text }, &policy, catalog::today());
    let failing = strict && findings.iter().any(catalog::Finding::fails_strict);
    match format {
        OutputFormat::Text => {
            print!("{}", describe(&policy));
            if let Some(p) = &permissions {
                eprintln!("warning: {p} (`portguard run` would refuse it)");
            }
            for f in &findings {
                let level = if strict && f.fails_strict() { "error" } else { "warning" };
                eprintln!("{file}:{}:{}: {level}: {}", f.line, f.column, f.message());
            }
            println!(
                "{}: {} guards, {} bind entries, {} connect entries, {} DNS name entries, {} catalog findings",
                if failing { "failed" } else { "ok" },
                policy.guards.len(),
                compiled.bind_entries(),
                compiled.connect_entries(),
                compiled.name_entries(),
                findings.len()
            );
        }
        OutputFormat::Json => {
            let report = json!({
                "ok": !failing,
                "file": file,
                "strict": strict,
                "permissions": permissions,
                "guards": policy.guards.len(),
                "bind_entries": compiled.bind_entries(),
                "connect_entries": compiled.connect_entries(),
                "dns_name_entries": compiled.name_entries(),
                "findings": findings.iter().map(|f| {
                    let mut v = serde_json::to_value(f).expect("findings serialise");
                    v["message"] = f.message().into();
                    v["fails_strict"] = f.fails_strict().into();
                    v
                }).collect::<Vec<_>>(),
            });
            println!("{report}");
        }
    }
    if failing { Err(CmdError::Reported(EXIT_FINDINGS)) } else { Ok(()) }
}

fn error_json(e: &PolicyError) -> serde_json::Value {
    json!({
        "file": e.file,
        "line": e.location.map(|l| l.0),
        "column": e.location.map(|l| l.1),
        "message": e.message,
    })
}

/// A human summary of a policy, one line per rule.
fn describe(policy: &Policy) -> String {
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
            // Who may reach the ports is part of the rule's catalog entry.
            let from = match &r.from {
                None => "any".to_owned(),
                Some(nets) => nets.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
            };
            out.push_str(&format!(
                "  bind {} {}{addr} from {from}{}\n",
                r.proto.as_str(),
                ports.join(","),
                describe_catalog(&r.catalog)
            ));
        }
        if g.connect.is_empty() {
            out.push_str("  connect: nothing\n");
        }
        for r in &g.connect {
            let ports: Vec<String> = r.ports.iter().map(ToString::to_string).collect();
            let peers: Vec<String> = r
                .peers
                .iter()
                .map(ToString::to_string)
                .chain(r.names.iter().map(|n| format!("name {n}")))
                .collect();
            out.push_str(&format!(
                "  connect {} {} ports {}{}{}\n",
                r.proto.as_str(),
                peers.join(","),
                ports.join(","),
                if r.agent_resolves { " (names resolved by the agent too)" } else { "" },
                describe_catalog(&r.catalog)
            ));
        }
    }
    out
}

fn describe_catalog(c: &Catalog) -> String {
    let parts: Vec<String> = [
        ("owner", c.owner.clone()),
        ("purpose", c.purpose.clone()),
        ("approved by", c.approved_by.clone()),
        ("ticket", c.ticket.clone()),
        ("expires", c.expires.map(|e| e.to_string())),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| format!("{k}: {v}")))
    .collect();
    if parts.is_empty() { String::new() } else { format!("  [{}]", parts.join("; ")) }
}
