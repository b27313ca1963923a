//! The policy the agent has applied, and how it changes: the first apply,
//! reloads, guards re-resolved as cgroups and pods come and go, the state
//! file written after each change, and the log lines that report it.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering},
};

use super::{
    DaemonError,
    guards::{CgroupResolver, Coverage, Resolution},
    pods::NodePods,
    watches::CgroupWatch,
};
use crate::{
    bpf::{Enforcer, GuardIds, KernelPolicy, PolicyMaps},
    cli::RunArgs,
    metrics::{Metrics, PolicySummary},
    pods::PodUpdate,
    policy::{self, CompiledGuard, CompiledPolicy, Mode, Policy, Target},
    state_file::{self, AgentState, GuardState, PodCgroupState},
};

/// The applied policy's DNS names, each pattern by the identity the
/// kernel's learned entries carry.
#[derive(Debug, Default)]
pub(crate) struct DnsNames {
    pub(crate) by_hash: HashMap<u64, String>,
}

impl DnsNames {
    fn of(compiled: &CompiledPolicy, maps: &PolicyMaps) -> DnsNames {
        let mut out = DnsNames::default();
        for g in &compiled.guards {
            for (_, name) in g.names.keys() {
                out.by_hash.insert(maps.name_hash(name), name.clone());
            }
        }
        out
    }
}

/// The policy currently applied.
struct Current {
    sha256: String,
    /// As written, for the inventory's approvals and the trail's catalog.
    policy: Policy,
    compiled: CompiledPolicy,
    ids: HashMap<String, u32>,
    /// Guard names by guard id: the one reverse map, for the denial log,
    /// the inventory and the metrics.
    names: HashMap<u32, String>,
    /// Each guard's mode by guard id, for reports.
    modes: HashMap<u32, Mode>,
    /// The DNS names of the policy by their kernel identity, for reports.
    dns: DnsNames,
    cgroups: Resolution,
    applied_at: u64,
}

pub(crate) struct AppliedPolicy {
    maps: PolicyMaps,
    /// The programs, and the guarded cgroups whose hooks carry them.
    enforcer: Enforcer,
    resolver: CgroupResolver,
    guard_ids: GuardIds,
    current: Option<Current>,
    pods: NodePods,
    policy_path: PathBuf,
    state_dir: PathBuf,
    bpffs: PathBuf,
    metrics: Arc<Metrics>,
    /// What the agent's own lookups resolve, for whom (`agent_dns`).
    agent_dns: tokio::sync::watch::Sender<super::agent_dns::Plan>,
}

pub(crate) fn read_policy(path: &Path) -> Result<(String, Policy, CompiledPolicy), DaemonError> {
    let text = read_trusted(path)?;
    let (policy, compiled) = policy::parse_and_compile(&path.display().to_string(), &text)?;
    Ok((text, policy, compiled))
}

/// The policy file's text, if only root (or the agent's user) can change it.
/// Read first, so a missing file keeps its plain "cannot read" error.
fn read_trusted(path: &Path) -> Result<String, DaemonError> {
    let text = policy::read(path)?;
    policy::permissions::check(path)?;
    Ok(text)
}

impl AppliedPolicy {
    pub(crate) fn new(
        maps: PolicyMaps,
        enforcer: Enforcer,
        resolver: CgroupResolver,
        args: &RunArgs,
        metrics: Arc<Metrics>,
        pods: NodePods,
        agent_dns: tokio::sync::watch::Sender<super::agent_dns::Plan>,
    ) -> AppliedPolicy {
        AppliedPolicy {
            maps,
            enforcer,
            resolver,
            guard_ids: GuardIds::default(),
            current: None,
            pods,
            policy_path: args.policy.clone(),
            state_dir: args.state_dir.clone(),
            bpffs: args.bpffs.clone(),
            metrics,
            agent_dns,
        }
    }

    /// Guard names by guard id (empty before the first apply).
    pub(crate) fn guard_names(&self) -> &HashMap<u32, String> {
        static EMPTY: std::sync::OnceLock<HashMap<u32, String>> = std::sync::OnceLock::new();
        self.current.as_ref().map_or_else(|| EMPTY.get_or_init(HashMap::new), |a| &a.names)
    }

