//! The agent's own verification of every guard: after start-up, after each
//! reload, and every `--verify-interval`. It runs on the blocking pool, off
//! the event loop; its results go to the metrics, state file (for
//! `status`), the log, and (as failures and recoveries) the audit trail.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::mpsc;

use crate::{
    cli::RunArgs,
    metrics::Metrics,
    state_file,
    trail::{self, VerifyEvent, VerifyRecord},
    verify::{self, Outcome, Report},
};

/// Probe cgroups of this agent, remembered a while after they are removed:
/// the denial events of its own probes arrive later and are left out of
/// the denial log and the trail (and their counts out of the exported
/// counters, by `verify::OwnProbeCounts`).
#[derive(Debug, Default)]
pub(crate) struct ProbeCgroups {
    ids: Mutex<(VecDeque<u64>, HashSet<u64>)>,
}

/// Enough for every probe of several full verifications at 1,024 guards.
const REMEMBERED_PROBES: usize = 8192;

impl ProbeCgroups {
    fn insert(&self, id: u64) {
        let mut g = self.ids.lock().expect("probe cgroups lock");
        let (order, set) = &mut *g;
        if set.insert(id) {
            order.push_back(id);
        }
        while order.len() > REMEMBERED_PROBES {
            if let Some(old) = order.pop_front() {
                set.remove(&old);
            }
        }
    }

    pub(crate) fn contains(&self, id: u64) -> bool {
        self.ids.lock().expect("probe cgroups lock").1.contains(&id)
    }
}

/// Handle the event loop keeps: asks for verifications, receives the
/// trail records they produce.
pub(crate) struct Verifier {
    trigger: mpsc::UnboundedSender<&'static str>,
    pub(crate) records: mpsc::UnboundedReceiver<VerifyRecord>,
    pub(crate) probes: Arc<ProbeCgroups>,
    /// `--verify-interval 0`: the agent does not verify at all.
    off: bool,
}

impl Verifier {
    /// Asks for a verification of every guard soon (requests made while
    /// one runs are merged into the next).
    pub(crate) fn request(&self, why: &'static str) {
        if self.off {
            return;
        }
        let _ = self.trigger.send(why);
    }
}

/// How often a verification that saw the agent apply a change meanwhile
/// (so proved nothing) is tried again at once.
const RACE_RETRIES: usize = 3;

pub(crate) fn spawn(args: &RunArgs, metrics: Arc<Metrics>) -> Verifier {
    let (trigger, mut requests) = mpsc::unbounded_channel::<&'static str>();
    let (records_tx, records) = mpsc::unbounded_channel();
    let probes = Arc::new(ProbeCgroups::default());
    let interval = args.verify_interval;
    let paths =
        Paths { state_dir: args.state_dir.clone(), bpffs: args.bpffs.clone(), policy: args.policy.clone() };
    let probe_ids = Arc::clone(&probes);
    tokio::spawn(async move {
        // The previous agent's last results: a guard it found broken and a
        // restart repaired is a recovery, written as one.
        let mut last: HashMap<String, bool> = state_file::read_verification(&paths.state_dir)
            .and_then(|v| {
                v["guards"].as_array().map(|gs| {
                    gs.iter()
                        .filter_map(|g| Some((g["guard"].as_str()?.to_owned(), g["verified"].as_bool()?)))
                        .collect()
                })
            })
            .unwrap_or_default();
        // A period of zero turns the timer off; requests still run.
        let mut tick =
            tokio::time::interval(if interval.is_zero() { Duration::from_secs(3600) } else { interval });
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            let why = tokio::select! {
                r = requests.recv() => match r { Some(why) => why, None => return },
                _ = tick.tick(), if !interval.is_zero() => "periodic",
            };
            while requests.try_recv().is_ok() {}
            let mut report = None;
            for _ in 0..RACE_RETRIES {
                let (paths, ids, m) = (paths.clone(), Arc::clone(&probe_ids), Arc::clone(&metrics));
                match tokio::task::spawn_blocking(move || paths.verify(&ids, &m)).await {
                    Ok(Ok(r)) if raced(&r) => tokio::time::sleep(Duration::from_millis(100)).await,
                    Ok(Ok(r)) => {
                        report = Some(r);
                        break;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(reason = why, "cannot verify the guards: {e}");
                        break;
                    }
                    Err(e) => {
                        tracing::error!(reason = why, "verification task failed: {e}");
                        break;
                    }
                }
            }
            let Some(report) = report else { continue };
            for r in publish(&report, why, &mut last, &metrics, &paths.state_dir) {
                if records_tx.send(r).is_err() {
                    return;
                }
            }
        }
    });
    Verifier { trigger, records, probes, off: interval.is_zero() }
}

