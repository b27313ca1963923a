//! `portguard scan`: every live port on the host against the policy, as a
//! report or a CI/CD gate.
//!
//! Exit status: 0 done, 1 `--fail-on-unapproved` found an unapproved port,
//! 2 the policy or the cgroup root cannot be used.

use std::path::Path;

use serde_json::json;

use super::CmdError;
use crate::{
    cgroup::{self, workload},
    cli::OutputFormat,
    inventory::{self, Approval, Standing, procfs::OpenPort},
    policy::{self, eval::is_within},
    state_file,
};

pub(super) struct ScanArgs<'a> {
    /// None: the default policy when it exists, else none at all.
    pub(super) policy: Option<&'a Path>,
    /// The running agent's state directory, for the pods each pod guard
    /// covers now (a pod guard cannot be found from a path).
    pub(super) state_dir: &'a Path,
    pub(super) cgroup_root: Option<&'a Path>,
    pub(super) format: OutputFormat,
    pub(super) fail_on_unapproved: bool,
}

pub(super) fn run(args: &ScanArgs) -> Result<(), CmdError> {
    let rows = scan(args).map_err(CmdError::BadInput)?;
    let unapproved = rows.iter().filter(|(_, s)| s.status == Approval::Unapproved).count();
    match args.format {
        OutputFormat::Text => print!("{}", text(&rows)),
        OutputFormat::Json => println!("{}", json(&rows)),
    }
    if args.fail_on_unapproved && unapproved > 0 {
        return Err(CmdError::Failed(format!("{unapproved} unapproved ports are live")));
    }
    Ok(())
}

fn scan(args: &ScanArgs) -> Result<Vec<(OpenPort, Standing)>, String> {
    let default = Path::new(crate::cli::DEFAULT_POLICY);
    let (policy, _) = match args.policy {
        Some(path) => policy::load(path),
        None if default.exists() => policy::load(default),
        None => {
            // Someone looking at a host before writing a policy: show what is open.
            eprintln!(
                "portguard: no policy given and {} does not exist: every port is listed as unguarded",
                default.display()
            );
            policy::parse_and_compile("(no policy)", "version = 1\n")
        }
    }
    .map_err(|e| e.to_string())?;
    let mount = cgroup::cgroup2_mount().map_err(|e| e.to_string())?;
    let root = args.cgroup_root.map_or_else(|| mount.clone(), Path::to_path_buf);
    let root_in_mount = root.strip_prefix(&mount).map(|r| format!("/{}", r.display())).map_err(|_| {
        format!("cgroup root {} is not under the cgroup2 mount {}", root.display(), mount.display())
    })?;
    if !root.is_dir() {
        return Err(format!("cgroup root {}: no such cgroup", root.display()));
    }
    let pod_cgroups = pod_guard_cgroups(args.state_dir);
    let ports = inventory::procfs::open_ports().map_err(|e| format!("cannot read /proc: {e}"))?;
    Ok(ports
        .into_iter()
        .map(|p| {
            let cg = p.cgroup.as_deref().and_then(|c| inventory::relative_to_root(c, &root_in_mount));
            let pod_guard = cg.as_deref().and_then(|cg| {
                pod_cgroups.iter().find(|(pod_cg, _)| is_within(cg, pod_cg)).map(|(_, g)| g.as_str())
            });
            let s = inventory::standing(&policy, cg.as_deref(), pod_guard, p.proto, p.addr, p.port);
            (p, s)
        })
        .collect())
}

/// (pod cgroup, guard) for every pod a pod guard of the running agent
/// covers; empty when no agent state is there to read.
fn pod_guard_cgroups(state_dir: &Path) -> Vec<(String, String)> {
    let Ok(state) = state_file::read_state(state_dir) else { return Vec::new() };
    state
        .guards
        .into_iter()
        .flat_map(|g| g.pods.into_iter().map(move |p| (p.cgroup, g.name.clone())))
        .collect()
}

fn text(rows: &[(OpenPort, Standing)]) -> String {
    let mut out = format!(
        "{:<10} {:<5} {:<28} {:<8} {:<16} {:<14} {}\n",
        "STATUS", "PROTO", "LOCAL", "PID", "COMM", "GUARD", "CGROUP / WORKLOAD / APPROVAL"
    );
    for (p, s) in rows {
        let local = match p.addr {
            std::net::IpAddr::V6(a) => format!("[{a}]:{}", p.port),
            a => format!("{a}:{}", p.port),
        };
        let cg = p.cgroup.as_deref().unwrap_or("-");
        let w = workload::parse(cg);
        let mut detail = cg.to_owned();
        if let Some(u) = &w.unit {
            detail.push_str(&format!(" unit={u}"));
        }
        if let Some(pod) = &w.pod_uid {
            detail.push_str(&format!(" pod={pod}"));
        }
        // Who may reach it: always shown, since "any" is news too.
        detail.push_str(&format!(" from={}", s.audience));
        if let Some(r) = &s.rule {
            detail.push_str(&format!(
                " rule=#{} owner={} approved_by={}",
                r.number,
                r.owner.as_deref().unwrap_or("-"),
                r.approved_by.as_deref().unwrap_or("-")
            ));
        }
        out.push_str(&format!(
            "{:<10} {:<5} {:<28} {:<8} {:<16} {:<14} {detail}\n",
            s.status.as_str(),
            p.proto.to_string(),
            local,
            p.pid.map_or("-".to_owned(), |p| p.to_string()),
            if p.comm.is_empty() { "-" } else { &p.comm },
            s.guard.as_deref().unwrap_or("-"),
        ));
    }
    let count = |st| rows.iter().filter(|(_, s)| s.status == st).count();
    out.push_str(&format!(
        "{} live ports: {} approved, {} unapproved, {} unguarded\n",
        rows.len(),
        count(Approval::Approved),
        count(Approval::Unapproved),
        count(Approval::Unguarded)
    ));
    out
}

fn json(rows: &[(OpenPort, Standing)]) -> serde_json::Value {
    let ports: Vec<_> = rows
        .iter()
        .map(|(p, s)| {
            let w = workload::parse(p.cgroup.as_deref().unwrap_or(""));
            json!({
                "status": s.status.as_str(),
                "proto": p.proto.to_string(),
                "addr": p.addr,
                "port": p.port,
                "pid": p.pid,
                "comm": p.comm,
                "cgroup": p.cgroup,
                "unit": w.unit,
                "pod_uid": w.pod_uid,
                "container_id": w.container_id,
                "netns": p.netns,
                "inode": p.inode,
                "guard": s.guard,
                "mode": s.mode.map(|m| m.as_str()),
                "rule": s.rule,
                "audience": s.audience,
            })
        })
        .collect();
    json!({ "ports": ports })
}
