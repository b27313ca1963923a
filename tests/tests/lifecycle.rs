//! Guards follow their cgroups; bad input changes nothing; enforcement
//! outlives the agent process until unloaded.

use std::{fs, time::Duration};

use portguard_tests::{Sandbox, remove_cgroup_tree, require_root};

const POLICY: &str = r#"
[[guard]]
name = "svc"
cgroup = "/system.slice/svc.service"
[[guard.bind]]
ports = [8080]
"#;

#[test]
fn a_guard_waits_for_its_cgroup_and_follows_it_across_restarts() {
    require_root!();
    let mut sb = Sandbox::new("appear");
    sb.cgroup("/system.slice");
    sb.start_agent(POLICY);
    sb.agent().wait_for("pending guard", |l| {
        l["guard"] == "svc" && l["message"].as_str().is_some_and(|m| m.contains("waiting"))
    });
    // The unit starts: its cgroup appears and is guarded.
    sb.cgroup("/system.slice/svc.service");
    sb.agent().wait_for("cgroup appeared", |l| l["message"] == "guarded cgroup appeared");
    assert_eq!(sb.probe("/system.slice/svc.service", &["bind", "tcp", "127.0.0.1", "8081"]), "err EPERM");
    // The unit restarts: a new cgroup under the same path is guarded again.
    let path = sb.root.join("system.slice/svc.service");
    let mark = sb.agent().mark();
    remove_cgroup_tree(&path);
    sb.agent().wait_for_after(mark, "cgroup gone", |l| {
        l["message"].as_str().is_some_and(|m| m.contains("is gone"))
    });
    let mark = sb.agent().mark();
    fs::create_dir(&path).expect("recreate");
    sb.agent().wait_for_after(mark, "cgroup back", |l| l["message"] == "guarded cgroup appeared");
    assert_eq!(sb.probe("/system.slice/svc.service", &["bind", "tcp", "127.0.0.1", "8081"]), "err EPERM");
    assert_eq!(sb.probe("/system.slice/svc.service", &["bind", "tcp", "127.0.0.1", "8080"]), "ok port=8080");
}

#[test]
fn a_bad_policy_exits_2_and_attaches_nothing() {
    require_root!();
    let sb = Sandbox::new("badpolicy");
    sb.cgroup("/app");
    let (code, out) = sb.run_agent_expecting_failure(
        "[[guard]]\nname = \"app\"\ncgroup = \"/app\"\n[[guard.bind]]\nports = [\"9000-8000\"]\n",
    );
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("policy.toml:5:10") && out.contains("reversed"),
        "error names file, line and column: {out}"
    );
    assert!(!sb.bpffs.exists(), "nothing may be pinned after a refused start");
    assert_eq!(sb.probe("/app", &["bind", "tcp", "127.0.0.1", "0"]).split('=').next(), Some("ok port"));
}

#[test]
fn a_missing_cgroup_root_exits_2() {
    require_root!();
    let sb = Sandbox::new("noroot");
    sb.write_policy(POLICY);
    let out = std::process::Command::new(portguard_tests::agent_bin())
        .args(["run", "--cgroup-root", "/sys/fs/cgroup/definitely-not-here", "--bpffs"])
        .arg(&sb.bpffs)
        .arg("--policy")
        .arg(sb.policy_path())
        .output()
        .expect("run agent");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("definitely-not-here"), "error names the path: {err}");
    assert!(!sb.bpffs.exists());
}

#[test]
fn enforcement_outlives_the_agent_until_unloaded() {
    require_root!();
    let mut sb = Sandbox::new("persist");
    sb.cgroup("/app");
    sb.start_agent("[[guard]]\nname = \"app\"\ncgroup = \"/app\"\n[[guard.bind]]\nports = [8080]\n");
    assert_eq!(sb.probe("/app", &["bind", "tcp", "127.0.0.1", "8081"]), "err EPERM");
    sb.agent().kill9();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        sb.probe("/app", &["bind", "tcp", "127.0.0.1", "8081"]),
        "err EPERM",
        "still denied with the agent dead"
    );
    assert_eq!(sb.probe("/app", &["bind", "tcp", "127.0.0.1", "8080"]), "ok port=8080");
    // A new agent adopts the pinned state (links are updated in place).
    sb.start_agent("[[guard]]\nname = \"app\"\ncgroup = \"/app\"\n[[guard.bind]]\nports = [8080]\n");
    assert_eq!(sb.probe("/app", &["bind", "tcp", "127.0.0.1", "8081"]), "err EPERM");
    sb.stop_agent();
    sb.unload();
    assert!(!sb.bpffs.exists(), "unload removes the pin directory");
    assert_eq!(
        sb.probe("/app", &["bind", "tcp", "127.0.0.1", "8081"]),
        "ok port=8081",
        "unloaded: nothing enforces"
    );
}
