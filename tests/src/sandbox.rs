//! The [`Sandbox`]: one test's cgroup subtree, network namespace, bpffs pin
//! directory, scratch directory and policy file, all removed on drop.

use std::{
    ffi::CString,
    fs,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use crate::agent::Agent;

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
    pub(crate) policy: Option<PathBuf>,
    pub(crate) agent: Option<Agent>,
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

    pub fn procs(&self, rel: &str) -> PathBuf {
        self.cgroup(rel).join("cgroup.procs")
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
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop_agent();
        if self.bpffs.exists() {
            let _ = self.unload_output();
        }
        remove_cgroup_tree(&self.root);
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).output();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

pub(crate) fn ip(args: &[&str]) {
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
