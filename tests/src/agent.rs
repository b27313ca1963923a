//! The `portguard` binary under test: the agent started and stopped in a
//! [`Sandbox`], its JSON log lines and audit trail, and its subcommands.

use std::{
    ffi::OsString,
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{metrics::http_get, sandbox::Sandbox};

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

/// Runs a `portguard` subcommand (check, diff, status, ...); returns (exit
/// code, stdout, stderr).
pub fn portguard(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(agent_bin()).args(args).output().expect("run portguard");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

impl Sandbox {
    /// The agent's pid file and state.json.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// Runs a `portguard` subcommand (status, reload, ...) against this
    /// sandbox; returns (exit code, stdout, stderr).
    pub fn portguard(&self, args: &[&str]) -> (i32, String, String) {
        portguard(args)
    }

    /// `portguard status --format json` on this sandbox's pins and state,
    /// which must succeed.
    pub fn status(&self) -> Value {
        let (bpffs, state) = (self.bpffs.display().to_string(), self.state_dir().display().to_string());
        let (code, out, err) =
            self.portguard(&["status", "--format", "json", "--bpffs", &bpffs, "--state-dir", &state]);
        assert_eq!(code, 0, "{out}{err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status is not JSON ({e}): {out}"))
    }

    /// `portguard scan` with this sandbox's policy and cgroup root, and
    /// `extra` flags.
    pub fn scan(&self, extra: &[&str]) -> (i32, String, String) {
        let policy = self.policy_path();
        let root = self.root.display().to_string();
        let mut args = vec!["scan", "--policy", policy.to_str().unwrap(), "--cgroup-root", &root];
        args.extend_from_slice(extra);
        self.portguard(&args)
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

    /// Renames `text` over the policy file and waits until the running
    /// agent has reloaded it; returns that log line.
    pub fn reload_policy(&mut self, text: &str) -> Value {
        let mark = self.agent().mark();
        self.rename_policy_over(text);
        self.agent().wait_for_after(mark, "reload", |l| l["message"] == "policy reloaded")
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
    pub fn agent_run_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["run".into(), "--policy".into(), self.policy_path().into()];
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
        let out = self.unload_output().expect("unload");
        assert!(out.status.success(), "unload failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub(crate) fn unload_output(&self) -> std::io::Result<Output> {
        Command::new(agent_bin()).arg("unload").arg("--bpffs").arg(&self.bpffs).output()
    }
}

/// A running agent whose JSON log lines are collected as they arrive.
pub struct Agent {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
    /// Where it serves /metrics, once read from its log.
    metrics_addr: std::sync::OnceLock<String>,
}

impl Agent {
    fn spawn(sandbox: &Sandbox, extra: &[&str]) -> Agent {
        let mut args = vec!["--log-format", "json"];
        // Parallel tests each get a free metrics port; the agent logs it.
        if !extra.contains(&"--metrics-addr") {
            args.extend(["--metrics-addr", "127.0.0.1:0"]);
        }
        // The agent leaves its own probes' refusals out of what it exports,
        // but their allowed binds and connects still count (allowed
        // decisions, brief ports) in series the tests count exactly, and a
        // probe every interval adds load: only the verification tests turn
        // it on.
        if !extra.contains(&"--verify-interval") {
            args.extend(["--verify-interval", "0"]);
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
        Agent { child, lines, metrics_addr: std::sync::OnceLock::new() }
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
            // Searched under the lock: a long-running agent's log has
            // thousands of lines, and this polls every 20 ms.
            if let Some(v) = self.lines.lock().expect("log lock").iter().skip(mark).find(|l| pred(l)).cloned()
            {
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
        self.metrics_addr
            .get_or_init(|| {
                let line = self.wait_for("metrics address", |l| {
                    l["message"] == "serving /metrics, /healthz and /readyz"
                });
                line["addr"].as_str().expect("addr field").to_owned()
            })
            .clone()
    }

    /// The agent's /metrics page, fetched now.
    pub fn metrics(&self) -> String {
        http_get(&format!("http://{}/metrics", self.metrics_addr()))
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
