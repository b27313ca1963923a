//! Loading the eBPF object, attaching its programs as pinned bpf_links, and
//! removing them again.

use std::{
    fs,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{CgroupAttachMode, CgroupSock, CgroupSockAddr, SockOps, links::FdLink},
};
use portguard_common::map_names;

use super::{
    bpffs::{BpffsError, PinLayout, ensure_bpffs},
    link_update, lsm,
};

/// The programs, in the order they are attached. `sock_create` comes first
/// so that sockets are stamped before the hooks that read stamps run; the
/// port-inventory programs (post_bind, sock_ops, sock_release) come last:
/// they only report.
pub const PROGRAMS: [&str; 11] = [
    "pg_sock_create",
    "pg_bind4",
    "pg_bind6",
    "pg_connect4",
    "pg_connect6",
    "pg_sendmsg4",
    "pg_sendmsg6",
    "pg_post_bind4",
    "pg_post_bind6",
    "pg_sock_ops",
    "pg_sock_release",
];

/// The hook each program goes on, as its ELF section and as the kernel's
/// attach type: an operator reading an error can look either up.
fn hook_of(program: &str) -> (&'static str, &'static str) {
    match program {
        "pg_sock_create" => ("cgroup/sock_create", "BPF_CGROUP_INET_SOCK_CREATE"),
        "pg_bind4" => ("cgroup/bind4", "BPF_CGROUP_INET4_BIND"),
        "pg_bind6" => ("cgroup/bind6", "BPF_CGROUP_INET6_BIND"),
        "pg_connect4" => ("cgroup/connect4", "BPF_CGROUP_INET4_CONNECT"),
        "pg_connect6" => ("cgroup/connect6", "BPF_CGROUP_INET6_CONNECT"),
        "pg_sendmsg4" => ("cgroup/sendmsg4", "BPF_CGROUP_UDP4_SENDMSG"),
        "pg_sendmsg6" => ("cgroup/sendmsg6", "BPF_CGROUP_UDP6_SENDMSG"),
        "pg_post_bind4" => ("cgroup/post_bind4", "BPF_CGROUP_INET4_POST_BIND"),
        "pg_post_bind6" => ("cgroup/post_bind6", "BPF_CGROUP_INET6_POST_BIND"),
        "pg_sock_ops" => ("sockops", "BPF_CGROUP_SOCK_OPS"),
        "pg_sock_release" => ("cgroup/sock_release", "BPF_CGROUP_INET_SOCK_RELEASE"),
        _ => ("an unknown hook", "unknown attach type"),
    }
}

/// The oldest kernel that has everything the programs use (the ring
/// buffer, 5.8, is the newest of them).
const KERNEL_NEEDED: &str = "portguard needs Linux >= 5.8 built with CONFIG_CGROUP_BPF=y";

