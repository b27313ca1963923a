//! The agent's policy state: what is applied, and how it changes.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering},
};

use super::{
    AgentError,
    cgroup_watch::CgroupWatch,
    guards::CgroupResolver,
    state::{self, AgentState, GuardState},
};
use crate::{
    bpf::{GuardIds, KernelPolicy, PolicyMaps},
    cli::RunArgs,
    metrics::{Metrics, PolicySummary},
    policy::{self, CompiledPolicy, Policy},
};

/// The policy currently applied.
struct Applied {
    sha256: String,
    /// As written, for the inventory's approvals and the trail's catalog.
    policy: Policy,
    compiled: CompiledPolicy,
    ids: HashMap<String, u32>,
    cgroups: HashMap<String, u64>,
    /// "enforce" / "audit" by guard id, for reports.
    modes: HashMap<u32, &'static str>,
    applied_at: u64,
}

pub struct Daemon {
    maps: PolicyMaps,
    resolver: CgroupResolver,
    guard_ids: GuardIds,
    applied: Option<Applied>,
    policy_path: PathBuf,
    state_dir: PathBuf,
    bpffs: PathBuf,
    metrics: Arc<Metrics>,
}

pub fn read_policy(path: &Path) -> Result<(String, Policy, CompiledPolicy), AgentError> {
    let text = policy::read(path)?;
    let (policy, compiled) = policy::parse_and_compile(&path.display().to_string(), &text)?;
    Ok((text, policy, compiled))
}

impl Daemon {
    pub fn new(maps: PolicyMaps, resolver: CgroupResolver, args: &RunArgs, metrics: Arc<Metrics>) -> Daemon {
        Daemon {
            maps,
            resolver,
            guard_ids: GuardIds::default(),
            applied: None,
            policy_path: args.policy.clone(),
            state_dir: args.state_dir.clone(),
            bpffs: args.bpffs.clone(),
            metrics,
        }
    }

