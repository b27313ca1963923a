//! The policy maps, written only through [`PolicyMaps::apply`].
//!
//! Two slots hold two policies; the generation's parity says which one the
//! kernel reads. `apply` writes the new policy into the slot that is not
//! live, writing only the entries that differ from what that slot held,
//! then bumps the generation: every socket operation sees either the whole
//! old policy or the whole new one.

use std::{
    collections::{BTreeSet, HashMap},
    time::{Duration, Instant},
};

use rustc_hash::FxHashMap;

use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData, MapError},
};
use portguard_common::{
    BindKey, Config, ConnectKey, FromKey, GuardInfo, GuardKey, MAX_GUARDS, MAX_PREFIX_LENS, MODE_AUDIT,
    MODE_ENFORCE, PortSet, RuleRef,
    dns::{DnsNameKey, NameKey},
    map_names,
};

use crate::policy::{CompiledPolicy, Mode, dns_name::NamePattern};

#[derive(Debug, thiserror::Error)]
pub(crate) enum MapsError {
    #[error("map {name} is missing from the eBPF object")]
    Missing { name: &'static str },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("more than {MAX_GUARDS} guards have been defined over this agent's lifetime")]
    OutOfGuardIds,
    #[error("cannot draw random bytes (DNS name key, resolver epoch): getrandom: {0}")]
    Random(std::io::Error),
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> MapsError {
    move |source| MapsError::Map { name, source }
}

/// Stable small integers for guard names: a guard keeps its id across
/// reloads, so a reload that leaves a guard alone rewrites none of its rules.
#[derive(Debug, Default)]
pub(crate) struct GuardIds {
    by_name: HashMap<String, u32>,
}

impl GuardIds {
    /// Ids for every guard of `policy`; names no longer present give their
    /// ids back for reuse.
    pub(crate) fn assign(&mut self, policy: &CompiledPolicy) -> Result<HashMap<String, u32>, MapsError> {
        let wanted: BTreeSet<&str> = policy.guards.iter().map(|g| g.name.as_str()).collect();
        self.by_name.retain(|name, _| wanted.contains(name.as_str()));
        let mut used: BTreeSet<u32> = self.by_name.values().copied().collect();
        for g in &policy.guards {
            if !self.by_name.contains_key(&g.name) {
                let id = (0..MAX_GUARDS).find(|i| !used.contains(i)).ok_or(MapsError::OutOfGuardIds)?;
                used.insert(id);
                self.by_name.insert(g.name.clone(), id);
            }
        }
        Ok(self.by_name.clone())
    }
}

/// What one slot holds, with every key's slot field zero.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct KernelPolicy {
    pub guards: FxHashMap<u64, GuardInfo>,
    pub bind: FxHashMap<BindKey, RuleRef>,
    pub from: FxHashMap<FromKey, u32>,
    pub connect: FxHashMap<ConnectKey, PortSet>,
    /// (guard id, protocol, DNS name): the ports allowed to its learned
    /// addresses. Names, not hashes: the map layer hashes them with the
    /// pinned key when it writes a slot.
    pub names: FxHashMap<(u32, u8, String), PortSet>,
}

impl KernelPolicy {
    /// Entries for `policy`, given each guard's id and the ids of the
    /// cgroups it covers now (one for a path guard, one per pod for a pod
    /// guard; several cgroups share the guard's id and rules). Rules of a
    /// guard that covers no cgroup yet are written anyway, so that a cgroup
    /// appearing only adds one guard entry.
    pub(crate) fn build(
        policy: &CompiledPolicy,
        ids: &HashMap<String, u32>,
        cgroup_ids: &HashMap<String, Vec<u64>>,
    ) -> KernelPolicy {
        let mut out = KernelPolicy {
            bind: FxHashMap::with_capacity_and_hasher(policy.bind_entries(), Default::default()),
            from: FxHashMap::with_capacity_and_hasher(policy.from_entries(), Default::default()),
            connect: FxHashMap::with_capacity_and_hasher(policy.connect_entries(), Default::default()),
            ..KernelPolicy::default()
        };
        for g in &policy.guards {
            let guard_id = ids[&g.name];
            let cgroups = cgroup_ids.get(&g.name).map_or(&[][..], Vec::as_slice);
            if !cgroups.is_empty() {
                let mut info = GuardInfo {
                    guard_id,
                    mode: match g.mode {
                        Mode::Enforce => MODE_ENFORCE,
                        Mode::Audit => MODE_AUDIT,
                    },
                    flags: g.flags,
                    v4_prefix_count: g.v4_prefix_lens.len() as u8,
                    v6_prefix_count: g.v6_prefix_lens.len() as u8,
                    ..GuardInfo::default()
                };
                debug_assert!(g.v4_prefix_lens.len() <= MAX_PREFIX_LENS);
                info.v4_prefix_lens[..g.v4_prefix_lens.len()].copy_from_slice(&g.v4_prefix_lens);
                info.v6_prefix_lens[..g.v6_prefix_lens.len()].copy_from_slice(&g.v6_prefix_lens);
                out.guards.extend(cgroups.iter().map(|&cgroup| (cgroup, info)));
            }
            out.bind.extend(g.bind.iter().map(|(k, v)| (BindKey { guard_id, ..*k }, *v)));
            out.from.extend(g.from.iter().map(|(k, v)| (FromKey { guard_id, ..*k }, *v)));
            out.connect.extend(g.connect.iter().map(|(k, v)| (ConnectKey { guard_id, ..*k }, *v)));
            out.names.extend(g.names.iter().map(|((proto, name), v)| ((guard_id, *proto, name.clone()), *v)));
        }
        out
    }
}

/// What an `apply` wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ApplyStats {
    pub generation: u64,
    pub written: usize,
    pub deleted: usize,
}

