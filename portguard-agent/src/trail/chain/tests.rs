//! The chain written by `AuditTrail` across rotations and restarts, and
//! each kind of tampering caught and located.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
};

use super::{
    Head, Line, parse_line,
    report::{BreakKind, ChainReport},
    seal, series, verify,
};
use crate::trail::{AuditTrail, Record, RecordKind, RecordOp, read_records};

fn record(port: u16) -> Record {
    Record::new(
        RecordKind::Denied,
        "/g".into(),
        None,
        None,
        7,
        "probe".into(),
        RecordOp::Bind,
        portguard_common::Transport::Udp,
        "127.0.0.1".parse().unwrap(),
        port,
    )
}

struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "pg-chain-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A trail of 12 records, 4 to a file (audit.jsonl.2, .1 and audit.jsonl),
/// written by two agents: the second reopens after record 6.
fn rotated_trail(dir: &Path) -> PathBuf {
    let path = dir.join("audit.jsonl");
    let line = seal(&serde_json::to_vec(&record(1000)).unwrap(), &Head::genesis(), true).0.len() as u64;
    let max = line * 4 + 8;
    let mut trail = AuditTrail::open(&path, max, 5).unwrap();
    for port in 1000..1006 {
        trail.append(&record(port)).unwrap();
    }
    drop(trail);
    let mut trail = AuditTrail::open(&path, max, 5).unwrap();
    for port in 1006..1012 {
        trail.append(&record(port)).unwrap();
    }
    path
}

fn lines(p: &Path) -> Vec<String> {
    fs::read_to_string(p).unwrap().lines().map(str::to_owned).collect()
}

fn write_lines(p: &Path, lines: &[String]) {
    fs::write(p, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
}

fn kinds(r: &ChainReport) -> Vec<(String, usize, BreakKind)> {
    r.breaks
        .iter()
        .map(|b| (b.file.file_name().unwrap().to_string_lossy().into_owned(), b.line, b.kind.clone()))
        .collect()
}

#[test]
fn a_sealed_line_is_its_record_plus_the_chain_fields() {
    // One record: each call stamps the clock, so two calls may differ.
    let written = record(80);
    let json = serde_json::to_vec(&written).unwrap();
    let (line, head) = seal(&json, &Head::genesis(), true);
    let text = String::from_utf8(line).unwrap();
    assert!(text.ends_with("}\n"));
    assert_eq!(head.seq, 1);
    // Readers of records see the record; the chain's fields are extra.
    assert_eq!(serde_json::from_str::<Record>(text.trim_end()).unwrap(), written);
    match parse_line(text.trim_end()) {
        Line::Chained(l) => {
            assert!(l.hash_ok);
            assert_eq!((l.seq, l.prev.as_str(), l.file_start, l.hash), (1, super::GENESIS, true, head.hash));
        }
        other => panic!("{other:?}"),
    }
    // One byte changed anywhere, even where JSON does not care, breaks it.
    let spaced = text.trim_end().replacen("{", "{ ", 1);
    assert!(matches!(parse_line(&spaced), Line::Chained(l) if !l.hash_ok));
}

#[test]
fn an_intact_trail_across_rotation_and_a_restart_verifies() {
    let s = Scratch::new();
    let path = rotated_trail(&s.0);
    let files = series(&path);
    let names: Vec<_> = files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["audit.jsonl.2", "audit.jsonl.1", "audit.jsonl"]);
    assert_eq!(files.iter().map(|f| lines(f).len()).collect::<Vec<_>>(), [4, 4, 4]);
    let r = verify(&files).unwrap();
    assert!(r.intact(), "{r}");
    assert_eq!((r.records, r.first_seq, r.last_seq), (12, Some(1), Some(12)));
    assert!(!r.continues_earlier_chain);
    // The trail still reads as records.
    assert_eq!(
        read_records(&files[1]).unwrap().iter().map(|r| r.port).collect::<Vec<_>>(),
        [1004, 1005, 1006, 1007]
    );
    // Without the oldest file (rotated away): still intact, and says so.
    let r = verify(&files[1..]).unwrap();
    assert!(r.intact(), "{r}");
    assert!(r.continues_earlier_chain);
    assert!(r.to_string().contains("continues a chain from files not given"), "{r}");
}