    pub fn guard_modes(&self) -> &HashMap<u32, &'static str> {
        static EMPTY: std::sync::OnceLock<HashMap<u32, &'static str>> = std::sync::OnceLock::new();
        self.applied.as_ref().map_or_else(|| EMPTY.get_or_init(HashMap::new), |a| &a.modes)
    }

    /// Hands what the agent knows to the metrics endpoint.
    fn publish(&self) {
        let Some(a) = &self.applied else { return };
        let (guards, bind, connect) = self.maps.entry_counts();
        self.metrics.set_policy(PolicySummary {
            file: self.policy_path.display().to_string(),
            sha256: a.sha256.clone(),
            generation: self.generation(),
            guard_names: a.ids.iter().map(|(n, id)| (*id, n.clone())).collect(),
            guards: a.compiled.guards.len(),
            guarded_cgroups: a.cgroups.len(),
            map_entries: vec![("guards", guards), ("bind_rules", bind), ("connect_rules", connect)],
        });
    }

    pub fn generation(&self) -> u64 {
        self.maps.generation()
    }

    pub fn sha256(&self) -> &str {
        self.applied.as_ref().map_or("", |a| &a.sha256)
    }

    pub fn guard_ids(&self) -> &HashMap<String, u32> {
        static EMPTY: std::sync::OnceLock<HashMap<String, u32>> = std::sync::OnceLock::new();
        self.applied.as_ref().map_or_else(|| EMPTY.get_or_init(HashMap::new), |a| &a.ids)
    }

    /// Writes a validated policy into the kernel in one switch.
    /// The policy the kernel enforces, once one was applied.
    pub fn policy(&self) -> Option<&Policy> {
        self.applied.as_ref().map(|a| &a.policy)
    }

    pub fn apply_policy(
        &mut self,
        text: &str,
        policy: Policy,
        compiled: CompiledPolicy,
    ) -> Result<(), AgentError> {
        self.resolver.check_depths(&compiled).map_err(AgentError::Guard)?;
        let ids = self.guard_ids.assign(&compiled)?;
        let cgroups = self.resolver.resolve(&compiled);
        let started = std::time::Instant::now();
        let kernel = KernelPolicy::build(&compiled, &ids, &cgroups);
        let stats = self.maps.apply(kernel)?;
        // The benchmark harness reads this line for apply times.
        tracing::info!(
            generation = stats.generation,
            written = stats.written,
            deleted = stats.deleted,
            apply_us = started.elapsed().as_micros() as u64,
            "policy applied to the kernel maps"
        );
        let modes = compiled.guards.iter().map(|g| (ids[&g.name], g.mode.as_str())).collect();
        self.applied = Some(Applied {
            sha256: policy::sha256_hex(text.as_bytes()),
            policy,
            compiled,
            ids,
            cgroups,
            modes,
            applied_at: state::now_unix(),
        });
        self.publish();
        Ok(())
    }

    /// Re-reads the policy file. Unless `force`, an unchanged file (same
    /// SHA-256) is left alone. A policy that fails any check is refused and
    /// the live one stays. Returns whether a new policy was applied.
    pub fn reload(&mut self, why: &str, force: bool) -> bool {
        // Read once: the hash check and the parse see the same bytes.
        let text = match policy::read(&self.policy_path) {
            Ok(t) => t,
            Err(e) => {
                self.metrics.reloads_rejected.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    reason = why,
                    "policy reload refused, the previous policy stays enforced: {e}"
                );
                return false;
            }
        };
        if !force && policy::sha256_hex(text.as_bytes()) == self.sha256() {
            return false;
        }
        let started = std::time::Instant::now();
        let file = self.policy_path.display().to_string();
        let result = policy::parse_and_compile(&file, &text).map_err(AgentError::from).and_then(
            |(policy, compiled)| {
                let compile_us = started.elapsed().as_micros() as u64;
                self.apply_policy(&text, policy, compiled).map(|()| compile_us)
            },
        );
        match result {
            Ok(compile_us) => {
                self.metrics.reloads_applied.fetch_add(1, Ordering::Relaxed);
                self.log_guards();
                self.write_state();
                tracing::info!(
                    reason = why,
                    generation = self.generation(),
                    sha256 = %self.sha256(),
                    compile_us,
                    total_us = started.elapsed().as_micros() as u64,
                    "policy reloaded"
                );
                true
            }
            Err(e) => {
                self.metrics.reloads_rejected.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    reason = why,
                    "policy reload refused, the previous policy stays enforced: {e}"
                );
                false
            }
        }
    }

    pub fn watch_cgroups(&self, watch: &mut CgroupWatch) {
        if let Some(a) = &self.applied {
            watch.watch_parents_of(self.resolver.guard_paths(&a.compiled).iter().map(PathBuf::as_path));
        }
    }

    /// Re-resolves guard cgroups and re-applies the policy when any changed.
    pub fn rescan_guards(&mut self, watch: &mut CgroupWatch) {
        self.watch_cgroups(watch);
        let Some(a) = &self.applied else { return };
        let now = self.resolver.resolve(&a.compiled);
        if now == a.cgroups {
            return;
        }
        let kernel = KernelPolicy::build(&a.compiled, &a.ids, &now);
        match self.maps.apply(kernel) {
            Ok(stats) => {
                // Logged once the kernel has it: "appeared" means "guarded".
                log_cgroup_changes(&a.cgroups, &now);
                tracing::info!(
                    generation = stats.generation,
                    written = stats.written,
                    deleted = stats.deleted,
                    "guards re-applied"
                );
                if let Some(a) = &mut self.applied {
                    a.cgroups = now;
                }
                self.write_state();
                self.publish();
            }
            Err(e) => tracing::error!("re-applying guards failed; the previous generation stays live: {e}"),
        }
    }

    pub fn write_state(&self) {
        let Some(a) = &self.applied else { return };
        let s = AgentState {
            policy: self.policy_path.clone(),
            sha256: a.sha256.clone(),
            generation: self.generation(),
            applied_at: a.applied_at,
            cgroup_root: self.resolver.root().to_owned(),
            bpffs: self.bpffs.clone(),
            guards: a
                .compiled
                .guards
                .iter()
                .map(|g| GuardState {
                    name: g.name.clone(),
                    id: a.ids[&g.name],
                    cgroup: g.cgroup.clone(),
                    cgroup_id: a.cgroups.get(&g.name).copied(),
                    mode: g.mode.as_str().to_owned(),
                })
                .collect(),
        };
        if let Err(e) = state::write_state(&self.state_dir, &s) {
            tracing::warn!(dir = %self.state_dir.display(), "cannot write state for `portguard status`: {e}");
        }
    }

    pub fn log_guards(&self) {
        let Some(a) = &self.applied else { return };
        for g in &a.compiled.guards {
            let state = match a.cgroups.get(&g.name) {
                Some(id) => format!("active (cgroup id {id})"),
                None => "waiting for its cgroup to appear".to_owned(),
            };
            tracing::info!(
                guard = %g.name,
                cgroup = %g.cgroup,
                mode = g.mode.as_str(),
                bind_entries = g.bind.len(),
                connect_entries = g.connect.len(),
                "guard {}: {state}",
                g.name
            );
        }
    }
}

fn log_cgroup_changes(before: &HashMap<String, u64>, after: &HashMap<String, u64>) {
    for (name, id) in after {
        match before.get(name) {
            None => tracing::info!(guard = %name, cgroup_id = id, "guarded cgroup appeared"),
            Some(old) if old != id => {
                tracing::info!(guard = %name, cgroup_id = id, "guarded cgroup was recreated")
            }
            _ => {}
        }
    }
    for name in before.keys().filter(|n| !after.contains_key(*n)) {
        tracing::info!(guard = %name, "guarded cgroup is gone; the guard waits for it to reappear");
    }
}
