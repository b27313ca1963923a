//! Loading the eBPF object, attaching its programs as pinned bpf_links, and
//! removing them again.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, SockOps, links::FdLink,
    },
};

use super::{
    bpffs::{BpffsError, PinLayout, ensure_bpffs},
    error::{LoadError, load_error},
    hooks::{self, Kind},
    link_update, lsm,
};

/// The loaded object: maps pinned, programs verified, hooks not yet changed.
///
/// The programs go on the hooks of each *guarded* cgroup, never the root:
/// the kernel runs a cgroup's programs for the sockets created in it or
/// below it, so a socket no guard covers runs no portguard program at all,
/// and a guarded socket is judged by the cgroup it was created in even
/// after its process moves. Each guarded cgroup's links are pinned under
/// `links/<cgroup id>/`, so enforcement outlives the agent.
pub(crate) struct Enforcer {
    pub ebpf: Ebpf,
    pins: PinLayout,
    /// The optional LSM programs were loaded (the BPF LSM is active).
    lsm: bool,
    /// The pin directory did not exist before: a failed start removes it.
    fresh: bool,
    /// Cgroups that have this agent's programs on their hooks, with their
    /// path (for messages).
    guarded: BTreeMap<u64, PathBuf>,
    /// Cgroups guarded by this run, to drop if the start fails.
    made: Vec<u64>,
}

pub(super) static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portguard"));
/// Empty always-allow programs on the same hooks, for the benchmark's
/// baseline (`portguard bench-noop`); a few hundred bytes.
static NOOP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portguard-noop"));

impl Enforcer {
    /// Loads the object, reusing the maps pinned under `pin_dir` by an
    /// earlier run of the same map ABI (so a restarted agent keeps the live
    /// policy and socket stamps), and verifies every program. No hook
    /// changes: a kernel that lacks one fails here with nothing attached.
    pub(crate) fn load(pin_dir: &Path) -> Result<Enforcer, LoadError> {
        Self::load_from(pin_dir, OBJECT)
    }

    /// Loads the empty baseline programs instead (benchmarks only).
    pub(crate) fn load_noop(pin_dir: &Path) -> Result<Enforcer, LoadError> {
        Self::load_from(pin_dir, NOOP_OBJECT)
    }

    fn load_from(pin_dir: &Path, object: &'static [u8]) -> Result<Enforcer, LoadError> {
        ensure_bpffs(pin_dir)?;
        let pins = PinLayout::new(pin_dir.to_owned());
        let fresh = !pin_dir.exists();
        pins.create()?;
        match load_object(&pins, object).and_then(|mut ebpf| Ok((lsm::load(&mut ebpf)?, ebpf))) {
            Ok((lsm, ebpf)) => {
                // An earlier agent's links keep enforcing (its programs, these
                // maps) until `adopt_pinned` swaps this agent's programs in.
                let guarded = pins
                    .guarded_link_dirs()
                    .into_iter()
                    .map(|(id, _)| (id, PathBuf::from(format!("cgroup id {id}"))))
                    .collect();
                Ok(Enforcer { ebpf, pins, lsm, fresh, guarded, made: Vec::new() })
            }
            Err(e) => {
                if fresh {
                    let _ = unload(pin_dir);
                }
                Err(e)
            }
        }
    }

