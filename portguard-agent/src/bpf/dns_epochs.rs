//! Each guarded cgroup's resolver epoch (`GuardInfo::dns_epoch`).
//!
//! An address the kernel learned stays allowed until its answer expires,
//! up to a day. That is right while the resolver that gave it is still one
//! the guard may query, and wrong once a reload takes that resolver away:
//! the policy's author no longer trusts what it says. The kernel cannot
//! tell which resolver taught an entry without a second rule lookup on
//! every connect, so trust is versioned instead: queries and learned
//! entries carry the epoch they were made under, and one of another epoch
//! teaches or allows nothing.
//!
//! A new epoch means every learned address of the cgroup must be learned
//! again (a workload holding a cached answer is refused until it resolves
//! again), so a reload that only adds resolvers, or changes nothing about
//! them, keeps the epoch: the epoch is read back from the live slot, which
//! a restarted agent finds pinned, so a restart or upgrade keeps it too.

use ipnet::IpNet;
use portguard_common::IPPROTO_UDP;
use rustc_hash::FxHashMap;

use super::KernelPolicy;

const DNS_PORT: u16 = 53;

/// Sets `dns_epoch` in every guard entry of `new`: the epoch the live
/// slot gives the same cgroup when `new` still lets it query every
/// resolver it could query before, else `fresh()`.
pub(crate) fn assign<E>(
    live: &KernelPolicy,
    new: &mut KernelPolicy,
    mut fresh: impl FnMut() -> Result<u32, E>,
) -> Result<(), E> {
    let mut live_resolvers = FxHashMap::default();
    let mut new_resolvers = FxHashMap::default();
    let new_policy = &*new;
    let mut epochs: Vec<(u64, u32)> = Vec::with_capacity(new_policy.guards.len());
    for (cgroup, info) in &new_policy.guards {
        let kept = live.guards.get(cgroup).filter(|old| {
            let before = live_resolvers.entry(old.guard_id).or_insert_with(|| resolvers(live, old.guard_id));
            let after =
                new_resolvers.entry(info.guard_id).or_insert_with(|| resolvers(new_policy, info.guard_id));
            uncovered(before, after).is_empty()
        });
        let epoch = match kept {
            Some(old) => old.dns_epoch,
            None => fresh()?,
        };
        epochs.push((*cgroup, epoch));
    }
    for (cgroup, epoch) in epochs {
        if let Some(info) = new.guards.get_mut(&cgroup) {
            info.dns_epoch = epoch;
        }
    }
    Ok(())
}

/// The networks a guard may send a UDP datagram to port 53 of.
fn resolvers(k: &KernelPolicy, guard_id: u32) -> Vec<IpNet> {
    k.connect
        .iter()
        .filter(|(key, ports)| {
            key.guard_id == guard_id && key.proto == IPPROTO_UDP && ports.contains(DNS_PORT)
        })
        .filter_map(|(key, _)| IpNet::new(crate::policy::connect_addr(key), key.prefix_len).ok())
        .collect()
}

/// The networks of `nets` no network of `by` contains: resolvers `by`
/// does not reach (`diff` reports them with the same rule).
pub(crate) fn uncovered<'a>(nets: &'a [IpNet], by: &[IpNet]) -> Vec<&'a IpNet> {
    nets.iter().filter(|n| !by.iter().any(|b| b.contains(*n))).collect()
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use portguard_common::{AF_INET, AF_INET6, ConnectKey, GuardInfo, IPPROTO_TCP, PortRange, PortSet};

    use super::*;

    fn ports(first: u16, last: u16) -> PortSet {
        let mut set = PortSet { count: 1, ranges: [PortRange::EMPTY; portguard_common::MAX_PORT_RANGES] };
        set.ranges[0] = PortRange { first, last };
        set
    }

    /// A policy with guard `guard_id` at cgroup 100 (epoch `epoch`) whose
    /// connect rules reach `nets` on `proto`/`first..=last`.
    fn policy(guard_id: u32, epoch: u32, nets: &[&str], proto: u8, first: u16, last: u16) -> KernelPolicy {
        let mut k = KernelPolicy::default();
        k.guards.insert(100, GuardInfo { guard_id, dns_epoch: epoch, ..GuardInfo::default() });
        for net in nets {
            let net: IpNet = net.parse().expect("a network");
            let (family, addr) = match net.network() {
                IpAddr::V4(a) => {
                    let mut b = [0u8; 16];
                    b[..4].copy_from_slice(&a.octets());
                    (AF_INET, b)
                }
                IpAddr::V6(a) => (AF_INET6, a.octets()),
            };
            let key = ConnectKey { guard_id, slot: 0, proto, family, prefix_len: net.prefix_len(), addr };
            k.connect.insert(key, ports(first, last));
        }
        k
    }

    fn epoch_after(live: &KernelPolicy, mut new: KernelPolicy) -> u32 {
        assign(live, &mut new, || Ok::<u32, ()>(999)).expect("no error");
        new.guards[&100].dns_epoch
    }

    #[test]
    fn the_epoch_stays_while_every_resolver_stays_reachable() {
        let live = policy(1, 7, &["10.0.0.53/32"], IPPROTO_UDP, 53, 53);
        assert_eq!(epoch_after(&live, policy(1, 0, &["10.0.0.53/32"], IPPROTO_UDP, 53, 53)), 7, "same");
        assert_eq!(
            epoch_after(&live, policy(1, 0, &["10.0.0.0/8", "fd00::/8"], IPPROTO_UDP, 1, 1024)),
            7,
            "wider"
        );
        assert_eq!(
            epoch_after(&live, policy(4, 0, &["10.0.0.53/32"], IPPROTO_UDP, 53, 53)),
            7,
            "another guard, same reach"
        );
    }

    #[test]
    fn a_resolver_taken_away_or_a_new_cgroup_draws_a_new_epoch() {
        let live = policy(1, 7, &["10.0.0.53/32", "10.0.1.53/32"], IPPROTO_UDP, 53, 53);
        assert_eq!(epoch_after(&live, policy(1, 0, &["10.0.0.53/32"], IPPROTO_UDP, 53, 53)), 999, "narrowed");
        assert_eq!(
            epoch_after(&live, policy(1, 0, &["10.0.0.53/32", "10.0.1.53/32"], IPPROTO_UDP, 54, 60)),
            999,
            "port"
        );
        assert_eq!(
            epoch_after(&live, policy(1, 0, &["10.0.0.53/32", "10.0.1.53/32"], IPPROTO_TCP, 53, 53)),
            999,
            "tcp"
        );
        assert_eq!(
            epoch_after(&KernelPolicy::default(), policy(1, 0, &[], IPPROTO_UDP, 53, 53)),
            999,
            "new cgroup"
        );
    }
}
