//! The live port inventory: every port of a guarded cgroup the kernel
//! keeps in `PG_LIVE_PORTS` (with the kernel's own time it went live),
//! plus the ports the kernel does not keep, read from the socket tables
//! every [`TABLE_SCAN`]: unguarded ones (portguard's programs run only in
//! guarded cgroups) and the ones already live before the programs were
//! attached. Each is classified against the applied policy. It feeds
//! `portguard_listeners` and the port lifecycle records of the audit trail.
//!
//! A port is classified and written to the trail once it has been live for
//! [`SETTLE`]: the agent walks the kernel's table on its tick and takes only
//! entries that old, so a port that closes sooner costs the agent nothing.
//! The kernel counts those brief ports per CPU; once per [`SETTLE`] the
//! agent writes one `port_brief` line per kind with the count since its
//! previous read, and keeps what it wrote in the state directory
//! ([`BriefBaseline`]) so that the next agent starts from there.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    time::{Duration, Instant, SystemTime},
};

use portguard_common::{BRIEF_PORT_NS, Transport, UNGUARDED_ID};

use crate::{
    bpf::{BriefKind, LivePortEntry, LivePorts, PortClosed, boot_ns},
    cgroup::{CgroupNames, workload},
    inventory::{self, Approval, ListenerKey, Standing, brief_baseline::BriefBaseline},
    policy::{Policy, eval::Action},
    trail::{Record, RecordKind, RecordOp},
};

/// Ports seen by /proc rather than by the kernel have no socket cookie;
/// their inode, tagged with this bit, keys them apart from cookies.
const SCANNED: u64 = 1 << 63;

/// How often the socket tables are read for the ports the kernel does not
/// keep (unguarded ones, and closes of those found this way).
pub(crate) const TABLE_SCAN: Duration = Duration::from_secs(2);

/// How long a port must stay live to get its own trail lines: the kernel's
/// brief-port threshold.
pub(crate) const SETTLE: Duration = Duration::from_nanos(BRIEF_PORT_NS);

/// A port live for at least [`SETTLE`] (or found in the socket tables).
struct Live {
    record: Record,
    proto: Transport,
    /// When it went live, on CLOCK_BOOTTIME.
    opened_boot_ns: u64,
}

pub(crate) struct Listeners {
    names: CgroupNames,
    root_in_mount: String,
    kernel: LivePorts,
    live: HashMap<u64, Live>,
    /// Reported ports the kernel's table no longer held at the last tick
    /// with no close seen yet: gone from it again at the next tick, their
    /// close was lost (full ring) and they are closed then.
    missing: HashSet<u64>,
    /// Ports the last socket-table read found that the kernel does not
    /// keep: reported by the next read if still there and still not the
    /// kernel's (see `scan_tables`).
    unconfirmed: HashSet<u64>,
    /// Brief ports per kind at the previous read, summed over CPUs.
    brief_seen: HashMap<BriefKind, u64>,
    brief_read: Instant,
    brief_baseline: BriefBaseline,
}

impl Listeners {
    /// Starts from the brief-port counts the previous agent wrote from the
    /// same kernel map, so that those counted while no agent ran are
    /// written now; without them (a first start, a baseline that cannot be
    /// read), from the kernel's counts as they are now, so that none is
    /// ever written twice.
    pub(crate) fn new(
        root: std::path::PathBuf,
        root_in_mount: String,
        kernel: LivePorts,
        state_dir: &std::path::Path,
    ) -> Listeners {
        let brief_baseline = BriefBaseline::new(state_dir, kernel.brief_map_id());
        let brief_seen = brief_baseline.load().unwrap_or_else(|| kernel.brief().into_iter().collect());
        Listeners {
            names: CgroupNames::new(root),
            root_in_mount,
            kernel,
            live: HashMap::new(),
            missing: HashSet::new(),
            unconfirmed: HashSet::new(),
            brief_seen,
            brief_read: Instant::now(),
            brief_baseline,
        }
    }