    /// Puts this agent's programs into the links an earlier agent pinned
    /// (BPF_LINK_UPDATE swaps a link's program atomically, so no hook is
    /// ever empty) and attaches the LSM programs. Call it once, after the
    /// first policy is in the maps. Returns the cgroups found guarded.
    ///
    /// `paths` names the cgroups the policy guards; a hook of one of them
    /// whose pinned link is missing (detached behind the agent's back) is
    /// attached again.
    pub(crate) fn adopt_pinned(&mut self, paths: &BTreeMap<u64, PathBuf>) -> Result<Vec<u64>, LoadError> {
        let mut adopted = Vec::new();
        for (cgroup_id, dir) in self.pins.guarded_link_dirs() {
            let mut gone = false;
            let mut missing = Vec::new();
            for hook in hooks::cgroup_hooks() {
                let name = hook.program;
                let path = dir.join(name);
                if !path.exists() {
                    missing.push(hook);
                    continue;
                }
                let link = link_update::open_pinned(&path)
                    .map_err(|source| LoadError::Unpin { path: path.clone(), source })?;
                let program = self.ebpf.program(name).ok_or(LoadError::MissingProgram { name })?;
                let fd = program.fd().map_err(|source| LoadError::Program { name, source })?;
                match link_update::replace_program(link.as_fd(), fd.as_fd()) {
                    Ok(()) => {}
                    // The kernel detached the link when its cgroup was
                    // removed: nothing left to guard there.
                    Err(e) if e.raw_os_error() == Some(libc::ENOLINK) => {
                        gone = true;
                        break;
                    }
                    Err(source) => return Err(LoadError::Update { name, path: path.clone(), source }),
                }
            }
            if gone {
                tracing::debug!(cgroup_id, "removing the links of a cgroup that no longer exists");
                remove_foreign_links(&dir, |_| false);
                let _ = fs::remove_dir(&dir);
                self.guarded.remove(&cgroup_id);
                continue;
            }
            if let Some(path) = paths.get(&cgroup_id).filter(|_| !missing.is_empty()) {
                tracing::warn!(
                    cgroup_id,
                    hooks = %missing.iter().map(|h| h.program).collect::<Vec<_>>().join(","),
                    "attaching again the hooks whose pinned links were removed"
                );
                self.attach_hooks(cgroup_id, path, &missing)?;
            }
            // Links of programs this object no longer has (an older
            // agent's): unpinning detaches them.
            remove_foreign_links(&dir, |n| hooks::cgroup_hooks().any(|h| h.program == n));
            self.guarded.entry(cgroup_id).or_insert_with(|| PathBuf::from(format!("cgroup id {cgroup_id}")));
            adopted.push(cgroup_id);
        }
        if self.lsm {
            lsm::attach(&mut self.ebpf, &self.pins)?;
        }
        // From here on the pinned state is ours: a later failure must not
        // remove it.
        self.fresh = false;
        self.made.clear();
        remove_foreign_links(&self.pins.links_dir(), |n| {
            n.parse::<u64>().is_ok() || (self.lsm && lsm::is_lsm_link(n))
        });
        // Maps of an older ABI are read by nothing now.
        self.pins.remove_stale_map_dirs();
        Ok(adopted)
    }

    /// Puts the programs on the hooks of each cgroup in `cgroups` that does
    /// not have them yet. A cgroup's links are pinned once all of its hooks
    /// are attached, so a failure drops that cgroup's new links (detaching
    /// them). Call it *before* the policy naming these cgroups goes live:
    /// until then the programs there find no guard and allow, and every
    /// socket created meanwhile is already stamped.
    pub(crate) fn guard(&mut self, cgroups: &BTreeMap<u64, PathBuf>) -> Result<(), LoadError> {
        for (id, path) in cgroups {
            // A cgroup adopted from an older agent may lack the links of
            // hooks that agent did not have: attach just those.
            if self.guarded.contains_key(id) && !self.lacks_links(*id) {
                continue;
            }
            let new = !self.guarded.contains_key(id);
            self.attach_at(*id, path)?;
            self.guarded.insert(*id, path.clone());
            if new {
                self.made.push(*id);
            }
        }
        Ok(())
    }

    /// Takes the programs off every guarded cgroup not in `keep`. Call it
    /// *after* the policy without them went live.
    pub(crate) fn release_except(&mut self, keep: &BTreeSet<u64>) {
        let gone: Vec<u64> = self.guarded.keys().filter(|id| !keep.contains(id)).copied().collect();
        for id in gone {
            self.guarded.remove(&id);
            let dir = self.pins.cgroup_links_dir(id);
            remove_foreign_links(&dir, |_| false);
            let _ = fs::remove_dir(&dir);
        }
    }

    /// Puts the programs on the hooks of the one cgroup at `path` (the
    /// benchmark's baseline) and leaves them pinned.
    pub(crate) fn guard_path(&mut self, path: &Path) -> Result<(), LoadError> {
        use std::os::unix::fs::MetadataExt as _;
        let id =
            fs::metadata(path).map_err(|source| LoadError::Cgroup { cgroup: path.to_owned(), source })?.ino();
        self.guard(&BTreeMap::from([(id, path.to_owned())]))?;
        self.fresh = false;
        Ok(())
    }

