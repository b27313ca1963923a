//! Live policy changes are atomic, bad ones change nothing, and enforcement
//! survives the agent dying and restarting.

use std::{
    fs,
    os::unix::fs::symlink,
    time::{Duration, Instant},
};

use portguard_tests::{Hammer, Sandbox, require_root};

/// Two policies that agree on 8080 (allowed) and 8081 (denied), for bind
/// and for connect to 127.0.0.1, and disagree on 7000/7001.
fn policy(variant: u16) -> String {
    format!(
        r#"
[[guard]]
name = "app"
cgroup = "/app"
[[guard.bind]]
ports = [8080, {variant}]
proto = "udp"
[[guard.connect]]
peer = "127.0.0.1"
ports = [8080, {variant}]
proto = "udp"
"#
    )
}

fn reloads_seen(sb: &mut Sandbox) -> usize {
    sb.agent().logs().iter().filter(|l| l["message"] == "policy reloaded").count()
}

#[test]
fn reloading_never_flips_a_verdict_both_policies_agree_on() {
    require_root!();
    let mut sb = Sandbox::enforcing("stress", &["/app"], &policy(7000));
    // Rounds of hammering while the policy is rewritten, until at least 50
    // reloads happened under the hammers: a loaded machine takes more
    // rounds, never a different verdict.
    let (mut writes, mut rounds) = (0, 0);
    let mut totals = [("bind", Hammer::default()), ("connect", Hammer::default())];
    let mut variant = 7000;
    while reloads_seen(&mut sb) < 50 {
        rounds += 1;
        assert!(rounds <= 100, "only {} reloads in 100 rounds ({writes} writes)", reloads_seen(&mut sb));
        let binds = sb.spawn_probe("/app", &["hammer", "bind", "udp", "127.0.0.1", "8080", "8081", "1000"]);
        let connects =
            sb.spawn_probe("/app", &["hammer", "connect", "udp", "127.0.0.1", "8080", "8081", "1000"]);
        let deadline = Instant::now() + Duration::from_millis(900);
        while Instant::now() < deadline {
            variant = if variant == 7000 { 7001 } else { 7000 };
            sb.rename_policy_over(&policy(variant));
            writes += 1;
            if writes % 5 == 0 {
                sb.agent().signal(libc::SIGHUP);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        for ((_, total), h) in totals.iter_mut().zip([Hammer::wait(binds), Hammer::wait(connects)]) {
            total.add(&h);
        }
    }
    for (what, h) in &totals {
        assert_eq!(h.allowed_refused, 0, "{what}: an operation both policies allow was refused: {h:?}");
        assert_eq!(h.denied_ok, 0, "{what}: an operation both policies deny was allowed: {h:?}");
        assert!(
            h.allowed_ok > 1000 && h.denied_refused > 1000,
            "{what}: too few operations to mean anything: {h:?}"
        );
    }
    eprintln!("{writes} policy writes, {} reloads in {rounds} rounds; {totals:?}", reloads_seen(&mut sb));
}

#[test]
fn kill_9_and_restart_leave_no_window() {
    require_root!();
    let mut sb = Sandbox::enforcing("restart", &["/app"], &policy(7000));
    let hammer = sb.spawn_probe("/app", &["hammer", "bind", "udp", "127.0.0.1", "8080", "8081", "5000"]);
    std::thread::sleep(Duration::from_millis(500));
    sb.agent().kill9();
    std::thread::sleep(Duration::from_millis(500));
    // A new agent adopts the pinned maps and swaps its programs into the
    // pinned links while the hammer keeps going.
    sb.start_agent_with(&[]);
    std::thread::sleep(Duration::from_millis(500));
    sb.agent().kill9();
    sb.start_agent_with(&[]);
    let h = Hammer::wait(hammer);
    assert_eq!(h.allowed_refused, 0, "{h:?}");
    assert_eq!(h.denied_ok, 0, "{h:?}");
    assert!(h.allowed_ok > 100 && h.denied_refused > 100, "{h:?}");
}

/// An agent (re)start touches no other process: while a guarded and an
/// unguarded workload each close and re-bind a port in a tight loop, 20
/// restarts cause no EADDRINUSE (`Hammer::wait` fails on any error other
/// than EPERM). An agent that read other processes' fd links at start held
/// their sockets a moment past close and made exactly such re-binds fail.
#[test]
fn twenty_restarts_never_make_a_rebind_fail() {
    require_root!();
    let mut sb = Sandbox::enforcing("rebind", &["/app", "/free"], &policy(7000));
    for restart in 0..20 {
        let guarded = sb.spawn_probe("/app", &["hammer", "bind", "udp", "127.0.0.1", "8080", "8081", "1500"]);
        let unguarded =
            sb.spawn_probe("/free", &["hammer", "bind", "tcp", "127.0.0.1", "9090", "9091", "1500"]);
        sb.stop_agent();
        sb.start_agent_with(&[]);
        let (g, u) = (Hammer::wait(guarded), Hammer::wait(unguarded));
        assert_eq!((g.allowed_refused, g.denied_ok), (0, 0), "restart {restart}: {g:?}");
        assert_eq!((u.allowed_refused, u.denied_refused), (0, 0), "restart {restart}: unguarded {u:?}");
        assert!(g.allowed_ok > 0 && u.allowed_ok > 0, "restart {restart}: {g:?} {u:?}");
    }
}

#[test]
fn a_broken_policy_is_refused_and_the_old_one_stays() {
    require_root!();
    let mut sb = Sandbox::enforcing("broken", &["/app"], &policy(7000));
    let mark = sb.agent().mark();
    sb.rename_policy_over("[[guard]]\nname = \"app\"\ncgroup = \"/app\"\n[[guard.bind]]\nports = [0]\n");
    let refused = sb.agent().wait_for_after(mark, "refusal", |l| {
        l["message"].as_str().is_some_and(|m| m.starts_with("policy reload refused"))
    });
    assert!(refused["message"].as_str().is_some_and(|m| m.contains(":5:10: port 0")), "{refused}");
    assert_eq!(sb.probe("/app", &["bind", "udp", "127.0.0.1", "7000"]), "ok port=7000");
    assert_eq!(sb.probe("/app", &["bind", "udp", "127.0.0.1", "8081"]), "err EPERM");
    // Fixed: the new policy applies.
    sb.reload_policy(&policy(8081));
    assert_eq!(sb.probe("/app", &["bind", "udp", "127.0.0.1", "8081"]), "ok port=8081");
    assert_eq!(sb.probe("/app", &["bind", "udp", "127.0.0.1", "7000"]), "err EPERM");
}

#[test]
fn editing_in_place_and_renaming_over_both_reload() {
    require_root!();
    let mut sb = Sandbox::enforcing("writes", &["/app"], &policy(7000));
    let mark = sb.agent().mark();
    sb.rename_policy_over(&policy(7001));
    sb.agent().wait_for_after(mark, "reload after rename", |l| l["message"] == "policy reloaded");
    assert_eq!(sb.probe("/app", &["bind", "udp", "127.0.0.1", "7001"]), "ok port=7001");
    let mark = sb.agent().mark();
    sb.write_policy(&policy(7002));
    sb.agent().wait_for_after(mark, "reload after write", |l| l["message"] == "policy reloaded");
    assert_eq!(sb.probe("/app", &["bind", "udp", "127.0.0.1", "7002"]), "ok port=7002");
    assert_eq!(sb.probe("/app", &["bind", "udp", "127.0.0.1", "7001"]), "err EPERM");
}

#[test]
fn a_configmap_symlink_swap_reloads() {
    require_root!();
    // The layout kubelet gives a ConfigMap volume: policy.toml -> ..data/policy.toml,
    // ..data -> ..<timestamp>; an update writes a new timestamped directory
    // and renames a new ..data symlink over the old one.
    let mut sb = Sandbox::new("configmap");
    sb.cgroup("/app");
    let vol = sb.dir.join("configmap");
    fs::create_dir_all(vol.join("..2026_11_21_v1")).expect("mkdir");
    fs::write(vol.join("..2026_11_21_v1/policy.toml"), policy(7000)).expect("write");
    symlink("..2026_11_21_v1", vol.join("..data")).expect("symlink");
    symlink("..data/policy.toml", vol.join("policy.toml")).expect("symlink");
    sb.set_policy_path(vol.join("policy.toml"));
    sb.start_agent_with(&[]);
    assert_eq!(sb.probe("/app", &["bind", "udp", "127.0.0.1", "7001"]), "err EPERM");

    let mark = sb.agent().mark();
    fs::create_dir_all(vol.join("..2026_11_21_v2")).expect("mkdir");
    fs::write(vol.join("..2026_11_21_v2/policy.toml"), policy(7001)).expect("write");
    symlink("..2026_11_21_v2", vol.join("..data_tmp")).expect("symlink");
    fs::rename(vol.join("..data_tmp"), vol.join("..data")).expect("swap ..data");
    fs::remove_dir_all(vol.join("..2026_11_21_v1")).expect("remove old");
    sb.agent().wait_for_after(mark, "reload after ..data swap", |l| l["message"] == "policy reloaded");
    assert_eq!(sb.probe("/app", &["bind", "udp", "127.0.0.1", "7001"]), "ok port=7001");
}

#[test]
fn the_reload_command_signals_the_running_agent() {
    require_root!();
    let mut sb = Sandbox::enforcing("reloadcmd", &["/app"], &policy(7000));
    let mark = sb.agent().mark();
    let (code, out, err) = sb.portguard(&["reload", "--state-dir", sb.state_dir().to_str().expect("utf8")]);
    assert_eq!(code, 0, "{out}{err}");
    let line = sb.agent().wait_for_after(mark, "reload", |l| l["message"] == "policy reloaded");
    assert_eq!(line["reason"], "SIGHUP");
}

/// A reload logs the guards it added, changed or removed, and one summary
/// line with the counts; unchanged guards are not logged again.
#[test]
fn a_reload_logs_what_changed_and_one_summary() {
    require_root!();
    let two = |app_port: u16, second: &str| {
        format!(
            "{}\n[[guard]]\nname = \"{second}\"\ncgroup = \"/{second}\"\n[[guard.bind]]\nports = [9000]\nproto = \"udp\"\n",
            policy(app_port)
        )
    };
    let mut sb = Sandbox::enforcing("reloadlog", &["/app", "/db", "/cache"], &two(7000, "db"));
    let guard_lines = |sb: &mut Sandbox, mark: usize| -> Vec<String> {
        let logs = sb.agent().logs();
        logs.iter()
            .skip(mark)
            .filter(|l| l["message"].as_str().is_some_and(|m| m.starts_with("guard ")))
            .map(|l| l["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    };

    // "app" changes, "db" goes, "cache" comes.
    let mark = sb.agent().mark();
    sb.rename_policy_over(&two(7001, "cache"));
    let line = sb.agent().wait_for_after(mark, "reload", |l| l["message"] == "policy reloaded");
    let counts =
        ["guards_added", "guards_changed", "guards_removed", "guards_unchanged"].map(|k| line[k].clone());
    assert_eq!(counts, [1, 1, 1, 0].map(serde_json::Value::from), "{line}");
    let mut lines = guard_lines(&mut sb, mark);
    lines.sort();
    let expected = ["guard app: active", "guard cache: active", "guard db: removed"];
    assert!(
        lines.len() == expected.len() && lines.iter().zip(expected).all(|(l, p)| l.starts_with(p)),
        "{lines:?}"
    );

    // A forced reload of the same file: nothing to log but the summary.
    let mark = sb.agent().mark();
    sb.agent().signal(libc::SIGHUP);
    let line = sb.agent().wait_for_after(mark, "SIGHUP reload", |l| l["message"] == "policy reloaded");
    assert_eq!(line["guards_unchanged"], 2, "{line}");
    assert_eq!(guard_lines(&mut sb, mark), Vec::<String>::new());
}

/// Once the agent says it enforces, a policy change and a SIGHUP must both
/// be seen, however soon they come: the watch and the signal handler exist
/// before that line (SIGHUP's default action would end the agent).
#[test]
fn a_change_right_after_start_is_not_lost() {
    require_root!();
    for round in 0..5 {
        let mut sb = Sandbox::enforcing("afterstart", &["/app"], &policy(7000));
        sb.agent().signal(libc::SIGHUP);
        sb.rename_policy_over(&policy(7001));
        sb.agent()
            .wait_for("the SIGHUP reload", |l| l["message"] == "policy reloaded" && l["reason"] == "SIGHUP");
        let deadline = Instant::now() + Duration::from_secs(5);
        while sb.probe("/app", &["bind", "udp", "127.0.0.1", "7001"]) != "ok port=7001" {
            assert!(Instant::now() < deadline, "round {round}: the change made right after start was lost");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn status_reads_the_pinned_state_with_or_without_the_agent() {
    require_root!();
    let mut sb = Sandbox::enforcing("status", &["/app"], &policy(7000));
    for _ in 0..3 {
        assert_eq!(sb.probe("/app", &["bind", "udp", "127.0.0.1", "8081"]), "err EPERM");
    }
    assert_eq!(sb.probe("/app", &["bind", "udp", "127.0.0.1", "8080"]), "ok port=8080");
    let s = sb.status();
    assert_eq!(s["agent"]["running"], true);
    assert_eq!(s["policy"]["matches_kernel"], true);
    assert_eq!(s["policy"]["generation"], s["generation"]);
    let g = &s["guards"][0];
    assert_eq!(g["name"], "app");
    assert_eq!(g["mode"], "enforce");
    assert_eq!(g["decisions"]["bind"]["denied"], 3);
    assert_eq!(g["decisions"]["bind"]["allowed"], 1);

    sb.stop_agent();
    let s = sb.status();
    assert_eq!(s["agent"]["running"], false);
    assert_eq!(s["guards"][0]["name"], "app", "still described after the agent stopped");
    assert_eq!(s["guards"][0]["decisions"]["bind"]["denied"], 3);
}

#[test]
fn unload_on_exit_removes_enforcement_when_the_agent_stops() {
    require_root!();
    let mut sb = Sandbox::new("unloadexit");
    sb.cgroup("/app");
    sb.write_policy(&policy(7000));
    sb.start_agent_with(&["--unload-on-exit"]);
    assert_eq!(sb.probe("/app", &["bind", "udp", "127.0.0.1", "8081"]), "err EPERM");
    sb.stop_agent();
    assert!(!sb.bpffs.exists(), "pins removed");
    assert_eq!(sb.probe("/app", &["bind", "udp", "127.0.0.1", "8081"]), "ok port=8081");
}
