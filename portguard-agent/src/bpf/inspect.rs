//! Reading what the kernel really runs, without loading anything: the live
//! slot of the pinned policy maps, the pinned links and what they run, the
//! programs attached at a cgroup, and single denial counters. For
//! `portguard verify`, which must not trust the agent's own bookkeeping.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
    path::{Path, PathBuf},
};

use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuHashMap};
use portguard_common::{BindKey, Config, ConnectKey, DenialCount, DenialKey, GuardInfo, GuardKey, map_names};

use super::{
    bpffs::PinLayout,
    hooks::Hook,
    pinned::{PinnedError, open},
    policy_maps::KernelPolicy,
    syscall::{bpf, info_by_fd, open_pinned},
};

const BPF_PROG_QUERY: libc::c_long = 16;

/// The generation and the live slot of the pinned policy maps, with every
/// key's slot field zero (as [`KernelPolicy::build`] makes them).
/// The live slot's `PG_DNS_NAMES`: (guard id, protocol, name identity) and
/// the ports. Names are hashes in the kernel; the caller names them from the
/// policy it expects, with the pinned key.
pub(crate) struct LiveDnsNames {
    pub(crate) key: portguard_common::dns::NameKey,
    pub(crate) entries: Vec<((u32, u8, u64), portguard_common::PortSet)>,
}

pub(crate) fn live_dns_names(pin_dir: &Path) -> Result<LiveDnsNames, PinnedError> {
    use portguard_common::dns::{DnsNameKey, NameKey};
    let pins = PinLayout::new(pin_dir.to_owned());
    let err = |name: &'static str| move |source| PinnedError::Map { name, source };
    let config: Array<MapData, Config> =
        Array::try_from(open(&pins, map_names::CONFIG)?).map_err(err(map_names::CONFIG))?;
    let slot = config.get(&0, 0).map_err(err(map_names::CONFIG))?.active_slot();
    let keys: Array<MapData, NameKey> =
        Array::try_from(open(&pins, map_names::DNS_KEY)?).map_err(err(map_names::DNS_KEY))?;
    let key = keys.get(&0, 0).map_err(err(map_names::DNS_KEY))?;
    let names: BpfHashMap<MapData, DnsNameKey, portguard_common::PortSet> =
        BpfHashMap::try_from(open(&pins, map_names::DNS_NAMES)?).map_err(err(map_names::DNS_NAMES))?;
    let mut out = Vec::new();
    for item in names.iter() {
        let (k, v) = item.map_err(err(map_names::DNS_NAMES))?;
        if u32::from(k.slot) == slot {
            out.push(((k.guard_id, k.proto, k.hash), v));
        }
    }
    Ok(LiveDnsNames { key, entries: out })
}

pub(crate) fn live_policy(pin_dir: &Path) -> Result<(u64, KernelPolicy), PinnedError> {
    let pins = PinLayout::new(pin_dir.to_owned());
    let err = |name: &'static str| move |source| PinnedError::Map { name, source };
    let config: Array<MapData, Config> =
        Array::try_from(open(&pins, map_names::CONFIG)?).map_err(err(map_names::CONFIG))?;
    let generation = config.get(&0, 0).map_err(err(map_names::CONFIG))?.generation;
    let slot = Config { generation }.active_slot();
    let mut out = KernelPolicy::default();
    if generation == 0 {
        return Ok((0, out));
    }
    let guards: BpfHashMap<MapData, GuardKey, GuardInfo> =
        BpfHashMap::try_from(open(&pins, map_names::GUARDS)?).map_err(err(map_names::GUARDS))?;
    for item in guards.iter() {
        let (k, v) = item.map_err(err(map_names::GUARDS))?;
        if k.slot == slot {
            out.guards.insert(k.cgroup_id, v);
        }
    }
    let bind: BpfHashMap<MapData, BindKey, portguard_common::RuleRef> =
        BpfHashMap::try_from(open(&pins, map_names::BIND_RULES)?).map_err(err(map_names::BIND_RULES))?;
    for item in bind.iter() {
        let (k, v) = item.map_err(err(map_names::BIND_RULES))?;
        if u32::from(k.slot) == slot {
            out.bind.insert(BindKey { slot: 0, ..k }, v);
        }
    }
    let connect: BpfHashMap<MapData, ConnectKey, portguard_common::PortSet> =
        BpfHashMap::try_from(open(&pins, map_names::CONNECT_RULES)?)
            .map_err(err(map_names::CONNECT_RULES))?;
    for item in connect.iter() {
        let (k, v) = item.map_err(err(map_names::CONNECT_RULES))?;
        if u32::from(k.slot) == slot {
            out.connect.insert(ConnectKey { slot: 0, ..k }, v);
        }
    }
    Ok((generation, out))
}

