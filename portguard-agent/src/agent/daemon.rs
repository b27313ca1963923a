//! The agent's policy state: what is applied, and how it changes.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering},
};

use super::{
    AgentError,
    cgroup_watch::CgroupWatch,
    guards::{CgroupResolver, Coverage, Resolution},
    state::{self, AgentState, GuardState, PodCgroupState},
};
use crate::{
    bpf::{Enforcer, GuardIds, KernelPolicy, PolicyMaps},
    cli::RunArgs,
    metrics::{Metrics, PolicySummary},
    pods::{self, PodIndex, PodUpdate, PodWatch},
    policy::{self, CompiledPolicy, Policy, Target},
};

/// The Kubernetes API, when the agent was given one: pod guards need it.
pub struct PodApi {
    pub client: kube::Client,
    pub node_name: String,
}

/// The policy currently applied.
struct Applied {
    sha256: String,
    /// As written, for the inventory's approvals and the trail's catalog.
    policy: Policy,
    compiled: CompiledPolicy,
    ids: HashMap<String, u32>,
    cgroups: Resolution,
    /// "enforce" / "audit" by guard id, for reports.
    modes: HashMap<u32, &'static str>,
    applied_at: u64,
}

pub struct Daemon {
    maps: PolicyMaps,
    /// The programs, and the guarded cgroups whose hooks carry them.
    enforcer: Enforcer,
    resolver: CgroupResolver,
    guard_ids: GuardIds,
    applied: Option<Applied>,
    policy_path: PathBuf,
    state_dir: PathBuf,
    bpffs: PathBuf,
    metrics: Arc<Metrics>,
    pod_api: Option<PodApi>,
    /// Runs while the policy has pod guards.
    pod_watch: Option<PodWatch>,
    /// The pods of this node as last heard from the API.
    pods: PodIndex,
    /// False from a watch error until the next update arrives.
    api_healthy: bool,
}

pub fn read_policy(path: &Path) -> Result<(String, Policy, CompiledPolicy), AgentError> {
    let text = policy::read(path)?;
    let (policy, compiled) = policy::parse_and_compile(&path.display().to_string(), &text)?;
    Ok((text, policy, compiled))
}

