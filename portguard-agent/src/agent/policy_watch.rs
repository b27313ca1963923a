//! Wakes the agent when its policy file may have changed.
//!
//! The parent directory is watched rather than the file: editors replace a
//! file by renaming a temporary one over it, and Kubernetes ConfigMap
//! volumes swap a `..data` symlink, and neither keeps the watched inode.
//! The agent then compares the file's SHA-256 with the applied one, so
//! unrelated events in the directory cost a read and nothing else.

use std::path::Path;

use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

pub struct PolicyWatch {
    _watcher: RecommendedWatcher,
    events: mpsc::UnboundedReceiver<()>,
}

impl PolicyWatch {
    pub fn new(policy: &Path) -> notify::Result<PolicyWatch> {
        let (tx, events) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if res.is_ok() {
                let _ = tx.send(());
            }
        })?;
        let dir = match policy.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => std::path::PathBuf::from("."),
        };
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        Ok(PolicyWatch { _watcher: watcher, events })
    }

    /// Resolves once the directory has been quiet for a moment after a
    /// change, so a file written in several steps is read once, whole.
    pub async fn changed(&mut self) {
        if self.events.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
        loop {
            tokio::select! {
                e = self.events.recv() => if e.is_none() { return },
                _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => return,
            }
        }
    }
}
