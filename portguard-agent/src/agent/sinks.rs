//! Where port events and denials end up besides the log: the live
//! inventory, its metric, and the audit trail.

use std::collections::HashMap;

use super::{daemon::Daemon, listeners};
use crate::{
    bpf::PortChange,
    metrics::Metrics,
    trail::{AuditTrail, Record},
};

pub struct Sinks {
    pub trail: AuditTrail,
    pub listeners: listeners::Listeners,
    /// Trail records not yet written.
    pub records: Vec<Record>,
}

pub fn guard_names(daemon: &Daemon) -> HashMap<u32, String> {
    daemon.guard_ids().iter().map(|(n, id)| (*id, n.clone())).collect()
}

impl Sinks {
    pub fn take_port_events(&mut self, batch: &mut Vec<PortChange>) {
        for e in batch.drain(..) {
            if e.opened {
                self.listeners.port_opened(e);
            } else {
                self.listeners.port_closed(&e, &mut self.records);
            }
        }
    }

    pub fn flush(&mut self, metrics: &Metrics) {
        write_records(&mut self.trail, &mut self.records);
        self.publish(metrics);
    }

    pub fn publish(&self, metrics: &Metrics) {
        *metrics.listeners.lock().expect("metrics lock") = self.listeners.counts();
    }

    pub fn reclassify(&mut self, daemon: &Daemon, metrics: &Metrics) {
        if let Some(p) = daemon.policy() {
            self.listeners.reclassify(p);
            self.publish(metrics);
        }
    }
}

pub fn write_records(trail: &mut AuditTrail, records: &mut Vec<Record>) {
    for r in records.drain(..) {
        if let Err(e) = trail.append(&r) {
            // The log still carries every denial; losing the trail must not
            // stop enforcement.
            tracing::error!(path = %trail.path().display(), "cannot write the audit trail: {e}");
            break;
        }
    }
    records.clear();
}
