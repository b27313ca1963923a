//! `portguard run`: the daemon. This file is its start-up order.
//!
//! Start-up checks everything that can be wrong with the input (policy,
//! cgroup root, privileges) before it touches the kernel, loads and
//! verifies the programs, writes the policy into the maps, and only then
//! puts the programs on the hooks. After that it loops (`event_loop`):
//! denial events out; policy changes, SIGHUP and cgroup changes in.

mod agent_dns;
mod applied;
mod denials;
mod error;
mod event_loop;
mod guards;
mod pods;
mod privileges;
mod sd_notify;
mod sinks;
mod verifier;
mod watches;

use std::sync::{Arc, atomic::Ordering};

use portguard_common::map_names;

pub(crate) use self::error::DaemonError;
use self::{
    applied::AppliedPolicy,
    denials::DenialLog,
    event_loop::{EventLoop, Inputs},
    guards::CgroupResolver,
    pods::NodePods,
    sinks::Sinks,
};
use crate::{
    bpf::{
        self, DecodedEvent, Enforcer, EventStream, KernelCounters, LearnedAddresses, LivePorts, PolicyMaps,
        PortClosed,
    },
    cgroup,
    cli::RunArgs,
    inventory::live::Listeners,
    metrics::{self, Metrics},
    state_file,
    trail::AuditTrail,
};

pub(crate) async fn run(args: RunArgs) -> Result<(), DaemonError> {
    // 1. The input: pin directory, policy, cgroup root, privileges,
    //    Kubernetes API, trail.
    bpf::check_pin_dir(&args.bpffs).map_err(|e| DaemonError::Load(e.into()))?;
    let (text, policy, compiled) = applied::read_policy(&args.policy)?;
    let mount = cgroup::cgroup2_mount()?;
    let root = args.cgroup_root.clone().unwrap_or_else(|| mount.clone());
    cgroup::ensure_cgroup2_dir(&root)?;
    let resolver = CgroupResolver::new(root.clone(), &mount);
    resolver.check_depths(&compiled).map_err(DaemonError::Guard)?;
    privileges::check()?;
    let pod_api = pods::pod_api(&args, &compiled).await?;
    let trail = AuditTrail::open(&args.audit_trail, args.audit_trail_max_bytes, args.audit_trail_keep)
        .map_err(|source| DaemonError::Trail { path: args.audit_trail.clone(), source })?;
    let root_in_mount =
        root.strip_prefix(&mount).map_or_else(|_| "/".to_owned(), |r| format!("/{}", r.display()));

    // 2. The programs, loaded and verified; the maps, the event streams and
    //    the metrics endpoint.
    let mut enforcer = Enforcer::load(&args.bpffs)?;
    let opened = async {
        let maps = PolicyMaps::open(&mut enforcer.ebpf)?;
        let events = EventStream::<DecodedEvent>::open(&mut enforcer.ebpf, map_names::EVENTS)?;
        let port_events = EventStream::<PortClosed>::open(&mut enforcer.ebpf, map_names::PORT_EVENTS)?;
        let live_ports = LivePorts::open(&args.bpffs)?;
        let metrics = Arc::new(Metrics::new(KernelCounters::open(&args.bpffs)?));
        let addr = metrics::serve(args.metrics_addr, Arc::clone(&metrics))
            .await
            .map_err(|source| DaemonError::MetricsAddr { addr: args.metrics_addr, source })?;
        tracing::info!(addr = %addr, "serving /metrics, /healthz and /readyz");
        Ok::<_, DaemonError>((maps, events, port_events, live_ports, metrics))
    }
    .await;
    let (maps, events, port_events, live_ports, metrics) = match opened {
        Ok(v) => v,
        Err(e) => {
            enforcer.abandon();
            return Err(e);
        }
    };

    // 3. The first policy: the programs go on each guarded cgroup's hooks
    //    before the policy naming it goes live (one generation switch), and
    //    the links an earlier agent pinned get this agent's programs once
    //    the policy is in the maps. No guarded hook is ever without one.
    let pods = NodePods::new(pod_api, &args, Arc::clone(&metrics));
    let (agent_dns, plan) = tokio::sync::watch::channel(agent_dns::Plan::default());
    agent_dns::spawn(args.dns_resolver, &args.bpffs, plan, Arc::clone(&metrics));
    let mut applied =
        AppliedPolicy::new(maps, enforcer, resolver, &args, Arc::clone(&metrics), pods, agent_dns);
    let started = async {
        applied.list_pods_for(&compiled, args.kube_sync_timeout).await?;
        applied.apply_policy(&text, policy, compiled)?;
        applied.adopt_pinned()
    }
    .await;
    if let Err(e) = started {
        applied.abandon();
        return Err(e);
    }
    metrics.ready.store(true, Ordering::Relaxed);
    tracing::info!(
        cgroup_root = %root.display(),
        bpffs = %args.bpffs.display(),
        guarded_cgroups = applied.guarded_cgroup_count(),
        "attached sock_create, bind4/6, connect4/6, sendmsg4/6, post_bind4/6, sock_ops and sock_release at each guarded cgroup"
    );
    applied.log_guards();
    applied.write_state();
    state_file::write_pid(&args.state_dir)
        .map_err(|source| DaemonError::State { dir: args.state_dir.clone(), source })?;

    // 4. Signals and watches are in place before the agent says it enforces:
    //    a SIGHUP or a policy change made the moment after it says so is not
    //    lost (and SIGHUP's default action would end the agent).
    let inputs = Inputs::new(&args)?;
    // A change between reading the policy and starting the watch.
    applied.reload("policy file changed during start-up", false);
    tracing::info!(
        generation = applied.generation(),
        policy = %args.policy.display(),
        sha256 = %applied.sha256(),
        "portguard is enforcing"
    );
    sd_notify::notify("READY=1");
    let verifier = verifier::spawn(&args, Arc::clone(&metrics));
    verifier.request("start");

    // 5. The loop, with the ports live now as the inventory's start.
    let mut sinks = Sinks::new(
        trail,
        Listeners::new(root.clone(), root_in_mount, live_ports, &args.state_dir),
        DenialLog::new(root, LearnedAddresses::open(&args.bpffs).ok()),
        &applied,
        &metrics,
    );
    sinks.skip_probes_of(Arc::clone(&verifier.probes));
    let result = EventLoop { applied: &mut applied, events, port_events, metrics: &metrics, sinks, verifier }
        .run(inputs)
        .await;

    // 6. Stopping: enforcement stays pinned unless --unload-on-exit.
    sd_notify::notify("STOPPING=1");
    state_file::remove_pid(&args.state_dir);
    if args.unload_on_exit {
        drop(applied);
        match bpf::unload(&args.bpffs) {
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
