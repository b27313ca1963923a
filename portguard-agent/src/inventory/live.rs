//! The live port inventory: every port of a guarded cgroup that went live
//! (from the kernel's port events, which carry the kernel's own time), plus
//! the ports the kernel does not report, read from the socket tables every
//! [`TABLE_SCAN`]: unguarded ones (portguard's programs run only in guarded
//! cgroups) and the ones already live at start. Each is classified against
//! the applied policy. It feeds
//! `portguard_listeners` and the port lifecycle records of the audit trail.
//!
//! A port is classified and written to the trail once it has been live for
//! [`SETTLE`]: a process that binds and closes in a loop would otherwise
//! cost a classification and two trail lines per iteration. Until then it
//! is kept as the raw event; ports that close sooner are summed into one
//! `port_brief` line per kind and second.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    time::{Duration, Instant, SystemTime},
};

use portguard_common::{Transport, UNGUARDED_ID};

use crate::{
    bpf::PortChange,
    cgroup::{CgroupNames, workload},
    inventory::{self, Approval, ListenerKey, Standing},
    policy::{Policy, eval::Action},
    trail::{Record, RecordKind, RecordOp},
};

/// Ports seen by /proc rather than by an event have no socket cookie; their
/// inode, tagged with this bit, keys them apart from cookies.
const SCANNED: u64 = 1 << 63;

/// How often the socket tables are read for the ports the kernel does not
/// report (unguarded ones, and closes of those found this way).
pub(crate) const TABLE_SCAN: Duration = Duration::from_secs(2);

/// How long a port must stay live to get its own trail lines.
pub(crate) const SETTLE: Duration = Duration::from_secs(1);

/// A port live for at least [`SETTLE`] (or found live at start-up).
struct Live {
    record: Record,
    proto: Transport,
    opened: Instant,
}

/// A port that went live less than [`SETTLE`] ago, as the kernel said.
struct Pending {
    event: PortChange,
    opened: Instant,
    at: SystemTime,
}

/// Ports that closed before they settled, by what they were.
#[derive(PartialEq, Eq, Hash)]
struct BriefKey {
    sock_cgroup: u64,
    guard_id: u32,
    proto: Transport,
    addr: IpAddr,
    port: u16,
}

pub(crate) struct Listeners {
    names: CgroupNames,
    root_in_mount: String,
    live: HashMap<u64, Live>,
    pending: HashMap<u64, Pending>,
    /// Ports the last socket-table read found that the kernel had not
    /// reported: reported by the next read if still there and still not
    /// the kernel's (see `scan_tables`).
    unconfirmed: HashSet<u64>,
    /// A sample event and how many such ports opened and closed.
    brief: HashMap<BriefKey, (PortChange, u64)>,
    brief_since: Instant,
}

impl Listeners {
    pub(crate) fn new(root: std::path::PathBuf, root_in_mount: String) -> Listeners {
        Listeners {
            names: CgroupNames::new(root),
            root_in_mount,
            live: HashMap::new(),
            pending: HashMap::new(),
            unconfirmed: HashSet::new(),
            brief: HashMap::new(),
            brief_since: Instant::now(),
        }
    }

