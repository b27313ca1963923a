//! What can go wrong loading and attaching the programs, each in one line
//! that names the hook (section and attach type) and the errno.

use std::path::PathBuf;

use super::{bpffs::BpffsError, hooks};

/// The oldest kernel that has everything the programs use (the ring
/// buffer, 5.8, is the newest of them).
const KERNEL_NEEDED: &str = "portguard needs Linux >= 5.8 built with CONFIG_CGROUP_BPF=y";

/// "cgroup/bind4 program (BPF_CGROUP_INET4_BIND)": both names an operator
/// may search for.
fn hook_of(program: &str) -> (&'static str, &'static str) {
    let h = hooks::of(program);
    (h.section, h.attach_type)
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    #[error(transparent)]
    Bpffs(#[from] BpffsError),
    #[error("loading the eBPF object failed (is this run as root, with CAP_BPF and CAP_NET_ADMIN?): {0}")]
    Load(#[source] aya::EbpfError),
    /// bpf() answered EPERM to a process under a seccomp filter: in a
    /// container, the runtime's default profile admits bpf() only with
    /// CAP_SYS_ADMIN (podman < 5.2, CRI-O < 1.31, containerd < 1.6.9).
    #[error(
        "bpf() was refused with EPERM under a seccomp filter (Seccomp: 2 in /proc/self/status): the container \
         runtime's default seccomp profile blocks bpf() without CAP_SYS_ADMIN; run the agent with the seccomp \
         profile deploy/kubernetes/seccomp/portguard.json (seccompProfile type Localhost; see README, \
         \"Running on Kubernetes\"); nothing was attached ({0})"
    )]
    Seccomp(#[source] aya::EbpfError),
    #[error("cannot read the kernel's BTF (/sys/kernel/btf/vmlinux): {0}")]
    Btf(String),
    #[error("program {name} is missing from the eBPF object")]
    MissingProgram { name: &'static str },
    #[error("the kernel refused program {name} (does it support this cgroup hook?): {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    /// BPF_PROG_LOAD failed before the verifier said a word: what a kernel
    /// that predates the attach type answers (EINVAL).
    #[error(
        "this kernel cannot load the {} program ({}): {}; {KERNEL_NEEDED}; nothing was attached",
        hook_of(name).0, hook_of(name).1, errno_text(source)
    )]
    HookMissing {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The verifier rejected a program; its log is long, the last line says why.
    #[error(
        "the kernel's verifier refused the {} program ({}): {}: {verdict}; nothing was attached",
        hook_of(name).0, hook_of(name).1, errno_text(source)
    )]
    Verifier {
        name: &'static str,
        verdict: String,
        #[source]
        source: std::io::Error,
    },
    #[error("program {name} was not attached through a bpf_link: {source}")]
    Link {
        name: &'static str,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error(
        "cannot attach the {} program ({}) to cgroup {}: {}; the links this start made were removed",
        hook_of(name).0, hook_of(name).1, cgroup.display(), program_error_text(source)
    )]
    Attach {
        name: &'static str,
        cgroup: PathBuf,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("cannot open cgroup {cgroup}: {source}")]
    Cgroup {
        cgroup: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot pin {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("cannot update pinned link {path}: {source}")]
    Unpin {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A restart swaps its programs into the pinned links one by one; the
    /// links before the failed one already run the new programs. Every hook
    /// keeps a program, and all of them read the same maps.
    #[error(
        "cannot swap the new {} program ({}) into the pinned link {}: {}; every hook still has a program \
         (the links before it run this agent's programs, the rest the previous agent's), all enforcing the \
         policy just applied",
        hook_of(name).0, hook_of(name).1, path.display(), errno_text(source)
    )]
    Update {
        name: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Loading the object failed: a seccomp filter that refuses bpf() gets
/// its own error, since the capabilities are then not the problem.
pub(super) fn object_load_error(e: aya::EbpfError) -> LoadError {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if is_eperm(&e) && seccomp_filtered(&status) { LoadError::Seccomp(e) } else { LoadError::Load(e) }
}

fn is_eperm(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.downcast_ref::<std::io::Error>().and_then(std::io::Error::raw_os_error) == Some(libc::EPERM) {
            return true;
        }
        next = e.source();
    }
    false
}

/// `Seccomp: 2` in /proc/self/status: a filter is installed (0 none, 1 strict).
fn seccomp_filtered(status: &str) -> bool {
    status.lines().find_map(|l| l.strip_prefix("Seccomp:")).is_some_and(|v| v.trim() == "2")
}

/// One line that says which hook failed and why; aya's own message ends in
/// the whole multi-line verifier log.
pub(super) fn load_error(name: &'static str, e: aya::programs::ProgramError) -> LoadError {
    match e {
        aya::programs::ProgramError::LoadError { io_error, verifier_log } => {
            let log = verifier_log.to_string();
            // The whole log, for whoever has to find out why (it can be
            // megabytes; the error itself carries its last line).
            tracing::debug!(program = name, log = %log, "verifier log");
            match log.lines().rev().find(|l| !l.trim().is_empty()) {
                None => LoadError::HookMissing { name, source: io_error },
                Some(last) => LoadError::Verifier { name, verdict: last.trim().to_owned(), source: io_error },
            }
        }
        source => LoadError::Program { name, source },
    }
}

/// "EINVAL (Invalid argument)": the name people search for, and the words.
fn errno_text(e: &std::io::Error) -> String {
    let name = match e.raw_os_error() {
        Some(libc::EINVAL) => "EINVAL",
        Some(libc::EPERM) => "EPERM",
        Some(libc::EACCES) => "EACCES",
        Some(libc::E2BIG) => "E2BIG",
        Some(libc::ENOMEM) => "ENOMEM",
        Some(libc::EOPNOTSUPP) => "EOPNOTSUPP",
        Some(libc::EBADF) => "EBADF",
        Some(libc::ENOENT) => "ENOENT",
        Some(libc::ENOSPC) => "ENOSPC",
        // The kernel-internal ENOTSUPP leaks out of BPF syscalls.
        Some(524) => "ENOTSUPP",
        _ => return e.to_string(),
    };
    let words = e.to_string();
    let words = words.split(" (os error").next().unwrap_or(&words);
    format!("{name} ({words})")
}

/// aya's syscall errors print only the call's name; add what it returned.
fn program_error_text(e: &aya::programs::ProgramError) -> String {
    match e {
        aya::programs::ProgramError::SyscallError(s) => {
            format!("{} returned {}", s.call, errno_text(&s.io_error))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod seccomp_tests {
    use super::*;

    #[test]
    fn only_a_filter_counts_as_seccomp() {
        assert!(seccomp_filtered("Name:\tportguard\nSeccomp:\t2\nSeccomp_filters:\t1\n"));
        assert!(!seccomp_filtered("Seccomp:\t0\nSeccomp_filters:\t0\n"));
        assert!(!seccomp_filtered("Name:\tportguard\n"));
    }

    #[test]
    fn eperm_is_found_below_aya_s_wrappers() {
        let eperm = aya::maps::MapError::CreateError {
            name: "PG_PREFIX_MASKS".into(),
            io_error: std::io::Error::from_raw_os_error(libc::EPERM),
        };
        assert!(is_eperm(&aya::EbpfError::MapError(eperm)));
        let einval = aya::maps::MapError::CreateError {
            name: "PG_PREFIX_MASKS".into(),
            io_error: std::io::Error::from_raw_os_error(libc::EINVAL),
        };
        assert!(!is_eperm(&aya::EbpfError::MapError(einval)));
    }
}
