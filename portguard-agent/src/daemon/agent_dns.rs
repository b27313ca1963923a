//! Names the agent resolves itself (`resolve = "agent"` on a connect
//! rule), for workloads whose lookups the kernel cannot read: DNS over TLS
//! or HTTPS inside the application. Every few seconds, and at once when
//! the policy or the cgroups it covers change, the agent looks each such
//! name up (A and AAAA) with its own resolver and notes the answers in the
//! kernel's learned table for every cgroup the name's guard covers, marked
//! as the agent's, as if the workload had received them: the same TTL
//! floor, cap and grace, under the cgroup's resolver epoch.
//!
//! Unlike what workloads learn, this depends on the agent: while it is
//! down, what it noted expires with its TTL (at least 35 s) and is not
//! renewed.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use hickory_resolver::{
    TokioResolver,
    config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts},
    net::runtime::TokioRuntimeProvider,
};
use portguard_common::dns;
use tokio::sync::watch;

use crate::{
    bpf::{LearnedAddresses, boot_ns},
    metrics::Metrics,
};

/// How often every name is looked up again: well inside the 30 s floor, so
/// that what the agent noted never lapses while it runs.
const EVERY: Duration = Duration::from_secs(10);

/// What to resolve, for whom: rebuilt by the applied policy on every change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) targets: Vec<Target>,
}

/// One guarded cgroup and the names its guard has the agent resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) cgroup_id: u64,
    pub(crate) epoch: u32,
    /// (name, its kernel identity).
    pub(crate) names: Vec<(String, u64)>,
}

/// The agent's resolver: `server` (IP:PORT), else the nameservers of
/// /etc/resolv.conf. No /etc/hosts and no cache: the answer and its TTL
/// are the resolver's, as a workload would get them.
fn resolver(server: Option<SocketAddr>) -> Result<TokioResolver, String> {
    let mut builder = match server {
        Some(addr) => {
            let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
            for c in &mut ns.connections {
                c.port = addr.port();
            }
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![ns]),
                TokioRuntimeProvider::default(),
            )
        }
        None => TokioResolver::builder_tokio().map_err(|e| format!("/etc/resolv.conf: {e}"))?,
    };
    let opts: &mut ResolverOpts = builder.options_mut();
    opts.cache_size = 0;
    opts.use_hosts_file = ResolveHosts::Never;
    opts.ndots = 0;
    builder.build().map_err(|e| e.to_string())
}

/// Starts the lookups; they follow `plan` until the agent exits. A resolver
/// that cannot be configured is an error at start-up only when a rule
/// needs it (`plan` names something to resolve).
pub(crate) fn spawn(
    server: Option<SocketAddr>,
    bpffs: &Path,
    mut plan: watch::Receiver<Plan>,
    metrics: Arc<Metrics>,
) {
    let bpffs = bpffs.to_owned();
    tokio::spawn(async move {
        let mut resolver = None;
        let mut table = None;
        let mut failing = BTreeSet::new();
        loop {
            let current = plan.borrow_and_update().clone();
            if !current.targets.is_empty() {
                if resolver.is_none() {
                    resolver = resolver_or_log(server);
                }
                if table.is_none() {
                    table = LearnedAddresses::open(&bpffs)
                        .inspect_err(|e| tracing::error!("names the agent resolves: {e}"))
                        .ok();
                }
                if let (Some(r), Some(t)) = (&resolver, &mut table) {
                    round(r, t, &current, &metrics, &mut failing).await;
                }
            }
            tokio::select! {
                changed = plan.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(EVERY) => {}
            }
        }
    });
}

fn resolver_or_log(server: Option<SocketAddr>) -> Option<TokioResolver> {
    resolver(server).inspect_err(|e| tracing::error!("names the agent resolves: no resolver: {e}")).ok()
}

/// Looks every name of `plan` up once and notes its addresses for each
/// cgroup that wants it. A name that fails keeps what it noted before,
/// until that expires; the failure is logged when it starts and ends.
async fn round(
    resolver: &TokioResolver,
    table: &mut LearnedAddresses,
    plan: &Plan,
    metrics: &Metrics,
    failing: &mut BTreeSet<String>,
) {
    let names: BTreeSet<&str> =
        plan.targets.iter().flat_map(|t| t.names.iter().map(|(n, _)| n.as_str())).collect();
    let mut answers: BTreeMap<&str, (Vec<IpAddr>, u32)> = BTreeMap::new();
    for name in names {
        // Fully qualified: never expanded by a search domain.
        match resolver.lookup_ip(format!("{name}.")).await {
            Ok(lookup) => {
                metrics.dns_agent_lookups_answered.fetch_add(1, Ordering::Relaxed);
                let ttl = lookup.valid_until().saturating_duration_since(Instant::now()).as_secs();
                answers.insert(name, (lookup.iter().collect(), u32::try_from(ttl).unwrap_or(u32::MAX)));
                if failing.remove(name) {
                    tracing::info!(name, "the agent resolves this name again");
                }
            }
            Err(e) => {
                metrics.dns_agent_lookups_failed.fetch_add(1, Ordering::Relaxed);
                if failing.insert(name.to_owned()) {
                    tracing::warn!(name, "the agent cannot resolve this name: {e}");
                }
            }
        }
    }
    let now = boot_ns();
    for t in &plan.targets {
        for (name, hash) in &t.names {
            let Some((addrs, ttl)) = answers.get(name.as_str()) else { continue };
            for addr in addrs {
                if let Err(e) =
                    table.note_by_agent(t.cgroup_id, *addr, t.epoch, *hash, dns::expiry(now, *ttl))
                {
                    tracing::warn!(name, %addr, cgroup_id = t.cgroup_id, "cannot note an address the agent resolved: {e}");
                }
            }
        }
    }
}
