//! The systemd unit: valid for systemd, installed by `cargo xtask install`,
//! and its capability set is enough to enforce (and one less is not).

use std::{path::Path, process::Command};

use portguard_tests::{Sandbox, agent_bin, require_root, skip_test};

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/systemd/portguard.service");

fn unit_capabilities() -> Vec<String> {
    let unit = std::fs::read_to_string(UNIT).expect("unit");
    let line =
        unit.lines().find_map(|l| l.strip_prefix("AmbientCapabilities=")).expect("AmbientCapabilities");
    line.split_whitespace().map(|c| c.trim_start_matches("CAP_").to_lowercase()).collect()
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        skip_test!("systemd-analyze not installed");
    }
    // Point ExecStart at the binary under test: verify checks it exists.
    let dir = std::env::temp_dir().join(format!("pg-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let unit = std::fs::read_to_string(UNIT)
        .expect("unit")
        .replace("/usr/local/bin/portguard", &agent_bin().display().to_string());
    let path = dir.join("portguard.service");
    std::fs::write(&path, unit).expect("write unit");
    let out = Command::new("systemd-analyze").arg("verify").arg(&path).output().expect("systemd-analyze");
    let _ = std::fs::remove_dir_all(&dir);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "systemd-analyze verify: {text}");
    assert!(!text.contains("portguard.service:"), "warnings about the unit: {text}");
}

#[test]
fn xtask_install_puts_the_agent_unit_and_policy_in_place_and_keeps_a_live_policy() {
    // The xtask binary `cargo xtask test` itself runs from, next to the agent.
    let xtask = agent_bin().with_file_name("xtask");
    if !xtask.exists() {
        skip_test!("{} not built (run `cargo xtask test`)", xtask.display());
    }
    let root = std::env::temp_dir().join(format!("pg-install-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let install = || {
        let out = Command::new(&xtask)
            .args(["install", "--destdir"])
            .arg(&root)
            .arg("--binary")
            .arg(agent_bin())
            .output()
            .expect("run xtask install");
        assert!(out.status.success(), "xtask install: {}", String::from_utf8_lossy(&out.stderr));
    };
    install();
    let mode = |p: &str| {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}")).permissions().mode() & 0o777
    };
    assert_eq!(mode("usr/local/bin/portguard"), 0o755);
    assert_eq!(mode("etc/systemd/system/portguard.service"), 0o644);
    assert_eq!(mode("etc/portguard/policy.toml"), 0o644);
    assert_eq!(
        std::fs::read_to_string(root.join("etc/systemd/system/portguard.service")).unwrap(),
        std::fs::read_to_string(UNIT).unwrap(),
        "the unit installed is the one `systemd_analyze_verifies_the_unit` checks"
    );
    // The installed binary runs and accepts the installed policy.
    let policy = root.join("etc/portguard/policy.toml");
    let out = Command::new(root.join("usr/local/bin/portguard")).arg("check").arg(&policy).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Installing again (an upgrade) keeps the policy the host runs on.
    let live = "[[guard]]\nname = \"mine\"\ncgroup = \"/mine\"\n";
    std::fs::write(&policy, live).unwrap();
    install();
    assert_eq!(std::fs::read_to_string(&policy).unwrap(), live);
    std::fs::remove_dir_all(&root).unwrap();
}

fn run_with_caps(sb: &Sandbox, caps: &[String]) -> String {
    let list = caps.iter().map(|c| format!("+{c}")).collect::<Vec<_>>().join(",");
    let out = Command::new("setpriv")
        .arg(format!("--inh-caps=-all,{list}"))
        .arg(format!("--ambient-caps=-all,{list}"))
        .arg(format!("--bounding-set=-all,{list}"))
        .arg("--")
        .arg("timeout")
        .args(["-s", "TERM", "6"])
        .arg(agent_bin())
        .args(sb.agent_run_args())
        .args(["--metrics-addr", "127.0.0.1:0", "--unload-on-exit"])
        .output()
        .expect("setpriv");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_units_capabilities_are_enough_and_none_is_spare() {
    require_root!();
    let sb = Sandbox::new("caps");
    sb.cgroup("/app");
    sb.write_policy("[[guard]]\nname = \"app\"\ncgroup = \"/app\"\n");
    assert!(Path::new("/sys/fs/bpf").exists());
    let caps = unit_capabilities();
    let log = run_with_caps(&sb, &caps);
    assert!(log.contains("portguard is enforcing"), "with {caps:?}: {log}");
    for dropped in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != dropped).cloned().collect();
        let log = run_with_caps(&sb, &fewer);
        assert!(!log.contains("portguard is enforcing"), "{dropped} is not needed: {log}");
    }
}

const K8S: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/kubernetes");

#[test]
fn the_kubernetes_manifests_validate_against_the_schemas() {
    let files = ["namespace.yaml", "rbac.yaml", "configmap.yaml", "daemonset.yaml", "service.yaml"];
    let out = match Command::new("kubernetes-validate").arg("--strict").args(files).current_dir(K8S).output()
    {
        Ok(out) => out,
        Err(e) => skip_test!("kubernetes-validate not installed ({e}); `cargo xtask setup` installs it"),
    };
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert_eq!(text.matches("passed for resource").count(), 7, "{text}");
}

#[test]
fn the_configmap_policy_is_valid() {
    let cm = std::fs::read_to_string(Path::new(K8S).join("configmap.yaml")).expect("configmap");
    let start = cm.find("policy.toml: |").expect("policy key") + "policy.toml: |".len();
    let policy: String = cm[start..]
        .lines()
        .skip(1)
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .map(|l| format!("{l}\n"))
        .collect();
    let path = std::env::temp_dir().join(format!("pg-cm-{}.toml", std::process::id()));
    std::fs::write(&path, policy).expect("write");
    let out = Command::new(agent_bin()).arg("check").arg(&path).output().expect("check");
    let _ = std::fs::remove_file(&path);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_prometheus_rule_carries_the_shipped_alerts() {
    let alerts =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/prometheus/alerts.yml"))
            .expect("alerts.yml");
    let rule = std::fs::read_to_string(Path::new(K8S).join("monitoring.yaml")).expect("monitoring.yaml");
    let body = &alerts[alerts.find("groups:").expect("groups")..];
    for line in body.lines().filter(|l| !l.trim().is_empty()) {
        assert!(rule.contains(&format!("  {line}")), "PrometheusRule lacks: {line}");
    }
}