    pub(crate) fn dns_names(&self) -> &DnsNames {
        static EMPTY: std::sync::OnceLock<DnsNames> = std::sync::OnceLock::new();
        self.current.as_ref().map_or_else(|| EMPTY.get_or_init(DnsNames::default), |a| &a.dns)
    }

    pub(crate) fn guard_modes(&self) -> &HashMap<u32, Mode> {
        static EMPTY: std::sync::OnceLock<HashMap<u32, Mode>> = std::sync::OnceLock::new();
        self.current.as_ref().map_or_else(|| EMPTY.get_or_init(HashMap::new), |a| &a.modes)
    }

    /// Hands what the agent knows to the metrics endpoint and to the
    /// agent's own lookups.
    fn publish(&self) {
        let Some(a) = &self.current else { return };
        let epochs = self.maps.dns_epochs();
        let cgroups = a.cgroups.cgroup_ids();
        let targets = (a.compiled.guards.iter().filter(|g| !g.agent_names.is_empty()))
            .flat_map(|g| {
                let names: Vec<(String, u64)> =
                    g.agent_names.iter().map(|n| (n.clone(), self.maps.name_hash(n))).collect();
                let ids = cgroups.get(&g.name).cloned().unwrap_or_default();
                let epochs = &epochs;
                ids.into_iter().map(move |cgroup_id| super::agent_dns::Target {
                    cgroup_id,
                    epoch: epochs.get(&cgroup_id).copied().unwrap_or_default(),
                    names: names.clone(),
                })
            })
            .collect();
        self.agent_dns.send_if_modified(|plan| {
            let next = super::agent_dns::Plan { targets };
            let changed = *plan != next;
            *plan = next;
            changed
        });
        let (guards, bind, connect, names) = self.maps.entry_counts();
        self.metrics.set_policy(PolicySummary {
            file: self.policy_path.display().to_string(),
            sha256: a.sha256.clone(),
            generation: self.generation(),
            guard_names: a.names.clone(),
            guard_of_cgroup: (a.cgroups.cgroup_ids().into_iter())
                .flat_map(|(name, ids)| ids.into_iter().map(move |id| (id, name.clone())))
                .collect(),
            dns_epochs: epochs,
            guards: a.compiled.guards.len(),
            guarded_cgroups: a.cgroups.cgroups(),
            kube_pods: self.pods.watched(),
            map_entries: vec![
                ("guards", guards),
                ("bind_rules", bind),
                ("connect_rules", connect),
                ("dns_names", names),
            ],
        });
    }

    pub(crate) fn generation(&self) -> u64 {
        self.maps.generation()
    }

    pub(crate) fn sha256(&self) -> &str {
        self.current.as_ref().map_or("", |a| &a.sha256)
    }

    /// Pod guards: know the pods running now before the first apply.
    pub(crate) async fn list_pods_for(
        &mut self,
        compiled: &CompiledPolicy,
        timeout: std::time::Duration,
    ) -> Result<(), DaemonError> {
        self.pods.follow_for(compiled)?;
        self.pods.wait_for_list(timeout).await;
        Ok(())
    }

    /// The next pod update; never resolves while no watch runs.
    pub(crate) async fn next_pod_update(&mut self) -> PodUpdate {
        self.pods.next_update().await
    }

    /// Takes in `first` and whatever else has queued up, then re-resolves
    /// the guards once.
    pub(crate) fn on_pod_update(&mut self, first: PodUpdate, watch: &mut CgroupWatch) {
        if self.pods.take_updates(first) {
            self.rescan_guards(watch);
            self.publish();
        }
    }

    /// The policy the kernel enforces, once one was applied.
    pub(crate) fn policy(&self) -> Option<&Policy> {
        self.current.as_ref().map(|a| &a.policy)
    }