    /// Writes the kernel's ports that have now been live for [`SETTLE`]
    /// (all of them at the first tick: those that went live while no agent
    /// ran too), and the brief ones once per [`SETTLE`]. Call it a few
    /// times per second.
    pub(crate) fn tick(
        &mut self,
        policy: Option<&Policy>,
        guard_names: &HashMap<u32, String>,
        out: &mut Vec<Record>,
    ) {
        let now = boot_ns();
        let settle = SETTLE.as_nanos() as u64;
        let mut present = HashSet::new();
        for e in self.kernel.live() {
            present.insert(e.cookie);
            if now.saturating_sub(e.opened_boot_ns) >= settle && !self.live.contains_key(&e.cookie) {
                self.opened(e, policy, guard_names, out);
            }
        }
        let gone: HashSet<u64> =
            self.live.keys().filter(|k| **k & SCANNED == 0 && !present.contains(k)).copied().collect();
        for cookie in gone.intersection(&self.missing) {
            if let Some(l) = self.live.remove(cookie) {
                out.push(closed(l.record, now.saturating_sub(l.opened_boot_ns), SystemTime::now()));
            }
        }
        self.missing = gone.difference(&self.missing).copied().collect();
        if self.brief_read.elapsed() >= SETTLE {
            self.brief_read = Instant::now();
            self.write_brief(policy, guard_names, out);
        }
    }

    /// One `port_brief` line per kind that had brief ports since the
    /// previous read. The kernel's counts only grow (keys are never deleted
    /// here, the kernel may be bumping them); a count below the previous
    /// one is a key evicted and made anew.
    fn write_brief(
        &mut self,
        policy: Option<&Policy>,
        guard_names: &HashMap<u32, String>,
        out: &mut Vec<Record>,
    ) {
        let counts: HashMap<BriefKind, u64> = self.kernel.brief().into_iter().collect();
        let mut wrote = false;
        for (kind, sum) in &counts {
            let before = self.brief_seen.get(kind).copied().unwrap_or(0);
            let count = if *sum >= before { sum - before } else { *sum };
            if count == 0 {
                continue;
            }
            let e = LivePortEntry {
                sock_cgroup: kind.sock_cgroup,
                guard: (kind.guard_id != UNGUARDED_ID).then_some((kind.guard_id, 0)),
                pid: 0,
                comm: String::new(),
                generation: 0,
                proto: kind.proto,
                addr: kind.addr,
                port: kind.port,
                cookie: 0,
                opened_boot_ns: 0,
                opened_at: SystemTime::now(),
            };
            let mut r = self.classify(&e, SystemTime::now(), RecordKind::PortBrief, policy, guard_names);
            r.count = count;
            r.open_seconds = Some(0);
            out.push(r);
            wrote = true;
        }
        if wrote && let Err(e) = self.brief_baseline.save(&counts) {
            tracing::warn!(error = %e, "cannot keep the brief-port counts for the next agent; it will not write those counted while none runs");
        }
        self.brief_seen = counts;
    }

    /// A kernel port live for [`SETTLE`], reported once.
    fn opened(
        &mut self,
        e: LivePortEntry,
        policy: Option<&Policy>,
        guard_names: &HashMap<u32, String>,
        out: &mut Vec<Record>,
    ) {
        // A port that went live between the attach and a read of the socket
        // tables may be listed from there already: the kernel's entry adopts
        // that one (now closable by its cookie) instead of opening it twice.
        if let Some(mut l) = self.take_scanned(e.proto, e.addr, e.port) {
            // The kernel names its process, which the tables cannot.
            l.record.pid = e.pid;
            l.record.comm = e.comm.clone();
            self.live.insert(e.cookie, l);
            return;
        }
        let record = self.classify(&e, e.opened_at, RecordKind::PortOpened, policy, guard_names);
        out.push(record.clone());
        self.live.insert(e.cookie, Live { record, proto: e.proto, opened_boot_ns: e.opened_boot_ns });
    }

    fn take_scanned(&mut self, proto: Transport, addr: IpAddr, port: u16) -> Option<Live> {
        let addr = crate::policy::eval::canonical(addr);
        let key = self.live.iter().find_map(|(k, l)| {
            (k & SCANNED != 0 && l.proto == proto && l.record.addr == addr && l.record.port == port)
                .then_some(*k)
        })?;
        self.live.remove(&key)
    }