    /// The cgroups that carry this agent's programs now.
    pub(crate) fn guarded_cgroups(&self) -> impl Iterator<Item = u64> + '_ {
        self.guarded.keys().copied()
    }

    fn lacks_links(&self, cgroup_id: u64) -> bool {
        let dir = self.pins.cgroup_links_dir(cgroup_id);
        hooks::cgroup_hooks().any(|h| !dir.join(h.program).exists())
    }

    /// The kernel's id of each cgroup program this agent loaded, by name:
    /// what every guarded hook must run (`portguard verify` checks it).
    pub(crate) fn program_ids(&self) -> BTreeMap<String, u32> {
        hooks::cgroup_hooks()
            .filter_map(|h| Some((h.program.to_owned(), self.ebpf.program(h.program)?.info().ok()?.id())))
            .collect()
    }

    fn attach_at(&mut self, cgroup_id: u64, cgroup_path: &Path) -> Result<(), LoadError> {
        let all: Vec<&'static hooks::Hook> = hooks::cgroup_hooks().collect();
        self.attach_hooks(cgroup_id, cgroup_path, &all)
    }

    /// Attaches `which` hooks at one cgroup and pins their links; on a
    /// failure the cgroup's links are dropped (see [`Enforcer::guard`]).
    fn attach_hooks(
        &mut self,
        cgroup_id: u64,
        cgroup_path: &Path,
        which: &[&'static hooks::Hook],
    ) -> Result<(), LoadError> {
        let cgroup = fs::File::open(cgroup_path)
            .map_err(|source| LoadError::Cgroup { cgroup: cgroup_path.to_owned(), source })?;
        let mut new_links: Vec<(&'static str, FdLink)> = Vec::new();
        let pinned = self.pins.cgroup_links_dir(cgroup_id);
        for hook in which.iter().copied() {
            let name = hook.program;
            if pinned.join(name).exists() {
                continue;
            }
            let program = self.ebpf.program_mut(name).ok_or(LoadError::MissingProgram { name })?;
            let prog_err = |source| LoadError::Program { name, source };
            let attach_err = |source| LoadError::Attach { name, cgroup: cgroup_path.to_owned(), source };
            // Link-based cgroup attach takes no flags; the kernel runs every
            // linked program (multi-attach) whatever mode is named here.
            let link: FdLink = match hook.kind {
                Kind::CgroupSockAddr => {
                    let p = <&mut CgroupSockAddr>::try_from(&mut *program).map_err(prog_err)?;
                    let id = p.attach(&cgroup, CgroupAttachMode::Single).map_err(attach_err)?;
                    p.take_link(id).map_err(prog_err)?.try_into()
                }
                Kind::SockOps => {
                    let p = <&mut SockOps>::try_from(&mut *program).map_err(prog_err)?;
                    let id = p.attach(&cgroup, CgroupAttachMode::Single).map_err(attach_err)?;
                    p.take_link(id).map_err(prog_err)?.try_into()
                }
                Kind::CgroupSock => {
                    let p = <&mut CgroupSock>::try_from(&mut *program).map_err(prog_err)?;
                    let id = p.attach(&cgroup, CgroupAttachMode::Single).map_err(attach_err)?;
                    p.take_link(id).map_err(prog_err)?.try_into()
                }
                Kind::CgroupSkbIngress | Kind::CgroupSkbEgress => {
                    let direction = if hook.kind == Kind::CgroupSkbIngress {
                        CgroupSkbAttachType::Ingress
                    } else {
                        CgroupSkbAttachType::Egress
                    };
                    let p = <&mut CgroupSkb>::try_from(&mut *program).map_err(prog_err)?;
                    let id = p.attach(&cgroup, direction, CgroupAttachMode::Single).map_err(attach_err)?;
                    p.take_link(id).map_err(prog_err)?.try_into()
                }
                Kind::Lsm(_) => continue,
            }
            .map_err(|source| LoadError::Link { name, source })?;
            new_links.push((name, link));
        }
        let dir = self.pins.cgroup_links_dir(cgroup_id);
        // Root only, like the rest of the pin directory.
        if let Err(source) =
            std::os::unix::fs::DirBuilderExt::mode(&mut fs::DirBuilder::new(), 0o700).create(&dir)
            && source.kind() != std::io::ErrorKind::AlreadyExists
        {
            return Err(LoadError::Bpffs(BpffsError::Io { path: dir, source }));
        }
        let names: Vec<&str> = new_links.iter().map(|(n, _)| *n).collect();
        for (name, link) in new_links {
            let path = dir.join(name);
            if let Err(source) = link.pin(&path) {
                // Only this call's links: a repair that fails leaves the
                // hooks that were still attached as they were.
                remove_foreign_links(&dir, |n| !names.contains(&n));
                let _ = fs::remove_dir(&dir);
                return Err(LoadError::Pin { path, source });
            }
        }
        Ok(())
    }

    /// Undoes a start that failed: takes the programs off the cgroups this
    /// run guarded, and removes the pin directory if this run created it.
    pub(crate) fn abandon(&mut self) {
        for id in std::mem::take(&mut self.made) {
            self.guarded.remove(&id);
            let dir = self.pins.cgroup_links_dir(id);
            remove_foreign_links(&dir, |_| false);
            let _ = fs::remove_dir(&dir);
        }
        if self.fresh {
            let _ = unload(&self.pins.root);
        }
    }
}

/// Unpins every link in `dir` whose file name `keep` refuses (unpinning a
/// link nothing else holds detaches its program).
fn remove_foreign_links(dir: &Path, keep: impl Fn(&str) -> bool) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let is_file = e.file_type().is_ok_and(|t| t.is_file());
        if is_file && !name.to_str().is_some_and(&keep) {
            tracing::debug!(link = %e.path().display(), "removing a link this agent no longer uses");
            let _ = fs::remove_file(e.path());
        }
    }
}

