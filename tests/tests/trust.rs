//! The guard's own chain of trust: only root can change the policy the
//! agent enforces, and a workload without privileges cannot leave its
//! guard, reach the pinned maps or stop the agent.

use std::{
    fs,
    os::unix::fs::{PermissionsExt as _, chown, symlink},
    path::{Path, PathBuf},
    process::Command,
};

use portguard_tests::{Sandbox, metric_sum, portguard, probe_bin, require_root};

fn policy(port: u16) -> String {
    format!(
        "[[guard]]\nname = \"app\"\ncgroup = \"/app\"\n[[guard.bind]]\nports = [{port}]\nproto = \"udp\"\n"
    )
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

fn mkdir(p: &Path, mode: u32) -> PathBuf {
    fs::create_dir_all(p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
    chmod(p, mode);
    p.to_owned()
}

/// Starts an agent on the policy at `path` (after `prepare` set up its
/// permissions), expects it to refuse in one line that says `expected`,
/// with exit status 2 and nothing pinned.
fn refused_at_start(case: &str, rel: &str, prepare: impl Fn(&Sandbox, &Path), expected: &str) {
    let mut sb = Sandbox::new("trustperm");
    sb.cgroup("/app");
    let path = sb.dir.join(rel);
    fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    sb.set_policy_path(path.clone());
    sb.write_policy(&policy(7000));
    prepare(&sb, &path);
    let (code, out) = sb.run_agent_expecting_failure(&policy(7000));
    assert_eq!(code, 2, "{case}: {out}");
    let lines: Vec<&str> = out.lines().filter(|l| l.contains("refusing the policy file")).collect();
    assert_eq!(lines.len(), 1, "{case}: one line: {out}");
    let expected = expected.replace("{dir}", &sb.dir.display().to_string());
    assert!(lines[0].contains(&expected), "{case}: expected {expected:?} in {:?}", lines[0]);
    assert!(lines[0].contains("only root may be able to change what portguard enforces"), "{case}: {out}");
    assert!(!sb.bpffs.exists(), "{case}: the refused start pinned something");
}

#[test]
fn a_policy_file_others_could_change_is_refused_at_start() {
    require_root!();
    refused_at_start(
        "chmod 666",
        "policy.toml",
        |_, p| chmod(p, 0o666),
        "file {dir}/policy.toml is world-writable (mode 0666)",
    );
    refused_at_start(
        "group-writable parent",
        "conf/policy.toml",
        |sb, _| chmod(&sb.dir.join("conf"), 0o775),
        "directory {dir}/conf is group-writable (mode 0775, gid 0) without the sticky bit",
    );
    refused_at_start(
        "non-root owner",
        "policy.toml",
        |_, p| chown(p, Some(65534), None).expect("chown"),
        "file {dir}/policy.toml is owned by uid 65534, not root",
    );
    refused_at_start(
        "writable directory higher up",
        "a/b/c/policy.toml",
        |sb, _| chmod(&sb.dir.join("a"), 0o777),
        "directory {dir}/a is world-writable (mode 0777) without the sticky bit",
    );
    refused_at_start(
        "another user's file in a sticky root-owned directory",
        "tmp/policy.toml",
        |sb, p| {
            chmod(&sb.dir.join("tmp"), 0o1777);
            chown(p, Some(65534), None).expect("chown");
        },
        "file {dir}/tmp/policy.toml is owned by uid 65534, not root",
    );
    refused_at_start(
        "a root-owned symlink in a safe directory to a file in a writable one",
        "link/policy.toml",
        |sb, p| {
            let open = mkdir(&sb.dir.join("open"), 0o777);
            fs::rename(p, open.join("policy.toml")).expect("move");
            symlink(open.join("policy.toml"), p).expect("symlink");
        },
        "directory {dir}/open is world-writable (mode 0777) without the sticky bit",
    );
}

#[test]
fn a_root_owned_file_in_a_sticky_root_owned_directory_is_accepted() {
    require_root!();
    // sshd's rule, and what the tests' own /tmp sandboxes rely on.
    let mut sb = Sandbox::new("truststicky");
    sb.cgroup("/app");
    let tmp = mkdir(&sb.dir.join("tmp"), 0o1777);
    sb.set_policy_path(tmp.join("policy.toml"));
    sb.start_agent(&policy(7000));
    assert_eq!(sb.probe("/app", &["bind", "udp", "127.0.0.1", "7001"]), "err EPERM");
}

#[test]
fn a_reload_of_a_world_writable_policy_is_refused_counted_and_changes_nothing() {
    require_root!();
    let mut sb = Sandbox::enforcing("trustreload", &["/app"], &policy(7000));
    let rejected = |sb: &mut Sandbox| {
        metric_sum(&sb.agent().metrics(), "portguard_policy_reloads_total", &[("result", "rejected")])
    };
    assert_eq!(rejected(&mut sb), 0);

    // The new policy lands world-writable, the way a careless copy does.
    let mark = sb.agent().mark();
    let path = sb.policy_path();
    let tmp = sb.dir.join("incoming.toml");
    fs::write(&tmp, policy(7001)).expect("write");
    chmod(&tmp, 0o666);
    fs::rename(&tmp, &path).expect("rename over");
    let line = sb.agent().wait_for_after(mark, "the refused reload", |l| {
        l["message"].as_str().is_some_and(|m| m.starts_with("policy reload refused"))
    });
    let message = line["message"].as_str().expect("message");
    assert!(message.contains(&format!("file {} is world-writable (mode 0666)", path.display())), "{message}");
    assert!(rejected(&mut sb) >= 1);
    // The previous policy stays enforced.
    assert_eq!(sb.probe("/app", &["bind", "udp", "127.0.0.1", "7000"]), "ok port=7000");
    assert_eq!(sb.probe("/app", &["bind", "udp", "127.0.0.1", "7001"]), "err EPERM");
    assert!(!sb.agent().logs().iter().skip(mark).any(|l| l["message"] == "policy reloaded"));

    // Fixed, it is taken.
    let mark = sb.agent().mark();
    chmod(&path, 0o644);
    sb.agent().signal(libc::SIGHUP);
    sb.agent().wait_for_after(mark, "the reload once fixed", |l| l["message"] == "policy reloaded");
    assert_eq!(sb.probe("/app", &["bind", "udp", "127.0.0.1", "7001"]), "ok port=7001");
}

/// A read-only bind mount, undone on drop.
struct ReadOnlyBind(PathBuf);

impl ReadOnlyBind {
    fn new(source: &Path, target: &Path) -> ReadOnlyBind {
        run("mount", &["--bind", source.to_str().expect("utf8"), target.to_str().expect("utf8")]);
        let guard = ReadOnlyBind(target.to_owned());
        run("mount", &["-o", "remount,bind,ro", target.to_str().expect("utf8")]);
        guard
    }
}

impl Drop for ReadOnlyBind {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// kubelet's ConfigMap volume: a 0777 directory (an emptyDir underneath)
/// holding `..<timestamp>/policy.toml`, `..data -> ..<timestamp>` and
/// `policy.toml -> ..data/policy.toml`, all root's, mounted read-only in
/// the container. Updates land through kubelet's own (writable) path.
fn configmap_volume(sb: &Sandbox, port: u16) -> PathBuf {
    let vol = mkdir(&sb.dir.join("kubelet-volume"), 0o777);
    let ts = mkdir(&vol.join("..2026_12_03_10_00_00.1"), 0o755);
    fs::write(ts.join("policy.toml"), policy(port)).expect("write");
    chmod(&ts.join("policy.toml"), 0o644);
    symlink("..2026_12_03_10_00_00.1", vol.join("..data")).expect("symlink");
    symlink("..data/policy.toml", vol.join("policy.toml")).expect("symlink");
    vol
}

#[test]
fn a_configmap_volume_mounted_read_only_is_accepted_and_reloads() {
    require_root!();
    let mut sb = Sandbox::new("trustcm");
    sb.cgroup("/app");
    let vol = configmap_volume(&sb, 7000);
    let mount = mkdir(&sb.dir.join("etc-portguard"), 0o755);
    let _ro = ReadOnlyBind::new(&vol, &mount);
    sb.set_policy_path(mount.join("policy.toml"));
    sb.start_agent_with(&[]);
    assert_eq!(sb.probe("/app", &["bind", "udp", "127.0.0.1", "7001"]), "err EPERM");

    // kubelet's update: a new timestamped directory, a new ..data renamed over.
    let mark = sb.agent().mark();
    let ts = mkdir(&vol.join("..2026_12_03_10_05_00.2"), 0o755);
    fs::write(ts.join("policy.toml"), policy(7001)).expect("write");
    symlink("..2026_12_03_10_05_00.2", vol.join("..data_tmp")).expect("symlink");
    fs::rename(vol.join("..data_tmp"), vol.join("..data")).expect("swap ..data");
    fs::remove_dir_all(vol.join("..2026_12_03_10_00_00.1")).expect("remove old");
    sb.agent().wait_for_after(mark, "reload after ..data swap", |l| l["message"] == "policy reloaded");
    assert_eq!(sb.probe("/app", &["bind", "udp", "127.0.0.1", "7001"]), "ok port=7001");
}

#[test]
fn a_configmap_volume_mounted_writable_is_refused() {
    require_root!();
    // The same layout where anyone can write its directory: refused, and
    // the error names that directory.
    let mut sb = Sandbox::new("trustcmrw");
    sb.cgroup("/app");
    let vol = configmap_volume(&sb, 7000);
    sb.set_policy_path(vol.join("policy.toml"));
    let (code, out) = sb.run_agent_expecting_failure(&policy(7000));
    assert_eq!(code, 2, "{out}");
    assert!(out.contains(&format!("directory {} is world-writable (mode 0777)", vol.display())), "{out}");
}

#[test]
fn check_warns_about_permissions_but_still_validates() {
    require_root!();
    let sb = Sandbox::new("trustcheck");
    sb.write_policy(&policy(7000));
    let path = sb.policy_path();
    chmod(&path, 0o666);
    let file = path.to_str().expect("utf8");
    let (code, out, err) = portguard(&["check", file]);
    assert_eq!(code, 0, "{out}{err}");
    let warning =
        format!("warning: {file}: refusing the policy file: file {file} is world-writable (mode 0666)");
    assert!(err.contains(&warning), "{err}");
    assert!(err.contains("(`portguard run` would refuse it)"), "{err}");
    let (code, out, _) = portguard(&["check", "--format", "json", file]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert!(v["permissions"].as_str().is_some_and(|p| p.contains("world-writable")), "{v}");
    chmod(&path, 0o644);
    let (code, out, err) = portguard(&["check", file]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!err.contains("refusing the policy file"), "{err}");
    let (_, out, _) = portguard(&["check", "--format", "json", file]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).expect("json")["permissions"],
        serde_json::Value::Null
    );
}

/// The trail files of `base`, oldest first.
fn trail_series(base: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> =
        (1..).map(|n| PathBuf::from(format!("{}.{n}", base.display()))).take_while(|p| p.exists()).collect();
    files.reverse();
    files.push(base.to_owned());
    files
}

fn denied_records(base: &Path) -> usize {
    trail_series(base)
        .iter()
        .flat_map(|f| {
            fs::read_to_string(f).unwrap_or_default().lines().map(str::to_owned).collect::<Vec<_>>()
        })
        .filter(|l| l.contains("\"event\":\"denied\""))
        .count()
}

/// Binds `ports` (all refused) and waits until the trail has `total` denials.
fn deny(sb: &Sandbox, ports: std::ops::Range<u16>, total: usize) {
    for port in ports {
        assert_eq!(sb.probe("/app", &["bind", "udp", "127.0.0.1", &port.to_string()]), "err EPERM");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while denied_records(&sb.audit_trail()) < total {
        assert!(std::time::Instant::now() < deadline, "the trail never reached {total} denials");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn trail_verify(base: &Path) -> (i32, String) {
    let (code, out, err) = portguard(&["trail", "verify", base.to_str().expect("utf8")]);
    (code, out + &err)
}

#[test]
fn the_agents_trail_chain_holds_across_rotation_and_restart_and_tampering_is_located() {
    require_root!();
    let mut sb = Sandbox::new("trusttrail");
    sb.cgroup("/app");
    sb.write_policy(&policy(7000));
    // About three records to a file.
    let flags = ["--audit-trail-max-bytes", "1400", "--audit-trail-keep", "20"];
    sb.start_agent_with(&flags);
    deny(&sb, 7100..7109, 9);
    sb.stop_agent();
    sb.start_agent_with(&flags);
    deny(&sb, 7109..7118, 18);
    sb.stop_agent();

    let base = sb.audit_trail();
    let files = trail_series(&base);
    assert!(files.len() >= 4, "rotated: {files:?}");
    let (code, out) = trail_verify(&base);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with(&format!("intact: {} files", files.len())), "{out}");
    // The agent logged the head the files end with when it stopped.
    let last = fs::read_to_string(&base).expect("trail");
    let head: serde_json::Value = serde_json::from_str(last.lines().last().expect("a line")).expect("json");
    assert!(out.contains(&format!("head {}", head["hash"].as_str().expect("hash"))), "{out}");

    // Each tampering, on a copy, in the middle of a rotated file.
    let middle = files[files.len() / 2].clone();
    let name = middle.file_name().expect("name").to_string_lossy().into_owned();
    let tamper = |what: &str, change: &dyn Fn(&mut Vec<String>), expected: &str| {
        let copy = sb.dir.join(format!("copy-{what}"));
        fs::create_dir_all(&copy).expect("mkdir");
        for f in &files {
            fs::copy(f, copy.join(f.file_name().expect("name"))).expect("copy");
        }
        let target = copy.join(&name);
        let mut lines: Vec<String> =
            fs::read_to_string(&target).expect("read").lines().map(str::to_owned).collect();
        assert!(lines.len() >= 3, "{what}: {lines:?}");
        change(&mut lines);
        fs::write(&target, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).expect("write");
        let (code, out) = trail_verify(&copy.join(base.file_name().expect("name")));
        assert_eq!(code, 1, "{what}: {out}");
        let first = out.lines().next().unwrap_or_default();
        let at = format!("{}:2: {expected}", target.display());
        assert!(first.starts_with(&at), "{what}: expected {at:?}, got:\n{out}");
        assert!(out.lines().last().is_some_and(|l| l.starts_with("broken:")), "{what}: {out}");
    };
    // Another pid on one line: what a cover-up of who did it looks like.
    tamper("edit", &|l| l[1] = l[1].replacen("\"pid\":", "\"pid\":9", 1), "edited");
    tamper("delete", &|l| drop(l.remove(1)), "deleted: 1 record(s) missing");
    tamper("reorder", &|l| l.swap(1, 2), "reordered");
}

/// Runs pg-probe as `nobody` (no capabilities) inside the cgroup `rel`.
fn as_nobody(sb: &Sandbox, rel: &str, args: &[&str]) -> String {
    let probe = probe_bin();
    let mut argv = vec![
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--",
        probe.to_str().expect("utf8"),
    ];
    argv.extend_from_slice(args);
    sb.run_in(rel, Path::new("/usr/bin/setpriv"), &argv)
}

#[test]
fn an_unprivileged_workload_cannot_leave_its_guard_reach_the_maps_or_stop_the_agent() {
    require_root!();
    let mut sb = Sandbox::enforcing("trustbound", &["/app", "/other"], &policy(7000));
    // The probe is in the guard, as nobody.
    assert_eq!(as_nobody(&sb, "/app", &["bind", "udp", "127.0.0.1", "7000"]), "ok port=7000");
    assert_eq!(as_nobody(&sb, "/app", &["bind", "udp", "127.0.0.1", "7001"]), "err EPERM");

    // Moving out: to a sibling, to the guard's parent, to the cgroup2 root.
    let mount_root = portguard_tests::cgroup2_mount().join("cgroup.procs");
    for procs in [sb.procs("/other"), sb.root.join("cgroup.procs"), mount_root] {
        let procs = procs.to_str().expect("utf8").to_owned();
        assert_eq!(as_nobody(&sb, "/app", &["write", &procs, "0"]), "err EACCES", "{procs}");
    }

    // The pinned maps: not readable through bpffs, not openable with BPF_OBJ_GET.
    let maps = fs::read_dir(&sb.bpffs)
        .expect("bpffs")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("maps-v")))
        .expect("a maps directory");
    let map = fs::read_dir(&maps).expect("maps").flatten().next().expect("a pinned map").path();
    let map = map.to_str().expect("utf8");
    assert_eq!(as_nobody(&sb, "/app", &["read", map]), "err EACCES");
    let got = as_nobody(&sb, "/app", &["obj-get", map]);
    assert!(got == "err EACCES" || got == "err EPERM", "BPF_OBJ_GET as nobody: {got}");
    // (Root can: the probe itself works.)
    assert_eq!(sb.probe("/app", &["obj-get", map]), "ok");

    // The agent: no signal, no ptrace.
    let pid = sb.agent().pid().to_string();
    assert_eq!(as_nobody(&sb, "/app", &["kill", &pid, "0"]), "err EPERM");
    assert_eq!(as_nobody(&sb, "/app", &["kill", &pid, &libc::SIGKILL.to_string()]), "err EPERM");
    assert_eq!(as_nobody(&sb, "/app", &["ptrace", &pid]), "err EPERM");
    // Still enforcing.
    assert_eq!(as_nobody(&sb, "/app", &["bind", "udp", "127.0.0.1", "7001"]), "err EPERM");
    assert!(fs::metadata(format!("/proc/{pid}")).is_ok(), "the agent is gone");
}

/// The escape the README's threat model calls inherent: root inside a
/// guarded cgroup moves itself out, and its next socket is unguarded.
#[test]
fn root_inside_a_guarded_cgroup_can_leave_it_which_is_why_workloads_must_not_be_root() {
    require_root!();
    let sb = Sandbox::enforcing("trustroot", &["/app", "/other"], &policy(7000));
    assert_eq!(sb.probe("/app", &["bind", "udp", "127.0.0.1", "7001"]), "err EPERM");
    let script = format!(
        "echo $$ > {} && exec {} bind udp 127.0.0.1 7001",
        sb.procs("/other").display(),
        probe_bin().display()
    );
    assert_eq!(sb.run_in("/app", Path::new("/bin/sh"), &["-c", &script]), "ok port=7001");
}