    /// The trail record for a kernel port: its cgroup, guard and standing.
    fn classify(
        &mut self,
        e: &LivePortEntry,
        at: SystemTime,
        kind: RecordKind,
        policy: Option<&Policy>,
        guard_names: &HashMap<u32, String>,
    ) -> Record {
        let proto = e.proto;
        let cgroup = self.names.name(e.sock_cgroup);
        // The kernel names the guard that covers the socket; the policy
        // says which rule (if any) approves the port.
        let guard_id = e.guard.map_or(UNGUARDED_ID, |g| g.0);
        let standing = match (policy, guard_names.get(&guard_id)) {
            (Some(p), Some(name)) if guard_id != UNGUARDED_ID => {
                match p.guards.iter().find(|g| &g.name == name) {
                    Some(g) => inventory::standing_of(g.judge_observed(Action::Bind, proto, e.addr, e.port)),
                    None => inventory::standing(p, Some(&cgroup), None, proto, e.addr, e.port),
                }
            }
            (Some(p), _) => inventory::standing(p, Some(&cgroup), None, proto, e.addr, e.port),
            (None, _) => inventory::standing_of(crate::policy::eval::Judgement::Unguarded),
        };
        let port = Port { cgroup, pid: e.pid, comm: e.comm.clone(), proto, addr: e.addr, port: e.port };
        let mut r = record(kind, port, &standing);
        r.time = crate::trail::rfc3339(at);
        r
    }

