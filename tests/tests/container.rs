//! The container image, built from deploy/kubernetes/Dockerfile with podman
//! (no registry), run exactly as deploy/kubernetes/daemonset.yaml runs it:
//! its capabilities, security context, seccomp profile and mounts are read
//! from the manifest and turned into podman flags, so the manifest cannot
//! drift from what is tested. Under the shipped seccomp profile the agent
//! enforces on a cgroup of the host, reloads a ConfigMap-style policy, serves
//! /readyz and /metrics, and its guard outlives the killed container; under
//! the runtime's default profile it fails in one line that names seccomp.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use portguard_tests::{Sandbox, cgroup2_mount, http_get, require_root, skip_test};
use serde_json::Value;

const K8S: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/kubernetes");

/// The DaemonSet's container as the runtime sees it.
#[derive(Debug, PartialEq)]
struct Security {
    host_network: bool,
    privileged: bool,
    allow_privilege_escalation: bool,
    read_only_root: bool,
    run_as_user: i64,
    caps_drop: Vec<String>,
    caps_add: Vec<String>,
    /// `localhostProfile` of a `Localhost` seccomp profile.
    seccomp_localhost: String,
    mounts: Vec<Mount>,
}

#[derive(Debug, PartialEq)]
struct Mount {
    path: String,
    read_only: bool,
    /// `HostToContainer`, or None.
    propagation: Option<String>,
    /// The hostPath, or None for the ConfigMap.
    host_path: Option<String>,
}

fn manifest() -> Security {
    let text = std::fs::read_to_string(Path::new(K8S).join("daemonset.yaml")).expect("daemonset.yaml");
    let ds: Value = serde_saphyr::from_str(&text).expect("daemonset.yaml is YAML");
    let pod = &ds["spec"]["template"]["spec"];
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "one container");
    let c = &containers[0];
    let sc = &c["securityContext"];
    let strings = |v: &Value| -> Vec<String> {
        v.as_array().expect("a list").iter().map(|s| s.as_str().expect("a string").to_owned()).collect()
    };
    let volumes = pod["volumes"].as_array().expect("volumes");
    let mounts = c["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .map(|m| {
            let name = m["name"].as_str().expect("name");
            let v = volumes.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("no volume {name}"));
            let host_path = if v["configMap"].is_object() {
                None
            } else {
                Some(
                    v["hostPath"]["path"]
                        .as_str()
                        .unwrap_or_else(|| panic!("volume {name}: not a hostPath"))
                        .to_owned(),
                )
            };
            Mount {
                path: m["mountPath"].as_str().expect("mountPath").to_owned(),
                read_only: m["readOnly"].as_bool().unwrap_or(false),
                propagation: m["mountPropagation"].as_str().map(str::to_owned),
                host_path,
            }
        })
        .collect();
    assert_eq!(sc["seccompProfile"]["type"], "Localhost", "seccompProfile");
    Security {
        host_network: pod["hostNetwork"].as_bool().unwrap_or(false),
        privileged: sc["privileged"].as_bool().unwrap_or(false),
        allow_privilege_escalation: sc["allowPrivilegeEscalation"].as_bool().unwrap_or(true),
        read_only_root: sc["readOnlyRootFilesystem"].as_bool().unwrap_or(false),
        run_as_user: sc["runAsUser"].as_i64().expect("runAsUser"),
        caps_drop: strings(&sc["capabilities"]["drop"]),
        caps_add: strings(&sc["capabilities"]["add"]),
        seccomp_localhost: sc["seccompProfile"]["localhostProfile"]
            .as_str()
            .expect("localhostProfile")
            .to_owned(),
        mounts,
    }
}

/// What the container below runs with; a change to the manifest must be
/// made here too, on purpose.
#[test]
fn the_daemonset_security_context_and_mounts_are_the_tested_ones() {
    let m = |path: &str, read_only, propagation: Option<&str>, host: Option<&str>| Mount {
        path: path.into(),
        read_only,
        propagation: propagation.map(Into::into),
        host_path: host.map(Into::into),
    };
    assert_eq!(
        manifest(),
        Security {
            host_network: true,
            privileged: false,
            allow_privilege_escalation: false,
            read_only_root: true,
            run_as_user: 0,
            caps_drop: vec!["ALL".into()],
            caps_add: vec!["BPF".into(), "PERFMON".into(), "NET_ADMIN".into()],
            seccomp_localhost: "portguard/portguard.json".into(),
            mounts: vec![
                m("/etc/portguard", true, None, None),
                m("/sys/fs/cgroup", true, None, Some("/sys/fs/cgroup")),
                m("/sys/fs/bpf", false, Some("HostToContainer"), Some("/sys/fs/bpf")),
                m("/run/portguard", false, None, Some("/run/portguard")),
                m("/var/lib/portguard", false, None, Some("/var/lib/portguard")),
            ],
        }
    );
    let profile =
        Path::new(K8S).join("seccomp").join(Path::new(&manifest().seccomp_localhost).file_name().unwrap());
    assert!(profile.is_file(), "{} is not shipped", profile.display());
}

