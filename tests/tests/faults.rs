//! Faults: nothing guarded may open, and bad conditions get clear errors.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use portguard_tests::{Hammer, Sandbox, agent_bin, require_root};

fn policy(variant: u16) -> String {
    format!(
        "[[guard]]\nname = \"app\"\ncgroup = \"/app\"\n[[guard.bind]]\nports = [8080, {variant}]\nproto = \"udp\"\n"
    )
}

#[test]
fn kill_9_in_the_middle_of_reloads_opens_nothing() {
    if !require_root("kill9_reload") {
        return;
    }
    let mut sb = Sandbox::enforcing("killreload", &["/app"], &policy(7000));
    let hammer = sb.spawn_probe("/app", &["hammer", "bind", "udp", "127.0.0.1", "8080", "8081", "8000"]);
    let start = Instant::now();
    let mut variant = 7000;
    let mut killed = 0;
    // At least 3.6 s, and up to 7 s (inside the hammer's 8 s) to get 3
    // kills: on a loaded machine an agent restart can take longer than the
    // ~600 ms between kills.
    while start.elapsed() < Duration::from_millis(3600)
        || (killed < 3 && start.elapsed() < Duration::from_secs(7))
    {
        variant = if variant == 7000 { 7001 } else { 7000 };
        sb.rename_policy_over(&policy(variant));
        std::thread::sleep(Duration::from_millis(15));
        // Every ~600 ms: kill the agent while reloads are in flight, and
        // start a new one on the pinned state.
        if start.elapsed() > Duration::from_millis(600 * (killed + 1)) && killed < 4 {
            sb.agent().kill9();
            killed += 1;
            sb.start_agent_with(&[]);
        }
    }
    let h = Hammer::wait(hammer);
    assert_eq!(h.allowed_refused, 0, "{h:?}");
    assert_eq!(h.denied_ok, 0, "{h:?}");
    assert!(killed >= 2 && h.allowed_ok > 100, "{killed} kills, {h:?}");
}

#[test]
fn a_missing_bpffs_is_mounted() {
    if !require_root("bpffs_missing") {
        return;
    }
    let sb = Sandbox::new("nobpffs");
    sb.cgroup("/app");
    sb.write_policy(&policy(7000));
    // Without /sys/fs/bpf: the agent mounts it (in that namespace) and starts.
    let out = run_agent_in_private_mounts(
        &sb,
        "umount /sys/fs/bpf 2>/dev/null",
        &format!("--cgroup-root {} --unload-on-exit", sb.root.display()),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mounted bpffs"), "{err}");
    assert!(err.contains("portguard is enforcing"), "{err}");
}

#[test]
fn missing_privileges_get_a_clear_error_and_change_nothing() {
    if !require_root("no_privileges") {
        return;
    }
    let sb = Sandbox::new("noprivs");
    sb.cgroup("/app");
    sb.write_policy(&policy(7000));
    std::fs::set_permissions(&sb.dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(sb.policy_path(), std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
        .arg(agent_bin())
        .args(sb.agent_run_args())
        .output()
        .expect("setpriv");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("must run as root"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(!sb.bpffs.exists());
}

#[test]
fn no_cgroup2_mount_gets_a_clear_error() {
    if !require_root("no_cgroup2") {
        return;
    }
    let sb = Sandbox::new("nocgroup2");
    sb.write_policy(&policy(7000));
    // With every cgroup2 mount removed.
    let out = run_agent_in_private_mounts(
        &sb,
        "for m in $(awk '$3==\"cgroup2\"{print $2}' /proc/self/mounts); do umount -l \"$m\"; done",
        "",
    );
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no cgroup2 filesystem is mounted"), "{err}");
    assert!(!sb.bpffs.exists());
}

/// Runs the agent (for at most 6 s) in a private mount namespace, after the
/// shell commands `prelude` changed that namespace's mounts.
fn run_agent_in_private_mounts(sb: &Sandbox, prelude: &str, extra: &str) -> std::process::Output {
    let script = format!(
        "{prelude}; exec timeout -s TERM 6 {} run --policy {} --bpffs {} --state-dir {} --metrics-addr 127.0.0.1:0 {extra}",
        agent_bin().display(),
        sb.policy_path().display(),
        sb.bpffs.display(),
        sb.state_dir().display()
    );
    Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare")
}
