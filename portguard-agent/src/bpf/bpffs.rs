//! The bpffs directory portguard pins its maps and links under.

use std::{
    fs,
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use crate::cgroup::statfs;

#[derive(Debug, thiserror::Error)]
pub(crate) enum BpffsError {
    #[error(
        "{path} is not on a bpf filesystem, and mounting one at {mount} failed: {source} (mount it with `mount -t bpf bpf {mount}`)"
    )]
    Mount {
        path: PathBuf,
        mount: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not on a bpf filesystem (mount bpffs there, or pass --bpffs DIR on one)")]
    NotBpffs { path: PathBuf },
    #[error("--bpffs {path}: bpffs refuses names that contain a dot ({name:?}); pick a name without one")]
    Dotted { path: PathBuf, name: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Refuses a pin directory the agent would have to create with a dot in a
/// name, which bpffs refuses (EPERM) once the kernel is asked; directories
/// that already exist are fine whatever their names.
pub(crate) fn check_pin_dir(path: &Path) -> Result<(), BpffsError> {
    let mut at = PathBuf::new();
    for component in path.components() {
        at.push(component);
        if let std::path::Component::Normal(name) = component {
            let name = name.to_string_lossy();
            if name.contains('.') && !at.exists() {
                return Err(BpffsError::Dotted { path: path.to_owned(), name: name.into_owned() });
            }
        }
    }
    Ok(())
}

/// Where each pinned object lives under the pin directory.
#[derive(Debug, Clone)]
pub(super) struct PinLayout {
    pub root: PathBuf,
}

impl PinLayout {
    pub(super) fn new(root: PathBuf) -> Self {
        PinLayout { root }
    }

    /// Maps live in a directory named after the map ABI, so an agent whose
    /// maps differ in layout starts fresh maps beside the old ones instead
    /// of misreading them.
    pub(super) fn maps_dir(&self) -> PathBuf {
        self.root.join(format!("maps-v{}", portguard_common::MAP_ABI_VERSION))
    }

    /// Every maps directory under the root, of any ABI.
    pub(super) fn all_map_dirs(&self) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(&self.root) else { return Vec::new() };
        entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("maps")))
            .collect()
    }

    /// Removes maps directories of other ABIs (once no program uses them).
    pub(super) fn remove_stale_map_dirs(&self) {
        let current = self.maps_dir();
        for dir in self.all_map_dirs().into_iter().filter(|d| *d != current) {
            if let Ok(entries) = fs::read_dir(&dir) {
                for e in entries.flatten() {
                    let _ = fs::remove_file(e.path());
                }
            }
            let _ = fs::remove_dir(&dir);
        }
    }

    pub(super) fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    pub(super) fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    /// Where the links of one guarded cgroup are pinned: a directory
    /// named by the cgroup's id (bpffs refuses dots, and ids have none).
    pub(super) fn cgroup_links_dir(&self, cgroup_id: u64) -> PathBuf {
        self.links_dir().join(cgroup_id.to_string())
    }

    /// Every guarded cgroup's link directory, by cgroup id.
    pub(super) fn guarded_link_dirs(&self) -> Vec<(u64, PathBuf)> {
        let Ok(entries) = fs::read_dir(self.links_dir()) else { return Vec::new() };
        let mut dirs: Vec<(u64, PathBuf)> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path())))
            .collect();
        dirs.sort();
        dirs
    }

    /// Creates the pin directories, readable and writable by root only: a
    /// workload that could write portguard's maps could rewrite its policy.
    pub(super) fn create(&self) -> Result<(), BpffsError> {
        for dir in [self.root.clone(), self.maps_dir(), self.links_dir()] {
            if let Err(source) = fs::DirBuilder::new().mode(0o700).create(&dir)
                && source.kind() != std::io::ErrorKind::AlreadyExists
            {
                return Err(BpffsError::Io { path: dir, source });
            }
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                .map_err(|source| BpffsError::Io { path: dir.clone(), source })?;
        }
        Ok(())
    }
}

/// Makes sure the pin directory's parent is on bpffs. A fresh machine may
/// not have /sys/fs/bpf mounted: when the pin directory is under it, mount
/// it; anywhere else, refuse with a clear error.
pub(super) fn ensure_bpffs(pin_dir: &Path) -> Result<(), BpffsError> {
    // The nearest existing ancestor tells which filesystem the directory
    // will be created on.
    let mut parent = pin_dir.parent().unwrap_or(Path::new("/"));
    while !parent.exists() {
        parent = parent.parent().unwrap_or(Path::new("/"));
    }
    match statfs::magic(parent) {
        Ok(magic) if magic == statfs::BPF_FS_MAGIC => return Ok(()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(BpffsError::Io { path: parent.to_owned(), source }),
    }
    let default_mount = Path::new("/sys/fs/bpf");
    if !pin_dir.starts_with(default_mount) {
        return Err(BpffsError::NotBpffs { path: parent.to_owned() });
    }
    let mount_err =
        |source| BpffsError::Mount { path: parent.to_owned(), mount: default_mount.to_owned(), source };
    let target = std::ffi::CString::new("/sys/fs/bpf").expect("no NUL");
    let fstype = std::ffi::CString::new("bpf").expect("no NUL");
    // SAFETY: plain mount(2) with NUL-terminated strings and no data.
    let rc = unsafe { libc::mount(fstype.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(mount_err(std::io::Error::last_os_error()));
    }
    tracing::info!(mount = "/sys/fs/bpf", "mounted bpffs");
    match statfs::magic(parent) {
        Ok(magic) if magic == statfs::BPF_FS_MAGIC => Ok(()),
        _ => Err(BpffsError::NotBpffs { path: parent.to_owned() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dot_in_a_name_to_be_created_is_refused_and_an_existing_one_is_not() {
        let existing = std::env::temp_dir().join(format!("pg.bpffs.{}", std::process::id()));
        fs::create_dir_all(&existing).unwrap();
        assert!(check_pin_dir(&existing.join("portguard")).is_ok());
        let e = check_pin_dir(&existing.join("name.with.dots")).unwrap_err().to_string();
        assert!(e.contains("bpffs refuses names that contain a dot (\"name.with.dots\")"), "{e}");
        assert!(check_pin_dir(Path::new("/sys/fs/bpf/portguard")).is_ok());
        fs::remove_dir_all(&existing).unwrap();
    }
}
