//! The hash chain that makes the trail tamper-evident.
//!
//! Each line ends with four fields the agent adds after the record's own:
//! `"seq"` (1, 2, 3, ... across rotations and restarts), `"prev"` (the
//! previous line's hash; 64 zeros for the first line of a chain),
//! `"file_start":true` on the first line written into a file, and
//! `"hash"`: the SHA-256, in hex, of the line's exact bytes up to the
//! hash, that is the line with `,"hash":"..."` taken out. Hashing the bytes
//! as written, not a re-serialisation, means any change to a line, even
//! one a JSON reader would not notice, changes its hash.
//!
//! The chain proves the lines are the ones written, in the order written,
//! with none taken out between the first and the last. It cannot prove
//! that nothing was cut off the end, nor stop someone who can write the
//! file from rewriting everything after a change with fresh hashes: the
//! agent logs the chain's head (seq and hash) at each rotation and when it
//! stops, so a copy of the log kept elsewhere pins it.

pub(crate) mod report;

use std::{
    fs::File,
    io::{self, Read as _, Seek as _, SeekFrom},
    path::{Path, PathBuf},
};

use serde::Deserialize;
use sha2::Digest as _;

pub(crate) use report::verify;

/// `prev` of the first line of a chain.
pub(crate) const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The last line written: what the next one links to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    pub seq: u64,
    pub hash: String,
}

impl Head {
    pub(crate) fn genesis() -> Head {
        Head { seq: 0, hash: GENESIS.to_owned() }
    }
}

/// Turns a serialised record (`{...}`) into its chained line, newline
/// included, linked to `head`; returns the line and the new head.
pub(crate) fn seal(record_json: &[u8], head: &Head, file_start: bool) -> (Vec<u8>, Head) {
    let seq = head.seq + 1;
    let body = record_json.strip_suffix(b"}").unwrap_or(record_json);
    let mut line = body.to_vec();
    let sep = if body.ends_with(b"{") { "" } else { "," };
    line.extend_from_slice(format!("{sep}\"seq\":{seq},\"prev\":\"{}\"", head.hash).as_bytes());
    if file_start {
        line.extend_from_slice(b",\"file_start\":true");
    }
    let hash = hex(&sha2::Sha256::digest(&line));
    line.extend_from_slice(format!(",\"hash\":\"{hash}\"}}\n").as_bytes());
    (line, Head { seq, hash })
}

/// A chained line's link fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Link {
    pub seq: u64,
    pub prev: String,
    pub file_start: bool,
    /// As written in the line.
    pub hash: String,
    /// Whether `hash` is the hash of the line's bytes.
    pub hash_ok: bool,
}

/// What a line of a trail file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Line {
    Chained(Link),
    /// A record from before chaining: JSON without a hash.
    Unchained,
    /// Not a JSON object (a cut or foreign line).
    Malformed(String),
}

pub(crate) fn parse_line(line: &str) -> Line {
    const TAIL: usize = r#","hash":""}"#.len() + 64;
    #[derive(Deserialize)]
    struct Fields {
        seq: Option<u64>,
        prev: Option<String>,
        #[serde(default)]
        file_start: bool,
        hash: Option<String>,
    }
    let fields: Fields = match serde_json::from_str(line) {
        Ok(f) => f,
        Err(e) => return Line::Malformed(e.to_string()),
    };
    let (Some(seq), Some(prev), Some(hash)) = (fields.seq, fields.prev, fields.hash) else {
        return Line::Unchained;
    };
    // The hash is over the bytes before `,"hash":"..."}`; a line where it
    // is not last (or not 64 hex digits) cannot match.
    let hashed = line
        .len()
        .checked_sub(TAIL)
        .filter(|&at| line.is_char_boundary(at) && line[at..].starts_with(r#","hash":""#))
        .map(|at| &line.as_bytes()[..at]);
    let hash_ok = hashed.is_some_and(|b| hex(&sha2::Sha256::digest(b)) == hash);
    Line::Chained(Link { seq, prev, file_start: fields.file_start, hash, hash_ok })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The trail file and its rotated files, oldest first: `path.N` ..
/// `path.1`, then `path` (those that exist; `path` always).
pub(crate) fn series(path: &Path) -> Vec<PathBuf> {
    let numbered = |n: usize| PathBuf::from(format!("{}.{n}", path.display()));
    let mut files: Vec<PathBuf> = (1..).map(numbered).take_while(|p| p.exists()).collect();
    files.reverse();
    files.push(path.to_owned());
    files
}

/// Where the chain on disk ends: the last line of `path`, or of `path.1`
/// when `path` is empty or missing (the agent stopped right after a
/// rotation). `None` when there is no chained line to continue from.
pub(crate) fn head_on_disk(path: &Path) -> io::Result<Option<Head>> {
    for p in [path.to_owned(), PathBuf::from(format!("{}.1", path.display()))] {
        match last_line(&p)? {
            Some(line) => {
                return Ok(match parse_line(&line) {
                    Line::Chained(l) => Some(Head { seq: l.seq, hash: l.hash }),
                    Line::Unchained | Line::Malformed(_) => None,
                });
            }
            None => continue,
        }
    }
    Ok(None)
}

/// The last non-empty line of a file, reading only its tail.
fn last_line(path: &Path) -> io::Result<Option<String>> {
    const TAIL: u64 = 64 << 10;
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(TAIL)))?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail)?;
    let text = String::from_utf8_lossy(&tail);
    Ok(text.lines().rev().find(|l| !l.trim().is_empty()).map(str::to_owned))
}

#[cfg(test)]
mod tests;
