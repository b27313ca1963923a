//! Everything that touches the kernel: loading and attaching the programs,
//! the policy maps, and the denial event stream.

mod bpffs;
mod events;
mod link_update;
mod pinned;
mod loader;
mod policy_maps;

pub use events::{DecodedEvent, EventStream, EventsError};
pub use pinned::{DecisionCounters, GuardCounts, LiveState};
pub use loader::{Enforcer, LoadError, unload};
pub use policy_maps::{GuardIds, KernelPolicy, MapsError, PolicyMaps};
