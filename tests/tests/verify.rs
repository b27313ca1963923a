//! `portguard verify` and the agent's own verification, against the real
//! kernel: a clean agent verifies green, and each way of breaking
//! enforcement behind the agent's back is caught, by the kernel checks, by
//! the probe, or both; `portguard_guard_verified` says so in a real scrape
//! of /metrics, and says so again once a restart repaired it.

use std::time::{Duration, Instant};

use portguard_tests::{Sandbox, portguard, require_root, tamper};
use serde_json::Value;

/// Like the example policy's demo guard.
fn policy(mode: &str) -> String {
    format!(
        r#"
[[guard]]
name = "app"
cgroup = "/app"
mode = "{mode}"

  [[guard.bind]]
  ports = [8080]

  [[guard.bind]]
  ports = [9090]
  address = "127.0.0.1"
  proto = "both"

  [[guard.connect]]
  peer = ["127.0.0.0/8", "::1"]
  ports = [8080, 9090]

  [[guard.connect]]
  peer = "any"
  ports = [53]
  proto = "both"

  [[guard.connect]]
  peer = "db.example"
  ports = [5432]
  proto = "both"
"#
    )
}

/// The ports the probe picks its refused attempts from (verify/probe.rs).
const PROBE_PORTS: [u16; 15] = [4, 6, 8, 10, 12, 14, 16, 26, 28, 30, 32, 34, 36, 40, 60];

fn start(test: &str, mode: &str) -> Sandbox {
    let mut sb = Sandbox::new(test);
    sb.cgroup("/app");
    sb.write_policy(&policy(mode));
    sb.start_agent_with(&["--verify-interval", "1s"]);
    sb
}

/// `portguard verify --format json` on the sandbox's agent: (exit, report).
fn verify(sb: &Sandbox) -> (i32, Value) {
    let state = sb.state_dir().display().to_string();
    let (code, out, err) = portguard(&["verify", "--state-dir", &state, "--format", "json"]);
    let v =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("verify output is not JSON ({e}): {out}{err}"));
    (code, v)
}

/// Failed checks as "check | subject | got".
fn failures(report: &Value) -> Vec<String> {
    report["guards"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["checks"].as_array().cloned().unwrap_or_default())
        .chain(report["host"].as_array().cloned().unwrap_or_default())
        .filter(|c| c["outcome"] == "fail")
        .map(|c| {
            format!(
                "{} | {} | {}",
                c["check"].as_str().unwrap(),
                c["subject"].as_str().unwrap(),
                c["got"].as_str().unwrap()
            )
        })
        .collect()
}

fn assert_green(sb: &Sandbox) {
    let (code, report) = verify(sb);
    assert_eq!(code, 0, "verify failed: {:#?}", failures(&report));
    assert_eq!(report["verified"], true);
}

/// Verify fails, and some failure line contains each of `needles`.
fn assert_caught(sb: &Sandbox, needles: &[&str]) -> Vec<String> {
    let (code, report) = verify(sb);
    let failed = failures(&report);
    assert_eq!(code, 1, "verify should fail: {report:#}");
    for n in needles {
        assert!(failed.iter().any(|f| f.contains(n)), "no failure mentions {n:?}: {failed:#?}");
    }
    failed
}

