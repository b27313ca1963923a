//! Everything that touches the kernel: loading and attaching the programs,
//! the policy maps, and the denial event stream.

mod bpffs;
mod dns_epochs;
#[cfg(test)]
mod dns_walk_kernel;
mod error;
mod events;
mod hooks;
mod inspect;
mod learned;
mod link_update;
mod live_ports;
mod loader;
mod lsm;
mod pinned;
mod policy_maps;
mod syscall;
#[cfg(test)]
mod verifier_budget;

pub(crate) use bpffs::check_pin_dir;
pub(crate) use dns_epochs::uncovered as uncovered_resolvers;
pub(crate) use error::LoadError;
pub(crate) use events::{DecodedEvent, EventStream, EventsError, MAX_BATCH as MAX_EVENT_BATCH};
pub(crate) use hooks::cgroup_hooks;
pub(crate) use inspect::{
    DenialCounters, attach_type_number, cgroup_link, cgroup_programs, link_pin, live_dns_names,
    live_generation, live_policy,
};
pub(crate) use learned::{LearnedAddresses, LearnedState, LearnedTable};
pub(crate) use live_ports::{BriefKind, LivePortEntry, LivePorts, PortClosed, boot_ns};
pub(crate) use loader::{Enforcer, unload};
pub(crate) use pinned::{DecisionCounters, GuardCounts, KernelCounters, LiveState, PinnedError};
pub(crate) use policy_maps::{ApplyStats, GuardIds, KernelPolicy, MapsError, PolicyMaps};
