//! Faults: nothing guarded may open, and bad conditions get clear errors.

use std::{process::Command, time::Duration};

use portguard_tests::{Hammer, Sandbox, agent_bin, probe_bin, require_root};

/// The cgroup programs the agent attaches at a guarded cgroup: one per hook
/// in the agent's `bpf::hooks::HOOKS` that goes on cgroups (sock_create,
/// bind, connect, sendmsg, post_bind, sock_ops, release, egress, ingress).
const CGROUP_HOOKS: usize = 13;

fn policy(variant: u16) -> String {
    format!(
        "[[guard]]\nname = \"app\"\ncgroup = \"/app\"\n[[guard.bind]]\nports = [8080, {variant}]\nproto = \"udp\"\n"
    )
}

#[test]
fn kill_9_in_the_middle_of_reloads_opens_nothing() {
    require_root!();
    let mut sb = Sandbox::enforcing("killreload", &["/app"], &policy(7000));
    let mut variant = 7000;
    // Three rounds, each counted by what happened rather than by the clock
    // (a restart takes seconds on a busy machine): reloads in flight, the
    // agent killed among them, the hammer going on through the kill and
    // the time no agent runs, and a new agent started on the pinned state.
    for round in 0..3 {
        let hammer = sb.spawn_probe("/app", &["hammer", "bind", "udp", "127.0.0.1", "8080", "8081", "1200"]);
        for _ in 0..30 {
            variant = if variant == 7000 { 7001 } else { 7000 };
            sb.rename_policy_over(&policy(variant));
            std::thread::sleep(Duration::from_millis(15));
        }
        sb.agent().kill9();
        let h = Hammer::wait(hammer);
        assert_eq!(h.allowed_refused, 0, "round {round}: {h:?}");
        assert_eq!(h.denied_ok, 0, "round {round}: {h:?}");
        assert!(h.allowed_ok > 100, "round {round}: {h:?}");
        sb.start_agent_with(&[]);
    }
}

