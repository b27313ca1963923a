//! The audit trail: a JSON-lines file of ports going live and closing and of
//! every refused or audited operation (coalesced), append-only, rotated by
//! size. `portguard replay` and `portguard suggest` read it back. Each line
//! is chained to the one before by a hash (`chain`), across rotations and
//! restarts, and `portguard trail verify` checks the chain.

pub(crate) mod chain;
pub(crate) mod record;
mod verification;

use std::{
    fs::{File, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

pub(crate) use record::{DnsNote, DnsNoteState, InboundReason, Record, RecordKind, RecordOp, read_records};
pub(crate) use verification::{VerifyEvent, VerifyRecord};

pub(crate) struct AuditTrail {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    file: File,
    size: u64,
    /// The last line written, which the next links to.
    head: chain::Head,
}

impl AuditTrail {
    /// Opens (creating) `path` for appending. Rotation keeps `keep` older
    /// files as `path.1` (newest) .. `path.<keep>`.
    pub(crate) fn open(path: &Path, max_bytes: u64, keep: usize) -> io::Result<AuditTrail> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        // The chain continues from the last line on disk, so a restart
        // does not break it; a trail that ends in a line without a hash
        // (an older agent's, or a cut one) starts a new chain.
        let head = chain::head_on_disk(path)?.unwrap_or_else(|| {
            if path.exists() && std::fs::metadata(path).is_ok_and(|m| m.len() > 0) {
                tracing::warn!(
                    path = %path.display(),
                    "the audit trail's last line carries no hash: starting a new hash chain"
                );
            }
            chain::Head::genesis()
        });
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(AuditTrail { path: path.to_owned(), max_bytes, keep, file, size, head })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line in a single write, so a reader never sees half a
    /// record, and rotates first when the line would pass the size limit.
    pub(crate) fn append(&mut self, record: &impl serde::Serialize) -> io::Result<()> {
        let json = serde_json::to_vec(record).map_err(io::Error::other)?;
        let (mut line, mut head) = chain::seal(&json, &self.head, self.size == 0);
        if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            self.rotate()?;
            (line, head) = chain::seal(&json, &self.head, true);
        }
        self.file.write_all(&line)?;
        self.size += line.len() as u64;
        self.head = head;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        // Logged before the files move: a copy of the log kept elsewhere
        // pins the chain's head, which the files alone cannot.
        tracing::info!(
            path = %self.path.display(),
            seq = self.head.seq,
            hash = %self.head.hash,
            "rotating the audit trail; chain head"
        );
        let numbered = |n: usize| PathBuf::from(format!("{}.{n}", self.path.display()));
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            let _ = std::fs::remove_file(numbered(self.keep));
            for n in (1..self.keep).rev() {
                match std::fs::rename(numbered(n), numbered(n + 1)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            std::fs::rename(&self.path, numbered(1))?;
        }
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

impl Drop for AuditTrail {
    fn drop(&mut self) {
        tracing::info!(
            path = %self.path.display(),
            seq = self.head.seq,
            hash = %self.head.hash,
            "audit trail closed; chain head"
        );
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    // Peers and process names are in here: readable by root and its group.
    OpenOptions::new().create(true).append(true).mode(0o640).open(path)
}

/// A time as the trail writes it: RFC 3339, UTC, milliseconds.
pub(crate) fn rfc3339(at: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

pub(crate) fn now_rfc3339() -> String {
    rfc3339(std::time::SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{Approval, RuleInfo};

    fn record(port: u16) -> Record {
        Record {
            guard: Some("g".into()),
            guard_cgroup: Some("/g".into()),
            mode: Some("enforce".into()),
            status: Some(Approval::Approved),
            rule: Some(RuleInfo { number: 1, owner: Some("team".into()), ..RuleInfo::default() }),
            ..Record::new(
                RecordKind::PortOpened,
                "/g".into(),
                None,
                None,
                1,
                "x".into(),
                RecordOp::Bind,
                portguard_common::Transport::Tcp,
                "127.0.0.1".parse().unwrap(),
                port,
            )
        }
    }

    #[test]
    fn rotates_by_size_and_keeps_the_newest_files() {
        let dir = std::env::temp_dir().join(format!("pg-trail-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("audit.jsonl");
        // Three lines per file: the first carries `"file_start":true` (18
        // bytes), and ports and seq numbers of two digits add up to 2 each.
        let line_len = chain::seal(&serde_json::to_vec(&record(1)).unwrap(), &chain::Head::genesis(), false)
            .0
            .len() as u64;
        let max = line_len * 3 + 18 + 3 * 2;
        let mut trail = AuditTrail::open(&path, max, 2).unwrap();
        for port in 1..=10 {
            trail.append(&record(port)).unwrap();
        }
        let ports = |p: &Path| read_records(p).unwrap().iter().map(|r| r.port).collect::<Vec<_>>();
        assert_eq!(ports(&path), vec![10]);
        assert_eq!(ports(&dir.join("audit.jsonl.1")), vec![7, 8, 9]);
        assert_eq!(ports(&dir.join("audit.jsonl.2")), vec![4, 5, 6]);
        assert!(!dir.join("audit.jsonl.3").exists());
        // Reopening appends; it never truncates.
        drop(trail);
        let mut trail = AuditTrail::open(&path, max, 2).unwrap();
        trail.append(&record(11)).unwrap();
        assert_eq!(ports(&path), vec![10, 11]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_foreign_line_is_an_error_naming_it() {
        let path = std::env::temp_dir().join(format!("pg-trail-bad-{}.jsonl", std::process::id()));
        std::fs::write(&path, format!("{}\n{{\"hello\":1}}\n", serde_json::to_string(&record(1)).unwrap()))
            .unwrap();
        let e = read_records(&path).unwrap_err();
        assert!(e.contains(":2: not a portguard event"), "{e}");
        std::fs::remove_file(&path).unwrap();
    }
}