/// The generation alone: one array lookup.
pub(crate) fn live_generation(pin_dir: &Path) -> Result<u64, PinnedError> {
    let pins = PinLayout::new(pin_dir.to_owned());
    let name = map_names::CONFIG;
    let config: Array<MapData, Config> =
        Array::try_from(open(&pins, name)?).map_err(|source| PinnedError::Map { name, source })?;
    Ok(config.get(&0, 0).map_err(|source| PinnedError::Map { name, source })?.generation)
}

/// Exact denial and audit counters by key (`PG_DENIAL_COUNTS`), one lookup
/// per key: the probe reads only the keys its attempts bump.
pub(crate) struct DenialCounters {
    map: PerCpuHashMap<MapData, DenialKey, DenialCount>,
}

impl DenialCounters {
    pub(crate) fn open(pin_dir: &Path) -> Result<Self, PinnedError> {
        let pins = PinLayout::new(pin_dir.to_owned());
        let name = map_names::DENIAL_COUNTS;
        Ok(DenialCounters {
            map: PerCpuHashMap::try_from(open(&pins, name)?)
                .map_err(|source| PinnedError::Map { name, source })?,
        })
    }

    /// The count summed over CPUs and over every reason the kernel keeps
    /// apart (an inbound refusal's cause, what a guard with DNS names had
    /// learned for the peer): `key.reason` is ignored. 0 for a key never
    /// bumped (or evicted).
    pub(crate) fn get(&self, key: &DenialKey) -> u64 {
        (0..=portguard_common::REASON_DNS_OTHER_PORT)
            .map(|reason| {
                (self.map.get(&DenialKey { reason, ..*key }, 0))
                    .map_or(0, |per_cpu| per_cpu.iter().map(|c| c.count).sum::<u64>())
            })
            .sum()
    }
}

/// Where one guarded cgroup's link of `hook` is pinned.
pub(crate) fn link_pin(pin_dir: &Path, cgroup_id: u64, hook: &Hook) -> PathBuf {
    PinLayout::new(pin_dir.to_owned()).cgroup_links_dir(cgroup_id).join(hook.program)
}

/// What a pinned cgroup link is: its id, the program it runs, and the
/// cgroup and attach type it is on (cgroup id 0 once its cgroup is gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CgroupLink {
    pub(crate) id: u32,
    pub(crate) prog_id: u32,
    pub(crate) cgroup_id: u64,
    pub(crate) attach_type: u32,
}

/// The head of `struct bpf_link_info` with its `cgroup` union member.
#[repr(C)]
#[derive(Default)]
struct LinkInfo {
    link_type: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    cgroup_id: u64,
    attach_type: u32,
    _rest: [u32; 11],
}

/// The `query` member of `union bpf_attr`, up to `prog_cnt`.
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

/// Reads the pinned link at `path`; `NotFound` when nothing is pinned there.
pub(crate) fn cgroup_link(path: &Path) -> io::Result<CgroupLink> {
    let fd = open_pinned(path)?;
    let mut info = LinkInfo::default();
    info_by_fd(fd.as_fd(), &mut info)?;
    Ok(CgroupLink {
        id: info.id,
        prog_id: info.prog_id,
        cgroup_id: info.cgroup_id,
        attach_type: info.attach_type,
    })
}

/// The ids of the programs attached directly at `cgroup` for `attach_type`
/// (links and plain attachments alike).
pub(crate) fn cgroup_programs(cgroup: BorrowedFd<'_>, attach_type: u32) -> io::Result<Vec<u32>> {
    // A cgroup holds at most 64 programs per attach type.
    let mut ids = [0u32; 64];
    let mut attr = QueryAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    bpf(BPF_PROG_QUERY, &mut attr)?;
    Ok(ids[..(attr.prog_cnt as usize).min(ids.len())].to_vec())
}

/// The kernel's number for a cgroup hook's attach type, from the name the
/// hook table gives it.
pub(crate) fn attach_type_number(hook: &Hook) -> Option<u32> {
    portguard_common::attach_type_number(hook.attach_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cgroup_hook_has_an_attach_type_number() {
        for hook in super::super::hooks::cgroup_hooks() {
            assert!(attach_type_number(hook).is_some(), "{}", hook.attach_type);
        }
    }

    #[test]
    fn link_info_puts_the_cgroup_member_where_the_kernel_does() {
        assert_eq!(std::mem::offset_of!(LinkInfo, cgroup_id), 16);
        assert_eq!(std::mem::offset_of!(LinkInfo, attach_type), 24);
        assert_eq!(std::mem::offset_of!(QueryAttr, prog_cnt), 24);
    }
}
