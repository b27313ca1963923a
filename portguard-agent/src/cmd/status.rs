//! `portguard status`: what is pinned and enforced, named from the state
//! file of the agent that runs (if one does).

use std::path::Path;

use portguard_common::{GUARD_HAS_NAMES, MODE_AUDIT, Op, Verdict, dns::LEARNED_ENTRIES};
use serde_json::json;

use super::CmdError;
use crate::{
    bpf::{DecisionCounters, GuardCounts, LearnedAddresses, LearnedTable, LiveState},
    cli::OutputFormat,
    state_file as state,
};

fn counts_json(c: &GuardCounts) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for op in Op::ALL {
        let mut per = serde_json::Map::new();
        for v in Verdict::ALL {
            per.insert(v.as_str().into(), c[op as usize][v as usize].into());
        }
        out.insert(op.as_str().into(), per.into());
    }
    out.into()
}

pub(super) fn run(bpffs: &Path, state_dir: &Path, format: OutputFormat) -> Result<(), CmdError> {
    let live = LiveState::read(bpffs).map_err(|e| CmdError::Failed(e.to_string()))?;
    let counters = DecisionCounters::open(bpffs).ok();
    // The learned table under each cgroup's resolver epoch in the live slot.
    let epochs = live.guards.iter().map(|(cgroup, info)| (*cgroup, info.dns_epoch)).collect();
    let learned: Option<LearnedTable> = LearnedAddresses::open(bpffs).ok().map(|t| t.walk(&epochs));
    let described = state::read_state(state_dir).ok();
    let pid = state::running_pid(state_dir);
    let by_cgroup = |id: u64| {
        described.as_ref().and_then(|s| {
            s.guards.iter().find_map(|g| {
                if g.cgroup_id == Some(id) {
                    return Some((g, g.cgroup.clone(), None));
                }
                let pod = g.pods.iter().find(|p| p.cgroup_id == id)?;
                Some((g, pod.cgroup.clone(), Some(pod.pod.clone())))
            })
        })
    };

    let verification = state::read_verification(state_dir);
    let verified_at = verification.as_ref().and_then(|v| v["started_at"].as_u64()).map(|t| {
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t))
            .to_string()
    });
    let verification_of = |name: Option<&str>| -> serde_json::Value {
        let Some(g) = verification.as_ref().and_then(|v| {
            v["guards"].as_array()?.iter().find(|g| name.is_some() && g["guard"].as_str() == name).cloned()
        }) else {
            return serde_json::Value::Null;
        };
        let failed: Vec<String> = g["checks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["outcome"] == "fail")
            .map(|c| {
                format!(
                    "{} {}: expected {}, got {}",
                    c["check"].as_str().unwrap_or("?"),
                    c["subject"].as_str().unwrap_or("?"),
                    c["expected"].as_str().unwrap_or("?"),
                    c["got"].as_str().unwrap_or("?")
                )
            })
            .collect();
        json!({ "at": verified_at, "verified": g["verified"], "failed": failed })
    };
    let guards: Vec<serde_json::Value> = live
        .guards
        .iter()
        .map(|(cgroup_id, info)| {
            let named = by_cgroup(*cgroup_id);
            json!({
                "name": named.as_ref().map(|(g, _, _)| g.name.clone()),
                "cgroup": named.as_ref().map(|(_, path, _)| path.clone()),
                "pod": named.as_ref().and_then(|(_, _, pod)| pod.clone()),
                "cgroup_id": cgroup_id,
                "guard_id": info.guard_id,
                "mode": if info.mode == MODE_AUDIT { "audit" } else { "enforce" },
                "decisions": counters.as_ref().map(|c| counts_json(&c.guard(info.guard_id))),
                "dns_learned_addresses": learned.as_ref().filter(|_| info.flags & GUARD_HAS_NAMES != 0)
                    .map(|t| t.live_per_cgroup.get(cgroup_id).copied().unwrap_or(0)),
                "dns_agent_addresses": learned.as_ref().filter(|_| info.flags & GUARD_HAS_NAMES != 0)
                    .map(|t| t.by_agent_per_cgroup.get(cgroup_id).copied().unwrap_or(0)),
                "verification": verification_of(named.as_ref().map(|(g, _, _)| g.name.as_str())),
            })
        })
        .collect();
    let pending: Vec<String> = described
        .iter()
        .flat_map(|s| {
            s.guards.iter().filter(|g| g.cgroup_id.is_none() && g.pods.is_empty()).map(|g| g.name.clone())
        })
        .collect();
    let policy = described.as_ref().map(|s| {
        json!({
            "file": s.policy,
            "sha256": s.sha256,
            "generation": s.generation,
            "applied_at": humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(s.applied_at)).to_string(),
            "matches_kernel": s.generation == live.generation,
        })
    });
    let report = json!({
        "agent": { "running": pid.is_some(), "pid": pid },
        "generation": live.generation,
        "policy": policy,
        "guards": guards,
        "guards_waiting_for_cgroup": pending,
        "events_lost": counters.as_ref().map(DecisionCounters::events_lost),
        "sockets_without_stamp": counters.as_ref().map(DecisionCounters::stamp_misses),
        "dns_learned_table": learned.as_ref().map(|t| json!({
            "entries": t.entries,
            "capacity": LEARNED_ENTRIES,
            "evictions": counters.as_ref().map(|c| t.evictions(c.dns().entries_created)),
        })),
    });
    match format {
        OutputFormat::Json => println!("{report:#}"),
        OutputFormat::Text => print!("{}", render_text(&report, bpffs)),
    }
    Ok(())
}