const PINNED_MAPS: [&str; 11] = [
    map_names::CONFIG,
    map_names::GUARDS,
    map_names::BIND_RULES,
    map_names::CONNECT_RULES,
    map_names::SK_STAMPS,
    map_names::ANCESTRY,
    map_names::COUNTERS,
    map_names::STATS,
    map_names::EVENTS,
    map_names::PORT_EVENTS,
    map_names::DENIAL_COUNTS,
];

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Bpffs(#[from] BpffsError),
    #[error("loading the eBPF object failed (is this run as root, with CAP_BPF and CAP_NET_ADMIN?): {0}")]
    Load(#[source] aya::EbpfError),
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

/// The loaded object: maps pinned, programs verified, hooks not yet changed.
pub struct Enforcer {
    pub ebpf: Ebpf,
    pins: PinLayout,
    /// The optional LSM programs were loaded (the BPF LSM is active).
    lsm: bool,
    /// The pin directory did not exist before: a failed start removes it.
    fresh: bool,
}

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portguard"));
/// Empty always-allow programs on the same hooks, for the benchmark's
/// baseline (`portguard bench-noop`); a few hundred bytes.
static NOOP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portguard-noop"));

impl Enforcer {
    /// Loads the object, reusing the maps pinned under `pin_dir` by an
    /// earlier run of the same map ABI (so a restarted agent keeps the live
    /// policy and socket stamps), and verifies every program. No hook
    /// changes: a kernel that lacks one fails here with nothing attached.
    pub fn load(pin_dir: &Path) -> Result<Enforcer, LoadError> {
        Self::load_from(pin_dir, OBJECT)
    }

    /// Loads the empty baseline programs instead (benchmarks only).
    pub fn load_noop(pin_dir: &Path) -> Result<Enforcer, LoadError> {
        Self::load_from(pin_dir, NOOP_OBJECT)
    }

    fn load_from(pin_dir: &Path, object: &[u8]) -> Result<Enforcer, LoadError> {
        ensure_bpffs(pin_dir)?;
        let pins = PinLayout::new(pin_dir.to_owned());
        let fresh = !pin_dir.exists();
        pins.create()?;
        match load_object(&pins, object).and_then(|mut ebpf| Ok((lsm::load(&mut ebpf)?, ebpf))) {
            Ok((lsm, ebpf)) => Ok(Enforcer { ebpf, pins, lsm, fresh }),
            Err(e) => {
                if fresh {
                    let _ = unload(pin_dir);
                }
                Err(e)
            }
        }
    }

    /// Puts the programs on the hooks at `cgroup_root`. Hooks with a link
    /// pinned by an earlier run get the new program swapped in atomically
    /// (BPF_LINK_UPDATE); the others get a new link. New links are pinned
    /// only once all of them are attached, so a failure drops them
    /// (detaching them) and leaves the earlier state alone. Call it after
    /// the policy is in the maps, so no hook ever runs on an empty policy.
    pub fn attach(&mut self, cgroup_root: &Path) -> Result<(), LoadError> {
        let result = self.attach_inner(cgroup_root);
        if result.is_err() {
            self.abandon();
        }
        result
    }

    fn attach_inner(&mut self, cgroup_root: &Path) -> Result<(), LoadError> {
        let cgroup = fs::File::open(cgroup_root)
            .map_err(|source| LoadError::Cgroup { cgroup: cgroup_root.to_owned(), source })?;
        let ebpf = &mut self.ebpf;
        let pins = &self.pins;
        let mut new_links: Vec<(&'static str, FdLink)> = Vec::new();
        let mut updates: Vec<(&'static str, std::os::fd::OwnedFd)> = Vec::new();
        for name in PROGRAMS {
            let path = pins.link(name);
            if path.exists() {
                let link = link_update::open_pinned(&path)
                    .map_err(|source| LoadError::Unpin { path: path.clone(), source })?;
                updates.push((name, link));
                continue;
            }
            let program = ebpf.program_mut(name).ok_or(LoadError::MissingProgram { name })?;
            let prog_err = |source| LoadError::Program { name, source };
            let attach_err = |source| LoadError::Attach { name, cgroup: cgroup_root.to_owned(), source };
            // Link-based cgroup attach takes no flags; the kernel runs every
            // linked program (multi-attach) whatever mode is named here.
            let link: FdLink = if let Ok(p) = <&mut CgroupSockAddr>::try_from(&mut *program) {
                let id = p.attach(&cgroup, CgroupAttachMode::Single).map_err(attach_err)?;
                p.take_link(id).map_err(prog_err)?.try_into()
            } else if let Ok(p) = <&mut SockOps>::try_from(&mut *program) {
                let id = p.attach(&cgroup, CgroupAttachMode::Single).map_err(attach_err)?;
                p.take_link(id).map_err(prog_err)?.try_into()
            } else {
                let p = <&mut CgroupSock>::try_from(&mut *program).map_err(prog_err)?;
                let id = p.attach(&cgroup, CgroupAttachMode::Single).map_err(attach_err)?;
                p.take_link(id).map_err(prog_err)?.try_into()
            }
            .map_err(|source| LoadError::Link { name, source })?;
            new_links.push((name, link));
        }
        for (name, link) in new_links {
            let path = pins.link(name);
            link.pin(&path).map_err(|source| LoadError::Pin { path, source })?;
        }
        for (name, link) in updates {
            let program = ebpf.program(name).ok_or(LoadError::MissingProgram { name })?;
            let fd = program.fd().map_err(|source| LoadError::Program { name, source })?;
            link_update::replace_program(link.as_fd(), fd.as_fd()).map_err(|source| LoadError::Update {
                name,
                path: pins.link(name),
                source,
            })?;
        }
        if self.lsm {
            lsm::attach(ebpf, pins)?;
        }
        // From here on the pinned state is ours: a later failure must not
        // remove it.
        self.fresh = false;
        // Links of programs this object no longer has (an older agent's):
        // unpinning detaches them.
        if let Ok(entries) = fs::read_dir(pins.links_dir()) {
            for e in entries.flatten() {
                let name = e.file_name();
                let ours =
                    name.to_str().is_some_and(|n| PROGRAMS.contains(&n) || (self.lsm && lsm::is_lsm_link(n)));
                if !ours {
                    tracing::info!(link = %e.path().display(), "removing a link this agent no longer uses");
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        // Maps of an older ABI are read by nothing now.
        pins.remove_stale_map_dirs();
        Ok(())
    }

    /// Undoes a start that failed before it attached anything: removes the
    /// pin directory if this run created it.
    pub fn abandon(&mut self) {
        if self.fresh {
            let _ = unload(&self.pins.root);
        }
    }
}

fn load_object(pins: &PinLayout, object: &[u8]) -> Result<Ebpf, LoadError> {
    let map_paths: Vec<(&str, PathBuf)> = PINNED_MAPS.iter().map(|name| (*name, pins.map(name))).collect();
    let mut loader = EbpfLoader::new();
    for (name, path) in &map_paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(object).map_err(LoadError::Load)?;
    for name in PROGRAMS {
        let program = ebpf.program_mut(name).ok_or(LoadError::MissingProgram { name })?;
        let prog_err = |source| LoadError::Program { name, source };
        if let Ok(p) = <&mut CgroupSockAddr>::try_from(&mut *program) {
            p.load().map_err(|e| load_error(name, e))?;
        } else if let Ok(p) = <&mut SockOps>::try_from(&mut *program) {
            p.load().map_err(|e| load_error(name, e))?;
        } else {
            <&mut CgroupSock>::try_from(&mut *program)
                .map_err(prog_err)?
                .load()
                .map_err(|e| load_error(name, e))?;
        }
    }
    Ok(ebpf)
}

/// One line that says which hook failed and why; aya's own message ends in
/// the whole multi-line verifier log.
fn load_error(name: &'static str, e: aya::programs::ProgramError) -> LoadError {
    match e {
        aya::programs::ProgramError::LoadError { io_error, verifier_log } => {
            let log = verifier_log.to_string();
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

/// Detaches every program and removes every pinned map under `pin_dir`.
/// Returns the number of objects removed, once the kernel has really
/// detached the programs: "no longer enforces" must be true when it is said.
pub fn unload(pin_dir: &Path) -> std::io::Result<usize> {
    let pins = PinLayout::new(pin_dir.to_owned());
    let link_ids: Vec<u32> = match fs::read_dir(pins.links_dir()) {
        Ok(entries) => entries
            .flatten()
            .filter_map(|e| link_update::open_pinned(&e.path()).ok())
            .filter_map(|fd| link_update::link_id(fd.as_fd()).ok())
            .collect(),
        Err(_) => Vec::new(),
    };
    let mut removed = 0;
    // Links first: once they are gone nothing reads the maps.
    for dir in std::iter::once(pins.links_dir()).chain(pins.all_map_dirs()) {
        match fs::read_dir(&dir) {
            Ok(entries) => {
                for e in entries {
                    fs::remove_file(e?.path())?;
                    removed += 1;
                }
                fs::remove_dir(&dir)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    match fs::remove_dir(pin_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // The kernel frees an unpinned link from a work queue; wait for it (a
    // running agent's own fds would keep a link alive: stop it first).
    let deadline = std::time::Instant::now() + UNLOAD_WAIT;
    while link_ids.iter().any(|id| link_update::link_exists(*id)) {
        if std::time::Instant::now() > deadline {
            return Err(std::io::Error::other(format!(
                "links unpinned, but the kernel still holds some after {} ms: is an agent still running?",
                UNLOAD_WAIT.as_millis()
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    Ok(removed)
}

const UNLOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