impl Daemon {
    pub fn new(
        maps: PolicyMaps,
        enforcer: Enforcer,
        resolver: CgroupResolver,
        args: &RunArgs,
        metrics: Arc<Metrics>,
        pod_api: Option<PodApi>,
    ) -> Daemon {
        Daemon {
            pod_api,
            pod_watch: None,
            pods: PodIndex::default(),
            api_healthy: true,
            maps,
            enforcer,
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
            guarded_cgroups: a.cgroups.cgroups(),
            kube_pods: self.pod_watch.as_ref().map(|_| self.pods.len()),
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

    /// Starts the pod watch when `compiled` has pod guards (and stops it
    /// when it has none). Pod guards without an API are refused.
    pub fn follow_pods_for(&mut self, compiled: &CompiledPolicy) -> Result<(), AgentError> {
        if !compiled.has_pod_guards() {
            self.pod_watch = None;
            self.pods = PodIndex::default();
            return Ok(());
        }
        let Some(api) = &self.pod_api else {
            let guard = compiled.guards.iter().find(|g| matches!(g.target, Target::Pods(_)));
            return Err(AgentError::Guard(no_api_message(
                &self.policy_path,
                guard.map_or("?", |g| g.name.as_str()),
            )));
        };
        if self.pod_watch.is_none() {
            tracing::info!(node = %api.node_name, "watching the pods of this node for pod guards");
            self.pod_watch = Some(pods::spawn_watch(api.client.clone(), &api.node_name));
        }
        Ok(())
    }

    /// The next pod update; never resolves while no watch runs.
    pub async fn next_pod_update(&mut self) -> PodUpdate {
        match &mut self.pod_watch {
            Some(w) => match w.updates.recv().await {
                Some(u) => u,
                None => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }

    /// Waits (at most `timeout`) for the first complete pod list, so that
    /// the first policy applied already covers the pods running now.
    pub async fn wait_for_pod_list(&mut self, timeout: std::time::Duration) {
        if self.pod_watch.is_none() {
            return;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.pods.listed() {
            match tokio::time::timeout_at(deadline, self.next_pod_update()).await {
                Ok(update) => {
                    self.note_pod_update(&update);
                    self.pods.apply(update);
                }
                Err(_) => {
                    // Keep guarding what the last run knew rather than drop
                    // those pods' entries from the pinned maps.
                    let known = state::read_pods(&self.state_dir).unwrap_or_default();
                    tracing::warn!(
                        timeout = %humantime::format_duration(timeout),
                        last_known_pods = known.len(),
                        "no pod list from the Kubernetes API yet; starting with the pods the last run knew, the list replaces them when it arrives"
                    );
                    self.pods.seed(known);
                    return;
                }
            }
        }
        tracing::info!(pods = self.pods.len(), "listed the pods of this node");
        self.save_pods();
    }

    /// Remembers the pods for the next start-up (see `wait_for_pod_list`).
    fn save_pods(&self) {
        let pods: Vec<_> = self.pods.iter().cloned().collect();
        if let Err(e) = state::write_pods(&self.state_dir, &pods) {
            tracing::warn!(dir = %self.state_dir.display(), "cannot remember the pods of this node: {e}");
        }
    }

    /// Takes in `first` and whatever else has queued up, then re-resolves
    /// the guards once.
    pub fn on_pod_update(&mut self, first: PodUpdate, watch: &mut CgroupWatch) {
        let mut changed = false;
        let mut next = Some(first);
        while let Some(update) = next {
            self.note_pod_update(&update);
            changed |= self.pods.apply(update);
            next = self.pod_watch.as_mut().and_then(|w| w.updates.try_recv().ok());
        }
        if changed {
            self.save_pods();
            self.rescan_guards(watch);
            self.publish();
        }
    }

    /// Logs the API going away and coming back, once each.
    fn note_pod_update(&mut self, update: &PodUpdate) {
        match update {
            PodUpdate::Unreachable(e) => {
                self.metrics.kube_watch_errors.fetch_add(1, Ordering::Relaxed);
                if self.api_healthy {
                    tracing::warn!(
                        "Kubernetes API unreachable; pod guards keep covering the pods last known, and the watch retries: {e}"
                    );
                    self.api_healthy = false;
                } else {
                    tracing::debug!("Kubernetes API still unreachable: {e}");
                }
            }
            _ if !self.api_healthy => {
                tracing::info!("Kubernetes API reachable again; pod watch resumed");
                self.api_healthy = true;
            }
            _ => {}
        }
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
        self.follow_pods_for(&compiled)?;
        let ids = self.guard_ids.assign(&compiled)?;
        let cgroups = self.resolver.resolve(&compiled, &self.pods);
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
            watch.watch_parents_of(
                self.resolver.guard_paths(&a.compiled, &self.pods).iter().map(PathBuf::as_path),
            );
        }
    }

    /// Re-resolves guard cgroups and re-applies the policy when any changed.
    pub fn rescan_guards(&mut self, watch: &mut CgroupWatch) {
        self.watch_cgroups(watch);
        let Some(a) = &self.applied else { return };
        let now = self.resolver.resolve(&a.compiled, &self.pods);
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
                if let Some(a) = &mut self.applied {
                    a.cgroups = now;
                }
                self.write_state();
                self.publish();
            }
            Err(e) => tracing::error!("re-applying guards failed; the previous generation stays live: {e}"),
        }
    }

    /// Swaps this agent's programs into the links an earlier agent pinned.
    pub fn adopt_pinned(&mut self) -> Result<(), AgentError> {
        let adopted = self.enforcer.adopt_pinned()?;
        if !adopted.is_empty() {
            tracing::info!(cgroups = adopted.len(), "took over the pinned links of the previous agent");
        }
        // A cgroup an earlier agent guarded that this policy does not.
        let keep =
            self.applied.as_ref().map(|a| a.cgroups.coverage.values().flatten().map(|c| c.id).collect());
        self.enforcer.release_except(&keep.unwrap_or_default());
        Ok(())
    }

    /// Undoes a failed start (see `Enforcer::abandon`).
    pub fn abandon(&mut self) {
        self.enforcer.abandon();
    }

    pub fn guarded_cgroup_count(&self) -> usize {
        self.enforcer.guarded_cgroups().count()
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
        if let Err(e) = state::write_state(&self.state_dir, &s) {
            tracing::warn!(dir = %self.state_dir.display(), "cannot write state for `portguard status`: {e}");
        }
    }

    pub fn log_guards(&self) {
        let Some(a) = &self.applied else { return };
        for g in &a.compiled.guards {
            let covered = a.cgroups.coverage.get(&g.name);
            let state = match (&g.target, covered) {
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
    }
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
) -> Result<crate::bpf::ApplyStats, AgentError> {
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

/// The one-line refusal of pod guards on an agent without an API.
pub fn no_api_message(policy: &Path, guard: &str) -> String {
    format!(
        "{}: guard {guard:?} selects pods, but this agent has no Kubernetes API: give --kube-api URL and --node-name (or NODE_NAME), run in-cluster, or set KUBECONFIG",
        policy.display()
    )
}
