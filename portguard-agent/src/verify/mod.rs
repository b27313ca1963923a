//! Verification: proof that every guard really holds, against the running
//! agent's pinned state. For `portguard verify` and the agent's own
//! periodic verification.
//!
//! - `kernel`: the live slot of each policy map against the compiled
//!   policy, the generation against state.json, each guarded cgroup's
//!   hooks against the programs the agent loaded.
//! - `probe`: a child process in a short-lived cgroup below each guarded
//!   cgroup tries what the rules refuse and what they allow.
//! - `report`: per guard, each check with its result; text and JSON.

mod kernel;
mod probe;
mod report;

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use portguard_common::DenialKey;
pub(crate) use report::{Check, GuardReport, Outcome, Report};

use crate::{
    bpf::{self, DenialCounters, KernelPolicy, PinnedError},
    cgroup,
    policy::{self, CompiledPolicy, PolicyError, Target, dns_name::NamePattern},
    state_file::{self, AgentState},
};

/// Why nothing could be verified (exit status 2).
#[derive(Debug, thiserror::Error)]
pub(crate) enum CannotVerify {
    #[error("no agent state in {}: {source} (is `portguard run --state-dir {}` running?)", dir.display(), dir.display())]
    NoState {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    NotLoaded(#[from] PinnedError),
    #[error("{0}")]
    Policy(#[from] PolicyError),
    #[error("no guard named {name:?} in {policy}")]
    NoGuard { name: String, policy: String },
}

/// Pause between the probes of two cgroups: a host with many guards is
/// probed as a trickle, never as a burst.
pub(crate) const PROBE_GAP: Duration = Duration::from_millis(2);

pub(crate) struct Options<'a> {
    pub(crate) state_dir: &'a Path,
    /// Default: the agent's, from state.json.
    pub(crate) bpffs: Option<&'a Path>,
    /// Default: the agent's policy file, from state.json.
    pub(crate) policy: Option<&'a Path>,
    /// Only this guard.
    pub(crate) guard: Option<&'a str>,
    /// An audit trail whose hash chain to check.
    pub(crate) trail: Option<&'a Path>,
    pub(crate) probe_gap: Duration,
    /// Told each probe cgroup's id before its probe runs.
    pub(crate) on_probe_cgroup: &'a dyn Fn(u64),
    /// Where the agent tallies the counts its own probes add to the
    /// kernel's denial counters, which it leaves out of what it exports.
    pub(crate) own_counts: Option<&'a OwnProbeCounts>,
}

/// The counts the agent's own probes added to each kernel denial key
/// (reason folded, as exported). A probe holds the lock from before it
/// reads the counters until it has tallied what it added, and the metrics
/// exporter reads the kernel's counters under the same lock: so an export
/// never contains a probe's count that is taken out again by the next one
/// (a counter that went down would read as a reset, and a rate spike).
#[derive(Debug, Default)]
pub(crate) struct OwnProbeCounts(std::sync::Mutex<std::collections::BTreeMap<DenialKey, u64>>);

impl OwnProbeCounts {
    pub(crate) fn lock(&self) -> OwnProbeTally<'_> {
        OwnProbeTally(self.0.lock().expect("probe counts lock"))
    }
}

/// [`OwnProbeCounts`], held.
pub(crate) struct OwnProbeTally<'a>(std::sync::MutexGuard<'a, std::collections::BTreeMap<DenialKey, u64>>);

impl OwnProbeTally<'_> {
    pub(crate) fn add(&mut self, key: DenialKey, n: u64) {
        if n > 0 {
            *self.0.entry(DenialKey { reason: 0, ..key }).or_default() += n;
        }
    }

    /// What the probes added to `key` (its reason folded).
    pub(crate) fn get(&self, key: &DenialKey) -> u64 {
        self.0.get(&DenialKey { reason: 0, ..*key }).copied().unwrap_or(0)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&DenialKey, &u64)> {
        self.0.iter()
    }
}

/// A cgroup a guard covers, as the agent recorded it and as it is now.
struct Covered {
    rel: String,
    recorded: Option<u64>,
    now: Option<u64>,
}