/// The seccomp profile is the runtime default (podman's, from Debian,
/// resolved for the DaemonSet's capabilities) plus `bpf` and nothing else.
#[test]
fn the_seccomp_profile_is_the_runtime_default_plus_bpf() {
    let Ok(default) = std::fs::read_to_string("/usr/share/containers/seccomp.json") else {
        skip_test!("podman's default seccomp profile is not installed (`cargo xtask setup` installs podman)");
    };
    let default: Value = serde_json::from_str(&default).unwrap();
    let ours: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(K8S).join("seccomp/portguard.json")).unwrap(),
    )
    .unwrap();
    let caps = manifest().caps_add.iter().map(|c| format!("CAP_{c}")).collect::<Vec<_>>();
    // The shipped profile serves every architecture it lists, so the
    // default's rules for those architectures count as the default's.
    let arches: Vec<String> = ours["architectures"]
        .as_array()
        .expect("architectures")
        .iter()
        .map(|a| match a.as_str().expect("a string") {
            "SCMP_ARCH_X86_64" => "amd64".to_owned(),
            "SCMP_ARCH_X86" => "x86".to_owned(),
            "SCMP_ARCH_X32" => "x32".to_owned(),
            "SCMP_ARCH_AARCH64" => "arm64".to_owned(),
            "SCMP_ARCH_ARM" => "arm".to_owned(),
            other => panic!("architecture {other}: add it here"),
        })
        .collect();
    let allowed_by_default = allowed(&default, &caps, &arches);
    let ours: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(K8S).join("seccomp/portguard.json")).unwrap(),
    )
    .unwrap();
    let allowed_by_ours = allowed(&ours, &caps, &arches);
    let added: Vec<_> = allowed_by_ours.difference(&allowed_by_default).collect();
    let removed: Vec<_> = allowed_by_default.difference(&allowed_by_ours).collect();
    assert_eq!(added, ["bpf"], "added to the default");
    assert!(removed.is_empty(), "taken from the default: {removed:?}");
    assert_eq!(ours["defaultAction"], default["defaultAction"]);
}

/// Syscalls a profile allows unconditionally (any arguments) for a
/// process holding `caps` on any of `arches`.
fn allowed(profile: &Value, caps: &[String], arches: &[String]) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for rule in profile["syscalls"].as_array().expect("syscalls") {
        let list = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
                .unwrap_or_default()
        };
        let (inc_caps, exc_caps) = (list(&rule["includes"]["caps"]), list(&rule["excludes"]["caps"]));
        let rule_arches = list(&rule["includes"]["arches"]);
        let applies = inc_caps.iter().all(|c| caps.contains(c))
            && !exc_caps.iter().any(|c| caps.contains(c))
            && (rule_arches.is_empty() || rule_arches.iter().any(|a| arches.contains(a)));
        let unconditional = rule["args"].as_array().is_none_or(Vec::is_empty);
        if applies && unconditional && rule["action"] == "SCMP_ACT_ALLOW" {
            out.extend(list(&rule["names"]));
        }
    }
    out
}

/// A podman image built from the shipped Dockerfile, removed on drop.
struct Image(String);

impl Image {
    fn build(context: &Path) -> Image {
        let tag = format!("localhost/portguard-test:{}", std::process::id());
        let out = Command::new("podman")
            .args(["build", "--quiet", "--file"])
            .arg(Path::new(K8S).join("Dockerfile"))
            .args(["--build-arg", "ROOTFS=prebuilt", "--tag", &tag])
            .arg(context)
            .output()
            .expect("podman build");
        assert!(out.status.success(), "podman build: {}", String::from_utf8_lossy(&out.stderr));
        Image(tag)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rmi", "--force", &self.0]).output();
    }
}

/// A ConfigMap volume as the kubelet writes it: the data in a timestamped
/// directory, `..data` pointing at it, and `policy.toml -> ..data/policy.toml`.
struct ConfigMapDir(PathBuf, u32);

