//! The addresses the kernel learned from DNS answers (`PG_DNS_LEARNED`),
//! read by the agent to say why a connect to an address was refused: the
//! guard's workload never received it in an answer for one of its names,
//! received it but the answer expired, or received it for a name whose
//! rules do not allow that port.

use std::{collections::HashMap, net::IpAddr, path::Path};

use aya::maps::{HashMap as BpfHashMap, MapData};
use portguard_common::{
    AF_INET, AF_INET6,
    dns::{Learned, LearnedKey, NAMES_PER_ADDRESS},
    map_names,
};

use super::{
    bpffs::PinLayout,
    live_ports::boot_ns,
    pinned::{PinnedError, open},
};

/// What the kernel holds for (guarded cgroup, address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LearnedState {
    /// No answer for one of the guard's names gave it (or its entry was
    /// evicted to make room).
    Never,
    /// Answered for these names (their kernel identities), all expired;
    /// the last one this many seconds ago.
    Expired { names: Vec<u64>, ago_s: u64 },
    /// Answered for these names, still valid: the refusal is about the
    /// port or protocol.
    Live { names: Vec<u64> },
}

pub(crate) struct LearnedAddresses {
    map: BpfHashMap<MapData, LearnedKey, Learned>,
}

impl LearnedAddresses {
    pub(crate) fn open(pin_dir: &Path) -> Result<LearnedAddresses, PinnedError> {
        let pins = PinLayout::new(pin_dir.to_owned());
        let map = BpfHashMap::try_from(open(&pins, map_names::DNS_LEARNED)?)
            .map_err(|source| PinnedError::Map { name: map_names::DNS_LEARNED, source })?;
        Ok(LearnedAddresses { map })
    }

    pub(crate) fn state(&self, guard_cgroup: u64, addr: IpAddr) -> LearnedState {
        match self.map.get(&key(guard_cgroup, addr), 0) {
            Ok(learned) => classify(&learned, boot_ns()),
            Err(_) => LearnedState::Never,
        }
    }

    /// Notes, as the kernel does for an answer a workload received, that
    /// `addr` answers the name `name_hash` until `expires_ns` for the
    /// guarded cgroup, under its resolver `epoch`; the slot is marked as
    /// the agent's. A read, then a write: an answer the kernel notes for
    /// the same address in between may lose its extension (the workload
    /// then resolves again), never gain a name it was not answered.
    pub(crate) fn note_by_agent(
        &mut self,
        guard_cgroup: u64,
        addr: IpAddr,
        epoch: u32,
        name_hash: u64,
        expires_ns: u64,
    ) -> Result<(), aya::maps::MapError> {
        let key = key(guard_cgroup, addr);
        let mut learned = match self.map.get(&key, 0) {
            Ok(l) => l,
            Err(_) => Learned { epoch, ..Learned::default() },
        };
        let slot = learned.note(epoch, name_hash, expires_ns, boot_ns());
        learned.by_agent |= 1 << slot;
        self.map.insert(key, learned, 0)
    }
}

/// The table's key for `addr` (a v4-mapped address as IPv4, as the
/// kernel keys it).
fn key(guard_cgroup: u64, addr: IpAddr) -> LearnedKey {
    let (family, bytes) = match crate::policy::eval::canonical(addr) {
        IpAddr::V4(a) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.octets());
            (AF_INET, b)
        }
        IpAddr::V6(a) => (AF_INET6, a.octets()),
    };
    LearnedKey { guard_cgroup, family, _pad: [0; 7], addr: bytes }
}

impl LearnedAddresses {
    /// One walk of the table (at most `LEARNED_ENTRIES`, two system calls
    /// each): the addresses with an answer still valid per guarded cgroup,
    /// under the cgroup's resolver epoch (`epochs`, from the live policy),
    /// and the entries the table holds, valid or not.
    pub(crate) fn walk(&self, epochs: &HashMap<u64, u32>) -> LearnedTable {
        let now = boot_ns();
        let mut out = LearnedTable::default();
        for (key, learned) in self.map.iter().filter_map(Result::ok) {
            out.entries += 1;
            if epochs.get(&key.guard_cgroup) != Some(&learned.epoch) {
                continue;
            }
            let live = |i: &usize| learned.live(*i, now).is_some();
            if (0..NAMES_PER_ADDRESS).any(|i| live(&i)) {
                *out.live_per_cgroup.entry(key.guard_cgroup).or_default() += 1;
            }
            if (0..NAMES_PER_ADDRESS).filter(live).any(|i| learned.by_agent & (1 << i) != 0) {
                *out.by_agent_per_cgroup.entry(key.guard_cgroup).or_default() += 1;
            }
        }
        out
    }
}

/// What one walk of the learned table found.
#[derive(Debug, Default)]
pub(crate) struct LearnedTable {
    pub live_per_cgroup: HashMap<u64, u64>,
    /// Of those, addresses with a valid answer from the agent's own lookup
    /// (`resolve = "agent"`).
    pub by_agent_per_cgroup: HashMap<u64, u64>,
    /// Entries held. The kernel deletes none (the LRU only replaces), so
    /// the entries it ever created minus these are its evictions.
    pub entries: u64,
}

impl LearnedTable {
    pub(crate) fn evictions(&self, entries_created: u64) -> u64 {
        entries_created.saturating_sub(self.entries)
    }
}

fn classify(learned: &Learned, now: u64) -> LearnedState {
    let slots = learned.names.iter().zip(&learned.expires_ns).filter(|(_, e)| **e != 0);
    let live: Vec<u64> = slots.clone().filter(|(_, e)| **e > now).map(|(n, _)| *n).collect();
    if !live.is_empty() {
        return LearnedState::Live { names: live };
    }
    let names: Vec<u64> = slots.clone().map(|(n, _)| *n).collect();
    match slots.map(|(_, e)| *e).max() {
        Some(last) => LearnedState::Expired { names, ago_s: now.saturating_sub(last) / 1_000_000_000 },
        None => LearnedState::Never,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn live_expired_and_empty_entries() {
        let mut l = Learned::first(1, 7, 100 * S);
        l.note(1, 8, 50 * S, 10 * S);
        assert_eq!(classify(&l, 60 * S), LearnedState::Live { names: vec![7] });
        assert_eq!(classify(&l, 130 * S), LearnedState::Expired { names: vec![7, 8], ago_s: 30 });
        assert_eq!(classify(&Learned::default(), 0), LearnedState::Never);
    }
}
