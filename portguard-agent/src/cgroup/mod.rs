//! The cgroup2 hierarchy: where it is mounted, cgroup paths <-> ids, and
//! what a path says about its workload (`workload`).
//!
//! A cgroup's id, as the kernel's `bpf_get_current_cgroup_id()` reports it,
//! is the inode number of its directory in cgroupfs.

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Component, Path, PathBuf},
};

pub(crate) mod statfs;
pub(crate) mod workload;

#[derive(Debug, thiserror::Error)]
pub(crate) enum CgroupError {
    #[error("no cgroup2 filesystem is mounted (looked in /proc/self/mounts)")]
    NoCgroup2Mount,
    #[error("failed to read /proc/self/mounts: {0}")]
    Mounts(#[source] std::io::Error),
    #[error("{path}: not a directory on a cgroup2 filesystem")]
    NotCgroup2 { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The cgroup2 mount point, read from /proc/self/mounts. The first cgroup2
/// mount wins: `/sys/fs/cgroup` on unified hosts, `/sys/fs/cgroup/unified`
/// on hybrid ones.
pub(crate) fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let mounts = fs::read_to_string("/proc/self/mounts").map_err(CgroupError::Mounts)?;
    parse_cgroup2_mount(&mounts).ok_or(CgroupError::NoCgroup2Mount)
}

fn parse_cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_dev, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount_path(dir)))
    })
}

/// /proc/self/mounts escapes space, tab, newline and backslash as octal.
fn unescape_mount_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v as char);
            i += 4;
            continue;
        }
        out.push(bytes[i] as char);
        i += 1;
    }
    out
}

/// Checks that `path` is a cgroup2 directory.
pub(crate) fn ensure_cgroup2_dir(path: &Path) -> Result<(), CgroupError> {
    let magic = match statfs::magic(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
            return Err(CgroupError::NotCgroup2 { path: path.to_owned() });
        }
        Err(source) => return Err(CgroupError::Io { path: path.to_owned(), source }),
    };
    if magic != statfs::CGROUP2_SUPER_MAGIC {
        return Err(CgroupError::NotCgroup2 { path: path.to_owned() });
    }
    Ok(())
}

/// The id of the cgroup at `path`, or `None` if it does not exist (yet).
pub(crate) fn cgroup_id(path: &Path) -> Result<Option<u64>, CgroupError> {
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(Some(m.ino())),
        Ok(_) => Err(CgroupError::NotCgroup2 { path: path.to_owned() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CgroupError::Io { path: path.to_owned(), source }),
    }
}

/// Joins a policy path ("/system.slice/x.service") onto a root directory.
/// Policy paths are validated to be absolute and free of `..` beforehand.
pub(crate) fn join(root: &Path, policy_path: &str) -> PathBuf {
    let mut out = root.to_path_buf();
    for c in Path::new(policy_path).components() {
        if let Component::Normal(part) = c {
            out.push(part);
        }
    }
    out
}

/// Resolves cgroup ids back to paths (relative to `root`) for reports.
/// Rescans the tree on a miss, at most once per `rescan_interval`; an id
/// that is gone stays a bare number.
pub(crate) struct CgroupNames {
    root: PathBuf,
    cache: HashMap<u64, String>,
    last_scan: Option<std::time::Instant>,
}

impl CgroupNames {
    const RESCAN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);
    const MAX_CACHED: usize = 65_536;

    pub(crate) fn new(root: PathBuf) -> Self {
        CgroupNames { root, cache: HashMap::new(), last_scan: None }
    }

    pub(crate) fn name(&mut self, id: u64) -> String {
        if let Some(p) = self.cache.get(&id) {
            return p.clone();
        }
        let due = self.last_scan.is_none_or(|t| t.elapsed() >= Self::RESCAN_INTERVAL);
        if due {
            self.rescan();
            if let Some(p) = self.cache.get(&id) {
                return p.clone();
            }
        }
        format!("cgroup-id:{id}")
    }

    fn rescan(&mut self) {
        self.last_scan = Some(std::time::Instant::now());
        if self.cache.len() > Self::MAX_CACHED {
            self.cache.clear();
        }
        let mut stack = vec![(self.root.clone(), String::from("/"))];
        while let Some((dir, rel)) = stack.pop() {
            if let Ok(m) = fs::metadata(&dir) {
                self.cache.insert(m.ino(), rel.clone());
            }
            let Ok(entries) = fs::read_dir(&dir) else { continue };
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let child_rel = if rel == "/" { format!("/{name}") } else { format!("{rel}/{name}") };
                    stack.push((e.path(), child_rel));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_hybrid_and_unified_mounts() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(parse_cgroup2_mount(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let unified = "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";
        assert_eq!(parse_cgroup2_mount(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(parse_cgroup2_mount("proc /proc proc rw 0 0\n"), None);
    }

    #[test]
    fn unescapes_octal_in_mount_paths() {
        assert_eq!(unescape_mount_path(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
    }

    #[test]
    fn join_ignores_root_and_dots() {
        assert_eq!(join(Path::new("/cg"), "/a/b"), PathBuf::from("/cg/a/b"));
        assert_eq!(join(Path::new("/cg"), "/"), PathBuf::from("/cg"));
    }
}