impl ConfigMapDir {
    fn new(dir: PathBuf, policy: &str) -> ConfigMapDir {
        std::fs::create_dir_all(&dir).unwrap();
        let mut cm = ConfigMapDir(dir, 0);
        cm.update(policy);
        std::os::unix::fs::symlink("..data/policy.toml", cm.0.join("policy.toml")).unwrap();
        cm
    }

    /// A new timestamped directory, and `..data` swapped to it by rename.
    fn update(&mut self, policy: &str) {
        self.1 += 1;
        let data = format!("..2026_12_03_00_00_00.{}", self.1);
        std::fs::create_dir(self.0.join(&data)).unwrap();
        std::fs::write(self.0.join(&data).join("policy.toml"), policy).unwrap();
        let tmp = self.0.join("..data_tmp");
        std::os::unix::fs::symlink(&data, &tmp).unwrap();
        std::fs::rename(&tmp, self.0.join("..data")).unwrap();
    }
}

/// `podman run` flags for the manifest's security context and mounts, with
/// the hostPaths the test owns in place of the node's.
fn podman_run(
    sec: &Security,
    name: &str,
    seccomp: Option<&Path>,
    host_dir: &dyn Fn(&str) -> PathBuf,
) -> Command {
    let mut cmd = Command::new("podman");
    // runc: crun refuses this machine's hybrid cgroup layout; explicit
    // ulimits: without them the runtime's setrlimit fails here.
    cmd.args(["--runtime", "runc", "run", "--name", name, "--ulimit", "nofile=1024:1024"])
        .args(["--ulimit", "nproc=1024:1024"]);
    for c in &sec.caps_drop {
        cmd.arg(format!("--cap-drop={c}"));
    }
    for c in &sec.caps_add {
        cmd.arg(format!("--cap-add={c}"));
    }
    assert!(!sec.privileged, "the test runs what the manifest runs: not privileged");
    if !sec.allow_privilege_escalation {
        cmd.args(["--security-opt", "no-new-privileges"]);
    }
    if sec.read_only_root {
        cmd.arg("--read-only");
    }
    if sec.host_network {
        cmd.arg("--network=host");
    }
    cmd.arg(format!("--user={}", sec.run_as_user));
    if let Some(profile) = seccomp {
        cmd.arg("--security-opt").arg(format!("seccomp={}", profile.display()));
    }
    for m in &sec.mounts {
        let source = host_dir(&m.path);
        let mut opts = vec![if m.read_only { "ro" } else { "rw" }];
        match m.propagation.as_deref() {
            None => {}
            Some("HostToContainer") => opts.push("rslave"),
            Some(other) => panic!("mountPropagation {other} has no podman equivalent here"),
        }
        cmd.arg("--volume").arg(format!("{}:{}:{}", source.display(), m.path, opts.join(",")));
    }
    cmd
}

