//! What wakes the agent from the file system: a guarded cgroup that may
//! have appeared or gone, and a policy file that may have changed.
//!
//! Cgroups: for each guard the agent watches (inotify, non-recursive) the
//! nearest existing ancestor of the guard's cgroup directory, which sees the
//! guard's directory, or the missing part of its path, being created or
//! removed. The periodic rescan stays as a safety net for events inotify
//! cannot see.
//!
//! The policy file: its parent directory is watched rather than the file:
//! editors replace a file by renaming a temporary one over it, and
//! Kubernetes ConfigMap volumes swap a `..data` symlink, and neither keeps
//! the watched inode. The agent then compares the file's SHA-256 with the
//! applied one, so unrelated events in the directory cost a read and
//! nothing else.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
};

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

pub(crate) struct CgroupWatch {
    watcher: RecommendedWatcher,
    watched: HashSet<PathBuf>,
    events: mpsc::UnboundedReceiver<()>,
}

impl CgroupWatch {
    pub(crate) fn new() -> notify::Result<CgroupWatch> {
        let (tx, events) = mpsc::unbounded_channel();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res
                && matches!(ev.kind, EventKind::Create(_) | EventKind::Remove(_) | EventKind::Any)
            {
                let _ = tx.send(());
            }
        })?;
        Ok(CgroupWatch { watcher, watched: HashSet::new(), events })
    }

    /// Watches the nearest existing ancestor of each of `cgroups`.
    pub(crate) fn watch_parents_of<'a>(&mut self, cgroups: impl IntoIterator<Item = &'a Path>) {
        let wanted: HashSet<PathBuf> = cgroups.into_iter().filter_map(nearest_existing_parent).collect();
        for gone in self.watched.difference(&wanted).cloned().collect::<Vec<_>>() {
            let _ = self.watcher.unwatch(&gone);
            self.watched.remove(&gone);
        }
        for dir in wanted {
            if !self.watched.contains(&dir) {
                match self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
                    Ok(()) => {
                        self.watched.insert(dir);
                    }
                    Err(e) => tracing::debug!(dir = %dir.display(), "cannot watch: {e}"),
                }
            }
        }
    }

    /// Resolves when something under a watched directory was created or
    /// removed (coalescing bursts into one wake-up).
    pub(crate) async fn changed(&mut self) {
        if self.events.recv().await.is_some() {
            while self.events.try_recv().is_ok() {}
        } else {
            std::future::pending::<()>().await;
        }
    }
}

fn nearest_existing_parent(cgroup: &Path) -> Option<PathBuf> {
    let mut dir = cgroup.parent()?;
    while !dir.is_dir() {
        dir = dir.parent()?;
    }
    Some(dir.to_owned())
}

/// Watches the directory of `policy` and sends one message per burst of
/// changes, once the directory has been quiet for a moment, so a file
/// written in several steps is read once, whole. The debounce runs in its
/// own task: the agent's busy event loop cannot interrupt it.
pub(crate) fn watch_policy_file(policy: &Path) -> notify::Result<mpsc::Receiver<()>> {
    let (raw_tx, mut raw) = mpsc::unbounded_channel();
    let name = policy.file_name().map(|n| n.to_owned());
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let relevant = match &res {
            Ok(ev) => {
                ev.paths.is_empty()
                    || ev.paths.iter().any(|p| {
                        let file = p.file_name();
                        file == name.as_deref()
                            || file.is_some_and(|f| f.as_encoded_bytes().starts_with(b".."))
                    })
            }
            // A lost or failed event may have hidden a change: look.
            Err(_) => true,
        };
        if relevant {
            let _ = raw_tx.send(());
        }
    })?;
    let dir = match policy.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => std::path::PathBuf::from("."),
    };
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        let _watcher = watcher;
        while raw.recv().await.is_some() {
            let give_up = tokio::time::Instant::now() + MAX_DELAY;
            loop {
                tokio::select! {
                    e = raw.recv() => if e.is_none() { return },
                    _ = tokio::time::sleep(QUIET) => break,
                    _ = tokio::time::sleep_until(give_up) => break,
                }
            }
            // A full channel already holds a pending reload: nothing lost.
            let _ = tx.try_send(());
        }
    });
    Ok(rx)
}

/// How long the directory must be quiet before the file is read...
const QUIET: std::time::Duration = std::time::Duration::from_millis(20);
/// ...unless it keeps changing for this long: then it is read anyway (a
/// half-written file is refused and the next change retries).
const MAX_DELAY: std::time::Duration = std::time::Duration::from_millis(100);