/// Waits until a scrape of /metrics shows `portguard_guard_verified{guard="app"} want`.
fn wait_verified_metric(sb: &mut Sandbox, want: u8) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let line = format!("portguard_guard_verified{{guard=\"app\"}} {want}");
    loop {
        let metrics = sb.agent().metrics();
        if metrics.lines().any(|l| l == line) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {line:?} in /metrics: {:?}",
            metrics.lines().filter(|l| l.contains("verif")).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn restart(sb: &mut Sandbox) {
    sb.stop_agent();
    sb.start_agent_with(&["--verify-interval", "1s"]);
}

fn state(sb: &Sandbox) -> Value {
    let text = std::fs::read_to_string(sb.state_dir().join("state.json")).expect("state.json");
    serde_json::from_str(&text).expect("state.json is JSON")
}

fn guard_id(sb: &Sandbox) -> u32 {
    state(sb)["guards"][0]["id"].as_u64().expect("guard id") as u32
}

fn generation(sb: &Sandbox) -> u64 {
    let config = sb.pinned_map("PG_CONFIG");
    let v = tamper::map_lookup(&config, &0u32.to_ne_bytes(), 8).expect("PG_CONFIG[0]");
    u64::from_ne_bytes(v.try_into().expect("8 bytes"))
}

/// A `PortSet` value: one range, `first..=last`, the other 31 empty (1..=0).
fn port_set(first: u16, last: u16) -> Vec<u8> {
    let mut ports = Vec::with_capacity(132);
    ports.extend(1u32.to_ne_bytes());
    ports.extend(first.to_ne_bytes());
    ports.extend(last.to_ne_bytes());
    for _ in 1..32 {
        ports.extend(1u16.to_ne_bytes());
        ports.extend(0u16.to_ne_bytes());
    }
    ports
}

/// A `PG_BIND_RULES` key: any-address tcp `port` of guard `id` in `slot`.
fn bind_key(id: u32, slot: u8, port: u16) -> Vec<u8> {
    let mut k = Vec::with_capacity(28);
    k.extend(id.to_ne_bytes());
    k.extend([slot, 6, 1, 0]);
    k.extend(port.to_ne_bytes());
    k.extend([0u8; 2]);
    k.extend([0u8; 16]);
    k
}

#[test]
fn a_clean_agent_verifies_green() {
    require_root!();
    let mut sb = start("verify-clean", "enforce");
    let (code, report) = verify(&sb);
    assert_eq!(code, 0, "{:#?}", failures(&report));
    let checks = report["guards"][0]["checks"].as_array().expect("checks").clone();
    let passed = |kind: &str| checks.iter().filter(|c| c["check"] == kind && c["outcome"] == "pass").count();
    assert_eq!(passed("hooks"), 1, "{checks:#?}");
    let hooks = checks.iter().find(|c| c["check"] == "hooks").unwrap();
    assert!(hooks["got"].as_str().unwrap().contains("pg_bind4="), "program ids named: {hooks}");
    // bind and connect, tcp and udp, v4 and v6, sendto, port 0, raw sockets.
    assert!(passed("probe refused") >= 8, "{checks:#?}");
    assert_eq!(passed("probe allowed"), 2, "{checks:#?}");
    // The guard lists a name: an address it never learned is refused on
    // the name's port (udp first: a UDP connect sends nothing).
    let by_name = checks.iter().find(|c| c["subject"].as_str().unwrap().contains("never learned"));
    let by_name = by_name.unwrap_or_else(|| panic!("no probe by name: {checks:#?}"));
    assert_eq!(
        (by_name["outcome"].as_str(), by_name["subject"].as_str()),
        (
            Some("pass"),
            Some(
                "/app: connect udp 127.0.0.1:5432 (a port of the guard's names, an address it never learned)"
            )
        ),
        "{by_name}"
    );
    // No probe bind takes a port, so none can make a workload's own bind or
    // re-bind fail: each is judged by portguard's hook and then refused by
    // the kernel's family check, before the port table is looked at.
    let binds: Vec<&Value> = checks
        .iter()
        .filter(|c| c["outcome"] != "skip" && c["subject"].as_str().unwrap().contains(": bind "))
        .collect();
    assert!(binds.len() >= 5, "{checks:#?}");
    for b in &binds {
        let got = b["got"].as_str().unwrap();
        let want = if b["check"] == "probe allowed" { "EAFNOSUPPORT" } else { "EPERM" };
        assert!(got.starts_with(want), "{b}");
    }
    for kind in [
        "map PG_GUARDS",
        "map PG_BIND_RULES",
        "map PG_CONNECT_RULES",
        "map PG_DNS_NAMES",
        "generation",
        "cgroup",
    ] {
        assert_eq!(passed(kind), 1, "{kind}: {checks:#?}");
    }
    // The probe leaves no cgroup behind (the agent's own probe, every
    // second, may hold one of its own at this moment).
    let agent_probe = format!("portguard-verify-{}-", sb.agent().pid());
    let left: Vec<_> = std::fs::read_dir(sb.cgroup("/app"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with(&agent_probe))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    wait_verified_metric(&mut sb, 1);
    let status = sb.status();
    assert_eq!(status["guards"][0]["verification"]["verified"], true, "{status:#}");
    // Text output names the result; --guard of an unknown guard cannot verify.
    let st = sb.state_dir().display().to_string();
    let (code, out, _) = portguard(&["verify", "--state-dir", &st]);
    assert_eq!(code, 0);
    assert!(out.contains("result: every guard holds"), "{out}");
    let (code, _, err) = portguard(&["verify", "--state-dir", &st, "--guard", "nope"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = portguard(&["verify", "--state-dir", "/nonexistent-portguard-state"]);
    assert_eq!(code, 2, "{err}");

    // The chain of trust: the policy file's permissions always, and the
    // trail's hash chain when one is given.
    let host = |report: &Value, check: &str| -> Value {
        report["host"].as_array().unwrap().iter().find(|c| c["check"] == check).cloned().unwrap_or_default()
    };
    assert_eq!(host(&report, "policy file permissions")["outcome"], "pass", "{report:#}");
    assert_eq!(host(&report, "trail chain")["outcome"], "skip", "{report:#}");
    let trail = sb.audit_trail();
    sb.wait_for_audit_record("a first record", |_| true);
    let with_trail = |trail: &std::path::Path| {
        let (code, out, err) = portguard(&[
            "verify",
            "--state-dir",
            &st,
            "--format",
            "json",
            "--trail",
            &trail.display().to_string(),
        ]);
        (code, serde_json::from_str::<Value>(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}")))
    };
    let (code, report) = with_trail(&trail);
    assert_eq!((code, host(&report, "trail chain")["outcome"].clone()), (0, "pass".into()), "{report:#}");
    // A copy of the trail with its first record edited breaks the chain.
    let copy = sb.dir.join("edited-trail.jsonl");
    let text = std::fs::read_to_string(&trail).unwrap();
    std::fs::write(&copy, text.replacen("\"event\":\"", "\"event\": \"", 1)).unwrap();
    let (code, report) = with_trail(&copy);
    assert_eq!((code, host(&report, "trail chain")["outcome"].clone()), (1, "fail".into()), "{report:#}");
    // A policy file others could write fails the permissions check.
    let mut perm = std::fs::metadata(sb.policy_path()).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o666);
    std::fs::set_permissions(sb.policy_path(), perm).unwrap();
    let (code, report) = verify(&sb);
    assert_eq!(
        (code, host(&report, "policy file permissions")["outcome"].clone()),
        (1, "fail".into()),
        "{report:#}"
    );
}

#[test]
fn a_detached_hook_is_caught_and_a_restart_repairs_it() {
    require_root!();
    let mut sb = start("verify-detach", "enforce");
    wait_verified_metric(&mut sb, 1);
    std::fs::remove_file(sb.link_pin("/app", "pg_connect4")).expect("unpin the link");
    // The kernel frees an unpinned link from a work queue.
    std::thread::sleep(Duration::from_millis(200));
    let failed = assert_caught(&sb, &["pg_connect4", "connect tcp 127.0.0.1:"]);
    assert!(failed.iter().any(|f| f.starts_with("hooks | /app")), "{failed:#?}");
    wait_verified_metric(&mut sb, 0);
    restart(&mut sb);
    assert_green(&sb);
    wait_verified_metric(&mut sb, 1);
}

#[test]
fn an_allow_added_or_deleted_in_the_rule_map_is_caught() {
    require_root!();
    let mut sb = start("verify-entries", "enforce");
    wait_verified_metric(&mut sb, 1);
    let (id, slot) = (guard_id(&sb), (generation(&sb) & 1) as u8);
    let rules = sb.pinned_map("PG_BIND_RULES");
    // Allow every port the probe could pick for its refused tcp bind.
    for port in PROBE_PORTS {
        tamper::map_update(&rules, &bind_key(id, slot, port), &0u32.to_ne_bytes());
    }
    let failed = assert_caught(&sb, &["extra 15: bind tcp port 10 any address"]);
    // The probe catches it on its own: the refused tcp bind went through.
    assert!(
        failed.iter().any(|f| f.starts_with("probe refused | /app: bind tcp 127.0.0.1:")),
        "the probe missed the added allow: {failed:#?}"
    );
    wait_verified_metric(&mut sb, 0);
    for port in PROBE_PORTS {
        tamper::map_delete(&rules, &bind_key(id, slot, port));
    }
    assert_green(&sb);
    wait_verified_metric(&mut sb, 1);

    tamper::map_delete(&rules, &bind_key(id, slot, 8080));
    assert_caught(
        &sb,
        &["missing 1: bind tcp port 8080 any address", "probe allowed | /app: bind tcp 127.0.0.1:8080"],
    );
    wait_verified_metric(&mut sb, 0);
    restart(&mut sb);
    assert_green(&sb);
    wait_verified_metric(&mut sb, 1);
}

/// A name entry added behind the agent's back (an allow for whatever
/// address answers it) is caught by the name map's check.
#[test]
fn a_name_added_to_the_name_map_is_caught() {
    require_root!();
    let mut sb = start("verify-names", "enforce");
    wait_verified_metric(&mut sb, 1);
    let (id, slot) = (guard_id(&sb), (generation(&sb) & 1) as u8);
    let names = sb.pinned_map("PG_DNS_NAMES");
    // (guard id, slot, tcp, padding, a hash no name of the policy has)
    let mut key = Vec::with_capacity(16);
    key.extend(id.to_ne_bytes());
    key.extend([slot, 6, 0, 0]);
    key.extend(0x0123_4567_89ab_cdefu64.to_ne_bytes());
    tamper::map_update(&names, &key, &port_set(1, 65535));
    assert_caught(&sb, &["extra 1: connect tcp name (hash 0123456789abcdef) ports 1-65535"]);
    tamper::map_delete(&names, &key);
    assert_green(&sb);
}

#[test]
fn an_always_allow_program_swapped_into_a_link_is_caught_by_the_probe() {
    require_root!();
    let mut sb = start("verify-noop", "enforce");
    wait_verified_metric(&mut sb, 1);
    // The benchmark's empty programs, attached at a cgroup of their own.
    let noop_cgroup = sb.cgroup("/noop");
    let noop_bpffs = std::path::PathBuf::from(format!("{}-noop", sb.bpffs.display()));
    let (code, out, err) = portguard(&[
        "bench-noop",
        "--cgroup-root",
        noop_cgroup.to_str().unwrap(),
        "--bpffs",
        noop_bpffs.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let unload = || portguard(&["unload", "--bpffs", noop_bpffs.to_str().unwrap()]);
    {
        use std::os::unix::fs::MetadataExt as _;
        let noop_id = std::fs::metadata(&noop_cgroup).unwrap().ino();
        let noop_link = tamper::obj_get(&noop_bpffs.join("links").join(noop_id.to_string()).join("pg_bind4"));
        let agent_link = tamper::obj_get(&sb.link_pin("/app", "pg_bind4"));
        tamper::link_update(&agent_link, tamper::link_prog_id(&noop_link));
    }
    let failed = assert_caught(
        &sb,
        &["probe refused | /app: bind tcp 127.0.0.1:", "probe refused | /app: bind udp 127.0.0.1:0"],
    );
    assert!(
        failed.iter().any(|f| f.contains("pg_bind4: link")),
        "the hook check names the program: {failed:#?}"
    );
    wait_verified_metric(&mut sb, 0);
    restart(&mut sb);
    let (code, _, err) = unload();
    assert_eq!(code, 0, "{err}");
    assert_green(&sb);
    wait_verified_metric(&mut sb, 1);
}

#[test]
fn a_generation_bumped_behind_the_agents_back_is_caught() {
    require_root!();
    let mut sb = start("verify-gen", "enforce");
    wait_verified_metric(&mut sb, 1);
    let config = sb.pinned_map("PG_CONFIG");
    // +2 keeps the live slot: enforcement is unchanged, only the number lies.
    let bumped = generation(&sb) + 2;
    tamper::map_update(&config, &0u32.to_ne_bytes(), &bumped.to_ne_bytes());
    assert_caught(&sb, &[&format!("generation | PG_CONFIG | generation {bumped} in the kernel")]);
    wait_verified_metric(&mut sb, 0);
    restart(&mut sb);
    assert_green(&sb);
    wait_verified_metric(&mut sb, 1);
}

#[test]
fn a_recreated_cgroup_not_yet_guarded_is_caught() {
    require_root!();
    let mut sb = start("verify-recreate", "enforce");
    wait_verified_metric(&mut sb, 1);
    // Hold the window open: the agent would re-guard the new cgroup within
    // its 200 ms rescan.
    sb.agent().signal(libc::SIGSTOP);
    let app = sb.cgroup("/app");
    std::fs::remove_dir(&app).expect("remove /app");
    std::fs::create_dir(&app).expect("recreate /app");
    let failed = assert_caught(&sb, &["cgroup | /app | cgroup id", "map PG_GUARDS"]);
    assert!(
        failed.iter().any(|f| f.starts_with("probe refused")),
        "the probe in the new cgroup got through: {failed:#?}"
    );
    sb.agent().signal(libc::SIGCONT);
    // The agent re-guards the new cgroup, and its next verification holds.
    let deadline = Instant::now() + Duration::from_secs(20);
    while verify(&sb).0 != 0 {
        assert!(Instant::now() < deadline, "not re-guarded: {:#?}", failures(&verify(&sb).1));
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_verified_metric(&mut sb, 1);
}

#[test]
fn audit_mode_passes_and_counters_that_do_not_move_fail() {
    require_root!();
    let mut sb = start("verify-audit", "audit");
    let (code, report) = verify(&sb);
    assert_eq!(code, 0, "{:#?}", failures(&report));
    let checks = report["guards"][0]["checks"].as_array().unwrap().clone();
    let bind = checks
        .iter()
        .find(|c| {
            c["check"] == "probe refused" && c["subject"].as_str().unwrap().contains("bind tcp 127.0.0.1:")
        })
        .unwrap();
    // The agent's own periodic probe (every second here) may hit the same
    // probe port during this run: the counter moved by at least this run's
    // attempt, and the check passed.
    assert_eq!(bind["outcome"], "pass", "{bind}");
    assert!(bind["got"].as_str().unwrap().contains("audited counter +"), "{bind}");
    // Let through by portguard, and still no port taken (see below).
    assert!(bind["got"].as_str().unwrap().starts_with("EAFNOSUPPORT"), "{bind}");
    wait_verified_metric(&mut sb, 1);
    // Detach every program: what audit mode lets through still goes
    // through, but nothing counts it any more.
    let dir = sb.link_pin("/app", "pg_bind4").parent().unwrap().to_owned();
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        std::fs::remove_file(e.path()).unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_caught(&sb, &["audited counter +0", "hooks | /app"]);
    wait_verified_metric(&mut sb, 0);
    restart(&mut sb);
    assert_green(&sb);
    wait_verified_metric(&mut sb, 1);
    // The audit trail has the failure and the recovery.
    let events: Vec<Value> = sb.audit_records();
    assert!(events.iter().any(|r| r["event"] == "verify_failed" && r["guard"] == "app"), "{events:#?}");
    assert!(events.iter().any(|r| r["event"] == "verify_recovered" && r["guard"] == "app"), "{events:#?}");
}

/// The agent's own probes refuse for real in the kernel, but it leaves
/// exactly their counts out of what it exports: the denial series and
/// the decisions stay at what workloads did, through every scrape, while
/// `portguard_verify_probe_refusals_total` counts the probes.
#[test]
fn the_agents_own_probes_stay_out_of_the_exported_denials() {
    require_root!();
    let mut sb = start("verify-own", "enforce");
    let sum = |m: &str, name: &str, labels: &[(&str, &str)]| portguard_tests::metric_sum(m, name, labels);
    let probes = |m: &str| sum(m, "portguard_verify_probe_refusals_total", &[]);
    let denied = |m: &str| {
        (
            sum(m, "portguard_denials_total", &[("guard", "app")]),
            sum(m, "portguard_decisions_total", &[("verdict", "denied")]),
        )
    };
    // Scrapes while the agent verifies every second, until it has probed
    // at least three times: nothing a workload did, nothing exported.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = sb.agent().metrics();
        assert_eq!(denied(&m), (0, 0), "the agent's probes were exported as denials");
        seen.push(probes(&m));
        if seen.iter().filter(|n| **n > 0).collect::<std::collections::BTreeSet<_>>().len() >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "the agent's probes never counted: {seen:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "a counter went down: {seen:?}");

    // A workload's refusals count exactly, on a probe port too (4 is the
    // first port the probe's refused tcp bind tries), while the probes go on.
    assert_eq!(sb.probe("/app", &["bind", "tcp", "127.0.0.1", "4"]), "err EPERM");
    assert_eq!(sb.probe("/app", &["bind", "udp", "127.0.0.1", "7777"]), "err EPERM");
    let before = probes(&sb.agent().metrics());
    loop {
        let m = sb.agent().metrics();
        assert_eq!(
            denied(&m),
            (2, 2),
            "{:?}",
            m.lines().filter(|l| l.contains("denials")).collect::<Vec<_>>()
        );
        assert_eq!(sum(&m, "portguard_denials_total", &[("port", "4"), ("proto", "tcp"), ("op", "bind")]), 1);
        if probes(&m) > before {
            break;
        }
        assert!(Instant::now() < deadline + Duration::from_secs(30), "the probes stopped");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An address rule added behind the agent's back on a port of the guard's
/// name: the probe's connect to an address the guard never learned goes
/// through, and says so, beside the rule map's own check.
#[test]
fn an_allow_on_a_names_port_is_caught_by_the_never_learned_probe() {
    require_root!();
    let mut sb = start("verify-never-learned", "enforce");
    wait_verified_metric(&mut sb, 1);
    let (id, slot) = (guard_id(&sb), (generation(&sb) & 1) as u8);
    let rules = sb.pinned_map("PG_CONNECT_RULES");
    // (guard id, slot, udp, AF_INET, /8, 127.0.0.0): the guard's rules
    // already probe /8 in IPv4, so the kernel finds this entry.
    let mut key = Vec::with_capacity(24);
    key.extend(id.to_ne_bytes());
    key.extend([slot, 17, 2, 8, 127, 0, 0, 0]);
    key.extend([0u8; 12]);
    tamper::map_update(&rules, &key, &port_set(5432, 5432));
    assert_caught(
        &sb,
        &[
            "extra 1: connect udp 127.0.0.0/8 ports 5432",
            "probe refused | /app: connect udp 127.0.0.1:5432 (a port of the guard's names, an address it never learned)",
        ],
    );
    tamper::map_delete(&rules, &key);
    assert_green(&sb);
}