/// A running container whose log lines (the agent's JSON) are collected.
struct Container {
    name: String,
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl Container {
    fn start(mut cmd: Command, name: &str) -> Container {
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("podman run");
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(serde_json::from_str(&line).unwrap_or(Value::String(line)));
            }
        });
        Container { name: name.to_owned(), child, lines }
    }

    fn wait_for(&mut self, mark: usize, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(v) = self.lines.lock().unwrap().iter().skip(mark).find(|l| pred(l)) {
                return v.clone();
            }
            let exited = self.child.try_wait().unwrap().is_some();
            if exited || Instant::now() > deadline {
                let log: Vec<String> = self.lines.lock().unwrap().iter().map(Value::to_string).collect();
                panic!("no {what} (container exited: {exited}); log:\n{}", log.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn mark(&self) -> usize {
        self.lines.lock().unwrap().len()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rm", "--force", &self.name]).output();
        let _ = self.child.wait();
    }
}

fn policy(ports: &[u16]) -> String {
    let ports = ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", ");
    format!("[[guard]]\nname = \"app\"\ncgroup = \"/app\"\n\n[[guard.bind]]\nports = [{ports}]\n")
}

#[test]
fn the_image_enforces_as_the_daemonset_runs_it_and_fails_clearly_under_the_runtime_default_seccomp() {
    require_root!();
    let Some(context) = std::env::var_os("PORTGUARD_CONTAINER_CONTEXT").map(PathBuf::from) else {
        skip_test!("PORTGUARD_CONTAINER_CONTEXT not set (`cargo xtask test` assembles the image's rootfs)");
    };
    if Command::new("podman").arg("--version").output().is_err() {
        skip_test!("podman not installed (`cargo xtask setup` installs it)");
    }
    let image = Image::build(&context);
    let sec = manifest();
    let sb = Sandbox::new("container");
    sb.cgroup("/app");
    let mut configmap = ConfigMapDir::new(sb.dir.join("configmap"), &policy(&[8080]));
    let cgroup_root = Path::new("/sys/fs/cgroup").join(sb.root.strip_prefix(cgroup2_mount()).unwrap());
    let bpffs = Path::new("/sys/fs/bpf").join(sb.bpffs.file_name().unwrap());
    let host_dir = |path: &str| -> PathBuf {
        match path {
            "/etc/portguard" => configmap.0.clone(),
            // The host's cgroup2 mount wherever it is (hybrid here).
            "/sys/fs/cgroup" => cgroup2_mount(),
            "/sys/fs/bpf" => "/sys/fs/bpf".into(),
            // The node's state paths, private to this test run.
            other => {
                let dir = sb.dir.join(other.trim_start_matches('/').replace('/', "-"));
                std::fs::create_dir_all(&dir).unwrap();
                dir
            }
        }
    };
    let agent_args = |cmd: &mut Command| {
        cmd.arg(&image.0)
            .args([
                "run",
                "--policy=/etc/portguard/policy.toml",
                "--log-format=json",
                "--metrics-addr=127.0.0.1:0",
            ])
            .arg(format!("--cgroup-root={}", cgroup_root.display()))
            .arg(format!("--bpffs={}", bpffs.display()));
    };
    let name = |what: &str| format!("pgtest-{what}-{}", std::process::id());

    // Under the runtime's default seccomp profile: one line naming seccomp.
    let mut cmd = podman_run(&sec, &name("default"), None, &host_dir);
    agent_args(&mut cmd);
    let out = cmd.output().expect("podman run");
    let _ = Command::new("podman").args(["rm", "--force", &name("default")]).output();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the agent ran under the default seccomp profile: {log}");
    let error =
        log.lines().find(|l| l.contains("\"level\":\"ERROR\"")).unwrap_or_else(|| panic!("no error: {log}"));
    assert!(error.contains("seccomp") && error.contains("bpf()"), "{error}");
    assert!(!Path::new(&sb.bpffs).join("links").exists(), "it attached something: {log}");

    // Under the shipped profile: it enforces on the host's cgroup.
    let profile = Path::new(K8S).join("seccomp/portguard.json");
    let mut cmd = podman_run(&sec, &name("shipped"), Some(&profile), &host_dir);
    agent_args(&mut cmd);
    let mut c = Container::start(cmd, &name("shipped"));
    c.wait_for(0, "enforcing", |l| l["message"] == "portguard is enforcing");
    assert_eq!(sb.probe("/app", &["bind", "tcp", "127.0.0.1", "8080"]), "ok port=8080");
    assert_eq!(sb.probe("/app", &["bind", "tcp", "127.0.0.1", "8081"]), "err EPERM");
    let addr = c.wait_for(0, "metrics address", |l| l["message"] == "serving /metrics, /healthz and /readyz")
        ["addr"]
        .as_str()
        .unwrap()
        .to_owned();
    http_get(&format!("http://{addr}/readyz"));
    let metrics = http_get(&format!("http://{addr}/metrics"));
    assert!(metrics.contains("portguard_denials_total"), "{metrics}");

    // A ConfigMap edit (a ..data swap) reaches the agent.
    let mark = c.mark();
    configmap.update(&policy(&[8080, 8081]));
    c.wait_for(mark, "reload", |l| l["message"] == "policy reloaded");
    assert_eq!(sb.probe("/app", &["bind", "tcp", "127.0.0.1", "8081"]), "ok port=8081");

    // Killing the container leaves the guard in force.
    let out = Command::new("podman").args(["kill", "--signal", "KILL", &c.name]).output().unwrap();
    assert!(out.status.success(), "podman kill: {}", String::from_utf8_lossy(&out.stderr));
    let _ = c.child.wait();
    assert_eq!(
        sb.probe("/app", &["bind", "tcp", "127.0.0.1", "8082"]),
        "err EPERM",
        "the guard went with the container"
    );
    assert_eq!(sb.probe("/app", &["bind", "tcp", "127.0.0.1", "8081"]), "ok port=8081");
    drop(c);
    drop(image);
}