#[test]
fn an_edited_line_is_caught_and_located() {
    let s = Scratch::new();
    let files = series(&rotated_trail(&s.0));
    let mut l = lines(&files[1]);
    l[1] = l[1].replace("\"port\":1005", "\"port\":22");
    write_lines(&files[1], &l);
    let r = verify(&files).unwrap();
    assert_eq!(kinds(&r), [("audit.jsonl.1".to_owned(), 2, BreakKind::Edited)]);
    assert!(r.to_string().starts_with(&format!("{}:2: edited", files[1].display())), "{r}");
}

#[test]
fn an_edited_line_with_a_recomputed_hash_is_caught_and_located() {
    let s = Scratch::new();
    let files = series(&rotated_trail(&s.0));
    let mut l = lines(&files[1]);
    let Line::Chained(link) = parse_line(&l[1]) else { panic!() };
    // Re-seal the edited record, linked to its true predecessor.
    let body = l[1].replace("\"port\":1005", "\"port\":22");
    let record = &body[..body.find(",\"seq\"").unwrap()];
    let prev = Head { seq: link.seq - 1, hash: link.prev };
    l[1] = String::from_utf8(seal(format!("{record}}}").as_bytes(), &prev, false).0)
        .unwrap()
        .trim_end()
        .to_owned();
    write_lines(&files[1], &l);
    let r = verify(&files).unwrap();
    assert_eq!(kinds(&r), [("audit.jsonl.1".to_owned(), 2, BreakKind::Rewritten)]);
}

#[test]
fn a_deleted_line_is_caught_and_located() {
    let s = Scratch::new();
    let files = series(&rotated_trail(&s.0));
    let mut l = lines(&files[1]);
    l.remove(1);
    write_lines(&files[1], &l);
    let r = verify(&files).unwrap();
    assert_eq!(kinds(&r), [("audit.jsonl.1".to_owned(), 2, BreakKind::Deleted { missing: 1 })]);
    assert!(r.to_string().contains("audit.jsonl.1:2: deleted: 1 record(s) missing"), "{r}");
}

#[test]
fn reordered_lines_are_caught_and_located() {
    let s = Scratch::new();
    let files = series(&rotated_trail(&s.0));
    let mut l = lines(&files[1]);
    l.swap(1, 2);
    write_lines(&files[1], &l);
    let r = verify(&files).unwrap();
    let k = kinds(&r);
    assert!(!k.is_empty() && k.iter().all(|(_, _, b)| matches!(b, BreakKind::Reordered { .. })), "{r}");
    assert_eq!((k[0].0.as_str(), k[0].1), ("audit.jsonl.1", 2), "{r}");
    assert_eq!(
        k[0].2,
        BreakKind::Reordered { after_file: Some(files[1].clone()), after_line: Some(3) },
        "line 2 belongs after line 3: {r}"
    );
}

#[test]
fn a_trail_cut_at_the_start_or_missing_a_middle_file_is_caught() {
    let s = Scratch::new();
    let files = series(&rotated_trail(&s.0));
    let mut l = lines(&files[0]);
    l.remove(0);
    write_lines(&files[0], &l);
    let r = verify(&files).unwrap();
    assert_eq!(kinds(&r), [("audit.jsonl.2".to_owned(), 1, BreakKind::TruncatedAtStart { seq: 2 })]);
    // The middle file gone: the newest links to nothing given.
    let s = Scratch::new();
    let files = series(&rotated_trail(&s.0));
    let r = verify(&[files[0].clone(), files[2].clone()]).unwrap();
    assert_eq!(kinds(&r), [("audit.jsonl".to_owned(), 1, BreakKind::Deleted { missing: 4 })]);
}

#[test]
fn a_foreign_line_and_older_unchained_lines() {
    let s = Scratch::new();
    let path = s.0.join("audit.jsonl");
    // An older agent's trail: records without a hash. The new agent
    // starts a chain after them.
    let old = serde_json::to_string(&record(1)).unwrap();
    fs::write(&path, format!("{old}\n{old}\n")).unwrap();
    let mut trail = AuditTrail::open(&path, 1 << 20, 5).unwrap();
    trail.append(&record(2)).unwrap();
    trail.append(&record(3)).unwrap();
    drop(trail);
    let r = verify(std::slice::from_ref(&path)).unwrap();
    assert!(r.intact(), "{r}");
    assert_eq!((r.unchained_before, r.records), (2, 2));
    // A line that is not a record, after the chain began.
    let mut l = lines(&path);
    l.insert(3, "{\"hello\":1".into());
    write_lines(&path, &l);
    let r = verify(&[path]).unwrap();
    assert!(matches!(&kinds(&r)[..], [(_, 4, BreakKind::NotARecord { .. })]), "{r}");
}
