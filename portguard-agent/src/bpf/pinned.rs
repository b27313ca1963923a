//! Reading the pinned state without loading anything: for `status`, and
//! for the agent's own counters.

use std::{collections::BTreeMap, path::Path};

use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap};
use portguard_common::{
    Config, DenialCount, DenialKey, GuardInfo, GuardKey, OP_COUNT, Op, VERDICT_COUNT, Verdict, counter_index,
    map_names, stats,
};

use super::bpffs::PinLayout;

#[derive(Debug, thiserror::Error)]
pub(crate) enum PinnedError {
    #[error("portguard is not loaded: nothing is pinned at {0}")]
    NotLoaded(String),
    #[error("pinned map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
}

/// Decision counts of one guard: `[op][verdict]`.
pub(crate) type GuardCounts = [[u64; VERDICT_COUNT]; OP_COUNT];

pub(crate) struct DecisionCounters {
    map: PerCpuArray<MapData, u64>,
    stats: PerCpuArray<MapData, u64>,
}

impl DecisionCounters {
    pub(crate) fn open(pin_dir: &Path) -> Result<Self, PinnedError> {
        let pins = PinLayout::new(pin_dir.to_owned());
        Ok(DecisionCounters {
            map: PerCpuArray::try_from(open(&pins, map_names::COUNTERS)?)
                .map_err(|source| PinnedError::Map { name: map_names::COUNTERS, source })?,
            stats: PerCpuArray::try_from(open(&pins, map_names::STATS)?)
                .map_err(|source| PinnedError::Map { name: map_names::STATS, source })?,
        })
    }

    fn sum(map: &PerCpuArray<MapData, u64>, index: u32) -> u64 {
        map.get(&index, 0).map_or(0, |v| v.iter().sum())
    }

    /// Exact counts for one guard id, summed over CPUs.
    pub(crate) fn guard(&self, guard_id: u32) -> GuardCounts {
        let mut out = [[0; VERDICT_COUNT]; OP_COUNT];
        for op in Op::ALL {
            for v in Verdict::ALL {
                out[op as usize][v as usize] = Self::sum(&self.map, counter_index(guard_id, op, v));
            }
        }
        out
    }

    pub(crate) fn events_lost(&self) -> u64 {
        Self::sum(&self.stats, stats::EVENTS_LOST)
    }

    pub(crate) fn port_events_lost(&self) -> u64 {
        Self::sum(&self.stats, stats::PORT_EVENTS_LOST)
    }

    pub(crate) fn live_ports_full(&self) -> u64 {
        Self::sum(&self.stats, stats::LIVE_PORTS_FULL)
    }

    /// The kernel's DNS counters: queries recorded, answers by what they
    /// taught (`learned`, `no_address`, `no_query`, `not_in_policy`,
    /// `not_parsed`), and addresses learned.
    pub(crate) fn dns(&self) -> DnsCounts {
        let sum = |i| Self::sum(&self.stats, i);
        DnsCounts {
            queries: sum(stats::DNS_QUERIES),
            answers: [
                ("learned", sum(stats::DNS_ANSWERS_LEARNED)),
                ("no_address", sum(stats::DNS_ANSWERS_NO_ADDRESS)),
                ("no_query", sum(stats::DNS_ANSWERS_NO_QUERY)),
                ("not_in_policy", sum(stats::DNS_ANSWERS_NOT_IN_POLICY)),
                ("not_parsed", sum(stats::DNS_ANSWERS_NOT_PARSED)),
            ],
            addresses: sum(stats::DNS_ADDRESSES_LEARNED),
            entries_created: sum(stats::DNS_LEARNED_ENTRIES),
        }
    }

    pub(crate) fn stamp_misses(&self) -> u64 {
        Self::sum(&self.stats, stats::STAMP_MISSES)
    }
}

/// See [`DecisionCounters::dns`].
pub(crate) struct DnsCounts {
    pub queries: u64,
    pub answers: [(&'static str, u64); 5],
    pub addresses: u64,
    /// Entries the kernel created in the learned table (see
    /// [`super::LearnedAddresses::walk`] for evictions).
    pub entries_created: u64,
}

/// Every counter the kernel keeps, for metrics.
pub(crate) struct KernelCounters {
    pub decisions: DecisionCounters,
    denial_counts: PerCpuHashMap<MapData, DenialKey, DenialCount>,
    /// The learned DNS addresses (counted per guard at each scrape).
    pub learned: Option<super::LearnedAddresses>,
}

impl std::fmt::Debug for KernelCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KernelCounters")
    }
}

impl KernelCounters {
    pub(crate) fn open(pin_dir: &Path) -> Result<Self, PinnedError> {
        let pins = PinLayout::new(pin_dir.to_owned());
        Ok(KernelCounters {
            decisions: DecisionCounters::open(pin_dir)?,
            denial_counts: PerCpuHashMap::try_from(open(&pins, map_names::DENIAL_COUNTS)?)
                .map_err(|source| PinnedError::Map { name: map_names::DENIAL_COUNTS, source })?,
            learned: super::LearnedAddresses::open(pin_dir).ok(),
        })
    }

    /// Exact denial and audit-violation counts per (guard, op, proto, port,
    /// verdict), summed over CPUs.
    /// Inbound refusals of different reasons are kept apart in the kernel
    /// (so each reason's first event is sent) and summed here, reason 0.
    pub(crate) fn denials(&self) -> Vec<(DenialKey, u64)> {
        let mut out: BTreeMap<DenialKey, u64> = BTreeMap::new();
        for (k, per_cpu) in self.denial_counts.iter().filter_map(Result::ok) {
            *out.entry(DenialKey { reason: 0, ..k }).or_default() +=
                per_cpu.iter().map(|c| c.count).sum::<u64>();
        }
        out.into_iter().collect()
    }
}

/// What the kernel enforces right now.
pub(crate) struct LiveState {
    pub generation: u64,
    /// Live guards by cgroup id.
    pub guards: BTreeMap<u64, GuardInfo>,
}

impl LiveState {
    pub(crate) fn read(pin_dir: &Path) -> Result<LiveState, PinnedError> {
        let pins = PinLayout::new(pin_dir.to_owned());
        let config: Array<MapData, Config> = Array::try_from(open(&pins, map_names::CONFIG)?)
            .map_err(|source| PinnedError::Map { name: map_names::CONFIG, source })?;
        let generation = config
            .get(&0, 0)
            .map_err(|source| PinnedError::Map { name: map_names::CONFIG, source })?
            .generation;
        let slot = Config { generation }.active_slot();
        let guards: BpfHashMap<MapData, GuardKey, GuardInfo> =
            BpfHashMap::try_from(open(&pins, map_names::GUARDS)?)
                .map_err(|source| PinnedError::Map { name: map_names::GUARDS, source })?;
        let mut live = BTreeMap::new();
        if generation != 0 {
            for item in guards.iter() {
                let (k, v) = item.map_err(|source| PinnedError::Map { name: map_names::GUARDS, source })?;
                if k.slot == slot {
                    live.insert(k.cgroup_id, v);
                }
            }
        }
        Ok(LiveState { generation, guards: live })
    }
}

pub(super) fn open(pins: &PinLayout, name: &'static str) -> Result<Map, PinnedError> {
    let path = pins.map(name);
    if !path.exists() {
        return Err(PinnedError::NotLoaded(path.display().to_string()));
    }
    let data = MapData::from_pin(&path).map_err(|source| PinnedError::Map { name, source })?;
    Map::from_map_data(data).map_err(|source| PinnedError::Map { name, source })
}