fn render_text(r: &serde_json::Value, bpffs: &Path) -> String {
    let mut out = String::new();
    let agent = match r["agent"]["pid"].as_u64() {
        Some(pid) => format!("running (pid {pid})"),
        None => "not running; the pinned programs keep enforcing".to_owned(),
    };
    out.push_str(&format!("portguard at {}: agent {agent}\n", bpffs.display()));
    out.push_str(&format!("kernel policy generation: {}\n", r["generation"]));
    match r["policy"].as_object() {
        Some(p) => {
            out.push_str(&format!(
                "policy: {} (sha256 {}, generation {}, applied {})\n",
                p["file"].as_str().unwrap_or("?"),
                p["sha256"].as_str().unwrap_or("?"),
                p["generation"],
                p["applied_at"].as_str().unwrap_or("?")
            ));
            if p["matches_kernel"] != true {
                out.push_str(
                    "  warning: the kernel holds another generation than the state file describes\n",
                );
            }
        }
        None => out.push_str("policy: unknown (no state file)\n"),
    }
    let guards = r["guards"].as_array().cloned().unwrap_or_default();
    out.push_str(&format!("guards live in the kernel: {}\n", guards.len()));
    for g in guards {
        let pod = g["pod"].as_str().map(|p| format!(" pod {p}")).unwrap_or_default();
        out.push_str(&format!(
            "  {} [{}] cgroup {} (id {}){pod}\n",
            g["name"].as_str().unwrap_or("(unnamed)"),
            g["mode"].as_str().unwrap_or("?"),
            g["cgroup"].as_str().unwrap_or("?"),
            g["cgroup_id"]
        ));
        match g["verification"]["verified"].as_bool() {
            Some(true) => out.push_str(&format!(
                "    verified at {}: every check holds\n",
                g["verification"]["at"].as_str().unwrap_or("?")
            )),
            Some(false) => {
                out.push_str(&format!(
                    "    NOT VERIFIED at {}:\n",
                    g["verification"]["at"].as_str().unwrap_or("?")
                ));
                for f in g["verification"]["failed"].as_array().into_iter().flatten() {
                    out.push_str(&format!("      {}\n", f.as_str().unwrap_or("?")));
                }
            }
            None => out.push_str("    not verified by the agent yet\n"),
        }
        if let Some(n) = g["dns_learned_addresses"].as_u64() {
            let agent = g["dns_agent_addresses"].as_u64().unwrap_or(0);
            out.push_str(&format!(
                "    dns: {n} learned addresses with a valid answer ({agent} from the agent's own lookups)\n"
            ));
        }
        if let Some(d) = g["decisions"].as_object() {
            for (op, v) in d {
                out.push_str(&format!(
                    "    {op:8} allowed {} denied {} audited {}\n",
                    v["allowed"], v["denied"], v["audited"]
                ));
            }
        }
    }
    for name in r["guards_waiting_for_cgroup"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {} waiting for its cgroup (or matching pods)\n",
            name.as_str().unwrap_or("?")
        ));
    }
    out.push_str(&format!("events lost: {}\n", r["events_lost"]));
    if let Some(t) = r["dns_learned_table"].as_object() {
        out.push_str(&format!(
            "dns learned-address table: {} of {} entries, {} evicted to make room\n",
            t["entries"], t["capacity"], t["evictions"]
        ));
    }
    out
}
