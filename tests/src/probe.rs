//! pg-probe (tests/src/bin/pg-probe) run inside a sandbox's cgroups: one
//! operation and its one-line verdict, a long-lived listener, and the
//! counts of `pg-probe hammer`.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::Child,
};

use crate::sandbox::Sandbox;

/// pg-probe: `PG_PROBE_BIN` (the benchmarks use a release build), else the
/// one cargo built next to the test executables (`target/<profile>/`).
pub fn probe_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PG_PROBE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
    let p = profile_dir.join("pg-probe");
    assert!(p.exists(), "{} is missing: run the tests with `cargo xtask test`", p.display());
    p
}

impl Sandbox {
    /// Runs pg-probe inside the cgroup `rel` and returns its one-line verdict.
    pub fn probe(&self, rel: &str, args: &[&str]) -> String {
        let out = self.spawn_probe(rel, args).wait_with_output().expect("wait for pg-probe");
        assert!(out.status.success(), "pg-probe {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Starts pg-probe inside the cgroup `rel`, stdout piped.
    pub fn spawn_probe(&self, rel: &str, args: &[&str]) -> Child {
        self.spawn_in(rel, &probe_bin(), args)
    }

    /// Starts `pg-probe hold PROTO 127.0.0.1 PORT` in the cgroup `rel` and
    /// waits until its port is live; the port stays open until the child
    /// is killed.
    pub fn hold(&self, rel: &str, proto: &str, port: u16) -> Child {
        let mut child = self.spawn_probe(rel, &["hold", proto, "127.0.0.1", &port.to_string()]);
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("stdout")).read_line(&mut line).expect("read");
        assert_eq!(line.trim(), format!("ok port={port}"), "hold {proto} {port} in {rel}");
        child
    }
}

/// Verdict counts printed by `pg-probe hammer`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Hammer {
    pub allowed_ok: u64,
    pub allowed_refused: u64,
    pub denied_ok: u64,
    pub denied_refused: u64,
}

impl Hammer {
    /// Adds another run's counts.
    pub fn add(&mut self, other: &Hammer) {
        self.allowed_ok += other.allowed_ok;
        self.allowed_refused += other.allowed_refused;
        self.denied_ok += other.denied_ok;
        self.denied_refused += other.denied_refused;
    }

    pub fn parse(line: &str) -> Hammer {
        let field = |name: &str| -> u64 {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {line:?}"))
        };
        Hammer {
            allowed_ok: field("allowed_ok"),
            allowed_refused: field("allowed_refused"),
            denied_ok: field("denied_ok"),
            denied_refused: field("denied_refused"),
        }
    }

    pub fn wait(child: Child) -> Hammer {
        let out = child.wait_with_output().expect("wait for hammer");
        let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            out.status.success() && line.starts_with("allowed_ok"),
            "hammer failed: {line} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Hammer::parse(&line)
    }
}