fn covered(g: &policy::CompiledGuard, state: &AgentState) -> Vec<Covered> {
    let recorded = state.guards.iter().find(|s| s.name == g.name);
    let now = |rel: &str| cgroup::cgroup_id(&cgroup::join(&state.cgroup_root, rel)).ok().flatten();
    match &g.target {
        Target::Cgroup(path) => {
            vec![Covered { rel: path.clone(), recorded: recorded.and_then(|s| s.cgroup_id), now: now(path) }]
        }
        // Pods are known from the agent's last resolution: verify cannot
        // ask the Kubernetes API, so a pod the agent has not seen is not here.
        Target::Pods(_) => recorded
            .into_iter()
            .flat_map(|s| &s.pods)
            .map(|p| Covered { rel: p.cgroup.clone(), recorded: Some(p.cgroup_id), now: now(&p.cgroup) })
            .collect(),
    }
}

pub(crate) fn verify(opts: &Options<'_>) -> Result<Report, CannotVerify> {
    let started = Instant::now();
    let started_at = state_file::now_unix();
    let state = state_file::read_state(opts.state_dir)
        .map_err(|source| CannotVerify::NoState { dir: opts.state_dir.to_owned(), source })?;
    let bpffs = opts.bpffs.unwrap_or(&state.bpffs);
    let policy_path = opts.policy.unwrap_or(&state.policy);
    let (_, compiled) = policy::load(policy_path)?;
    if let Some(name) = opts.guard
        && !compiled.guards.iter().any(|g| g.name == name)
    {
        return Err(CannotVerify::NoGuard {
            name: name.to_owned(),
            policy: policy_path.display().to_string(),
        });
    }
    let (generation, mut live) = bpf::live_policy(bpffs)?;
    let live_names = bpf::live_dns_names(bpffs)?;
    let counters = DenialCounters::open(bpffs)?;
    let learned_table = bpf::LearnedAddresses::open(bpffs).ok();

    let ids: HashMap<String, u32> = state
        .guards
        .iter()
        .filter(|s| compiled.guards.iter().any(|g| g.name == s.name))
        .map(|s| (s.name.clone(), s.id))
        .collect();
    let coverage: HashMap<String, Vec<Covered>> =
        compiled.guards.iter().map(|g| (g.name.clone(), covered(g, &state))).collect();
    let cgroup_ids: HashMap<String, Vec<u64>> =
        coverage.iter().map(|(n, c)| (n.clone(), c.iter().filter_map(|c| c.now).collect())).collect();
    let applied = CompiledPolicy {
        guards: compiled.guards.iter().filter(|g| ids.contains_key(&g.name)).cloned().collect(),
    };
    let expected = KernelPolicy::build(&applied, &ids, &cgroup_ids);
    // The kernel holds names as hashes: name the live ones from the policy
    // (a hash the policy does not give is shown as one).
    let by_hash: HashMap<u64, &str> = (applied.guards.iter())
        .flat_map(|g| g.names.keys().map(|(_, n)| n.as_str()))
        .map(|n| (NamePattern::parse(n).expect("a compiled name").kernel_hash(&live_names.key), n))
        .collect();
    live.names = (live_names.entries.into_iter())
        .map(|((guard_id, proto, hash), ports)| {
            let name = by_hash.get(&hash).map_or_else(|| format!("(hash {hash:016x})"), |n| (*n).to_owned());
            ((guard_id, proto, name), ports)
        })
        .collect();

    let mut host = vec![kernel::unknown_entries(&live, &state.guards.iter().map(|s| s.id).collect())];
    host.extend(trust_checks(policy_path, opts.trail));
    let mut guards = Vec::new();
    let mut probed = false;
    for g in compiled.guards.iter().filter(|g| opts.guard.is_none_or(|n| n == g.name)) {
        let covered = &coverage[&g.name];
        let rels = covered.iter().filter(|c| c.now.is_some()).map(|c| c.rel.clone()).collect();
        let Some(&guard_id) = ids.get(&g.name) else {
            let check = Check::new(
                "applied",
                &g.name,
                Outcome::Fail,
                "a guard the agent applied",
                format!(
                    "the agent's state names no guard {:?}: the policy changed since it was applied?",
                    g.name
                ),
            );
            guards.push(GuardReport::new(&g.name, g.mode.as_str(), rels, vec![check]));
            continue;
        };
        let mut checks = vec![Check::new(
            "generation",
            "PG_CONFIG",
            if state.generation == generation { Outcome::Pass } else { Outcome::Fail },
            format!("generation {} (the agent's, state.json)", state.generation),
            format!("generation {generation} in the kernel"),
        )];
        checks.extend(covered.iter().map(cgroup_check));
        let now: BTreeSet<u64> = covered.iter().filter_map(|c| c.now).collect();
        checks.extend(kernel::map_checks(&expected, &live, guard_id, &now));
        let root = &state.cgroup_root;
        for c in covered {
            let Some(id) = c.now else { continue };
            checks.push(kernel::hook_check(bpffs, &cgroup::join(root, &c.rel), &c.rel, id, &state.programs));
        }
        let target = probe::Guard { guard: g, guard_id };
        for c in covered.iter().filter(|c| c.now.is_some()) {
            let cgroup_id = c.now.unwrap_or_default();
            // An entry of another epoch or expired allows nothing: only a
            // live one makes an address learned.
            let learned = |addr| {
                learned_table
                    .as_ref()
                    .is_some_and(|l| matches!(l.state(cgroup_id, addr), bpf::LearnedState::Live { .. }))
            };
            if probed {
                std::thread::sleep(opts.probe_gap);
            }
            probed = true;
            checks.extend(probe::probe_cgroup(
                &target,
                &cgroup::join(root, &c.rel),
                &c.rel,
                &counters,
                opts.on_probe_cgroup,
                opts.own_counts,
                &learned,
            ));
        }
        guards.push(GuardReport::new(&g.name, g.mode.as_str(), rels, checks));
    }
    // The agent may have applied a change meanwhile: then the comparison
    // above mixed two generations and proves nothing either way.
    let after = bpf::live_generation(bpffs)?;
    if after != generation {
        host.push(Check::new(
            "generation",
            "during verification",
            Outcome::Fail,
            format!("generation {generation} throughout"),
            format!("generation {after} at the end: the agent applied a change meanwhile; verify again"),
        ));
    }
    Ok(Report {
        verified: false,
        generation,
        policy: policy_path.display().to_string(),
        started_at,
        duration_ms: started.elapsed().as_millis() as u64,
        host,
        guards,
    }
    .finish())
}

