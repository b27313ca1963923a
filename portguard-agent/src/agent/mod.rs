//! `portguard run`: the daemon.
//!
//! Start-up validates everything (policy, cgroup root, bpffs, kernel
//! support) before it changes anything; then it attaches, applies the
//! policy, and loops: events out, cgroup changes and SIGHUP in.

mod cgroup_watch;
mod denials;
mod guards;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::signal::unix::{SignalKind, signal};

use crate::{
    EXIT_BAD_INPUT,
    bpf::{Enforcer, EventStream, GuardIds, KernelPolicy, PolicyMaps},
    cgroup,
    cli::RunArgs,
    policy::{self, CompiledPolicy},
};

use self::{cgroup_watch::CgroupWatch, denials::DenialLog, guards::CgroupResolver};

/// How often guard cgroups are re-resolved even without an inotify event,
/// so a guard whose cgroup appears, or is removed and recreated (a systemd
/// restart), is (re)applied.
const CGROUP_RESCAN: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Policy(#[from] policy::PolicyError),
    #[error("cgroup root: {0}")]
    Cgroup(#[from] cgroup::CgroupError),
    #[error("{0}")]
    Guard(String),
    #[error(transparent)]
    Load(#[from] crate::bpf::LoadError),
    #[error("policy maps: {0}")]
    Maps(#[from] crate::bpf::MapsError),
    #[error("events: {0}")]
    Events(#[from] crate::bpf::EventsError),
    #[error("cgroup watch: {0}")]
    Watch(String),
    #[error("signals: {0}")]
    Signal(#[source] std::io::Error),
    #[error("must run as root (or with CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN): effective uid is {0}")]
    NotRoot(u32),
}

impl AgentError {
    pub fn exit_code(&self) -> u8 {
        match self {
            AgentError::Policy(_)
            | AgentError::Cgroup(_)
            | AgentError::Guard(_)
            | AgentError::Load(_)
            | AgentError::NotRoot(_) => EXIT_BAD_INPUT,
            AgentError::Maps(_) | AgentError::Events(_) | AgentError::Signal(_) | AgentError::Watch(_) => 1,
        }
    }
}

/// The policy currently applied, with what is needed to re-apply it.
struct Applied {
    path: PathBuf,
    sha256: String,
    compiled: CompiledPolicy,
    ids: HashMap<String, u32>,
    cgroups: HashMap<String, u64>,
}

pub async fn run(args: RunArgs) -> Result<(), AgentError> {
    // Everything that can be wrong with the input is checked before the
    // kernel is touched.
    let (text, (_policy, compiled)) = read_policy(&args.policy)?;
    let root = match &args.cgroup_root {
        Some(r) => r.clone(),
        None => cgroup::cgroup2_mount()?,
    };
    cgroup::ensure_cgroup2_dir(&root)?;
    let resolver = CgroupResolver::new(root.clone())?;
    resolver.check_depths(&compiled).map_err(AgentError::Guard)?;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 && !has_bpf_caps() {
        return Err(AgentError::NotRoot(euid));
    }

    let mut enforcer = Enforcer::load_and_attach(&root, &args.bpffs)?;
    let mut maps = PolicyMaps::open(&mut enforcer.ebpf)?;
    let mut events = EventStream::open(&mut enforcer.ebpf)?;
    tracing::info!(
        cgroup_root = %root.display(),
        bpffs = %args.bpffs.display(),
        "attached bind4/6, connect4/6, sendmsg4/6, sock_create and sock_release"
    );

    let mut guard_ids = GuardIds::default();
    let mut applied = apply(&mut maps, &mut guard_ids, &resolver, &args.policy, &text, compiled)?;
    log_guards(&applied);
    tracing::info!(
        generation = maps.generation(),
        policy = %args.policy.display(),
        sha256 = %applied.sha256,
        "portguard is enforcing"
    );

    let mut denial_log = DenialLog::new(root.clone());
    let mut sigterm = signal(SignalKind::terminate()).map_err(AgentError::Signal)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(AgentError::Signal)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(AgentError::Signal)?;
    let mut rescan = tokio::time::interval(CGROUP_RESCAN);
    let mut watch = CgroupWatch::new().map_err(|e| AgentError::Watch(e.to_string()))?;
    watch.watch_parents_of(resolver.guard_paths(&applied.compiled).iter().map(PathBuf::as_path));
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = sighup.recv() => {
                reload(&mut maps, &mut guard_ids, &resolver, &mut applied);
            }
            _ = rescan.tick() => rescan_guards(&mut maps, &resolver, &mut applied, &mut watch),
            _ = watch.changed() => rescan_guards(&mut maps, &resolver, &mut applied, &mut watch),
            r = events.next_batch(&mut batch) => {
                r.map_err(|e| AgentError::Events(e.into()))?;
                for e in batch.drain(..) {
                    denial_log.log(&e, &applied.ids);
                }
            }
        }
    }
    tracing::info!(
        bpffs = %args.bpffs.display(),
        "stopping; enforcement stays in place (pinned). `portguard unload` removes it"
    );
    Ok(())
}

/// Re-resolves guard cgroups and re-applies the policy when any changed.
fn rescan_guards(
    maps: &mut PolicyMaps,
    resolver: &CgroupResolver,
    applied: &mut Applied,
    watch: &mut CgroupWatch,
) {
    let now = resolver.resolve(&applied.compiled);
    watch.watch_parents_of(resolver.guard_paths(&applied.compiled).iter().map(PathBuf::as_path));
    if now == applied.cgroups {
        return;
    }
    let kernel = KernelPolicy::build(&applied.compiled, &applied.ids, &now);
    match maps.apply(kernel) {
        Ok(stats) => {
            // Logged once the kernel has it: "appeared" means "guarded".
            log_cgroup_changes(&applied.cgroups, &now);
            applied.cgroups = now;
            tracing::info!(
                generation = stats.generation,
                written = stats.written,
                deleted = stats.deleted,
                "guards re-applied"
            );
        }
        Err(e) => tracing::error!("re-applying guards failed; the previous generation stays live: {e}"),
    }
}

fn has_bpf_caps() -> bool {
    // CAP_BPF (39) and CAP_NET_ADMIN (12) in the effective set.
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return false };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 39) != 0 && caps & (1 << 12) != 0)
}

