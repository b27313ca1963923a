//! `portguard bench-noop`: empty programs on the hooks, the benchmark's
//! baseline for what attaching anything costs.

use std::path::Path;

use super::CmdError;
use crate::bpf;

pub(super) fn run(cgroup_root: &Path, bpffs: &Path) -> Result<(), CmdError> {
    bpf::Enforcer::load_noop(bpffs)
        .and_then(|mut e| e.guard_path(cgroup_root))
        .map_err(|e| CmdError::BadInput(e.to_string()))
}
