//! Wakes the agent when its policy file may have changed.
//!
//! The parent directory is watched rather than the file: editors replace a
//! file by renaming a temporary one over it, and Kubernetes ConfigMap
//! volumes swap a `..data` symlink, and neither keeps the watched inode.
//! The agent then compares the file's SHA-256 with the applied one, so
//! unrelated events in the directory cost a read and nothing else.

use std::path::Path;

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

/// Watches the directory of `policy` and sends one message per burst of
/// changes, once the directory has been quiet for a moment, so a file
/// written in several steps is read once, whole. The debounce runs in its
/// own task: the agent's busy event loop cannot interrupt it.
pub fn spawn(policy: &Path) -> notify::Result<mpsc::Receiver<()>> {
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
