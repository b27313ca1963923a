//! `portguard run`: the daemon.
//!
//! Start-up checks everything that can be wrong with the input (policy,
//! cgroup root, privileges) before it touches the kernel, loads and
//! verifies the programs, writes the policy into the maps, and only then
//! puts the programs on the hooks. After that it loops: denial events out;
//! policy changes, SIGHUP and cgroup changes in.

mod cgroup_watch;
mod daemon;
mod denials;
mod guards;
mod listeners;
mod policy_watch;
mod sd_notify;
mod sinks;
pub mod state;
pub mod workload;

use std::{
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use tokio::signal::unix::{SignalKind, signal};

use self::{
    cgroup_watch::CgroupWatch,
    daemon::{Daemon, PodApi},
    denials::DenialLog,
    guards::CgroupResolver,
    sinks::{Sinks, guard_names, write_records},
};
use crate::{
    EXIT_BAD_INPUT,
    bpf::{DecodedEvent, Enforcer, EventStream, KernelCounters, PolicyMaps, PortChange},
    cgroup,
    cli::RunArgs,
    metrics::{self, Metrics},
    pods, policy,
    policy::{CompiledPolicy, Target},
    trail::AuditTrail,
};
use portguard_common::map_names;

/// How often ports that were live before the agent started are checked for
/// having closed (their close raises no kernel event).
const SEEDED_PORTS_RECHECK: Duration = Duration::from_secs(30);

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
    #[error("{0}")]
    Kube(#[from] pods::WatchError),
    #[error(transparent)]
    Load(#[from] crate::bpf::LoadError),
    #[error("policy maps: {0}")]
    Maps(#[from] crate::bpf::MapsError),
    #[error("events: {0}")]
    Events(#[from] crate::bpf::EventsError),
    #[error("watching {what}: {source}")]
    Watch {
        what: String,
        #[source]
        source: notify::Error,
    },
    #[error("state directory {dir}: {source}")]
    State {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel counters: {0}")]
    Counters(#[from] crate::bpf::PinnedError),
    #[error("metrics endpoint {addr}: {source}")]
    MetricsAddr {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("audit trail {path}: {source}")]
    Trail {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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
            | AgentError::Kube(_)
            | AgentError::Load(_)
            | AgentError::NotRoot(_)
            | AgentError::MetricsAddr { .. }
            | AgentError::Trail { .. } => EXIT_BAD_INPUT,
            AgentError::Maps(_)
            | AgentError::Events(_)
            | AgentError::Signal(_)
            | AgentError::Watch { .. }
            | AgentError::State { .. }
            | AgentError::Counters(_) => 1,
        }
    }
}

pub async fn run(args: RunArgs) -> Result<(), AgentError> {
    let (text, policy, compiled) = daemon::read_policy(&args.policy)?;
    let mount = cgroup::cgroup2_mount()?;
    let root = match &args.cgroup_root {
        Some(r) => r.clone(),
        None => mount.clone(),
    };
    cgroup::ensure_cgroup2_dir(&root)?;
    let resolver = CgroupResolver::new(root.clone(), &mount);
    resolver.check_depths(&compiled).map_err(AgentError::Guard)?;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 && !has_bpf_caps() {
        return Err(AgentError::NotRoot(euid));
    }
    let pod_api = pod_api(&args, &compiled).await?;

    let mut trail = AuditTrail::open(&args.audit_trail, args.audit_trail_max_bytes, args.audit_trail_keep)
        .map_err(|source| AgentError::Trail { path: args.audit_trail.clone(), source })?;
    let root_in_mount =
        root.strip_prefix(&mount).map_or_else(|_| "/".to_owned(), |r| format!("/{}", r.display()));

    let mut enforcer = Enforcer::load(&args.bpffs)?;
    let opened = async {
        let maps = PolicyMaps::open(&mut enforcer.ebpf)?;
        let events = EventStream::<DecodedEvent>::open(&mut enforcer.ebpf, map_names::EVENTS)?;
        let port_events = EventStream::<PortChange>::open(&mut enforcer.ebpf, map_names::PORT_EVENTS)?;
        let metrics = Arc::new(Metrics::new(KernelCounters::open(&args.bpffs)?));
        let addr = metrics::serve(args.metrics_addr, Arc::clone(&metrics))
            .await
            .map_err(|source| AgentError::MetricsAddr { addr: args.metrics_addr, source })?;
        tracing::info!(addr = %addr, "serving /metrics, /healthz and /readyz");
        Ok::<_, AgentError>((maps, events, port_events, metrics))
    }
    .await;
    let (maps, mut events, mut port_events, metrics) = match opened {
        Ok(v) => v,
        Err(e) => {
            enforcer.abandon();
            return Err(e);
        }
    };
    let mut daemon = Daemon::new(maps, enforcer, resolver, &args, Arc::clone(&metrics), pod_api);
    let started = async {
        // Pod guards: know the pods running now before the first apply.
        daemon.follow_pods_for(&compiled)?;
        daemon.wait_for_pod_list(args.kube_sync_timeout).await;
        // The programs go on each guarded cgroup's hooks before the policy
        // naming it goes live, so no guarded hook ever runs without one;
        // links an earlier agent pinned get this agent's programs once the
        // policy is in the maps.
        daemon.apply_policy(&text, policy, compiled)?;
        daemon.adopt_pinned()?;
        Ok::<_, AgentError>(())
    }
    .await;
    if let Err(e) = started {
        daemon.abandon();
        return Err(e);
    }
    metrics.ready.store(true, Ordering::Relaxed);
    tracing::info!(
        cgroup_root = %root.display(),
        bpffs = %args.bpffs.display(),
        guarded_cgroups = daemon.guarded_cgroup_count(),
        "attached sock_create, bind4/6, connect4/6, sendmsg4/6, post_bind4/6, sock_ops and sock_release at each guarded cgroup"
    );
    daemon.log_guards();
    daemon.write_state();
    state::write_pid(&args.state_dir)
        .map_err(|source| AgentError::State { dir: args.state_dir.clone(), source })?;
    // Signals and watches are in place before the agent says it enforces:
    // a SIGHUP or a policy change made the moment after it says so is not
    // lost (and SIGHUP's default action would end the agent).
    let inputs = Inputs::new(&args)?;
    // A change between reading the policy and starting the watch.
    daemon.reload("policy file changed during start-up", false);
    tracing::info!(
        generation = daemon.generation(),
        policy = %args.policy.display(),
        sha256 = %daemon.sha256(),
        "portguard is enforcing"
    );
    sd_notify::notify("READY=1");

    let mut listeners = listeners::Listeners::new(root.clone(), root_in_mount);
    let mut records = Vec::new();
    if let Some(p) = daemon.policy() {
        listeners.seed(p, &mut records);
    }
    write_records(&mut trail, &mut records);
    let mut sinks = Sinks { trail, listeners, records };
    sinks.publish(&metrics);
    let result =
        event_loop(&mut daemon, &mut events, &mut port_events, &metrics, root, &mut sinks, inputs).await;
    sd_notify::notify("STOPPING=1");
    state::remove_pid(&args.state_dir);
    if args.unload_on_exit {
        drop(daemon);
        match crate::bpf::unload(&args.bpffs) {
            Ok(_) => {
                tracing::info!(bpffs = %args.bpffs.display(), "stopping; --unload-on-exit: enforcement removed")
            }
            Err(e) => tracing::error!(bpffs = %args.bpffs.display(), "stopping; unloading failed: {e}"),
        }
    } else {
        tracing::info!(
            bpffs = %args.bpffs.display(),
            "stopping; enforcement stays in place (pinned). `portguard unload` removes it"
        );
    }
    result
}

/// What wakes the daemon besides its timers and the event stream.
struct Inputs {
    sigterm: tokio::signal::unix::Signal,
    sigint: tokio::signal::unix::Signal,
    sighup: tokio::signal::unix::Signal,
    cgroups: CgroupWatch,
    policy_file: tokio::sync::mpsc::Receiver<()>,
}

impl Inputs {
    fn new(args: &RunArgs) -> Result<Inputs, AgentError> {
        Ok(Inputs {
            sigterm: signal(SignalKind::terminate()).map_err(AgentError::Signal)?,
            sigint: signal(SignalKind::interrupt()).map_err(AgentError::Signal)?,
            sighup: signal(SignalKind::hangup()).map_err(AgentError::Signal)?,
            cgroups: CgroupWatch::new()
                .map_err(|source| AgentError::Watch { what: "cgroups".into(), source })?,
            policy_file: policy_watch::spawn(&args.policy)
                .map_err(|source| AgentError::Watch { what: args.policy.display().to_string(), source })?,
        })
    }
}

async fn event_loop(
    daemon: &mut Daemon,
    events: &mut EventStream<DecodedEvent>,
    port_events: &mut EventStream<PortChange>,
    metrics: &Metrics,
    root: PathBuf,
    sinks: &mut Sinks,
    inputs: Inputs,
) -> Result<(), AgentError> {
    let Inputs { mut sigterm, mut sigint, mut sighup, mut cgroups, mut policy_file } = inputs;
    let mut denial_log = DenialLog::new(root);
    let mut rescan = tokio::time::interval(CGROUP_RESCAN);
    let mut coalesce = tokio::time::interval(denials::WINDOW / 4);
    let mut recheck_seeded = tokio::time::interval(SEEDED_PORTS_RECHECK);
    // Without a watchdog the timer still ticks, rarely, and pings no one.
    let mut watchdog =
        tokio::time::interval(sd_notify::watchdog_interval().unwrap_or(Duration::from_secs(3600)));
    daemon.watch_cgroups(&mut cgroups);
    let mut batch = Vec::new();
    let mut port_batch = Vec::new();
    loop {
        // Biased: signals and policy changes first, so a flood of denial
        // events can never delay a reload or a shutdown.
        tokio::select! {
            biased;
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = sighup.recv() => if daemon.reload("SIGHUP", true) { sinks.reclassify(daemon, metrics) },
            Some(()) = policy_file.recv() => if daemon.reload("policy file changed", false) { sinks.reclassify(daemon, metrics) },
            _ = recheck_seeded.tick() => {
                sinks.listeners.prune_seeded(&mut sinks.records);
                sinks.flush(metrics);
            }
            update = daemon.next_pod_update() => daemon.on_pod_update(update, &mut cgroups),
            _ = rescan.tick() => daemon.rescan_guards(&mut cgroups),
            _ = watchdog.tick() => sd_notify::notify("WATCHDOG=1"),
            _ = coalesce.tick() => {
                denial_log.flush(daemon.guard_ids(), daemon.guard_modes(), Some(std::time::Instant::now()));
                sinks.records.append(&mut denial_log.records);
                // Port events wake the agent only once their ring is a quarter
                // full (see record_lifecycle): collect the rest here.
                if let Err(e) = port_events.drain(&mut port_batch) {
                    return Err(AgentError::Events(e.into()));
                }
                sinks.take_port_events(&mut port_batch);
                let names = guard_names(daemon);
                sinks.listeners.tick(daemon.policy(), &names, &mut sinks.records);
                sinks.flush(metrics);
            }
            _ = cgroups.changed() => daemon.rescan_guards(&mut cgroups),
            r = events.next_batch(&mut batch) => {
                r.map_err(|e| AgentError::Events(e.into()))?;
                let full = batch.len() >= crate::bpf::MAX_EVENT_BATCH;
                metrics.events_received.fetch_add(batch.len() as u64, Ordering::Relaxed);
                for e in batch.drain(..) {
                    denial_log.log(&e, daemon.guard_ids(), daemon.guard_modes());
                }
                sinks.records.append(&mut denial_log.records);
                sinks.flush(metrics);
                if full {
                    // Let the watcher tasks run between batches of a flood.
                    tokio::task::yield_now().await;
                }
            }
            r = port_events.next_batch(&mut port_batch) => {
                r.map_err(|e| AgentError::Events(e.into()))?;
                let full = port_batch.len() >= crate::bpf::MAX_EVENT_BATCH;
                sinks.take_port_events(&mut port_batch);
                sinks.flush(metrics);
                if full {
                    tokio::task::yield_now().await;
                }
            }
        }
    }
    denial_log.flush(daemon.guard_ids(), daemon.guard_modes(), None);
    sinks.records.append(&mut denial_log.records);
    sinks.flush(metrics);
    Ok(())
}

/// The Kubernetes API client, when one is configured. A policy with pod
/// guards requires one: without it the agent exits 2 before it loads
/// anything, rather than leave those pods open.
async fn pod_api(args: &RunArgs, compiled: &CompiledPolicy) -> Result<Option<PodApi>, AgentError> {
    let home_config =
        std::env::var_os("HOME").is_some_and(|h| std::path::Path::new(&h).join(".kube/config").is_file());
    let configured = args.kube_api.is_some()
        || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        || std::env::var_os("KUBECONFIG").is_some()
        || home_config;
    let needed = compiled.guards.iter().find(|g| matches!(g.target, Target::Pods(_)));
    match (&args.node_name, configured, needed) {
        (Some(node), true, _) if !node.is_empty() => {
            let settings = pods::ApiSettings { url: args.kube_api.clone(), node_name: node.clone() };
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
        (_, _, Some(g)) => Err(AgentError::Guard(daemon::no_api_message(&args.policy, &g.name))),
        _ => Ok(None),
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
