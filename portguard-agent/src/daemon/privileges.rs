//! Whether this process may load and attach the programs at all: checked
//! before anything touches the kernel, so the refusal is one clear line.

use super::DaemonError;

/// Root, or the capabilities the agent needs in its effective set.
pub(super) fn check() -> Result<(), DaemonError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 && !has_bpf_caps() {
        return Err(DaemonError::NotRoot(euid));
    }
    Ok(())
}

fn has_bpf_caps() -> bool {
    // CAP_BPF (39) and CAP_NET_ADMIN (12) in the effective set.
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return false };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 39) != 0 && caps & (1 << 12) != 0)
}