#[test]
fn a_missing_bpffs_is_mounted() {
    require_root!();
    let sb = Sandbox::new("nobpffs");
    sb.cgroup("/app");
    sb.write_policy(&policy(7000));
    // Without /sys/fs/bpf: the agent mounts it (in that namespace) and starts.
    // Some machines boot with two bpffs stacked there: unmount until none is.
    let out = run_agent_in_private_mounts(
        &sb,
        "while umount /sys/fs/bpf 2>/dev/null; do :; done",
        &format!("--cgroup-root {} --unload-on-exit", sb.root.display()),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mounted bpffs"), "{err}");
    assert!(err.contains("portguard is enforcing"), "{err}");
}

#[test]
fn missing_privileges_get_a_clear_error_and_change_nothing() {
    require_root!();
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
    require_root!();
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
    // The agent runs until it says it enforces or exits by itself, however
    // long a busy machine makes that; then it is stopped and its log shown.
    let log = sb.dir.join("private-mounts-agent.log");
    let script = format!(
        "{prelude}; {} run --policy {} --bpffs {} --state-dir {} --metrics-addr 127.0.0.1:0 {extra} 2>{log} & pid=$!; \
         while kill -0 $pid 2>/dev/null && ! grep -q 'portguard is enforcing' {log}; do sleep 0.1; done; \
         kill -TERM $pid 2>/dev/null; wait $pid; status=$?; cat {log} >&2; exit $status",
        agent_bin().display(),
        sb.policy_path().display(),
        sb.bpffs.display(),
        sb.state_dir().display(),
        log = log.display(),
    );
    Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare")
}

/// A kernel without one of the hooks, simulated at the kernel boundary:
/// `pg-probe bpf-fault` answers the agent's BPF_PROG_LOAD for that attach
/// type with EINVAL, as a kernel that predates it does. The start fails in
/// one line that names the hook, with status 2, and leaves nothing behind.
#[test]
fn a_kernel_without_a_hook_fails_in_one_line_and_attaches_nothing() {
    require_root!();
    for (hook, section) in [
        ("BPF_CGROUP_INET6_CONNECT", "cgroup/connect6"),
        ("BPF_CGROUP_INET4_BIND", "cgroup/bind4"),
        ("BPF_CGROUP_INET_SOCK_CREATE", "cgroup/sock_create"),
        ("BPF_CGROUP_SOCK_OPS", "sockops"),
    ] {
        let sb = Sandbox::new("nohook");
        sb.cgroup("/app");
        sb.write_policy(&policy(7000));
        let run = run_agent_under_bpf_fault(&sb, "prog-load", hook);
        assert!(run.refused >= 1, "{hook}: the fault was never injected: {run:?}");
        assert_eq!(run.status, Some(2), "{hook}: {run:?}");
        let errors = run.error_lines();
        assert_eq!(errors.len(), 1, "{hook}: one error line: {run:?}");
        let expected = format!("this kernel cannot load the {section} program ({hook}): EINVAL");
        assert!(errors[0].contains(&expected), "{hook}: {}", errors[0]);
        assert!(errors[0].contains("nothing was attached"), "{}", errors[0]);
        for cgroup in ["", "/app"] {
            assert_eq!(
                attached_programs(&sb, cgroup),
                Vec::<(u64, String)>::new(),
                "{hook}: attached at {cgroup:?}"
            );
        }
        assert!(!sb.bpffs.exists(), "{hook}: pins left in {}", sb.bpffs.display());
        // Nothing loaded, so nothing judges the guarded cgroup either.
        assert_eq!(sb.probe("/app", &["bind", "udp", "127.0.0.1", "8081"]), "ok port=8081", "{hook}");
    }
}

/// A restarted agent that meets a missing hook fails before it touches
/// anything: the programs and the policy pinned by the previous agent stay
/// in force, unchanged.
#[test]
fn a_restart_on_a_kernel_without_a_hook_keeps_the_pinned_guard() {
    require_root!();
    let mut sb = Sandbox::enforcing("nohookrestart", &["/app"], &policy(7000));
    assert_eq!(sb.probe("/app", &["bind", "udp", "127.0.0.1", "8081"]), "err EPERM");
    let before = attached_programs(&sb, "/app");
    assert_eq!(before.len(), CGROUP_HOOKS, "every cgroup program at the guarded cgroup: {before:?}");
    sb.stop_agent();
    // The new agent brings a different policy: 7001 instead of 7000.
    sb.write_policy(&policy(7001));
    let run = run_agent_under_bpf_fault(&sb, "prog-load", "BPF_CGROUP_INET4_BIND");
    assert!(run.refused >= 1, "the fault was never injected: {run:?}");
    assert_eq!(run.status, Some(2), "{run:?}");
    let errors = run.error_lines();
    assert_eq!(errors.len(), 1, "{run:?}");
    assert!(errors[0].contains("cgroup/bind4 program (BPF_CGROUP_INET4_BIND)"), "{}", errors[0]);
    assert_eq!(attached_programs(&sb, "/app"), before, "the same programs stay attached");
    assert_eq!(sb.probe("/app", &["bind", "udp", "127.0.0.1", "8081"]), "err EPERM", "still denied");
    assert_eq!(sb.probe("/app", &["bind", "udp", "127.0.0.1", "7000"]), "ok port=7000", "old policy");
    assert_eq!(
        sb.probe("/app", &["bind", "udp", "127.0.0.1", "7001"]),
        "err EPERM",
        "new policy never applied"
    );
}

/// A start that fails after it attached some programs: the fifth of the
/// links (connect6) is refused, after sock_create, bind4, bind6 and connect4
/// were attached. The links it made go with it; no hook is left on.
#[test]
fn a_start_that_fails_midway_through_attaching_leaves_no_hook_behind() {
    require_root!();
    let sb = Sandbox::new("attachmid");
    sb.cgroup("/app");
    sb.write_policy(&policy(7000));
    let run = run_agent_under_bpf_fault(&sb, "link-create", "BPF_CGROUP_INET6_CONNECT");
    assert!(run.refused >= 1, "the fault was never injected: {run:?}");
    assert_eq!(run.status, Some(2), "{run:?}");
    let errors = run.error_lines();
    assert_eq!(errors.len(), 1, "{run:?}");
    assert!(
        errors[0].contains("cannot attach the cgroup/connect6 program (BPF_CGROUP_INET6_CONNECT)")
            && errors[0].contains("EINVAL"),
        "{}",
        errors[0]
    );
    for cgroup in ["", "/app"] {
        assert_eq!(attached_programs(&sb, cgroup), Vec::<(u64, String)>::new(), "links left at {cgroup:?}");
    }
    assert!(!sb.bpffs.exists(), "pins left in {}", sb.bpffs.display());
}

/// A restart that fails midway through swapping its programs into the
/// pinned links (BPF_LINK_UPDATE refused for connect6, the fifth): the
/// policy was written before the swap, so the restart is not undone. What
/// must hold is that no hook is left empty: the earlier links run the new
/// programs, the later ones the old, all on the new policy.
#[test]
fn a_restart_that_fails_midway_through_swapping_programs_leaves_every_hook_guarded() {
    require_root!();
    let mut sb = Sandbox::enforcing("updatemid", &["/app"], &policy(7000));
    let before = attached_programs(&sb, "/app");
    assert_eq!(before.len(), CGROUP_HOOKS, "{before:?}");
    sb.stop_agent();
    sb.write_policy(&policy(7001));
    let run = run_agent_under_bpf_fault(&sb, "link-update", "BPF_CGROUP_INET6_CONNECT");
    assert_eq!(run.refused, 1, "one link update refused: {run:?}");
    assert_eq!(run.status, Some(2), "{run:?}");
    let errors = run.error_lines();
    assert_eq!(errors.len(), 1, "{run:?}");
    assert!(
        errors[0].contains("cannot swap the new cgroup/connect6 program (BPF_CGROUP_INET6_CONNECT)"),
        "{}",
        errors[0]
    );
    let after = attached_programs(&sb, "/app");
    let types = |v: &[(u64, String)]| {
        let mut t: Vec<String> = v.iter().map(|(_, t)| t.clone()).collect();
        t.sort();
        t
    };
    assert_eq!(types(&after), types(&before), "every hook keeps exactly one program");
    let kept = after.iter().filter(|p| before.contains(p)).count();
    assert!(
        kept > 0 && kept < CGROUP_HOOKS,
        "some programs swapped, some kept: {kept} of {CGROUP_HOOKS} kept"
    );
    assert_eq!(sb.probe("/app", &["bind", "udp", "127.0.0.1", "8081"]), "err EPERM", "still denied");
    assert_eq!(sb.probe("/app", &["bind", "udp", "127.0.0.1", "7001"]), "ok port=7001", "the new policy");
    assert_eq!(
        sb.probe("/app", &["bind", "udp", "127.0.0.1", "7000"]),
        "err EPERM",
        "the old policy is gone"
    );
}

#[derive(Debug)]
struct FaultRun {
    status: Option<i32>,
    stderr: String,
    /// bpf() calls the supervisor answered with EINVAL.
    refused: u64,
}

impl FaultRun {
    fn error_lines(&self) -> Vec<&str> {
        self.stderr.lines().filter(|l| l.contains(" ERROR ")).collect()
    }
}

/// Runs the agent (for at most 20 s) under `pg-probe bpf-fault STEP HOOK`.
fn run_agent_under_bpf_fault(sb: &Sandbox, step: &str, hook: &str) -> FaultRun {
    let out = Command::new(probe_bin())
        .args(["bpf-fault", step, hook, "--", "timeout", "-s", "TERM", "20"])
        .arg(agent_bin())
        .args(sb.agent_run_args())
        .args(["--log-format", "text", "--metrics-addr", "127.0.0.1:0"])
        .output()
        .expect("run pg-probe bpf-fault");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let refused = stdout
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("refused="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            panic!("no summary from bpf-fault: {stdout} {}", String::from_utf8_lossy(&out.stderr))
        });
    FaultRun { status: out.status.code(), stderr: String::from_utf8_lossy(&out.stderr).into_owned(), refused }
}

/// (program id, attach type) of every program attached at `cgroup` (relative
/// to the sandbox root, "" for the root itself), as the kernel reports them.
/// portguard attaches at each guarded cgroup, never at the root.
fn attached_programs(sb: &Sandbox, cgroup: &str) -> Vec<(u64, String)> {
    let out = Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(sb.root.join(cgroup.trim_start_matches('/')))
        .output()
        .expect("bpftool (installed by `cargo xtask setup`)");
    assert!(out.status.success(), "bpftool: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Vec::new();
    }
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("bpftool json {text}: {e}"));
    let mut progs: Vec<(u64, String)> = v
        .as_array()
        .expect("a list")
        .iter()
        .map(|p| (p["id"].as_u64().expect("id"), p["attach_type"].as_str().expect("attach_type").to_owned()))
        .collect();
    progs.sort();
    progs
}
