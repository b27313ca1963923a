//! The portguard agent as a library: the `portguard` binary is a thin CLI
//! over it (`cli` parses, `cmd` runs), and the fuzz targets drive the
//! policy parser through it (`policy`).

pub mod cli;
pub mod cmd;
pub mod policy;

mod bpf;
mod cgroup;
mod daemon;
mod inventory;
mod logging;
mod metrics;
mod pods;
mod review;
mod state_file;
mod trail;
mod verify;

/// For `review`'s commands, which still pick their own exit status; goes
/// when their CLI glue moves into `cmd`.
pub(crate) use cmd::EXIT_BAD_INPUT;
