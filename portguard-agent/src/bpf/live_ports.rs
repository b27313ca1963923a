//! The ports the kernel keeps for the inventory, read from their pinned
//! maps: `PG_LIVE_PORTS` (every live port of a guarded cgroup, with the
//! time it went live) and `PG_BRIEF_PORTS` (per-CPU counts of ports that
//! closed within `BRIEF_PORT_NS`), and the decoded close events.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    time::{Duration, SystemTime},
};

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuHashMap};
use portguard_common::{
    AF_INET, BriefPortKey, LIVE_PORT_ENTRIES, LivePort, PortEvent, Transport, UNGUARDED_ID, map_names,
};

use super::{
    bpffs::PinLayout,
    events::{RingRecord, comm},
    pinned::{PinnedError, open},
};

/// A live port as the kernel keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LivePortEntry {
    pub sock_cgroup: u64,
    /// `None` when no guard covers the socket.
    pub guard: Option<(u32, u64)>,
    /// The process that made it live.
    pub pid: u32,
    pub comm: String,
    pub generation: u64,
    pub proto: Transport,
    pub addr: IpAddr,
    pub port: u16,
    pub cookie: u64,
    /// When it went live (CLOCK_BOOTTIME), to age it.
    pub opened_boot_ns: u64,
    /// The same instant in wall-clock time, for the trail.
    pub opened_at: SystemTime,
}

impl LivePortEntry {
    fn decode(e: &LivePort) -> LivePortEntry {
        LivePortEntry {
            sock_cgroup: e.sock_cgroup,
            guard: (e.guard_id != UNGUARDED_ID).then_some((e.guard_id, e.guard_cgroup)),
            pid: (e.pid_tgid >> 32) as u32,
            comm: comm(&e.comm),
            generation: e.generation,
            proto: Transport::from(e.proto),
            addr: addr(e.family, e.addr),
            port: e.port,
            cookie: e.cookie,
            opened_boot_ns: e.opened_boot_ns,
            opened_at: wall_clock(e.opened_boot_ns),
        }
    }
}

/// A port that lived at least `BRIEF_PORT_NS` closing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PortClosed {
    pub port: LivePortEntry,
    /// The process that released it.
    pub pid: u32,
    pub comm: String,
    pub closed_at: SystemTime,
    /// How long it was live, by the kernel's clock.
    pub lived: Duration,
}

impl RingRecord for PortClosed {
    type Raw = PortEvent;
    fn decode(e: &PortEvent) -> PortClosed {
        PortClosed {
            port: LivePortEntry::decode(&e.live),
            pid: (e.pid_tgid >> 32) as u32,
            comm: comm(&e.comm),
            closed_at: wall_clock(e.closed_boot_ns),
            lived: Duration::from_nanos(e.closed_boot_ns.saturating_sub(e.live.opened_boot_ns)),
        }
    }
}

/// Brief ports of one kind, as the kernel counts them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct BriefKind {
    pub sock_cgroup: u64,
    pub guard_id: u32,
    pub proto: Transport,
    pub addr: IpAddr,
    pub port: u16,
}

/// The two pinned inventory maps.
pub(crate) struct LivePorts {
    live: BpfHashMap<MapData, u64, LivePort>,
    brief: PerCpuHashMap<MapData, BriefPortKey, u64>,
    /// The kernel's id of this instance of `PG_BRIEF_PORTS`.
    brief_map_id: Option<u32>,
}

impl LivePorts {
    pub(crate) fn open(pin_dir: &Path) -> Result<LivePorts, PinnedError> {
        let pins = PinLayout::new(pin_dir.to_owned());
        Ok(LivePorts {
            live: BpfHashMap::try_from(open(&pins, map_names::LIVE_PORTS)?)
                .map_err(|source| PinnedError::Map { name: map_names::LIVE_PORTS, source })?,
            brief: PerCpuHashMap::try_from(open(&pins, map_names::BRIEF_PORTS)?)
                .map_err(|source| PinnedError::Map { name: map_names::BRIEF_PORTS, source })?,
            brief_map_id: MapData::from_pin(pins.map(map_names::BRIEF_PORTS))
                .and_then(|m| m.info())
                .map(|info| info.id())
                .ok(),
        })
    }

    /// Which instance of the brief-port map the counts come from: a new
    /// one (after an unload) starts from zero.
    pub(crate) fn brief_map_id(&self) -> Option<u32> {
        self.brief_map_id
    }

    /// Every live port the kernel keeps now, each once. When the entry the
    /// walk stands on is deleted meanwhile, the kernel restarts the walk
    /// from the first key: the walk is bounded, and the next read sees what
    /// a cut-short one missed.
    pub(crate) fn live(&self) -> Vec<LivePortEntry> {
        let mut seen = HashSet::new();
        self.live
            .iter()
            .take(2 * LIVE_PORT_ENTRIES as usize)
            .map_while(Result::ok)
            .filter(|(cookie, _)| seen.insert(*cookie))
            .map(|(_, v)| LivePortEntry::decode(&v))
            .collect()
    }

    /// Brief ports so far per kind, summed over CPUs (since the kernel made
    /// the key: the counts only grow until the key is evicted).
    pub(crate) fn brief(&self) -> Vec<(BriefKind, u64)> {
        self.brief
            .iter()
            .filter_map(Result::ok)
            .map(|(k, per_cpu)| {
                let kind = BriefKind {
                    sock_cgroup: k.sock_cgroup,
                    guard_id: k.guard_id,
                    proto: Transport::from(k.proto),
                    addr: addr(k.family, k.addr),
                    port: k.port,
                };
                (kind, per_cpu.iter().sum())
            })
            .collect()
    }
}

/// Now, on the kernel's CLOCK_BOOTTIME.
pub(crate) fn boot_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The wall-clock time of a CLOCK_BOOTTIME reading.
pub(crate) fn wall_clock(boot: u64) -> SystemTime {
    SystemTime::now() - Duration::from_nanos(boot_ns().saturating_sub(boot))
}

pub(super) fn addr(family: u8, bytes: [u8; 16]) -> IpAddr {
    if family == AF_INET {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(bytes))
    }
}
