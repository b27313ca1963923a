//! The daemon's loop once it enforces: denial and port events out; policy
//! changes, SIGHUP, pod and cgroup changes in; timers for what has no event.

use std::{sync::atomic::Ordering, time::Duration};

use tokio::signal::unix::{Signal, SignalKind, signal};

use super::{
    DaemonError,
    applied::AppliedPolicy,
    denials, sd_notify,
    sinks::Sinks,
    verifier::Verifier,
    watches::{self, CgroupWatch},
};
use crate::{
    bpf::{DecodedEvent, EventStream, MAX_EVENT_BATCH, PortClosed},
    cli::RunArgs,
    inventory::live::TABLE_SCAN,
    metrics::Metrics,
};

/// How often guard cgroups are re-resolved even without an inotify event,
/// so a guard whose cgroup appears, or is removed and recreated (a systemd
/// restart), is (re)applied.
const CGROUP_RESCAN: Duration = Duration::from_millis(200);

/// What wakes the daemon besides its timers and the event streams.
pub(crate) struct Inputs {
    sigterm: Signal,
    sigint: Signal,
    sighup: Signal,
    cgroups: CgroupWatch,
    policy_file: tokio::sync::mpsc::Receiver<()>,
}

impl Inputs {
    pub(crate) fn new(args: &RunArgs) -> Result<Inputs, DaemonError> {
        Ok(Inputs {
            sigterm: signal(SignalKind::terminate()).map_err(DaemonError::Signal)?,
            sigint: signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?,
            sighup: signal(SignalKind::hangup()).map_err(DaemonError::Signal)?,
            cgroups: CgroupWatch::new()
                .map_err(|source| DaemonError::Watch { what: "cgroups".into(), source })?,
            policy_file: watches::watch_policy_file(&args.policy)
                .map_err(|source| DaemonError::Watch { what: args.policy.display().to_string(), source })?,
        })
    }
}

/// Everything the loop reads from and writes to.
pub(crate) struct EventLoop<'a> {
    pub(crate) applied: &'a mut AppliedPolicy,
    /// Denials and audits.
    pub(crate) events: EventStream<DecodedEvent>,
    /// Closes of ports that lived at least `SETTLE` (ports going live are
    /// read from the kernel's table on the tick).
    pub(crate) port_events: EventStream<PortClosed>,
    pub(crate) metrics: &'a Metrics,
    pub(crate) sinks: Sinks,
    pub(crate) verifier: Verifier,
}

impl EventLoop<'_> {
    /// Runs until SIGTERM or SIGINT (Ok) or an event stream fails.
    pub(crate) async fn run(mut self, inputs: Inputs) -> Result<(), DaemonError> {
        let Inputs { mut sigterm, mut sigint, mut sighup, mut cgroups, mut policy_file } = inputs;
        let mut rescan = tokio::time::interval(CGROUP_RESCAN);
        let mut coalesce = tokio::time::interval(denials::WINDOW / 4);
        let mut table_scan = tokio::time::interval(TABLE_SCAN);
        // Without a watchdog the timer still ticks, rarely, and pings no one.
        let mut watchdog =
            tokio::time::interval(sd_notify::watchdog_interval().unwrap_or(Duration::from_secs(3600)));
        self.applied.watch_cgroups(&mut cgroups);
        let mut batch = Vec::new();
        let mut port_batch = Vec::new();
        let metrics = self.metrics;
        loop {
            // Biased: signals and policy changes first, so a flood of denial
            // events can never delay a reload or a shutdown.
            tokio::select! {
                biased;
                _ = sigterm.recv() => break,
                _ = sigint.recv() => break,
                _ = sighup.recv() => self.reload("SIGHUP", true),
                Some(()) = policy_file.recv() => self.reload("policy file changed", false),
                _ = table_scan.tick() => {
                    self.sinks.scan_tables(self.applied);
                    self.sinks.flush(metrics);
                }
                update = self.applied.next_pod_update() => self.applied.on_pod_update(update, &mut cgroups),
                _ = rescan.tick() => self.applied.rescan_guards(&mut cgroups),
                _ = watchdog.tick() => sd_notify::notify("WATCHDOG=1"),
                Some(record) = self.verifier.records.recv() => self.sinks.write_verification(&record),
                _ = coalesce.tick() => {
                    self.sinks.flush_denials(self.applied, Some(std::time::Instant::now()));
                    // Port closes wake the agent only once their ring is a quarter
                    // full (see record_port_closed): collect the rest here,
                    // before the kernel's live ports are read.
                    if let Err(e) = self.port_events.drain(&mut port_batch) {
                        return Err(DaemonError::Events(e.into()));
                    }
                    self.sinks.take_port_events(&mut port_batch, self.applied);
                    self.sinks.settle_ports(self.applied);
                    self.sinks.flush(metrics);
                }
                _ = cgroups.changed() => self.applied.rescan_guards(&mut cgroups),
                r = self.events.next_batch(&mut batch) => {
                    r.map_err(|e| DaemonError::Events(e.into()))?;
                    let full = batch.len() >= MAX_EVENT_BATCH;
                    metrics.events_received.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    self.sinks.log_denials(&mut batch, self.applied);
                    self.sinks.flush(metrics);
                    if full {
                        // Let the watcher tasks run between batches of a flood.
                        tokio::task::yield_now().await;
                    }
                }
                r = self.port_events.next_batch(&mut port_batch) => {
                    r.map_err(|e| DaemonError::Events(e.into()))?;
                    let full = port_batch.len() >= MAX_EVENT_BATCH;
                    self.sinks.take_port_events(&mut port_batch, self.applied);
                    self.sinks.flush(metrics);
                    if full {
                        tokio::task::yield_now().await;
                    }
                }
            }
        }
        self.sinks.flush_denials(self.applied, None);
        self.sinks.flush(metrics);
        Ok(())
    }

    /// Re-reads the policy; the inventory is re-judged when it changed.
    fn reload(&mut self, why: &str, force: bool) {
        if self.applied.reload(why, force) {
            self.sinks.reclassify(self.applied, self.metrics);
            self.verifier.request("reload");
        }
    }
}
