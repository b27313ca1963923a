//! The pods of this node, for pod guards: whether the agent has a
//! Kubernetes API at all, the pod watch, and the API's health as the log
//! reports it.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use super::DaemonError;
use crate::{
    cli::RunArgs,
    metrics::Metrics,
    pods::{self, PodIndex, PodUpdate, PodWatch},
    policy::{CompiledPolicy, Target},
    state_file,
};

/// The Kubernetes API, when the agent was given one: pod guards need it.
pub(crate) struct PodApi {
    client: kube::Client,
    node_name: String,
}

/// The Kubernetes API client, when one is configured. A policy with pod
/// guards requires one: without it the agent exits 2 before it loads
/// anything, rather than leave those pods open.
pub(crate) async fn pod_api(
    args: &RunArgs,
    compiled: &CompiledPolicy,
) -> Result<Option<PodApi>, DaemonError> {
    let home_config =
        std::env::var_os("HOME").is_some_and(|h| std::path::Path::new(&h).join(".kube/config").is_file());
    let configured = args.kube_api.is_some()
        || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        || std::env::var_os("KUBECONFIG").is_some()
        || home_config;
    let needed = compiled.guards.iter().find(|g| matches!(g.target, Target::Pods(_)));
    match (&args.node_name, configured, needed) {
        (Some(node), true, _) if !node.is_empty() => {
            let settings = pods::ApiSettings { url: args.kube_api.clone() };
            match pods::connect(&settings).await {
                Ok(client) => Ok(Some(PodApi { client, node_name: node.clone() })),
                Err(e) if needed.is_some() => Err(e.into()),
                Err(e) => {
                    tracing::warn!(
                        "Kubernetes API not usable; a policy with pod guards would be refused: {e}"
                    );
                    Ok(None)
                }
            }
        }
        (_, _, Some(g)) => Err(DaemonError::Guard(no_api_message(&args.policy, &g.name))),
        _ => Ok(None),
    }
}

/// The one-line refusal of pod guards on an agent without an API.
fn no_api_message(policy: &Path, guard: &str) -> String {
    format!(
        "{}: guard {guard:?} selects pods, but this agent has no Kubernetes API: give --kube-api URL and --node-name (or NODE_NAME), run in-cluster, or set KUBECONFIG",
        policy.display()
    )
}

/// The pods of this node as the agent knows them, and the watch that keeps
/// them current while the policy has pod guards.
pub(crate) struct NodePods {
    api: Option<PodApi>,
    /// Runs while the policy has pod guards.
    watch: Option<PodWatch>,
    /// The pods of this node as last heard from the API.
    index: PodIndex,
    /// False from a watch error until the next update arrives.
    api_healthy: bool,
    policy_path: PathBuf,
    state_dir: PathBuf,
    metrics: Arc<Metrics>,
}

impl NodePods {
    pub(crate) fn new(api: Option<PodApi>, args: &RunArgs, metrics: Arc<Metrics>) -> NodePods {
        NodePods {
            api,
            watch: None,
            index: PodIndex::default(),
            api_healthy: true,
            policy_path: args.policy.clone(),
            state_dir: args.state_dir.clone(),
            metrics,
        }
    }

    pub(crate) fn index(&self) -> &PodIndex {
        &self.index
    }

    /// How many pods the agent knows, while it watches them.
    pub(crate) fn watched(&self) -> Option<usize> {
        self.watch.as_ref().map(|_| self.index.len())
    }

    /// Starts the pod watch when `compiled` has pod guards (and stops it
    /// when it has none). Pod guards without an API are refused.
    pub(crate) fn follow_for(&mut self, compiled: &CompiledPolicy) -> Result<(), DaemonError> {
        if !compiled.has_pod_guards() {
            self.watch = None;
            self.index = PodIndex::default();
            return Ok(());
        }
        let Some(api) = &self.api else {
            let guard = compiled.guards.iter().find(|g| matches!(g.target, Target::Pods(_)));
            return Err(DaemonError::Guard(no_api_message(
                &self.policy_path,
                guard.map_or("?", |g| g.name.as_str()),
            )));
        };
        if self.watch.is_none() {
            tracing::info!(node = %api.node_name, "watching the pods of this node for pod guards");
            self.watch = Some(pods::spawn_watch(api.client.clone(), &api.node_name));
        }
        Ok(())
    }

    /// The next pod update; never resolves while no watch runs.
    pub(crate) async fn next_update(&mut self) -> PodUpdate {
        match &mut self.watch {
            Some(w) => match w.updates.recv().await {
                Some(u) => u,
                None => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }

    /// Waits (at most `timeout`) for the first complete pod list, so that
    /// the first policy applied already covers the pods running now.
    pub(crate) async fn wait_for_list(&mut self, timeout: Duration) {
        if self.watch.is_none() {
            return;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.index.listed() {
            match tokio::time::timeout_at(deadline, self.next_update()).await {
                Ok(update) => {
                    self.note_update(&update);
                    self.index.apply(update);
                }
                Err(_) => {
                    // Keep guarding what the last run knew rather than drop
                    // those pods' entries from the pinned maps.
                    let known = state_file::read_pods(&self.state_dir).unwrap_or_default();
                    tracing::warn!(
                        timeout = %humantime::format_duration(timeout),
                        last_known_pods = known.len(),
                        "no pod list from the Kubernetes API yet; starting with the pods the last run knew, the list replaces them when it arrives"
                    );
                    self.index.seed(known);
                    return;
                }
            }
        }
        tracing::info!(pods = self.index.len(), "listed the pods of this node");
        self.save();
    }

    /// Takes in `first` and whatever else has queued up; true when the
    /// pods changed (the guards need re-resolving).
    pub(crate) fn take_updates(&mut self, first: PodUpdate) -> bool {
        let mut changed = false;
        let mut next = Some(first);
        while let Some(update) = next {
            self.note_update(&update);
            changed |= self.index.apply(update);
            next = self.watch.as_mut().and_then(|w| w.updates.try_recv().ok());
        }
        if changed {
            self.save();
        }
        changed
    }

    /// Remembers the pods for the next start-up (see `wait_for_list`).
    fn save(&self) {
        let pods: Vec<_> = self.index.iter().cloned().collect();
        if let Err(e) = state_file::write_pods(&self.state_dir, &pods) {
            tracing::warn!(dir = %self.state_dir.display(), "cannot remember the pods of this node: {e}");
        }
    }

    /// Logs the API going away and coming back, once each.
    fn note_update(&mut self, update: &PodUpdate) {
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
}