    /// Classifies and writes the ports that have now settled, and the brief
    /// ones summed once per [`SETTLE`]. Call it a few times per second.
    pub(crate) fn tick(
        &mut self,
        policy: Option<&Policy>,
        guard_names: &HashMap<u32, String>,
        out: &mut Vec<Record>,
    ) {
        let settled: Vec<u64> =
            self.pending.iter().filter(|(_, p)| p.opened.elapsed() >= SETTLE).map(|(k, _)| *k).collect();
        for cookie in settled {
            let Some(p) = self.pending.remove(&cookie) else { continue };
            let e = &p.event;
            let proto = e.proto;
            // A port that went live between the attach and the start-up read
            // of /proc was listed from there already: the event adopts that
            // entry (now closable by its cookie) instead of opening it twice.
            let seeded = self.live.iter().find_map(|(k, l)| {
                let r = &l.record;
                (k & SCANNED != 0
                    && l.proto == proto
                    && r.addr == crate::policy::eval::canonical(e.addr)
                    && r.port == e.port)
                    .then_some(*k)
            });
            if let Some(mut l) = seeded.and_then(|k| self.live.remove(&k)) {
                // The tables found it first (its event was lost, or it went
                // live while no agent ran): the kernel now names its process.
                l.record.pid = e.pid;
                l.record.comm = e.comm.clone();
                self.live.insert(cookie, l);
                continue;
            }
            let record = self.classify(e, p.at, RecordKind::PortOpened, policy, guard_names);
            out.push(record.clone());
            self.live.insert(cookie, Live { record, proto, opened: p.opened });
        }
        if self.brief_since.elapsed() >= SETTLE {
            self.brief_since = Instant::now();
            let brief: Vec<(PortChange, u64)> = self.brief.drain().map(|(_, v)| v).collect();
            for (event, count) in brief {
                let mut r =
                    self.classify(&event, SystemTime::now(), RecordKind::PortBrief, policy, guard_names);
                r.count = count;
                r.open_seconds = Some(0);
                out.push(r);
            }
        }
    }

    /// The trail record for a port event: its cgroup, guard and standing.
    fn classify(
        &mut self,
        e: &PortChange,
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

    /// Takes in the ports the kernel did not report, from the socket tables
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
        let canonical = crate::policy::eval::canonical;
        let reported: HashSet<(Transport, IpAddr, u16)> = self
            .live
            .iter()
            .filter(|(k, _)| **k & SCANNED == 0)
            .map(|(_, l)| (l.proto, l.record.addr, l.record.port))
            .chain(self.pending.values().map(|p| (p.event.proto, canonical(p.event.addr), p.event.port)))
            .collect();
        let mut present = HashSet::new();
        let seen_before = std::mem::take(&mut self.unconfirmed);
        for p in ports {
            let key = SCANNED | p.inode;
            present.insert(key);
            let by_kernel =
                p.cookie.is_some_and(|c| self.live.contains_key(&c) || self.pending.contains_key(&c))
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
            self.live.insert(key, Live { record, proto: p.proto, opened: Instant::now() });
        }
        let gone: Vec<u64> =
            self.live.keys().filter(|k| **k & SCANNED != 0 && !present.contains(k)).copied().collect();
        for key in gone {
            if let Some(l) = self.live.remove(&key) {
                out.push(closed(l));
            }
        }
    }

    /// Kept raw until it settles (see the module's doc): this runs for
    /// every port that opens, so it must stay cheap.
    pub(crate) fn port_opened(&mut self, e: PortChange) {
        self.pending.insert(e.cookie, Pending { opened: Instant::now(), at: e.at, event: e });
    }

    pub(crate) fn port_closed(&mut self, e: &PortChange, out: &mut Vec<Record>) {
        if let Some(p) = self.pending.remove(&e.cookie) {
            let o = p.event;
            let key = BriefKey {
                sock_cgroup: o.sock_cgroup,
                guard_id: o.guard.map_or(UNGUARDED_ID, |g| g.0),
                proto: o.proto,
                addr: o.addr,
                port: o.port,
            };
            self.brief.entry(key).or_insert((o, 0)).1 += 1;
            return;
        }
        let Some(mut l) = self.live.remove(&e.cookie) else { return };
        // The process that closes may differ from the one that opened.
        l.record.pid = e.pid;
        l.record.comm = e.comm.clone();
        out.push(closed(l));
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

fn closed(l: Live) -> Record {
    let mut r = l.record;
    r.event = RecordKind::PortClosed;
    r.time = crate::trail::now_rfc3339();
    r.open_seconds = Some(l.opened.elapsed().as_secs());
    r
}

fn apply_standing(r: &mut Record, s: &Standing) {
    r.guard = s.guard.clone();
    r.guard_cgroup = s.guard_cgroup.clone();
    r.mode = s.mode.map(|m| m.as_str().to_owned());
    r.status = Some(s.status);
    r.rule = s.rule.clone();
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