fn load_object(pins: &PinLayout, object: &[u8]) -> Result<Ebpf, LoadError> {
    let map_paths: Vec<(&str, PathBuf)> =
        hooks::PINNED_MAPS.iter().map(|name| (*name, pins.map(name))).collect();
    let mut loader = EbpfLoader::new();
    for (name, path) in &map_paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(object).map_err(super::error::object_load_error)?;
    for hook in hooks::cgroup_hooks() {
        let name = hook.program;
        let program = ebpf.program_mut(name).ok_or(LoadError::MissingProgram { name })?;
        let prog_err = |source| LoadError::Program { name, source };
        match hook.kind {
            Kind::CgroupSockAddr => <&mut CgroupSockAddr>::try_from(&mut *program).map_err(prog_err)?.load(),
            Kind::SockOps => <&mut SockOps>::try_from(&mut *program).map_err(prog_err)?.load(),
            Kind::CgroupSock => <&mut CgroupSock>::try_from(&mut *program).map_err(prog_err)?.load(),
            Kind::CgroupSkbIngress | Kind::CgroupSkbEgress => {
                <&mut CgroupSkb>::try_from(&mut *program).map_err(prog_err)?.load()
            }
            Kind::Lsm(_) => continue,
        }
        .map_err(|e| load_error(name, e))?;
    }
    Ok(ebpf)
}

/// Detaches every program and removes every pinned map under `pin_dir`.
/// Returns the number of objects removed, once the kernel has really
/// detached the programs: "no longer enforces" must be true when it is said.
pub(crate) fn unload(pin_dir: &Path) -> std::io::Result<usize> {
    let pins = PinLayout::new(pin_dir.to_owned());
    // The guarded cgroups' link directories, then the LSM links beside them.
    let link_dirs: Vec<PathBuf> =
        pins.guarded_link_dirs().into_iter().map(|(_, d)| d).chain([pins.links_dir()]).collect();
    let link_ids: Vec<u32> = link_dirs
        .iter()
        .filter_map(|d| fs::read_dir(d).ok())
        .flat_map(|entries| entries.flatten())
        .filter_map(|e| link_update::open_pinned(&e.path()).ok())
        .filter_map(|fd| link_update::link_id(fd.as_fd()).ok())
        .collect();
    let mut removed = 0;
    // Links first: once they are gone nothing reads the maps.
    for dir in link_dirs.into_iter().chain(pins.all_map_dirs()) {
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