    /// Writes a validated policy into the kernel in one switch.
    pub(crate) fn apply_policy(
        &mut self,
        text: &str,
        policy: Policy,
        compiled: CompiledPolicy,
    ) -> Result<(), DaemonError> {
        self.resolver.check_depths(&compiled).map_err(DaemonError::Guard)?;
        self.pods.follow_for(&compiled)?;
        let ids = self.guard_ids.assign(&compiled)?;
        let cgroups = self.resolver.resolve(&compiled, self.pods.index());
        let started = std::time::Instant::now();
        let kernel = KernelPolicy::build(&compiled, &ids, &cgroups.cgroup_ids());
        let stats = switch_to(&mut self.maps, &mut self.enforcer, self.resolver.root(), kernel, &cgroups)?;
        // The benchmark harness reads this line for apply times.
        tracing::info!(
            generation = stats.generation,
            written = stats.written,
            deleted = stats.deleted,
            apply_us = started.elapsed().as_micros() as u64,
            "policy applied to the kernel maps"
        );
        let modes = compiled.guards.iter().map(|g| (ids[&g.name], g.mode)).collect();
        let names = ids.iter().map(|(name, id)| (*id, name.clone())).collect();
        let dns = DnsNames::of(&compiled, &self.maps);
        self.current = Some(Current {
            sha256: policy::sha256_hex(text.as_bytes()),
            policy,
            compiled,
            ids,
            names,
            modes,
            dns,
            cgroups,
            applied_at: state_file::now_unix(),
        });
        self.publish();
        Ok(())
    }

