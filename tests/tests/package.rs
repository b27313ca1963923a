//! The Debian package as a host gets it (root only; it installs into the
//! real system, serialised across checkouts by a lock file): lintian's
//! verdict, `dpkg -i` (the binary, the policy conffile, man pages, bash
//! completion, the unit), an upgrade that keeps an edited policy, and a
//! purge that leaves nothing behind.
//!
//! Not testable here, PID 1 being no systemd: that deb-systemd-invoke
//! try-restarts a running service on upgrade and stops it on remove (the
//! snippets run, and exit 0, but skip systemctl without /run/systemd/system).

use std::{
    collections::BTreeSet,
    fs,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Command,
};

use portguard_tests::{Sandbox, require_root, skip_test};

const LOCK: &str = "/run/lock/portguard-package-test.lock";

fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{program} {args:?}: {text}");
    text
}

/// Every path under the roots a package or its agent writes to whose name
/// says portguard, as a sorted list to compare before and after.
fn portguard_paths() -> BTreeSet<PathBuf> {
    fn walk(dir: &Path, out: &mut BTreeSet<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let path = e.path();
            if path.to_string_lossy().to_lowercase().contains("portguard") {
                out.insert(path.clone());
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&path, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    for root in ["/etc", "/usr", "/var/lib", "/run", "/sys/fs/bpf"] {
        walk(Path::new(root), &mut out);
    }
    out
}

fn installed_version() -> Option<String> {
    let out =
        Command::new("dpkg-query").args(["-W", "-f=${Status} ${Version}", "portguard"]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.strip_prefix("install ok installed ").map(str::to_owned)
}

#[test]
fn the_package_passes_lintian_installs_upgrades_and_purges_without_a_trace() {
    require_root!();
    let Some(deb) = std::env::var_os("PORTGUARD_DEB").map(PathBuf::from) else {
        skip_test!("PORTGUARD_DEB not set (`cargo xtask test` builds the package and sets it)");
    };
    for tool in ["lintian", "dpkg-deb", "cargo-deb"] {
        if Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .is_ok_and(|o| !o.status.success())
        {
            skip_test!("{tool} not installed (`cargo xtask setup` installs it)");
        }
    }
    let lock = fs::File::create(LOCK).expect("lock file");
    // SAFETY: flock on a file this test owns; released when it is dropped.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0, "flock {LOCK}");
    if let Some(v) = installed_version() {
        skip_test!("portguard {v} is installed on this host; the test would replace it");
    }
    let before = portguard_paths();

    // lintian: no error, and no warning that an override does not justify.
    let out =
        Command::new("lintian").args(["--info", "--display-level", ">=pedantic"]).arg(&deb).output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    eprintln!("lintian {}:\n{report}", deb.display());
    let bad: Vec<&str> = report.lines().filter(|l| l.starts_with("E: ") || l.starts_with("W: ")).collect();
    assert!(bad.is_empty(), "lintian errors or warnings:\n{}", bad.join("\n"));

    sh("dpkg", &["-i", &deb.display().to_string()]);
    let files = sh("dpkg", &["-L", "portguard"]);
    let v = sh("/usr/bin/portguard", &["--version"]);
    assert!(v.starts_with("portguard ") && v.contains("map ABI"), "{v}");
    sh("/usr/bin/portguard", &["check", "/etc/portguard/policy.toml"]);
    let conffiles = sh("dpkg-query", &["-W", "-f=${Conffiles}", "portguard"]);
    assert!(conffiles.contains("/etc/portguard/policy.toml"), "not a conffile: {conffiles}");
    for page in files.lines().filter(|l| l.starts_with("/usr/share/man/man1/")) {
        let out = Command::new("man").arg("-l").arg(page).env("MANWIDTH", "80").output().expect("man");
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "man -l {page}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for cmd in ["run", "check", "scan", "status", "unload"] {
        assert!(
            files.contains(&format!("/usr/share/man/man1/portguard-{cmd}.1.gz")),
            "no page for {cmd}: {files}"
        );
    }
    for f in [
        "/usr/share/zsh/vendor-completions/_portguard",
        "/usr/share/fish/vendor_completions.d/portguard.fish",
        "/usr/share/portguard/prometheus/alerts.yml",
        "/usr/share/portguard/grafana/portguard-dashboard.json",
    ] {
        assert!(files.lines().any(|l| l == f), "{f} not in the package: {files}");
    }
    // bash-completion's loader finds the script by the command's name.
    let complete = sh(
        "bash",
        &[
            "-c",
            "source /usr/share/bash-completion/bash_completion; _completion_loader portguard; complete -p portguard",
        ],
    );
    assert!(complete.contains("_portguard"), "{complete}");
    let unit = "/usr/lib/systemd/system/portguard.service";
    let text = fs::read_to_string(unit).expect("unit installed");
    assert!(text.contains("ExecStart=/usr/bin/portguard run"), "{text}");
    let verify = sh("systemd-analyze", &["verify", unit]);
    assert!(!verify.contains("portguard.service:"), "systemd-analyze verify: {verify}");
    assert!(
        !Path::new("/etc/systemd/system/multi-user.target.wants/portguard.service").exists(),
        "a first install must not enable the service"
    );

    // The agent writes its state and trail where the unit has them.
    let sb = Sandbox::new("package");
    sb.cgroup("/app");
    sb.write_policy("[[guard]]\nname = \"app\"\ncgroup = \"/app\"\n");
    let mut agent = Command::new("/usr/bin/portguard")
        .arg("run")
        .arg("--policy")
        .arg(sb.policy_path())
        .arg("--cgroup-root")
        .arg(&sb.root)
        .arg("--bpffs")
        .arg(&sb.bpffs)
        .args(["--metrics-addr", "127.0.0.1:0", "--unload-on-exit"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("installed agent");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !Path::new("/run/portguard/state.json").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the installed agent wrote no /run/portguard/state.json"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    agent.wait().expect("agent exit");
    drop(sb);
    assert!(Path::new("/var/lib/portguard/audit.jsonl").exists(), "no audit trail at the default path");

    // Upgrade to a newer build: the edited policy stays.
    let edited = fs::read_to_string("/etc/portguard/policy.toml").unwrap() + "\n# edited by the operator\n";
    fs::write("/etc/portguard/policy.toml", &edited).unwrap();
    let old = installed_version().expect("installed");
    let newer = format!("{old}+upgrade1");
    let dir = std::env::temp_dir().join(format!("pg-deb-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let workspace = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out = Command::new("cargo")
        .current_dir(workspace)
        .args(["deb", "--package", "portguard-agent", "--no-build", "--deb-version", &newer, "--output"])
        .arg(&dir)
        .output()
        .expect("cargo deb");
    assert!(out.status.success(), "cargo deb: {}", String::from_utf8_lossy(&out.stderr));
    let newer_deb = String::from_utf8_lossy(&out.stdout).lines().last().expect("deb path").to_owned();
    sh("dpkg", &["-i", &newer_deb]);
    assert_eq!(installed_version().as_deref(), Some(newer.as_str()));
    assert_eq!(
        fs::read_to_string("/etc/portguard/policy.toml").unwrap(),
        edited,
        "the upgrade replaced the policy"
    );

    sh("dpkg", &["--purge", "portguard"]);
    let _ = fs::remove_dir_all(&dir);
    assert_eq!(installed_version(), None);
    let after = portguard_paths();
    let left: Vec<_> = after.difference(&before).collect();
    assert!(left.is_empty(), "left behind after purge: {left:#?}");
    for f in files.lines().filter(|l| l.contains("portguard")) {
        assert!(!Path::new(f).exists() || before.contains(Path::new(f)), "{f} left behind");
    }
}
