//! Where port events and denials end up besides the log: the live
//! inventory, its metric, and the audit trail.

use std::time::Instant;

use super::{applied::AppliedPolicy, denials::DenialLog};
use crate::{
    bpf::{DecodedEvent, PortClosed},
    inventory::live::Listeners,
    metrics::Metrics,
    trail::{AuditTrail, Record, VerifyRecord},
};

pub(crate) struct Sinks {
    trail: AuditTrail,
    listeners: Listeners,
    denials: DenialLog,
    /// Trail records not yet written.
    records: Vec<Record>,
    /// The agent's own verification probes, left out of the denial log.
    probes: Option<std::sync::Arc<super::verifier::ProbeCgroups>>,
}

impl Sinks {
    /// Starts with the ports live now (from /proc) written to the trail.
    pub(crate) fn new(
        trail: AuditTrail,
        mut listeners: Listeners,
        denials: DenialLog,
        applied: &AppliedPolicy,
        metrics: &Metrics,
    ) -> Sinks {
        let mut records = Vec::new();
        if let Some(p) = applied.policy() {
            listeners.scan_tables(Some(p), &mut records);
        }
        let mut sinks = Sinks { trail, listeners, denials, records, probes: None };
        sinks.flush(metrics);
        sinks
    }

    /// Closes of ports that lived at least `SETTLE`.
    pub(crate) fn take_port_events(&mut self, batch: &mut Vec<PortClosed>, applied: &AppliedPolicy) {
        for e in batch.drain(..) {
            self.listeners.port_closed(e, applied.policy(), applied.guard_names(), &mut self.records);
        }
    }

    pub(crate) fn skip_probes_of(&mut self, probes: std::sync::Arc<super::verifier::ProbeCgroups>) {
        self.probes = Some(probes);
    }

    /// A verification failure or recovery, written at once.
    pub(crate) fn write_verification(&mut self, record: &VerifyRecord) {
        if let Err(e) = self.trail.append(record) {
            tracing::error!(path = %self.trail.path().display(), "cannot write the audit trail: {e}");
        }
    }

    pub(crate) fn log_denials(&mut self, batch: &mut Vec<DecodedEvent>, applied: &AppliedPolicy) {
        let probes = self.probes.as_deref();
        for e in batch.drain(..).filter(|e| !probes.is_some_and(|p| p.contains(e.sock_cgroup))) {
            self.denials.log(&e, applied.guard_names(), applied.guard_modes(), applied.dns_names());
        }
    }

    /// Summarises the coalesced denials whose window ended (all of them
    /// when `now` is None, at shutdown).
    pub(crate) fn flush_denials(&mut self, applied: &AppliedPolicy, now: Option<Instant>) {
        self.denials.flush(applied.guard_names(), applied.guard_modes(), applied.dns_names(), now);
    }

    /// Writes the kernel's ports that settled and the brief ones (see
    /// `Listeners::tick`).
    pub(crate) fn settle_ports(&mut self, applied: &AppliedPolicy) {
        self.listeners.tick(applied.policy(), applied.guard_names(), &mut self.records);
    }

    /// Drops /proc-seeded ports that are gone.
    pub(crate) fn scan_tables(&mut self, applied: &AppliedPolicy) {
        self.listeners.scan_tables(applied.policy(), &mut self.records);
    }

    /// Writes what the denial log and the inventory produced to the trail,
    /// and the inventory's counts to the metrics.
    pub(crate) fn flush(&mut self, metrics: &Metrics) {
        self.records.append(&mut self.denials.records);
        for r in self.records.drain(..) {
            if let Err(e) = self.trail.append(&r) {
                // The log still carries every denial; losing the trail must not
                // stop enforcement.
                tracing::error!(path = %self.trail.path().display(), "cannot write the audit trail: {e}");
                break;
            }
        }
        self.records.clear();
        self.publish(metrics);
    }

    fn publish(&self, metrics: &Metrics) {
        *metrics.listeners.lock().expect("metrics lock") = self.listeners.counts();
    }

    pub(crate) fn reclassify(&mut self, applied: &AppliedPolicy, metrics: &Metrics) {
        if let Some(p) = applied.policy() {
            self.listeners.reclassify(p);
            self.publish(metrics);
        }
    }
}
