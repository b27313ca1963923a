//! The optional BPF LSM programs (listen() without bind(), AF_PACKET).
//!
//! They need the BPF LSM to be active (`bpf` in /sys/kernel/security/lsm).
//! Without it the agent warns and runs without them: the cgroup hooks are
//! the guarantee, these close two gaps where the kernel allows.
//!
//! LSM links cannot be updated in place (BPF_LINK_UPDATE is for cgroup and
//! XDP links), so a restarted agent attaches its own first, pins it under a
//! new name, and only then unpins the old one: for a moment both run, and
//! both refuse the same things.

use aya::{
    Btf, Ebpf,
    programs::{Lsm, links::FdLink},
};

use super::{bpffs::PinLayout, error::LoadError, hooks};

const LSM_LIST: &str = "/sys/kernel/security/lsm";

/// Whether the kernel runs the BPF LSM. The list of active LSMs is on
/// securityfs, which a minimal host may not have mounted yet: mount it.
pub(super) fn bpf_lsm_active() -> bool {
    if !std::path::Path::new(LSM_LIST).exists() {
        let (fs, target) = (c"securityfs", c"/sys/kernel/security");
        // SAFETY: plain mount(2) with NUL-terminated strings and no data.
        if unsafe { libc::mount(fs.as_ptr(), target.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) } == 0 {
            tracing::info!(mount = "/sys/kernel/security", "mounted securityfs");
        }
    }
    std::fs::read_to_string(LSM_LIST).is_ok_and(|l| l.trim().split(',').any(|m| m == "bpf"))
}

/// Loads the LSM programs if the kernel can run them; returns whether it did.
pub(super) fn load(ebpf: &mut Ebpf) -> Result<bool, LoadError> {
    if hooks::lsm_hooks().any(|(h, _)| ebpf.program(h.program).is_none()) {
        return Ok(false);
    }
    if !bpf_lsm_active() {
        tracing::warn!(
            "the BPF LSM is not active (no `bpf` in /sys/kernel/security/lsm): listen() without bind() and \
             AF_PACKET sockets are not refused in guarded cgroups; add lsm=...,bpf to the kernel command line"
        );
        return Ok(false);
    }
    let btf = Btf::from_sys_fs().map_err(|e| LoadError::Btf(e.to_string()))?;
    for (h, hook) in hooks::lsm_hooks() {
        let name = h.program;
        let program = ebpf.program_mut(name).ok_or(LoadError::MissingProgram { name })?;
        let p: &mut Lsm = program.try_into().map_err(|source| LoadError::Program { name, source })?;
        // Optional: a kernel that refuses BPF LSM programs (some vendor
        // kernels allow trampoline programs from PID 1 only) leaves the two
        // gaps open, loudly.
        if let Err(e) = p.load(hook, &btf) {
            tracing::warn!(
                program = name,
                "the kernel refused to load the BPF LSM program {name} ({}): in guarded cgroups, listen() without \
                 bind() is not refused at the call (its listener still receives no connection: the ingress \
                 program drops SYNs to ports no rule approves) and AF_PACKET sockets are not refused on this host",
                refusal(&e.to_string())
            );
            return Ok(false);
        }
    }
    Ok(true)
}

/// A load error as one plain clause: aya ends it with the verifier's log,
/// which is empty when the kernel refused before verifying (then the
/// message would end in "Verifier output: ").
fn refusal(error: &str) -> String {
    match error.split_once("Verifier output:") {
        Some((head, log)) if log.trim().trim_end_matches(')').trim().is_empty() => {
            format!("{}, with no verifier output", head.trim().trim_end_matches(['.', ',', '(']).trim())
        }
        _ => error.to_owned(),
    }
}

/// Attaches the loaded LSM programs and replaces any left by an earlier run.
pub(super) fn attach(ebpf: &mut Ebpf, pins: &PinLayout) -> Result<(), LoadError> {
    let result = attach_all(ebpf, pins);
    if result.is_ok() {
        tracing::info!("BPF LSM programs attached: socket_listen, socket_create");
    }
    result
}

fn attach_all(ebpf: &mut Ebpf, pins: &PinLayout) -> Result<(), LoadError> {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let stamp = format!("{}-{}", std::process::id(), since_epoch.as_secs());
    for (h, _) in hooks::lsm_hooks() {
        let name = h.program;
        let program = ebpf.program_mut(name).ok_or(LoadError::MissingProgram { name })?;
        let p: &mut Lsm = program.try_into().map_err(|source| LoadError::Program { name, source })?;
        let id = p.attach().map_err(|source| LoadError::Program { name, source })?;
        let link: FdLink = p.take_link(id).map_err(|source| LoadError::Program { name, source })?.into();
        let path = pins.links_dir().join(format!("{name}@{stamp}"));
        link.pin(&path).map_err(|source| LoadError::Pin { path: path.clone(), source })?;
        // Only now that ours is pinned, drop the earlier ones.
        if let Ok(entries) = std::fs::read_dir(pins.links_dir()) {
            for e in entries.flatten() {
                let file = e.file_name().to_string_lossy().into_owned();
                if file.starts_with(&format!("{name}@")) && e.path() != path {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
    Ok(())
}

/// Whether a pinned link file belongs to an LSM program of this agent.
pub(super) fn is_lsm_link(file_name: &str) -> bool {
    hooks::lsm_hooks().any(|(h, _)| file_name.starts_with(&format!("{}@", h.program)))
}

#[cfg(test)]
mod tests {
    use super::refusal;

    #[test]
    fn an_empty_verifier_log_is_said_in_words() {
        assert_eq!(
            refusal("the BPF_PROG_LOAD syscall failed (Operation not permitted). Verifier output: )"),
            "the BPF_PROG_LOAD syscall failed (Operation not permitted), with no verifier output"
        );
        let with_log = "the BPF_PROG_LOAD syscall failed. Verifier output: R1 invalid mem access";
        assert_eq!(refusal(with_log), with_log);
    }
}
