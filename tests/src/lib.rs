//! Test harness: real agents, real cgroups, real sockets.
//!
//! Every test builds a [`Sandbox`]: its own cgroup subtree (the agent is
//! attached at its root, so tests cannot see each other's programs), its own
//! network namespace (probes and listeners run there, so parallel tests
//! never compete for a port and no traffic leaves the test), its own bpffs
//! pin directory and its own policy file. Dropping the sandbox stops the
//! agent, unloads what it pinned and removes the cgroups and the namespace.

use std::{
    ffi::CString,
    fs,
    io::{BufRead as _, BufReader},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod kube_api;

/// How the kubelet names pod cgroups (its `cgroupDriver` setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupDriver {
    Systemd,
    Cgroupfs,
}

/// True when the test may run; root-only tests call this first. Under
/// `CI=true` a missing privilege is a failure, not a skip.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: needs root, and CI=true forbids skipping");
    }
    eprintln!("skipping {test}: needs root (run `cargo xtask test` as root)");
    false
}

/// The agent binary under test: `PORTGUARD_BIN` (set by `cargo xtask test`),
/// else the workspace's debug build.
pub fn agent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PORTGUARD_BIN") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/portguard");
    assert!(p.exists(), "{} is missing: run the tests with `cargo xtask test`", p.display());
    p
}

/// pg-probe: `PG_PROBE_BIN` (the benchmarks use a release build), else the
/// one cargo built next to the test executables (`target/<profile>/`).
pub fn probe_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PG_PROBE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
    let p = profile_dir.join("pg-probe");
    assert!(p.exists(), "{} is missing: run the tests with `cargo xtask test`", p.display());
    p
}