    /// Re-reads the policy file. Unless `force`, an unchanged file (same
    /// SHA-256) is left alone. A policy that fails any check is refused and
    /// the live one stays. Returns whether a new policy was applied.
    pub(crate) fn reload(&mut self, why: &str, force: bool) -> bool {
        // Read once: the hash check and the parse see the same bytes.
        let text = match read_trusted(&self.policy_path) {
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
        let before = self.current.as_ref().map(|a| a.compiled.clone()).unwrap_or_default();
        let file = self.policy_path.display().to_string();
        let result = policy::parse_and_compile(&file, &text).map_err(DaemonError::from).and_then(
            |(policy, compiled)| {
                let compile_us = started.elapsed().as_micros() as u64;
                self.apply_policy(&text, policy, compiled).map(|()| compile_us)
            },
        );
        match result {
            Ok(compile_us) => {
                self.metrics.reloads_applied.fetch_add(1, Ordering::Relaxed);
                let changes = self.log_guard_changes(&before);
                self.write_state();
                tracing::info!(
                    reason = why,
                    generation = self.generation(),
                    sha256 = %self.sha256(),
                    guards_added = changes.added,
                    guards_changed = changes.changed,
                    guards_removed = changes.removed,
                    guards_unchanged = changes.unchanged,
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

    pub(crate) fn watch_cgroups(&self, watch: &mut CgroupWatch) {
        if let Some(a) = &self.current {
            watch.watch_parents_of(
                self.resolver.guard_paths(&a.compiled, self.pods.index()).iter().map(PathBuf::as_path),
            );
        }
    }

    /// Re-resolves guard cgroups and re-applies the policy when any changed.
    pub(crate) fn rescan_guards(&mut self, watch: &mut CgroupWatch) {
        self.watch_cgroups(watch);
        let Some(a) = &self.current else { return };
        let now = self.resolver.resolve(&a.compiled, self.pods.index());
        if now == a.cgroups {
            return;
        }
        let kernel = KernelPolicy::build(&a.compiled, &a.ids, &now.cgroup_ids());
        match switch_to(&mut self.maps, &mut self.enforcer, self.resolver.root(), kernel, &now) {
            Ok(stats) => {
                // Logged once the kernel has it: "appeared" means "guarded".
                log_cgroup_changes(&a.cgroups.coverage, &now.coverage);
                log_conflicts(&a.cgroups, &now);
                tracing::info!(
                    generation = stats.generation,
                    written = stats.written,
                    deleted = stats.deleted,
                    "guards re-applied"
                );
                if let Some(a) = &mut self.current {
                    a.cgroups = now;
                }
                self.write_state();
                self.publish();
            }
            Err(e) => tracing::error!("re-applying guards failed; the previous generation stays live: {e}"),
        }
    }

    /// Swaps this agent's programs into the links an earlier agent pinned.
    pub(crate) fn adopt_pinned(&mut self) -> Result<(), DaemonError> {
        let root = self.resolver.root();
        let paths: std::collections::BTreeMap<u64, PathBuf> = self
            .current
            .iter()
            .flat_map(|a| a.cgroups.coverage.values().flatten())
            .map(|c| (c.id, root.join(c.path.trim_start_matches('/'))))
            .collect();
        let adopted = self.enforcer.adopt_pinned(&paths)?;
        if !adopted.is_empty() {
            tracing::info!(cgroups = adopted.len(), "took over the pinned links of the previous agent");
        }
        // A cgroup an earlier agent guarded that this policy does not.
        let keep =
            self.current.as_ref().map(|a| a.cgroups.coverage.values().flatten().map(|c| c.id).collect());
        self.enforcer.release_except(&keep.unwrap_or_default());
        Ok(())
    }

    /// Undoes a failed start (see `Enforcer::abandon`).
    pub(crate) fn abandon(&mut self) {
        self.enforcer.abandon();
    }

    pub(crate) fn guarded_cgroup_count(&self) -> usize {
        self.enforcer.guarded_cgroups().count()
    }

    pub(crate) fn write_state(&self) {
        let Some(a) = &self.current else { return };
        let s = AgentState {
            policy: self.policy_path.clone(),
            sha256: a.sha256.clone(),
            generation: self.generation(),
            applied_at: a.applied_at,
            cgroup_root: self.resolver.root().to_owned(),
            bpffs: self.bpffs.clone(),
            programs: self.enforcer.program_ids(),
            guards: a
                .compiled
                .guards
                .iter()
                .map(|g| {
                    let covered = a.cgroups.coverage.get(&g.name).map_or(&[][..], Vec::as_slice);
                    GuardState {
                        name: g.name.clone(),
                        id: a.ids[&g.name],
                        cgroup: match &g.target {
                            Target::Cgroup(c) => c.clone(),
                            other => other.to_string(),
                        },
                        cgroup_id: match g.target {
                            Target::Cgroup(_) => covered.first().map(|c| c.id),
                            Target::Pods(_) => None,
                        },
                        mode: g.mode.as_str().to_owned(),
                        pods: covered
                            .iter()
                            .filter_map(|c| {
                                Some(PodCgroupState {
                                    pod: c.pod.clone()?,
                                    cgroup: c.path.clone(),
                                    cgroup_id: c.id,
                                })
                            })
                            .collect(),
                    }
                })
                .collect(),
        };
        if let Err(e) = state_file::write_state(&self.state_dir, &s) {
            tracing::warn!(dir = %self.state_dir.display(), "cannot write state for `portguard status`: {e}");
        }
    }

    /// Every guard and its state: what the start-up log shows.
    pub(crate) fn log_guards(&self) {
        let Some(a) = &self.current else { return };
        for g in &a.compiled.guards {
            log_guard(g, &a.cgroups.coverage);
        }
    }

    /// After a reload, only the guards that were added, changed or removed:
    /// on a host with hundreds of guards, a one-rule edit logs one line and
    /// the summary, not the whole policy again.
    fn log_guard_changes(&self, before: &CompiledPolicy) -> GuardChanges {
        let mut changes = GuardChanges::default();
        let Some(a) = &self.current else { return changes };
        let old: HashMap<&str, &CompiledGuard> = before.guards.iter().map(|g| (g.name.as_str(), g)).collect();
        for g in &a.compiled.guards {
            match old.get(g.name.as_str()) {
                Some(prev) if *prev == g => changes.unchanged += 1,
                Some(_) => {
                    changes.changed += 1;
                    log_guard(g, &a.cgroups.coverage);
                }
                None => {
                    changes.added += 1;
                    log_guard(g, &a.cgroups.coverage);
                }
            }
        }
        for g in &before.guards {
            if !a.compiled.guards.iter().any(|n| n.name == g.name) {
                changes.removed += 1;
                tracing::info!(guard = %g.name, "guard {}: removed", g.name);
            }
        }
        changes
    }
}

/// How a reload changed the set of guards, for its one summary line.
#[derive(Debug, Default)]
struct GuardChanges {
    added: usize,
    changed: usize,
    removed: usize,
    unchanged: usize,
}

fn log_guard(g: &CompiledGuard, coverage: &Coverage) {
    let state = match (&g.target, coverage.get(&g.name)) {
        (Target::Cgroup(_), Some(c)) => format!("active (cgroup id {})", c[0].id),
        (Target::Cgroup(_), None) => "waiting for its cgroup to appear".to_owned(),
        (Target::Pods(_), Some(c)) => format!("active ({} pods)", c.len()),
        (Target::Pods(_), None) => "waiting for matching pods".to_owned(),
    };
    tracing::info!(
        guard = %g.name,
        target = %g.target,
        mode = g.mode.as_str(),
        bind_entries = g.bind.len(),
        connect_entries = g.connect.len(),
        "guard {}: {state}",
        g.name
    );
}

/// Makes `kernel` the live policy: the programs go on the hooks of
/// newly guarded cgroups first (they allow until the switch names their
/// cgroup), then one generation bump switches every guard at once, and
/// only then do cgroups no longer guarded lose the programs.
fn switch_to(
    maps: &mut PolicyMaps,
    enforcer: &mut Enforcer,
    root: &Path,
    kernel: KernelPolicy,
    cgroups: &Resolution,
) -> Result<crate::bpf::ApplyStats, DaemonError> {
    let wanted: std::collections::BTreeMap<u64, PathBuf> = cgroups
        .coverage
        .values()
        .flatten()
        .map(|c| (c.id, root.join(c.path.trim_start_matches('/'))))
        .collect();
    enforcer.guard(&wanted)?;
    let stats = maps.apply(kernel)?;
    enforcer.release_except(&wanted.keys().copied().collect());
    Ok(stats)
}

fn log_cgroup_changes(before: &Coverage, after: &Coverage) {
    let by_path = |c: &Coverage| -> HashMap<(String, String), (u64, Option<String>)> {
        c.iter()
            .flat_map(|(name, cs)| {
                cs.iter().map(move |c| ((name.clone(), c.path.clone()), (c.id, c.pod.clone())))
            })
            .collect()
    };
    let (before, after) = (by_path(before), by_path(after));
    for ((guard, path), (id, pod)) in &after {
        let pod = pod.as_deref().unwrap_or("");
        match before.get(&(guard.clone(), path.clone())) {
            None => {
                tracing::info!(guard = %guard, cgroup = %path, cgroup_id = id, pod, "guarded cgroup appeared")
            }
            Some((old, _)) if old != id => {
                tracing::info!(guard = %guard, cgroup = %path, cgroup_id = id, pod, "guarded cgroup was recreated")
            }
            _ => {}
        }
    }
    for ((guard, path), (id, pod)) in before.iter().filter(|(k, _)| !after.contains_key(*k)) {
        match pod {
            None => tracing::info!(
                guard = %guard,
                cgroup = %path,
                "guarded cgroup is gone; the guard waits for it to reappear"
            ),
            Some(pod) => tracing::info!(
                guard = %guard,
                cgroup = %path,
                cgroup_id = id,
                pod = %pod,
                "pod is no longer guarded (deleted, no longer matching, or its cgroup is gone)"
            ),
        }
    }
}

/// Warns about each conflict and each pod over the limit once, when it starts.
fn log_conflicts(before: &Resolution, after: &Resolution) {
    for c in after.conflicts.iter().filter(|c| !before.conflicts.contains(c)) {
        tracing::warn!(
            cgroup = %c.cgroup,
            pod = c.pod.as_deref().unwrap_or(""),
            kept = %c.kept,
            skipped = %c.skipped,
            "two guards select one cgroup; the kernel holds one guard per cgroup, so {:?} applies and {:?} does not",
            c.kept,
            c.skipped
        );
    }
    for pod in after.over_limit.iter().filter(|p| !before.over_limit.contains(p)) {
        tracing::error!(
            pod = %pod,
            "pod left unguarded: portguard guards at most {} cgroups",
            portguard_common::MAX_GUARDS
        );
    }
}
