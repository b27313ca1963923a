//! Policy review tools run as CI would: the real `portguard` binary on
//! policy files, no root and no kernel needed.

use std::{fs, path::PathBuf};

use portguard_tests::portguard;

const OLD: &str = r#"
[[guard]]
name = "api"
cgroup = "/api"
  [[guard.bind]]
  ports = [8080]
  [[guard.connect]]
  peer = "10.0.1.0/24"
  ports = [5432]
  [[guard.connect]]
  peer = "any"
  proto = "udp"
  ports = [53]

[[guard]]
name = "web"
cgroup = "/web"
mode = "audit"
  [[guard.bind]]
  ports = [80, 443]
"#;

const NEW: &str = r#"
[[guard]]
name = "web"
cgroup = "/web"
  [[guard.bind]]
  ports = [443, 80]
  owner = "web-team"

[[guard]]
name = "api"
cgroup = "/api"
  [[guard.bind]]
  ports = [8080, 8443]
  [[guard.connect]]
  peer = "10.0.0.0/16"
  ports = [5432]
"#;

/// A directory of its own under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("pg-{test}-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        fs::write(&path, text).expect("write policy");
        path.display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn diff_reports_what_a_change_opens_and_closes() {
    let dir = TempDir::new("diff");
    let (old, new) = (dir.write("old.toml", OLD), dir.write("new.toml", NEW));

    let (status, text, stderr) = portguard(&["diff", &old, &new]);
    assert_eq!((status, stderr.as_str()), (0, ""));
    assert_eq!(
        text,
        "guard \"api\" (cgroup /api, enforce):\n\
         \x20 opens   bind tcp 8443 on any address\n\
         \x20 opens   connect tcp 10.0.0.0/16 ports 5432 (10.0.1.0/24 already allowed)\n\
         \x20 closes  connect udp any ports 53\n\
         \x20 note    connect tcp 10.0.1.0/24 ports 5432 is no longer listed but still allowed by broader 10.0.0.0/16 ports 5432\n\
         guard \"web\" (cgroup /web, audit -> enforce):\n\
         \x20 closes  everything in /web except what the guard lists\n\
         \x20 allows  bind tcp 80, 443 on any address\n\
         summary: 2 opens, 2 closes across 2 guards\n"
    );

    let (status, json, _) = portguard(&["diff", &old, &new, "--format", "json"]);
    assert_eq!(status, 0);
    let json: serde_json::Value = serde_json::from_str(&json).expect("JSON output");
    assert_eq!(json["summary"], serde_json::json!({"opens": 2, "closes": 2}));
    let guards = json["guards"].as_array().expect("guards");
    assert_eq!(guards.iter().map(|g| g["name"].as_str().unwrap()).collect::<Vec<_>>(), ["api", "web"]);
    assert_eq!(guards[1]["mode"], serde_json::json!({"old": "audit", "new": "enforce"}));
    assert_eq!(guards[0]["closes"][0]["peer"], "any");

    // A policy compared with itself, rules reordered: nothing changes, and
    // that is still a successful diff.
    let (status, text, _) =
        portguard(&["diff", &new, &dir.write("same.toml", &NEW.replace("[443, 80]", "[80, 443]"))]);
    assert_eq!((status, text.as_str()), (0, "no change in what is allowed\n"));
}

#[test]
fn diff_refuses_an_invalid_policy_like_check() {
    let dir = TempDir::new("diff-bad");
    let old = dir.write("old.toml", OLD);
    let bad = dir.write(
        "bad.toml",
        "[[guard]]\nname = \"x\"\ncgroup = \"/x\"\n[[guard.bind]]\nports = [\"9000-8000\"]\n",
    );
    let (status, stdout, stderr) = portguard(&["diff", &old, &bad]);
    assert_eq!((status, stdout.as_str()), (2, ""));
    assert!(stderr.starts_with(&format!("portguard: {bad}:5:")), "{stderr}");
    assert!(stderr.contains("reversed") && stderr.lines().count() == 1, "{stderr}");
}

const CATALOGUED: &str = r#"
[[guard]]
name = "db"
cgroup = "/db"
  [[guard.bind]]
  ports = [5432]
  owner = "data-team"
  purpose = "PostgreSQL"
  approved_by = "sec-review"
  ticket = "SEC-1"
  expires = 2999-12-31
  from = "any"
"#;

#[test]
fn check_strict_holds_every_rule_to_its_catalog_entry() {
    let dir = TempDir::new("check-strict");
    let good = dir.write("good.toml", CATALOGUED);
    assert_eq!(portguard(&["check", "--strict", &good]).0, 0);

    // No purpose, and an approval that ran out: warnings, or exit 1 with --strict.
    let lacking = dir.write(
        "lacking.toml",
        &CATALOGUED.replace("  purpose = \"PostgreSQL\"\n", "").replace("2999-12-31", "2020-01-31"),
    );
    let (status, _, stderr) = portguard(&["check", &lacking]);
    assert_eq!(status, 0, "{stderr}");
    assert!(
        stderr.contains(&format!("{lacking}:6:11: warning: guard \"db\": bind rule #1 has no purpose")),
        "{stderr}"
    );
    assert!(stderr.contains("approval expired on 2020-01-31"), "{stderr}");
    let (status, stdout, stderr) = portguard(&["check", "--strict", &lacking]);
    assert_eq!(status, 1, "{stdout}{stderr}");
    assert!(stderr.contains(": error: "), "{stderr}");

    let (status, json, _) = portguard(&["check", "--strict", "--format", "json", &lacking]);
    assert_eq!(status, 1);
    let json: serde_json::Value = serde_json::from_str(&json).expect("JSON output");
    assert_eq!(json["ok"], false);
    let kinds: Vec<&str> =
        json["findings"].as_array().unwrap().iter().map(|f| f["finding"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["missing", "expired"]);
    assert_eq!(json["findings"][0]["field"], "purpose");
    assert_eq!(json["findings"][0]["line"], 6);

    // Invalid input is exit 2, in JSON too, and never reads as "ok".
    let bad = dir.write("bad.toml", &CATALOGUED.replace("2999-12-31", "\"soon\""));
    let (status, json, _) = portguard(&["check", "--strict", "--format", "json", &bad]);
    assert_eq!(status, 2);
    let json: serde_json::Value = serde_json::from_str(&json).expect("JSON output");
    assert_eq!(json["ok"], false);
    assert_eq!(json["error"]["line"], 11);
    assert!(json["error"]["message"].as_str().unwrap().contains("not a date"), "{json}");
}
