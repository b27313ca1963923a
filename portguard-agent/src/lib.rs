//! The portguard agent as a library: the `portguard` binary is a thin CLI
//! over it, and the fuzz targets drive the policy parser through it.

pub mod agent;
pub mod bpf;
pub mod cgroup;
pub mod check;
pub mod cli;
pub mod inventory;
pub mod logging;
pub mod metrics;
pub mod pods;
pub mod policy;
pub mod review;
pub mod scan;
mod statfs;
pub mod status;
pub mod trail;

/// Exit status for input that cannot be used (bad policy, missing cgroup,
/// no privileges, unsupported kernel): nothing was changed.
pub const EXIT_BAD_INPUT: u8 = 2;