pub fn cgroup2_mount() -> PathBuf {
    let mounts = fs::read_to_string("/proc/self/mounts").expect("read /proc/self/mounts");
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .expect("no cgroup2 mount")
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

pub struct Sandbox {
    /// The cgroup the agent attaches at; guard paths are relative to it.
    pub root: PathBuf,
    /// Name of the network namespace (`ip netns`) probes run in.
    pub netns: String,
    pub bpffs: PathBuf,
    pub dir: PathBuf,
    policy: Option<PathBuf>,
    agent: Option<Agent>,
}

impl Sandbox {
    pub fn new(test: &str) -> Sandbox {
        let id = format!("pgtest-{test}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
        let root = cgroup2_mount().join(&id);
        fs::create_dir(&root).unwrap_or_else(|e| panic!("mkdir {}: {e}", root.display()));
        let dir = std::env::temp_dir().join(&id);
        fs::create_dir_all(&dir).expect("temp dir");
        let netns = id.clone();
        ip(&["netns", "add", &netns]);
        ip(&["-n", &netns, "link", "set", "lo", "up"]);
        Sandbox { root, netns, bpffs: PathBuf::from("/sys/fs/bpf").join(&id), dir, policy: None, agent: None }
    }

    /// A sandbox with `cgroups` created and an agent enforcing `policy`.
    pub fn enforcing(test: &str, cgroups: &[&str], policy: &str) -> Sandbox {
        let mut sb = Sandbox::new(test);
        for c in cgroups {
            sb.cgroup(c);
        }
        sb.start_agent(policy);
        sb
    }

    fn netns_fd(&self) -> Arc<fs::File> {
        let path = Path::new("/var/run/netns").join(&self.netns);
        Arc::new(fs::File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display())))
    }

    /// A TCP listener on `addr` (port chosen by the kernel) inside the
    /// sandbox's network namespace, owned by this unguarded test process.
    pub fn tcp_listener(&self, addr: &str) -> (std::net::TcpListener, u16) {
        let ns = self.netns_fd();
        let addr = addr.to_owned();
        // The network namespace is per thread: switch a helper thread, and
        // the socket it creates stays in that namespace.
        std::thread::spawn(move || {
            // SAFETY: setns on a namespace fd, for this thread only.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                panic!("setns: {}", std::io::Error::last_os_error());
            }
            let l = std::net::TcpListener::bind((addr.as_str(), 0)).expect("listen");
            let port = l.local_addr().expect("addr").port();
            (l, port)
        })
        .join()
        .expect("listener thread")
    }

    /// Creates (if needed) the cgroup at `rel` ("/app/worker") and returns its path.
    pub fn cgroup(&self, rel: &str) -> PathBuf {
        let p = self.root.join(rel.trim_start_matches('/'));
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        p
    }

    /// Lays out `pod`'s cgroups under this sandbox's root as the kubelet
    /// (pod level, by QoS class) and containerd (one child per container)
    /// do, and returns the first container's cgroup, relative to the root.
    pub fn kubelet_pod(&self, driver: CgroupDriver, pod: &Value) -> String {
        let uid = pod["metadata"]["uid"].as_str().expect("pod uid");
        let qos = pod["status"]["qosClass"].as_str().expect("qosClass");
        let container = pod["status"]["containerStatuses"][0]["containerID"]
            .as_str()
            .and_then(|c| c.strip_prefix("containerd://"))
            .expect("containerd container id");
        let pod_cgroup = match (driver, qos) {
            (CgroupDriver::Systemd, "Guaranteed") => {
                format!("/kubepods.slice/kubepods-pod{}.slice", uid.replace('-', "_"))
            }
            (CgroupDriver::Systemd, q) => {
                let q = q.to_lowercase();
                format!("/kubepods.slice/kubepods-{q}.slice/kubepods-{q}-pod{}.slice", uid.replace('-', "_"))
            }
            (CgroupDriver::Cgroupfs, "Guaranteed") => format!("/kubepods/pod{uid}"),
            (CgroupDriver::Cgroupfs, q) => format!("/kubepods/{}/pod{uid}", q.to_lowercase()),
        };
        let container_cgroup = match driver {
            CgroupDriver::Systemd => format!("{pod_cgroup}/cri-containerd-{container}.scope"),
            CgroupDriver::Cgroupfs => format!("{pod_cgroup}/{container}"),
        };
        self.cgroup(&container_cgroup);
        container_cgroup
    }

    pub fn procs(&self, rel: &str) -> PathBuf {
        self.cgroup(rel).join("cgroup.procs")
    }

    /// Runs pg-probe inside the cgroup `rel` and returns its one-line verdict.
    pub fn probe(&self, rel: &str, args: &[&str]) -> String {
        let out = self.spawn_probe(rel, args).wait_with_output().expect("wait for pg-probe");
        assert!(out.status.success(), "pg-probe {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Starts pg-probe inside the cgroup `rel`, stdout piped.
    pub fn spawn_probe(&self, rel: &str, args: &[&str]) -> Child {
        self.spawn_in(rel, &probe_bin(), args)
    }

    /// Runs `program` inside the cgroup `rel` and the sandbox's network
    /// namespace; returns its trimmed stdout.
    pub fn run_in(&self, rel: &str, program: &Path, args: &[&str]) -> String {
        let out = self.spawn_in(rel, program, args).wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{} {args:?} failed: {}",
            program.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Starts `program` inside the cgroup `rel`, stdout piped.
    pub fn spawn_in(&self, rel: &str, program: &Path, args: &[&str]) -> Child {
        let procs = CString::new(self.procs(rel).into_os_string().into_encoded_bytes()).expect("path");
        let netns = self.netns_fd();
        let mut cmd = Command::new(program);
        cmd.args(args);
        // SAFETY: only async-signal-safe calls (setns/open/write/close)
        // between fork and exec; everything was allocated before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let rc = libc::write(fd, b"0\n".as_ptr().cast(), 2);
                libc::close(fd);
                if rc < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("run pg-probe {args:?}: {e}"))
    }

    /// The agent's pid file and state.json.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// Runs a `portguard` subcommand (status, reload, ...) against this
    /// sandbox; returns (exit code, stdout, stderr).
    pub fn portguard(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(agent_bin()).args(args).output().expect("run portguard");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Where the agent started by this sandbox writes its audit trail.
    pub fn audit_trail(&self) -> PathBuf {
        self.dir.join("audit.jsonl")
    }

    /// The audit trail's records so far, as JSON values.
    pub fn audit_records(&self) -> Vec<Value> {
        fs::read_to_string(self.audit_trail())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit trail lines are JSON"))
            .collect()
    }

    /// Waits (up to 10 s) for an audit-trail record matching `pred`.
    pub fn wait_for_audit_record(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(r) = self.audit_records().into_iter().find(|r| pred(r)) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "no audit-trail record for {what}; trail: {:#?}",
                self.audit_records()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn policy_path(&self) -> PathBuf {
        self.policy.clone().unwrap_or_else(|| self.dir.join("policy.toml"))
    }

    /// Points the agent at another policy path (e.g. a ConfigMap layout).
    pub fn set_policy_path(&mut self, path: PathBuf) {
        self.policy = Some(path);
    }

    /// Replaces the policy file in place (truncate and write).
    pub fn write_policy(&self, text: &str) {
        fs::write(self.policy_path(), text).expect("write policy");
    }

    /// Replaces the policy file the way editors do: write a temporary file
    /// beside it, then rename it over the original.
    pub fn rename_policy_over(&self, text: &str) {
        let path = self.policy_path();
        let tmp = path.with_extension(format!("tmp{}", NEXT.fetch_add(1, Ordering::SeqCst)));
        fs::write(&tmp, text).expect("write temp policy");
        fs::rename(&tmp, &path).expect("rename policy over");
    }

    /// Starts the agent on `policy` and waits until it enforces.
    pub fn start_agent(&mut self, policy: &str) -> &mut Agent {
        self.write_policy(policy);
        self.start_agent_with(&[])
    }

    /// Starts the agent on the policy file as it is, with extra flags.
    pub fn start_agent_with(&mut self, extra: &[&str]) -> &mut Agent {
        let agent = Agent::spawn(self, extra);
        agent.wait_for("agent to enforce", |l| l["message"] == "portguard is enforcing");
        self.agent = Some(agent);
        self.agent.as_mut().expect("just set")
    }

    pub fn agent(&mut self) -> &mut Agent {
        self.agent.as_mut().expect("no agent started")
    }

    /// Stops the running agent (SIGTERM) without unloading.
    pub fn stop_agent(&mut self) {
        if let Some(mut a) = self.agent.take() {
            a.terminate();
        }
    }

    /// Runs the agent to completion, expecting it to fail; returns its exit
    /// code and everything it printed.
    pub fn run_agent_expecting_failure(&self, policy: &str) -> (i32, String) {
        self.write_policy(policy);
        let out = self
            .agent_command(&["--log-format", "text", "--metrics-addr", "127.0.0.1:0"])
            .output()
            .expect("run agent");
        assert!(!out.status.success(), "agent unexpectedly succeeded");
        let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
        (out.status.code().unwrap_or(-1), text)
    }

    fn agent_command(&self, extra: &[&str]) -> Command {
        let mut cmd = Command::new(agent_bin());
        cmd.args(self.agent_run_args()).args(extra).env("RUST_LOG", "debug");
        cmd
    }

    /// `run` and the flags that point an agent at this sandbox, for tests
    /// that start it under a wrapper (setpriv, unshare).
    pub fn agent_run_args(&self) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> =
            vec!["run".into(), "--policy".into(), self.policy_path().into()];
        for (flag, value) in [
            ("--cgroup-root", &self.root),
            ("--bpffs", &self.bpffs),
            ("--state-dir", &self.state_dir()),
            ("--audit-trail", &self.audit_trail()),
        ] {
            args.push(flag.into());
            args.push(value.into());
        }
        args
    }

    /// Detaches and removes everything the agent pinned.
    pub fn unload(&self) {
        let out =
            Command::new(agent_bin()).arg("unload").arg("--bpffs").arg(&self.bpffs).output().expect("unload");
        assert!(out.status.success(), "unload failed: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop_agent();
        if self.bpffs.exists() {
            let _ = Command::new(agent_bin()).arg("unload").arg("--bpffs").arg(&self.bpffs).output();
        }
        remove_cgroup_tree(&self.root);
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).output();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("ip {args:?}: {e} (install iproute2)"));
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Kills whatever is left in the tree and removes it, deepest first.
pub fn remove_cgroup_tree(path: &Path) {
    let _ = fs::write(path.join("cgroup.kill"), "1");
    if let Ok(entries) = fs::read_dir(path) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    for _ in 0..50 {
        match fs::remove_dir(path) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// A running agent whose JSON log lines are collected as they arrive.
pub struct Agent {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl Agent {
    fn spawn(sandbox: &Sandbox, extra: &[&str]) -> Agent {
        let mut args = vec!["--log-format", "json"];
        // Parallel tests each get a free metrics port; the agent logs it.
        if !extra.contains(&"--metrics-addr") {
            args.extend(["--metrics-addr", "127.0.0.1:0"]);
        }
        let mut cmd = sandbox.agent_command(&[&args[..], extra].concat());
        let mut child = cmd.stderr(Stdio::piped()).stdout(Stdio::null()).spawn().expect("spawn agent");
        let stderr = child.stderr.take().expect("stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let v = serde_json::from_str(&line).unwrap_or(Value::String(line));
                sink.lock().expect("log lock").push(v);
            }
        });
        Agent { child, lines }
    }

    pub fn logs(&self) -> Vec<Value> {
        self.lines.lock().expect("log lock").clone()
    }

    /// Waits up to 20 s for a log line matching `pred`; panics with the
    /// whole log otherwise (or when the agent dies first).
    pub fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_for_after(0, what, pred)
    }

    /// How many lines have been logged so far, for [`Agent::wait_for_after`].
    pub fn mark(&self) -> usize {
        self.lines.lock().expect("log lock").len()
    }

    /// Like [`Agent::wait_for`], ignoring the first `mark` lines.
    pub fn wait_for_after(&self, mark: usize, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(v) = self.logs().into_iter().skip(mark).find(|l| pred(l)) {
                return v;
            }
            let dead = std::fs::metadata(format!("/proc/{}", self.child.id())).is_err()
                || std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
                    .is_ok_and(|s| s.split_whitespace().nth(2) == Some("Z"));
            if dead || Instant::now() > deadline {
                let log: Vec<String> = self.logs().iter().map(Value::to_string).collect();
                panic!("timed out waiting for {what} (agent dead: {dead}); log:\n{}", log.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Where this agent serves /metrics (read from its start-up log).
    pub fn metrics_addr(&self) -> String {
        let line =
            self.wait_for("metrics address", |l| l["message"] == "serving /metrics, /healthz and /readyz");
        line["addr"].as_str().expect("addr field").to_owned()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Denial events logged so far.
    pub fn denials(&self) -> Vec<Value> {
        self.logs().into_iter().filter(|l| l["event"] == "denial").collect()
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    pub fn terminate(&mut self) {
        self.signal(libc::SIGTERM);
        let _ = self.child.wait();
    }

    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.terminate();
        }
    }
}

/// Verdict counts printed by `pg-probe hammer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hammer {
    pub allowed_ok: u64,
    pub allowed_refused: u64,
    pub denied_ok: u64,
    pub denied_refused: u64,
}

impl Hammer {
    pub fn parse(line: &str) -> Hammer {
        let field = |name: &str| -> u64 {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {line:?}"))
        };
        Hammer {
            allowed_ok: field("allowed_ok"),
            allowed_refused: field("allowed_refused"),
            denied_ok: field("denied_ok"),
            denied_refused: field("denied_refused"),
        }
    }

    pub fn wait(child: Child) -> Hammer {
        let out = child.wait_with_output().expect("wait for hammer");
        let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            out.status.success() && line.starts_with("allowed_ok"),
            "hammer failed: {line} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Hammer::parse(&line)
    }
}

/// GET `url` and return the body (panics on failure, with the URL).
pub fn http_get(url: &str) -> String {
    ureq::get(url)
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .into_string()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// The value of the sample `name{labels}` in Prometheus text, summed over
/// every series whose labels include all of `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
            (metric == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .map(|v| v as u64)
        .sum()
}

/// A real Prometheus server (Debian's `prometheus`) on loopback, scraping
/// one target every second.
pub struct Prometheus {
    child: Child,
    pub url: String,
}

impl Prometheus {
    pub fn start(dir: &Path, target: &str) -> Prometheus {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            l.local_addr().expect("addr").port()
        };
        let config = dir.join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: portguard\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("write prometheus.yml");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("prometheus-data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus (installed by `cargo xtask setup`)");
        let p = Prometheus { child, url: format!("http://127.0.0.1:{port}") };
        let deadline = Instant::now() + Duration::from_secs(30);
        while ureq::get(&format!("{}/-/ready", p.url)).call().is_err() {
            assert!(Instant::now() < deadline, "prometheus did not become ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    /// Evaluates an instant PromQL query; returns the first sample's value.
    pub fn query(&self, promql: &str) -> Option<f64> {
        let body: Value = ureq::get(&format!("{}/api/v1/query", self.url))
            .query("query", promql)
            .call()
            .ok()?
            .into_json()
            .ok()?;
        body["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