fn cgroup_check(c: &Covered) -> Check {
    match (c.recorded, c.now) {
        (_, None) => Check::new(
            "cgroup",
            &c.rel,
            Outcome::Skip,
            "",
            "does not exist now: the guard waits for it, nothing to verify there",
        ),
        (Some(r), Some(n)) if r == n => {
            Check::new("cgroup", &c.rel, Outcome::Pass, format!("cgroup id {r}"), format!("cgroup id {n}"))
        }
        (r, Some(n)) => Check::new(
            "cgroup",
            &c.rel,
            Outcome::Fail,
            match r {
                Some(r) => format!("the cgroup the agent guards (id {r})"),
                None => "a cgroup the agent guards".to_owned(),
            },
            format!("cgroup id {n}, which the agent has not guarded (created or recreated since)"),
        ),
    }
}

/// The guard's own chain of trust: who could change the policy file (the
/// agent's own rule, `policy::permissions`), and, when a trail is given,
/// whether its hash chain is intact (`trail::chain`).
fn trust_checks(policy_path: &Path, trail: Option<&Path>) -> Vec<Check> {
    let permissions = match crate::policy::permissions::check(policy_path) {
        Ok(()) => (Outcome::Pass, "only root (or the agent's user) can change it".to_owned()),
        Err(e) => (Outcome::Fail, e.to_string()),
    };
    let chain = match trail {
        None => (Outcome::Skip, "no trail given (--trail FILE)".to_owned()),
        Some(path) => match crate::trail::chain::verify(&crate::trail::chain::series(path)) {
            Ok(r) if r.intact() => {
                (Outcome::Pass, format!("{} records intact, head {}", r.records, r.head.unwrap_or_default()))
            }
            Ok(r) => (Outcome::Fail, r.breaks.first().map_or_else(String::new, ToString::to_string)),
            Err(e) => (Outcome::Fail, e.to_string()),
        },
    };
    vec![
        Check::new(
            "policy file permissions",
            policy_path.display().to_string(),
            permissions.0,
            "writable by root (or the agent's user) only, up to /",
            permissions.1,
        ),
        Check::new(
            "trail chain",
            trail.map_or_else(|| "audit trail".to_owned(), |p| p.display().to_string()),
            chain.0,
            "an intact hash chain",
            chain.1,
        ),
    ]
}
