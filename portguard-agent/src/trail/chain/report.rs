//! Checking a trail's chain, and saying where and how it breaks.

use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
};

use serde::Serialize;

use super::{GENESIS, Line, Link, parse_line};

/// What `verify` found: intact when `breaks` is empty.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ChainReport {
    pub files: Vec<PathBuf>,
    /// Chained records checked.
    pub records: usize,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// The last record's hash: compare it with the head the agent logged.
    pub head: Option<String>,
    /// The first record links to one in a file not given (rotated away).
    pub continues_earlier_chain: bool,
    /// Lines before the first chained record that carry no hash (written
    /// by an agent from before chaining): not covered.
    pub unchained_before: usize,
    pub breaks: Vec<Break>,
}

/// One place the chain does not hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Break {
    pub file: PathBuf,
    /// 1-based.
    pub line: usize,
    pub kind: BreakKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub(crate) enum BreakKind {
    /// The line does not match its own hash.
    Edited,
    /// The line matches its hash, but the next line links to a different
    /// one: it was rewritten and its hash recomputed.
    Rewritten,
    /// Records are missing before this line (`missing` by the sequence).
    Deleted { missing: u64 },
    /// This line is out of place; its predecessor is at `after_file:after_line`.
    Reordered { after_file: Option<PathBuf>, after_line: Option<usize> },
    /// The first file starts in the middle: its first lines were removed.
    TruncatedAtStart { seq: u64 },
    /// A record claims to start a new chain in the middle of one.
    Restarted,
    /// Not a chained record: cut, foreign, or without a hash.
    NotARecord { reason: String },
}

impl ChainReport {
    pub(crate) fn intact(&self) -> bool {
        self.breaks.is_empty()
    }
}

impl fmt::Display for Break {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.file.display(), self.line)?;
        match &self.kind {
            BreakKind::Edited => write!(f, "edited: the record does not match its hash"),
            BreakKind::Rewritten => {
                write!(
                    f,
                    "edited: the record was rewritten with a new hash; the next record links to the original"
                )
            }
            BreakKind::Deleted { missing } => {
                write!(f, "deleted: {missing} record(s) missing before this line")
            }
            BreakKind::Reordered { after_file: Some(file), after_line: Some(line) } => {
                write!(f, "reordered: this record belongs after {}:{line}", file.display())
            }
            BreakKind::Reordered { .. } => write!(f, "reordered: this record is out of sequence"),
            BreakKind::TruncatedAtStart { seq } => write!(
                f,
                "truncated at the start: record {seq} is the first here but was not the first written to its file"
            ),
            BreakKind::Restarted => write!(f, "restarted: a record claims to begin a new chain"),
            BreakKind::NotARecord { reason } => write!(f, "not a chained record: {reason}"),
        }
    }
}

impl fmt::Display for ChainReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.breaks {
            writeln!(f, "{b}")?;
        }
        let seqs = match (self.first_seq, self.last_seq) {
            (Some(a), Some(b)) => format!(", seq {a}..{b}"),
            _ => String::new(),
        };
        write!(
            f,
            "{}: {} files, {} records{seqs}",
            if self.intact() { "intact" } else { "broken" },
            self.files.len(),
            self.records
        )?;
        if let Some(h) = &self.head {
            write!(f, ", head {h}")?;
        }
        if !self.intact() {
            write!(f, ", {} breaks", self.breaks.len())?;
        }
        if self.continues_earlier_chain {
            write!(f, "; continues a chain from files not given (rotated away)")?;
        }
        if self.unchained_before > 0 {
            write!(f, "; {} older lines carry no hash and are not covered", self.unchained_before)?;
        }
        Ok(())
    }
}

/// A trail file that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("{path}: cannot read the audit trail: {source}")]
pub(crate) struct ReadError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

struct Entry<'a> {
    file: &'a Path,
    line: usize,
    link: Link,
}

/// Checks the chain through `files`, oldest first (see `series`).
pub(crate) fn verify(files: &[PathBuf]) -> Result<ChainReport, ReadError> {
    let texts = files
        .iter()
        .map(|p| std::fs::read_to_string(p).map_err(|source| ReadError { path: p.clone(), source }))
        .collect::<Result<Vec<_>, _>>()?;
    let mut report = ChainReport {
        files: files.to_vec(),
        records: 0,
        first_seq: None,
        last_seq: None,
        head: None,
        continues_earlier_chain: false,
        unchained_before: 0,
        breaks: Vec::new(),
    };
    let mut entries: Vec<Entry> = Vec::new();
    for (file, text) in files.iter().zip(&texts) {
        for (i, line) in text.lines().enumerate() {
            let at = |kind| Break { file: file.clone(), line: i + 1, kind };
            match parse_line(line) {
                Line::Chained(link) => entries.push(Entry { file, line: i + 1, link }),
                Line::Unchained if entries.is_empty() && report.breaks.is_empty() => {
                    report.unchained_before += 1
                }
                Line::Unchained => {
                    report.breaks.push(at(BreakKind::NotARecord { reason: "it carries no hash".into() }))
                }
                Line::Malformed(e) => report.breaks.push(at(BreakKind::NotARecord { reason: e })),
            }
        }
    }
    let by_hash: HashMap<&str, usize> =
        entries.iter().enumerate().map(|(i, e)| (e.link.hash.as_str(), i)).collect();
    let mut breaks = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let at = |e: &Entry, kind| Break { file: e.file.to_owned(), line: e.line, kind };
        if !e.link.hash_ok {
            breaks.push(at(e, BreakKind::Edited));
        }
        let genesis = e.link.prev == GENESIS && e.link.seq == 1;
        let Some(before) = i.checked_sub(1).map(|j| &entries[j]) else {
            // The chain's first record: a genesis, or the first record
            // written to its file (the files before it rotated away).
            if genesis {
            } else if e.line == 1 && e.link.file_start {
                report.continues_earlier_chain = true;
            } else {
                breaks.push(at(e, BreakKind::TruncatedAtStart { seq: e.link.seq }));
            }
            continue;
        };
        if e.link.prev == before.link.hash && e.link.seq == before.link.seq + 1 {
            continue;
        }
        if genesis {
            breaks.push(at(e, BreakKind::Restarted));
            continue;
        }
        match by_hash.get(e.link.prev.as_str()) {
            Some(&j) if j + 1 != i => breaks.push(at(
                e,
                BreakKind::Reordered {
                    after_file: Some(entries[j].file.to_owned()),
                    after_line: Some(entries[j].line),
                },
            )),
            // Linked to its predecessor but with the wrong number: the
            // line was rewritten (its own hash then matches, recomputed).
            Some(_) => breaks.push(at(e, BreakKind::Rewritten)),
            None if e.link.seq > before.link.seq + 1 => {
                breaks.push(at(e, BreakKind::Deleted { missing: e.link.seq - before.link.seq - 1 }))
            }
            None if e.link.seq <= before.link.seq => {
                breaks.push(at(e, BreakKind::Reordered { after_file: None, after_line: None }))
            }
            // In sequence, but its predecessor is not the line it links
            // to: the line before was rewritten with a fresh hash.
            None if before.link.hash_ok => breaks.push(at(before, BreakKind::Rewritten)),
            // ... or edited without one, already reported.
            None => {}
        }
    }
    report.breaks.extend(breaks);
    report.breaks.sort_by_key(|b| (files.iter().position(|f| *f == b.file), b.line));
    report.records = entries.len();
    report.first_seq = entries.first().map(|e| e.link.seq);
    report.last_seq = entries.last().map(|e| e.link.seq);
    report.head = entries.last().map(|e| e.link.hash.clone());
    Ok(report)
}
