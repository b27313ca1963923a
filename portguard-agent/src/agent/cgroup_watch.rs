//! Wakes the agent when a guarded cgroup may have appeared or gone.
//!
//! For each guard the agent watches (inotify, non-recursive) the nearest
//! existing ancestor of the guard's cgroup directory, which sees the guard's
//! directory, or the missing part of its path, being created or removed.
//! The periodic rescan stays as a safety net for events inotify cannot see.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
};

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

pub struct CgroupWatch {
    watcher: RecommendedWatcher,
    watched: HashSet<PathBuf>,
    events: mpsc::UnboundedReceiver<()>,
}

impl CgroupWatch {
    pub fn new() -> notify::Result<CgroupWatch> {
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
    pub fn watch_parents_of<'a>(&mut self, cgroups: impl IntoIterator<Item = &'a Path>) {
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
    pub async fn changed(&mut self) {
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