    /// Takes in the ports the kernel does not keep, from the socket tables
    /// (no other process's file is touched): every unguarded port (the
    /// programs run only in guarded cgroups) and any port live before the
    /// programs were attached. Run at start and every [`TABLE_SCAN`]; a port
    /// found this way that is gone from the tables is reported closed.
    /// Such ports carry no pid (that would need the fds) and are dated by
    /// the scan that reports them.
    ///
    /// A port is reported only when two reads in a row find it and the
    /// kernel has not reported it by the second: a guarded port's event may
    /// still wait in the ring (drained every 250 ms) when the tables already
    /// show it, and the kernel's report names the process.
    pub(crate) fn scan_tables(&mut self, policy: Option<&Policy>, out: &mut Vec<Record>) {
        let ports = match inventory::procfs::table_ports() {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("cannot list live ports from the socket tables: {e}");
                return;
            }
        };
        // Read after the tables: a port in both is the kernel's, even one
        // younger than SETTLE that the tick has not written yet.
        let kernel = self.kernel.live();
        let canonical = crate::policy::eval::canonical;
        let kernel_cookies: HashSet<u64> = kernel.iter().map(|e| e.cookie).collect();
        let reported: HashSet<(Transport, IpAddr, u16)> = self
            .live
            .iter()
            .filter(|(k, _)| **k & SCANNED == 0)
            .map(|(_, l)| (l.proto, l.record.addr, l.record.port))
            .chain(kernel.iter().map(|e| (e.proto, canonical(e.addr), e.port)))
            .collect();
        let mut present = HashSet::new();
        let seen_before = std::mem::take(&mut self.unconfirmed);
        for p in ports {
            let key = SCANNED | p.inode;
            present.insert(key);
            let by_kernel =
                p.cookie.is_some_and(|c| self.live.contains_key(&c) || kernel_cookies.contains(&c))
                    || reported.contains(&(p.proto, canonical(p.addr), p.port));
            if by_kernel || self.live.contains_key(&key) {
                continue;
            }
            if !seen_before.contains(&key) {
                self.unconfirmed.insert(key);
                continue;
            }
            let cgroup = match p.cgroup_id {
                Some(id) => Some(self.names.name(id)),
                None => p.cgroup.as_deref().and_then(|c| inventory::relative_to_root(c, &self.root_in_mount)),
            };
            let standing = match policy {
                Some(policy) => inventory::standing(policy, cgroup.as_deref(), None, p.proto, p.addr, p.port),
                None => inventory::standing_of(crate::policy::eval::Judgement::Unguarded),
            };
            let port = Port {
                cgroup: cgroup.unwrap_or_default(),
                pid: 0,
                comm: String::new(),
                proto: p.proto,
                addr: p.addr,
                port: p.port,
            };
            let record = record(RecordKind::PortOpened, port, &standing);
            out.push(record.clone());
            self.live.insert(key, Live { record, proto: p.proto, opened_boot_ns: boot_ns() });
        }
        let gone: Vec<u64> =
            self.live.keys().filter(|k| **k & SCANNED != 0 && !present.contains(k)).copied().collect();
        let now = boot_ns();
        for key in gone {
            if let Some(l) = self.live.remove(&key) {
                out.push(closed(l.record, now.saturating_sub(l.opened_boot_ns), SystemTime::now()));
            }
        }
    }

    /// A port that lived at least [`SETTLE`] closed. One the agent has not
    /// written yet (it went live while no agent ran, or closed between two
    /// ticks) gets its `port_opened` line too, dated by the kernel.
    pub(crate) fn port_closed(
        &mut self,
        c: PortClosed,
        policy: Option<&Policy>,
        guard_names: &HashMap<u32, String>,
        out: &mut Vec<Record>,
    ) {
        let cookie = c.port.cookie;
        self.missing.remove(&cookie);
        let mut r = match self
            .live
            .remove(&cookie)
            .or_else(|| self.take_scanned(c.port.proto, c.port.addr, c.port.port))
        {
            Some(l) => l.record,
            None => {
                let r = self.classify(&c.port, c.port.opened_at, RecordKind::PortOpened, policy, guard_names);
                out.push(r.clone());
                r
            }
        };
        // The process that closes may differ from the one that opened.
        r.pid = c.pid;
        r.comm = c.comm;
        out.push(closed(r, c.lived.as_nanos() as u64, c.closed_at));
    }

    /// Re-judges every live port under a newly applied policy.
    pub(crate) fn reclassify(&mut self, policy: &Policy) {
        for l in self.live.values_mut() {
            let r = &mut l.record;
            let s = inventory::standing(policy, Some(&r.cgroup), r.guard.as_deref(), l.proto, r.addr, r.port);
            apply_standing(r, &s);
        }
    }

    /// Settled live ports by (guard, proto, port, approved), for the metric.
    pub(crate) fn counts(&self) -> BTreeMap<ListenerKey, i64> {
        let mut out = BTreeMap::new();
        for l in self.live.values() {
            let key = ListenerKey {
                guard: l.record.guard.clone().unwrap_or_default(),
                proto: l.record.proto,
                port: l.record.port,
                approved: l.record.status.unwrap_or(Approval::Unguarded),
            };
            *out.entry(key).or_default() += 1;
        }
        out
    }
}

/// The `port_closed` line of a port live for `lived_ns`.
fn closed(mut r: Record, lived_ns: u64, at: SystemTime) -> Record {
    r.event = RecordKind::PortClosed;
    r.time = crate::trail::rfc3339(at);
    r.open_seconds = Some(Duration::from_nanos(lived_ns).as_secs());
    r
}

fn apply_standing(r: &mut Record, s: &Standing) {
    r.guard = s.guard.clone();
    r.guard_cgroup = s.guard_cgroup.clone();
    r.mode = s.mode.map(|m| m.as_str().to_owned());
    r.status = Some(s.status);
    r.rule = s.rule.clone();
    r.audience = Some(s.audience.clone());
}

/// What a port record says about the port, before its standing.
struct Port {
    cgroup: String,
    pid: u32,
    comm: String,
    proto: Transport,
    addr: IpAddr,
    port: u16,
}

fn record(event: RecordKind, port: Port, s: &Standing) -> Record {
    let Port { cgroup, pid, comm, proto, addr, port } = port;
    let w = workload::parse(&cgroup);
    let mut r = Record::new(
        event,
        cgroup,
        w.unit,
        w.pod_uid,
        pid,
        comm,
        RecordOp::Bind,
        proto,
        crate::policy::eval::canonical(addr),
        port,
    );
    apply_standing(&mut r, s);
    r
}
