//! Socket kinds whose bind and connect no sock_addr hook sees (raw, SCTP,
//! packet): a guard refuses to create them unless its policy allows them.

use portguard_common::{GUARD_ALLOW_OTHER_SOCKETS, Op, Verdict};

use crate::{identity::guard_of, read_config, report::record_violation};

/// Judges creating such a socket from `cgroup` (the calling task's, which
/// the new socket belongs to): true to allow. Counts and reports a refusal
/// or an audit-mode violation.
#[inline(always)]
pub(crate) fn creation_allowed(cgroup: u64, family: u8, proto: u8) -> bool {
    let Some(cfg) = read_config() else { return true };
    let Some((guard_cgroup, info)) = guard_of(cgroup, &cfg) else { return true };
    if info.flags & GUARD_ALLOW_OTHER_SOCKETS != 0 {
        return true;
    }
    record_violation(Op::Socket, cgroup, guard_cgroup, &info, cfg.generation, proto, family)
        != Verdict::Denied
}
