//! Encodes every metric at scrape time.

use std::{collections::BTreeMap, sync::atomic::Ordering};

use portguard_common::{Op, Verdict};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

use super::Metrics;

type Labels = Vec<(&'static str, String)>;

fn counters(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in series {
        ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauges(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels, i64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in series {
        ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// One sample without labels.
fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> Result<(), std::fmt::Error> {
    ConstCounter::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> Result<(), std::fmt::Error> {
    ConstGauge::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

impl Collector for Metrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let policy = self.policy.lock().expect("metrics lock").clone();
        let name_of =
            |id: u32| policy.guard_names.get(&id).cloned().unwrap_or_else(|| format!("guard-id:{id}"));
        // Taken before the kernel's counters are read: see OwnProbeCounts.
        let own = self.own_probes.lock();
        let kernel = self.kernel.lock().expect("metrics lock");

        // Per-port denial counts: the label set is bounded by the kernel
        // map (LRU), and peers never become labels. The agent's own probes
        // are taken out; a key only they moved is not exported at all.
        let mut denials = Vec::new();
        let mut audits = Vec::new();
        for (key, n) in kernel.denials() {
            let n = n.saturating_sub(own.get(&key));
            if n == 0 {
                continue;
            }
            let labels = vec![
                ("guard", name_of(key.guard_id)),
                ("op", Op::from_u8(key.op).map_or("?", Op::as_str).to_owned()),
                ("proto", portguard_common::Transport::from(key.proto).label().to_owned()),
                ("port", key.port.to_string()),
            ];
            match Verdict::from_u8(key.verdict) {
                Some(Verdict::Denied) => denials.push((labels, n)),
                Some(Verdict::Audited) => audits.push((labels, n)),
                _ => {}
            }
        }
        counters(&mut enc, "portguard_denials", "Operations refused in enforce mode.", denials)?;
        counters(
            &mut enc,
            "portguard_audit_violations",
            "Operations an audit-mode guard would have refused (and let through).",
            audits,
        )?;

        let mut decisions: BTreeMap<(Op, Verdict), u64> = BTreeMap::new();
        for id in policy.guard_names.keys() {
            let c = kernel.decisions.guard(*id);
            for op in Op::ALL {
                for v in Verdict::ALL {
                    *decisions.entry((op, v)).or_default() += c[op as usize][v as usize];
                }
            }
        }
        let mut own_total = 0;
        for (key, n) in own.iter() {
            own_total += n;
            if let (Some(op), Some(v)) = (Op::from_u8(key.op), Verdict::from_u8(key.verdict))
                && policy.guard_names.contains_key(&key.guard_id)
                && let Some(d) = decisions.get_mut(&(op, v))
            {
                *d = d.saturating_sub(*n);
            }
        }
        counter(
            &mut enc,
            "portguard_verify_probe_refusals",
            "Refusals (or audited violations) the agent's own verification probes caused; not in portguard_denials_total or portguard_decisions_total.",
            own_total,
        )?;
        counters(
            &mut enc,
            "portguard_decisions",
            "Decisions on sockets of guarded cgroups, by operation and verdict.",
            decisions.into_iter().map(|((op, v), n)| {
                (vec![("op", op.as_str().to_owned()), ("verdict", v.as_str().to_owned())], n)
            }),
        )?;
        counter(
            &mut enc,
            "portguard_events_lost",
            "Denial events the kernel could not queue (ring buffer full); counts stay exact.",
            kernel.decisions.events_lost(),
        )?;
        counter(
            &mut enc,
            "portguard_port_events_lost",
            "Closes of ports live 1 s or more the kernel could not queue (their ring buffer was full); the inventory keeps such a port until the agent restarts.",
            kernel.decisions.port_events_lost(),
        )?;
        counter(
            &mut enc,
            "portguard_live_ports_untracked",
            "Ports of guarded cgroups that went live while the kernel's live-port table was full; the socket-table reads still find them.",
            kernel.decisions.live_ports_full(),
        )?;
        let dns = kernel.decisions.dns();
        counter(
            &mut enc,
            "portguard_dns_queries",
            "DNS queries guarded sockets sent to a resolver their guard may reach, recorded by the kernel (guards with DNS names only).",
            dns.queries,
        )?;
        counters(
            &mut enc,
            "portguard_dns_answers",
            "DNS answers to guarded sockets of guards with names, each counted once by what it taught: learned (addresses), no_address (NODATA), no_query (matched no recorded query: unsolicited, forged, late or repeated), not_in_policy (a question none of the guard's names), not_parsed (the walk stopped before it learned anything).",
            dns.answers.iter().map(|(result, n)| (vec![("result", (*result).to_owned())], *n)),
        )?;
        let table = kernel.learned.as_ref().map(|t| t.walk(&policy.dns_epochs));
        let per_guard = |counts: Option<&std::collections::HashMap<u64, u64>>| {
            let mut out: BTreeMap<String, i64> = BTreeMap::new();
            for (cgroup, n) in counts.into_iter().flatten() {
                if let Some(guard) = policy.guard_of_cgroup.get(cgroup) {
                    *out.entry(guard.clone()).or_default() += *n as i64;
                }
            }
            out
        };
        let learned = per_guard(table.as_ref().map(|t| &t.live_per_cgroup));
        let by_agent = per_guard(table.as_ref().map(|t| &t.by_agent_per_cgroup));
        // Created and held are read a moment apart: never let the counter
        // step back.
        let evictions = table.as_ref().map_or(0, |t| t.evictions(dns.entries_created));
        let evictions = self.dns_evictions.fetch_max(evictions, Ordering::Relaxed).max(evictions);
        gauges(
            &mut enc,
            "portguard_dns_learned_addresses",
            "Addresses a guard's workloads hold a valid DNS answer for (the kernel's learned table, one walk per scrape).",
            learned.into_iter().map(|(g, n)| (vec![("guard", g)], n)),
        )?;
        gauges(
            &mut enc,
            "portguard_dns_agent_addresses",
            "Of those, addresses the agent's own lookups gave (rules with resolve = \"agent\").",
            by_agent.into_iter().map(|(g, n)| (vec![("guard", g)], n)),
        )?;
        counters(
            &mut enc,
            "portguard_dns_agent_lookups",
            "The agent's own lookups of names of rules with resolve = \"agent\", by result (answered, failed).",
            [
                (
                    vec![("result", "answered".to_owned())],
                    self.dns_agent_lookups_answered.load(Ordering::Relaxed),
                ),
                (
                    vec![("result", "failed".to_owned())],
                    self.dns_agent_lookups_failed.load(Ordering::Relaxed),
                ),
            ],
        )?;
        counter(
            &mut enc,
            "portguard_dns_addresses_learned",
            "Addresses written to (or extended in) the kernel's learned-address table.",
            dns.addresses,
        )?;
        counter(
            &mut enc,
            "portguard_dns_learned_evictions",
            "Entries of the kernel's learned-address table (an LRU for the host) dropped to make room, valid or expired: a workload whose entry was dropped must resolve again.",
            evictions,
        )?;
        counter(
            &mut enc,
            "portguard_events_received",
            "Denial events read from the kernel by the agent.",
            self.events_received.load(Ordering::Relaxed),
        )?;
        counters(
            &mut enc,
            "portguard_policy_reloads",
            "Policy reloads, by result.",
            [
                (vec![("result", "applied".to_owned())], self.reloads_applied.load(Ordering::Relaxed)),
                (vec![("result", "rejected".to_owned())], self.reloads_rejected.load(Ordering::Relaxed)),
            ],
        )?;
        let listeners = self.listeners.lock().expect("metrics lock").clone();
        gauges(
            &mut enc,
            "portguard_listeners",
            "Live ports (TCP listening, UDP bound) by guard, protocol, port and whether a rule approves them.",
            listeners.into_iter().map(|(k, n)| {
                (
                    vec![
                        ("guard", k.guard),
                        ("proto", k.proto.label().to_owned()),
                        ("port", k.port.to_string()),
                        ("approved", k.approved.metric_label().to_owned()),
                    ],
                    n,
                )
            }),
        )?;
        gauge(
            &mut enc,
            "portguard_policy_generation",
            "Generation of the policy the kernel enforces.",
            policy.generation as i64,
        )?;
        gauges(
            &mut enc,
            "portguard_policy_info",
            "The applied policy file and its SHA-256 (value is always 1).",
            [(vec![("sha256", policy.sha256.clone()), ("file", policy.file.clone())], 1)],
        )?;
        gauge(&mut enc, "portguard_guards", "Guards in the policy.", policy.guards as i64)?;
        gauge(
            &mut enc,
            "portguard_guarded_cgroups",
            "Cgroups guarded now: one per path guard whose cgroup exists, one per pod a pod guard covers.",
            policy.guarded_cgroups as i64,
        )?;
        if let Some(pods) = policy.kube_pods {
            gauge(
                &mut enc,
                "portguard_kube_pods",
                "Pods on this node the agent knows from the Kubernetes API (kept while the API is unreachable).",
                pods as i64,
            )?;
            counter(
                &mut enc,
                "portguard_kube_watch_errors",
                "Failed list or watch calls to the Kubernetes API; each is retried with backoff.",
                self.kube_watch_errors.load(Ordering::Relaxed),
            )?;
        }
        gauges(
            &mut enc,
            "portguard_map_entries",
            "Entries in each policy map (both slots).",
            policy.map_entries.iter().map(|(m, n)| (vec![("map", (*m).to_owned())], *n as i64)),
        )?;
        let verification = self.verification.lock().expect("metrics lock").clone();
        gauges(
            &mut enc,
            "portguard_guard_verified",
            "1 when the last verification found the guard holding (kernel state and probes), 0 when not.",
            verification.guards.iter().map(|(g, ok)| (vec![("guard", g.clone())], i64::from(*ok))),
        )?;
        counters(
            &mut enc,
            "portguard_verify_checks",
            "Verification checks run, by result (pass, fail, skip).",
            ["pass", "fail", "skip"]
                .map(|r| (vec![("result", r.to_owned())], verification.checks.get(r).copied().unwrap_or(0))),
        )?;
        if let Some(at) = verification.last_full {
            gauge(
                &mut enc,
                "portguard_verify_last_full_timestamp_seconds",
                "When the last verification of every guard ended (Unix time).",
                at as i64,
            )?;
            ConstGauge::new(verification.last_duration_ms as f64 / 1000.0).encode(enc.encode_descriptor(
                "portguard_verify_duration_seconds",
                "How long the last verification of every guard took.",
                None,
                MetricType::Gauge,
            )?)?;
        }
        gauge(
            &mut enc,
            "portguard_ready",
            "1 once the programs are attached and the policy is applied.",
            i64::from(self.ready.load(Ordering::Relaxed)),
        )?;
        gauges(
            &mut enc,
            "portguard_build_info",
            "The agent's version (value is always 1).",
            [(vec![("version", env!("CARGO_PKG_VERSION").to_owned())], 1)],
        )?;
        Ok(())
    }
}