#[derive(Debug, Clone)]
struct Paths {
    state_dir: PathBuf,
    bpffs: PathBuf,
    policy: PathBuf,
}

impl Paths {
    fn verify(&self, probes: &ProbeCgroups, metrics: &Metrics) -> Result<Report, verify::CannotVerify> {
        verify::verify(&verify::Options {
            state_dir: &self.state_dir,
            bpffs: Some(&self.bpffs),
            policy: Some(&self.policy),
            guard: None,
            // The agent writes the trail itself; reading it back whole every
            // interval would cost more than it proves.
            trail: None,
            probe_gap: verify::PROBE_GAP,
            on_probe_cgroup: &|id| probes.insert(id),
            own_counts: Some(&metrics.own_probes),
        })
    }
}

fn raced(r: &Report) -> bool {
    r.host.iter().any(|c| c.check == "generation" && c.outcome == Outcome::Fail)
}

fn failed_line(c: &verify::Check) -> String {
    format!("{} {}: expected {}, got {}", c.check, c.subject, c.expected, c.got)
}

/// Hands one verification to the metrics, the state file and the log;
/// returns the trail records of guards whose result changed.
fn publish(
    report: &Report,
    why: &str,
    last: &mut HashMap<String, bool>,
    metrics: &Metrics,
    state_dir: &std::path::Path,
) -> Vec<VerifyRecord> {
    {
        let mut m = metrics.verification.lock().expect("metrics lock");
        for c in report.checks() {
            *m.checks.entry(c.outcome.as_str()).or_default() += 1;
        }
        m.guards = report.guards.iter().map(|g| (g.guard.clone(), g.verified)).collect();
        m.last_full = Some(state_file::now_unix());
        m.last_duration_ms = report.duration_ms;
    }
    if let Err(e) =
        state_file::write_verification(state_dir, &serde_json::to_value(report).unwrap_or_default())
    {
        tracing::warn!(dir = %state_dir.display(), "cannot write the verification for `portguard status`: {e}");
    }
    for c in report.host.iter().filter(|c| c.outcome == Outcome::Fail) {
        tracing::warn!(check = %c.check, "verification failed on this host: {}", failed_line(c));
    }
    let mut records = Vec::new();
    for g in &report.guards {
        let failed: Vec<String> = g.failures().map(failed_line).collect();
        let before = last.insert(g.guard.clone(), g.verified);
        if !g.verified {
            tracing::warn!(
                guard = %g.guard,
                reason = why,
                failed = failed.len(),
                "guard {} is NOT verified: {}",
                g.guard,
                failed.join("; ")
            );
        } else if before == Some(false) {
            tracing::info!(guard = %g.guard, reason = why, "guard {} verified again", g.guard);
        }
        let event = match (before, g.verified) {
            (Some(true) | None, false) => VerifyEvent::VerifyFailed,
            (Some(false), true) => VerifyEvent::VerifyRecovered,
            _ => continue,
        };
        records.push(VerifyRecord {
            time: trail::now_rfc3339(),
            event,
            guard: g.guard.clone(),
            mode: g.mode.clone(),
            cgroups: g.cgroups.clone(),
            failed,
        });
    }
    last.retain(|name, _| report.guards.iter().any(|g| &g.guard == name));
    if report.verified {
        tracing::debug!(
            reason = why,
            guards = report.guards.len(),
            duration_ms = report.duration_ms,
            "every guard verified"
        );
    }
    records
}
