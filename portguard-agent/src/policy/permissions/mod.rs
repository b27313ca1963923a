//! Who can change the policy decides what is enforced: the agent refuses a
//! policy file that anyone but root (or the agent's own user) could
//! rewrite, directly or by replacing something on the way to it.
//!
//! The rule is sshd's StrictModes and sudo's, applied to every step of the
//! path the kernel walks to open the file: each directory from `/` down,
//! each symlink met on the way (its own path, then its target's), and the
//! file itself must be owned by root or the agent's user; no directory may
//! be group- or world-writable unless it has the sticky bit (where nobody
//! can rename or delete an entry they do not own, and every entry on the
//! path is checked for its owner anyway); the file may not be group- or
//! world-writable at all.
//!
//! Write bits on a read-only mount are not held against it: nothing can
//! write through it, and remounting needs CAP_SYS_ADMIN. That is what makes
//! a Kubernetes ConfigMap volume pass: kubelet makes its directory 0777
//! (it is an emptyDir underneath) and mounts it read-only in the container.
//! The same directory mounted writable elsewhere is out of sight; kubelet
//! keeps that copy under /var/lib/kubelet, which only root can enter.

use std::{
    ffi::{CString, OsString},
    fmt, fs,
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    path::{Component, Path, PathBuf},
};

/// The kernel's own limit on symlinks in one path walk (ELOOP).
const MAX_SYMLINKS: usize = 40;

/// A policy file that someone other than root or the agent's user could
/// change, and the step of its path that lets them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermissionError {
    /// The policy path as given.
    pub policy: PathBuf,
    /// The directory, symlink or file that is not safe.
    pub path: PathBuf,
    pub what: Entry,
    pub problem: Problem,
    /// The agent's effective uid, trusted besides root.
    pub agent_uid: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    Directory,
    Symlink,
    File,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// Owned by a user other than root or the agent's.
    Owner { uid: u32 },
    /// A file with the group write bit, or a directory with it and no
    /// sticky bit.
    GroupWritable { mode: u32, gid: u32 },
    /// The same for the world write bit.
    WorldWritable { mode: u32 },
    /// The path ends at something other than a regular file.
    NotRegularFile,
    /// More symlinks than the kernel follows.
    TooManySymlinks,
    /// lstat failed (it vanished or was replaced while being checked).
    Unexaminable(String),
}

impl fmt::Display for PermissionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.what {
            Entry::Directory => "directory",
            Entry::Symlink => "symlink",
            Entry::File => "file",
            Entry::Other => "path",
        };
        let sticky = if self.what == Entry::Directory { " without the sticky bit" } else { "" };
        let trusted = if self.agent_uid == 0 {
            "root".to_owned()
        } else {
            format!("root or uid {} (the agent's user)", self.agent_uid)
        };
        write!(f, "{}: refusing the policy file: {what} {} ", self.policy.display(), self.path.display())?;
        match &self.problem {
            Problem::Owner { uid } => write!(f, "is owned by uid {uid}, not {trusted}")?,
            Problem::GroupWritable { mode, gid } => {
                write!(f, "is group-writable (mode {mode:04o}, gid {gid}){sticky}")?
            }
            Problem::WorldWritable { mode } => write!(f, "is world-writable (mode {mode:04o}){sticky}")?,
            Problem::NotRegularFile => write!(f, "is not a regular file")?,
            Problem::TooManySymlinks => write!(f, "leads through more than {MAX_SYMLINKS} symlinks")?,
            Problem::Unexaminable(e) => write!(f, "cannot be examined: {e}")?,
        }
        write!(f, "; only {trusted} may be able to change what portguard enforces")
    }
}

impl std::error::Error for PermissionError {}

/// Checks that only root or this process's effective user can change the
/// policy at `path` (see the module doc for the rule).
pub fn check(path: &Path) -> Result<(), PermissionError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    check_for(path, unsafe { libc::geteuid() })
}

