//! Prometheus metrics, health and readiness, served on `--metrics-addr`.
//!
//! Counts of decisions come from the kernel's per-CPU counters, read at
//! scrape time: they are exact whatever happened to the event stream.
//! Everything the agent itself knows (reloads, policy, guards) is kept in
//! [`Metrics`] and updated as it changes.

mod collector;
mod server;

use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64},
    },
};

pub(crate) use server::serve;

use crate::{bpf::KernelCounters, inventory::ListenerKey, verify::OwnProbeCounts};

/// What the agent knows about the policy it applied.
#[derive(Debug, Clone, Default)]
pub(crate) struct PolicySummary {
    pub(crate) file: String,
    pub(crate) sha256: String,
    pub(crate) generation: u64,
    /// Guard names by guard id.
    pub(crate) guard_names: HashMap<u32, String>,
    /// Guard names by the guarded cgroups they cover now.
    pub(crate) guard_of_cgroup: HashMap<u64, String>,
    /// Each guarded cgroup's resolver epoch in the live policy.
    pub(crate) dns_epochs: HashMap<u64, u32>,
    pub(crate) guards: usize,
    pub(crate) guarded_cgroups: usize,
    /// Pods of this node the agent knows, while it watches them.
    pub(crate) kube_pods: Option<usize>,
    /// Entries in each policy map, both slots.
    pub(crate) map_entries: Vec<(&'static str, usize)>,
}

/// What the agent's last verifications found.
#[derive(Debug, Clone, Default)]
pub(crate) struct VerifySummary {
    /// Each guard of the last full verification: whether it holds.
    pub(crate) guards: std::collections::BTreeMap<String, bool>,
    /// Checks run since start, by result (pass, fail, skip).
    pub(crate) checks: std::collections::BTreeMap<&'static str, u64>,
    /// Seconds since the Unix epoch when the last full verification ended.
    pub(crate) last_full: Option<u64>,
    pub(crate) last_duration_ms: u64,
}

#[derive(Debug)]
pub(crate) struct Metrics {
    pub(crate) ready: AtomicBool,
    pub(crate) reloads_applied: AtomicU64,
    pub(crate) reloads_rejected: AtomicU64,
    /// Events read from the ring buffer by the agent.
    pub(crate) events_received: AtomicU64,
    /// Failed list/watch calls to the Kubernetes API (each is retried).
    pub(crate) kube_watch_errors: AtomicU64,
    /// The highest learned-table eviction count reported (it is derived
    /// from two reads; a counter never steps back).
    pub(crate) dns_evictions: AtomicU64,
    /// The agent's own lookups (`resolve = "agent"`), by result.
    pub(crate) dns_agent_lookups_answered: AtomicU64,
    pub(crate) dns_agent_lookups_failed: AtomicU64,
    pub(crate) policy: Mutex<PolicySummary>,
    /// The live port inventory, counted.
    pub(crate) listeners: Mutex<std::collections::BTreeMap<ListenerKey, i64>>,
    kernel: Mutex<KernelCounters>,
    pub(crate) verification: Mutex<VerifySummary>,
    /// Counts the agent's own verification probes added to the kernel's
    /// denial counters: left out of `portguard_denials_total` and its kin,
    /// so alerts see workloads only.
    pub(crate) own_probes: OwnProbeCounts,
}

impl Metrics {
    pub(crate) fn new(kernel: KernelCounters) -> Metrics {
        Metrics {
            ready: AtomicBool::new(false),
            reloads_applied: AtomicU64::new(0),
            reloads_rejected: AtomicU64::new(0),
            events_received: AtomicU64::new(0),
            kube_watch_errors: AtomicU64::new(0),
            dns_evictions: AtomicU64::new(0),
            dns_agent_lookups_answered: AtomicU64::new(0),
            dns_agent_lookups_failed: AtomicU64::new(0),
            policy: Mutex::new(PolicySummary::default()),
            listeners: Mutex::new(Default::default()),
            kernel: Mutex::new(kernel),
            verification: Mutex::new(VerifySummary::default()),
            own_probes: OwnProbeCounts::default(),
        }
    }

    pub(crate) fn set_policy(&self, summary: PolicySummary) {
        *self.policy.lock().expect("metrics lock") = summary;
    }
}