fn read_policy(path: &Path) -> Result<(String, (policy::Policy, CompiledPolicy)), AgentError> {
    let text = std::fs::read_to_string(path).map_err(|e| policy::PolicyError {
        file: path.display().to_string(),
        location: None,
        message: format!("cannot read policy: {e}"),
    })?;
    let parsed = policy::parse_and_compile(&path.display().to_string(), &text)?;
    Ok((text, parsed))
}

fn apply(
    maps: &mut PolicyMaps,
    guard_ids: &mut GuardIds,
    resolver: &CgroupResolver,
    path: &Path,
    text: &str,
    compiled: CompiledPolicy,
) -> Result<Applied, AgentError> {
    let ids = guard_ids.assign(&compiled)?;
    let cgroups = resolver.resolve(&compiled);
    let kernel = KernelPolicy::build(&compiled, &ids, &cgroups);
    let stats = maps.apply(kernel)?;
    tracing::debug!(
        generation = stats.generation,
        written = stats.written,
        deleted = stats.deleted,
        "policy applied"
    );
    Ok(Applied { path: path.to_owned(), sha256: policy::sha256_hex(text.as_bytes()), compiled, ids, cgroups })
}

/// SIGHUP: re-read the policy; a bad one is refused and the live one stays.
fn reload(maps: &mut PolicyMaps, guard_ids: &mut GuardIds, resolver: &CgroupResolver, applied: &mut Applied) {
    let result = read_policy(&applied.path).and_then(|(text, (_p, compiled))| {
        resolver.check_depths(&compiled).map_err(AgentError::Guard)?;
        apply(maps, guard_ids, resolver, &applied.path.clone(), &text, compiled)
    });
    match result {
        Ok(new) => {
            *applied = new;
            log_guards(applied);
            tracing::info!(generation = maps.generation(), sha256 = %applied.sha256, "policy reloaded");
        }
        Err(e) => tracing::error!("policy reload refused, the previous policy stays enforced: {e}"),
    }
}

fn log_guards(applied: &Applied) {
    for g in &applied.compiled.guards {
        let state = match applied.cgroups.get(&g.name) {
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