/// [`check`] for an agent running as `agent_uid`.
pub(crate) fn check_for(policy: &Path, agent_uid: u32) -> Result<(), PermissionError> {
    let refuse = |path: &Path, what, problem| PermissionError {
        policy: policy.to_owned(),
        path: path.to_owned(),
        what,
        problem,
        agent_uid,
    };
    let absolute = if policy.is_absolute() {
        policy.to_owned()
    } else {
        std::env::current_dir()
            .map_err(|e| refuse(policy, Entry::Other, Problem::Unexaminable(e.to_string())))?
            .join(policy)
    };
    // Steps still to walk, the next on top; `dir` is where the walk is,
    // always a real directory (symlinks are replaced by their targets), so
    // `..` is the kernel's `..`.
    let mut pending: Vec<Step> = steps(&absolute);
    pending.reverse();
    let mut dir = PathBuf::from("/");
    let mut symlinks = 0;
    let mut ended_on_file = false;
    while let Some(step) = pending.pop() {
        ended_on_file = false;
        let name = match step {
            Step::Root => {
                dir = PathBuf::from("/");
                examine(&dir, agent_uid, false).map_err(|(w, p)| refuse(&dir, w, p))?;
                continue;
            }
            Step::Parent => {
                dir.pop();
                continue;
            }
            Step::Name(name) => name,
        };
        let path = dir.join(&name);
        let last = pending.is_empty();
        let kind = examine(&path, agent_uid, last).map_err(|(w, p)| refuse(&path, w, p))?;
        if kind == Entry::Symlink {
            symlinks += 1;
            if symlinks > MAX_SYMLINKS {
                return Err(refuse(&path, Entry::Symlink, Problem::TooManySymlinks));
            }
            let target = fs::read_link(&path)
                .map_err(|e| refuse(&path, Entry::Symlink, Problem::Unexaminable(e.to_string())))?;
            pending.extend(steps(&target).into_iter().rev());
            continue;
        }
        ended_on_file = kind == Entry::File;
        dir = path;
    }
    if !ended_on_file {
        return Err(refuse(&dir, Entry::Directory, Problem::NotRegularFile));
    }
    Ok(())
}

enum Step {
    Root,
    Parent,
    Name(OsString),
}

fn steps(path: &Path) -> Vec<Step> {
    path.components()
        .filter_map(|c| match c {
            Component::RootDir => Some(Step::Root),
            Component::ParentDir => Some(Step::Parent),
            Component::Normal(n) => Some(Step::Name(n.to_owned())),
            Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// Checks one entry of the walk (lstat, so a symlink is judged as itself);
/// `last` is the entry the path ends at, which must be a regular file.
fn examine(path: &Path, agent_uid: u32, last: bool) -> Result<Entry, (Entry, Problem)> {
    let meta =
        fs::symlink_metadata(path).map_err(|e| (Entry::Other, Problem::Unexaminable(e.to_string())))?;
    let t = meta.file_type();
    let what = if t.is_symlink() {
        Entry::Symlink
    } else if t.is_dir() {
        Entry::Directory
    } else if t.is_file() {
        Entry::File
    } else {
        Entry::Other
    };
    // The owner of any entry can chmod it, and a symlink's owner can
    // replace it even in a sticky directory.
    if meta.uid() != 0 && meta.uid() != agent_uid {
        return Err((what, Problem::Owner { uid: meta.uid() }));
    }
    match what {
        // A symlink's own mode is always 0777 and means nothing.
        Entry::Symlink => return Ok(what),
        Entry::Directory if !last => {}
        Entry::File if last => {}
        _ if last => return Err((what, Problem::NotRegularFile)),
        // Not a directory in the middle of the path: opening it fails.
        _ => return Ok(what),
    }
    let mode = meta.mode() & 0o7777;
    let sticky = what == Entry::Directory && mode & libc::S_ISVTX != 0;
    if mode & 0o022 == 0 || sticky || read_only_mount(path) {
        return Ok(what);
    }
    if mode & 0o002 != 0 {
        Err((what, Problem::WorldWritable { mode }))
    } else {
        Err((what, Problem::GroupWritable { mode, gid: meta.gid() }))
    }
}

/// Whether `path` is on a read-only mount (a bind mount's own read-only
/// flag counts: statvfs reports per-mount flags).
fn read_only_mount(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else { return false };
    // SAFETY: a zeroed statvfs is a valid out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid out-pointer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_flag & libc::ST_RDONLY != 0
}

#[cfg(test)]
mod tests;