pub(crate) struct PolicyMaps {
    config: Array<MapData, Config>,
    guards: BpfHashMap<MapData, GuardKey, GuardInfo>,
    bind: BpfHashMap<MapData, BindKey, RuleRef>,
    from: BpfHashMap<MapData, FromKey, u32>,
    connect: BpfHashMap<MapData, ConnectKey, PortSet>,
    dns_names: BpfHashMap<MapData, DnsNameKey, PortSet>,
    /// The pinned key names are hashed with (see `dns_key`).
    name_key: NameKey,
    generation: u64,
    slots: [KernelPolicy; 2],
    /// What each slot of `dns_names` holds, hashed (slot field zero).
    name_slots: [FxHashMap<DnsNameKey, PortSet>; 2],
    last_switch: Option<Instant>,
}

/// A program that read the generation just before a switch may still be
/// using the old slot; programs run for microseconds, so waiting this long
/// before rewriting the slot that was just retired leaves a wide margin.
const SLOT_QUIESCE: Duration = Duration::from_millis(10);

impl PolicyMaps {
    /// Takes the policy maps out of `ebpf` and reads what they hold: after a
    /// restart they are the pinned maps of the previous run, still enforcing.
    pub(crate) fn open(ebpf: &mut Ebpf) -> Result<PolicyMaps, MapsError> {
        let mut take = |name: &'static str| ebpf.take_map(name).ok_or(MapsError::Missing { name });
        let config: Array<MapData, Config> =
            Array::try_from(take(map_names::CONFIG)?).map_err(map_err(map_names::CONFIG))?;
        let guards = BpfHashMap::try_from(take(map_names::GUARDS)?).map_err(map_err(map_names::GUARDS))?;
        let bind =
            BpfHashMap::try_from(take(map_names::BIND_RULES)?).map_err(map_err(map_names::BIND_RULES))?;
        let from =
            BpfHashMap::try_from(take(map_names::FROM_RULES)?).map_err(map_err(map_names::FROM_RULES))?;
        let connect = BpfHashMap::try_from(take(map_names::CONNECT_RULES)?)
            .map_err(map_err(map_names::CONNECT_RULES))?;
        let generation = config.get(&0, 0).map_err(map_err(map_names::CONFIG))?.generation;
        let dns_names =
            BpfHashMap::try_from(take(map_names::DNS_NAMES)?).map_err(map_err(map_names::DNS_NAMES))?;
        let name_key = dns_key(take(map_names::DNS_KEY)?)?;
        fill_prefix_masks(take(map_names::PREFIX_MASKS)?)?;
        let mut maps = PolicyMaps {
            config,
            guards,
            bind,
            from,
            connect,
            dns_names,
            name_key,
            generation,
            slots: Default::default(),
            name_slots: Default::default(),
            last_switch: None,
        };
        for slot in 0..2 {
            maps.slots[slot] = maps.read_slot(slot as u8)?;
            maps.name_slots[slot] = maps.read_name_slot(slot as u8)?;
        }
        Ok(maps)
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Entries in the guard, bind (with their `from` networks), connect
    /// and DNS name maps, both slots.
    pub(crate) fn entry_counts(&self) -> (usize, usize, usize, usize) {
        let sum = |f: fn(&KernelPolicy) -> usize| self.slots.iter().map(f).sum();
        (
            sum(|k| k.guards.len()),
            sum(|k| k.bind.len() + k.from.len()),
            sum(|k| k.connect.len()),
            self.name_slots.iter().map(|s| s.len()).sum(),
        )
    }

    /// Each guarded cgroup's resolver epoch in the live slot.
    pub(crate) fn dns_epochs(&self) -> HashMap<u64, u32> {
        let live = &self.slots[(self.generation & 1) as usize];
        live.guards.iter().map(|(cgroup, info)| (*cgroup, info.dns_epoch)).collect()
    }

    fn read_slot(&self, slot: u8) -> Result<KernelPolicy, MapsError> {
        let mut out = KernelPolicy::default();
        for item in self.guards.iter() {
            let (k, v) = item.map_err(map_err(map_names::GUARDS))?;
            if k.slot == u32::from(slot) {
                out.guards.insert(k.cgroup_id, v);
            }
        }
        for item in self.bind.iter() {
            let (k, v) = item.map_err(map_err(map_names::BIND_RULES))?;
            if k.slot == slot {
                out.bind.insert(BindKey { slot: 0, ..k }, v);
            }
        }
        for item in self.from.iter() {
            let (k, v) = item.map_err(map_err(map_names::FROM_RULES))?;
            if k.slot == slot {
                out.from.insert(FromKey { slot: 0, ..k }, v);
            }
        }
        for item in self.connect.iter() {
            let (k, v) = item.map_err(map_err(map_names::CONNECT_RULES))?;
            if k.slot == slot {
                out.connect.insert(ConnectKey { slot: 0, ..k }, v);
            }
        }
        Ok(out)
    }

    /// The hashed names `dns_names` holds in `slot`. What a slot held is
    /// known by hash only (the kernel never sees a name): `slots` keeps no
    /// names after a restart, and the first apply rewrites by hash.
    fn read_name_slot(&self, slot: u8) -> Result<FxHashMap<DnsNameKey, PortSet>, MapsError> {
        let mut out = FxHashMap::default();
        for item in self.dns_names.iter() {
            let (k, v) = item.map_err(map_err(map_names::DNS_NAMES))?;
            if k.slot == slot {
                out.insert(DnsNameKey { slot: 0, ..k }, v);
            }
        }
        Ok(out)
    }

    /// A compiled name's (or pattern's) identity in the kernel.
    pub(crate) fn name_hash(&self, name: &str) -> u64 {
        // Compiled names are normalised patterns: parsing them again
        // cannot fail.
        NamePattern::parse(name).expect("a compiled name").kernel_hash(&self.name_key)
    }

    /// `new`'s names as the kernel keys them.
    fn hashed_names(&self, new: &KernelPolicy) -> FxHashMap<DnsNameKey, PortSet> {
        new.names
            .iter()
            .map(|((guard_id, proto, name), ports)| {
                let hash = self.name_hash(name);
                (DnsNameKey { guard_id: *guard_id, slot: 0, proto: *proto, _pad: 0, hash }, *ports)
            })
            .collect()
    }

    /// Makes `new` the live policy in one switch.
    pub(crate) fn apply(&mut self, mut new: KernelPolicy) -> Result<ApplyStats, MapsError> {
        let live = &self.slots[(self.generation & 1) as usize];
        super::dns_epochs::assign(live, &mut new, || {
            // Never 0, the epoch of an empty learned entry.
            Ok(u32::from_le_bytes(random::<4>()?).max(1))
        })?;
        if let Some(t) = self.last_switch {
            let since = t.elapsed();
            if since < SLOT_QUIESCE {
                std::thread::sleep(SLOT_QUIESCE - since);
            }
        }
        let next = self.generation + 1;
        let slot = (next & 1) as u8;
        match self.write_slot(slot, &new) {
            Ok((written, deleted)) => {
                self.config.set(0, Config { generation: next }, 0).map_err(map_err(map_names::CONFIG))?;
                self.generation = next;
                self.name_slots[slot as usize] = self.hashed_names(&new);
                self.slots[slot as usize] = new;
                self.last_switch = Some(Instant::now());
                Ok(ApplyStats { generation: next, written, deleted })
            }
            Err(e) => {
                // The slot is half written but was never made live; learn
                // what it holds so the next attempt diffs against the truth.
                if let Ok(actual) = self.read_slot(slot) {
                    self.slots[slot as usize] = actual;
                }
                if let Ok(actual) = self.read_name_slot(slot) {
                    self.name_slots[slot as usize] = actual;
                }
                Err(e)
            }
        }
    }

    /// Brings the (not live) `slot` to `new`. Deletes go first so the map
    /// never has to hold both versions of a large policy at once.
    fn write_slot(&mut self, slot: u8, new: &KernelPolicy) -> Result<(usize, usize), MapsError> {
        let old = &self.slots[slot as usize];
        let (mut written, mut deleted) = (0, 0);
        let gkey = |cgroup_id: u64| GuardKey { cgroup_id, slot: u32::from(slot), _pad: 0 };
        for k in old.guards.keys().filter(|k| !new.guards.contains_key(k)) {
            remove(&mut self.guards, &gkey(*k), map_names::GUARDS)?;
            deleted += 1;
        }
        for k in old.bind.keys().filter(|k| !new.bind.contains_key(k)) {
            remove(&mut self.bind, &BindKey { slot, ..*k }, map_names::BIND_RULES)?;
            deleted += 1;
        }
        for k in old.from.keys().filter(|k| !new.from.contains_key(k)) {
            remove(&mut self.from, &FromKey { slot, ..*k }, map_names::FROM_RULES)?;
            deleted += 1;
        }
        for k in old.connect.keys().filter(|k| !new.connect.contains_key(k)) {
            remove(&mut self.connect, &ConnectKey { slot, ..*k }, map_names::CONNECT_RULES)?;
            deleted += 1;
        }
        let names = self.hashed_names(new);
        let old_names = &self.name_slots[slot as usize];
        for k in old_names.keys().filter(|k| !names.contains_key(k)) {
            remove(&mut self.dns_names, &DnsNameKey { slot, ..*k }, map_names::DNS_NAMES)?;
            deleted += 1;
        }
        for (k, v) in names.iter().filter(|(k, v)| old_names.get(k) != Some(v)) {
            self.dns_names.insert(DnsNameKey { slot, ..*k }, v, 0).map_err(map_err(map_names::DNS_NAMES))?;
            written += 1;
        }
        for (k, v) in new.from.iter().filter(|(k, v)| old.from.get(k) != Some(v)) {
            self.from.insert(FromKey { slot, ..*k }, v, 0).map_err(map_err(map_names::FROM_RULES))?;
            written += 1;
        }
        for (k, v) in new.bind.iter().filter(|(k, v)| old.bind.get(k) != Some(v)) {
            self.bind.insert(BindKey { slot, ..*k }, v, 0).map_err(map_err(map_names::BIND_RULES))?;
            written += 1;
        }
        for (k, v) in new.connect.iter().filter(|(k, v)| old.connect.get(k) != Some(v)) {
            self.connect
                .insert(ConnectKey { slot, ..*k }, v, 0)
                .map_err(map_err(map_names::CONNECT_RULES))?;
            written += 1;
        }
        // Guards last: within the slot a guard entry never points at rules
        // that are not there yet (it matters to no reader, the slot is not
        // live, but it keeps the slot consistent if an insert fails).
        for (k, v) in new.guards.iter().filter(|(k, v)| old.guards.get(k) != Some(v)) {
            self.guards.insert(gkey(*k), v, 0).map_err(map_err(map_names::GUARDS))?;
            written += 1;
        }
        Ok((written, deleted))
    }
}

/// The SipHash key of DNS names: made once from the kernel's random source
/// and kept in the pinned `PG_DNS_KEY`, so that every later agent hashes
/// names as the kernel hashed the answers it learned from, and no workload
/// can pick a name that collides with an allowed one.
fn dns_key(map: aya::maps::Map) -> Result<NameKey, MapsError> {
    let name = map_names::DNS_KEY;
    let mut keys: Array<MapData, NameKey> = Array::try_from(map).map_err(map_err(name))?;
    let key = keys.get(&0, 0).map_err(map_err(name))?;
    if key != [0, 0] {
        return Ok(key);
    }
    let bytes = random::<16>()?;
    let key = [
        u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")),
        u64::from_le_bytes(bytes[8..].try_into().expect("8 bytes")),
    ];
    keys.set(0, key, 0).map_err(map_err(name))?;
    Ok(key)
}

/// `N` bytes from the kernel's random source.
fn random<const N: usize>() -> Result<[u8; N], MapsError> {
    let mut bytes = [0u8; N];
    // SAFETY: the kernel writes at most `N` bytes into `bytes`.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), N, 0) };
    if n != N as isize {
        return Err(MapsError::Random(std::io::Error::last_os_error()));
    }
    Ok(bytes)
}

/// `PG_PREFIX_MASKS[n]` keeps the first n bits of a 16-byte address; the
/// kernel ANDs with it instead of computing masks bit by bit.
fn fill_prefix_masks(map: aya::maps::Map) -> Result<(), MapsError> {
    let name = map_names::PREFIX_MASKS;
    let mut masks: Array<MapData, [u8; 16]> = Array::try_from(map).map_err(map_err(name))?;
    for len in 0..=128u32 {
        let bits: u128 = if len == 0 { 0 } else { u128::MAX << (128 - len) };
        masks.set(len, bits.to_be_bytes(), 0).map_err(map_err(name))?;
    }
    Ok(())
}

fn remove<K: aya::Pod, V: aya::Pod>(
    map: &mut BpfHashMap<MapData, K, V>,
    key: &K,
    name: &'static str,
) -> Result<(), MapsError> {
    match map.remove(key) {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(source) => Err(MapsError::Map { name, source }),
    }
}
