//! Command-line interface.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

pub const DEFAULT_POLICY: &str = "/etc/portguard/policy.toml";
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/portguard";
pub const DEFAULT_STATE_DIR: &str = "/run/portguard";
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";
pub const DEFAULT_AUDIT_TRAIL: &str = "/var/lib/portguard/audit.jsonl";

#[derive(Debug, Parser)]
#[command(
    name = "portguard",
    version,
    about = "Kernel-enforced allowlists for the ports each workload binds and the peers it reaches"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the eBPF programs, apply the policy and report denials until stopped.
    Run(RunArgs),
    /// Validate a policy, print what it would enforce and check its catalog
    /// (owner, purpose, approval expiry), without loading anything. Exit
    /// status: 0 ok, 1 catalog findings with --strict, 2 invalid policy.
    Check {
        /// The policy file.
        policy: PathBuf,
        /// Fail (exit 1) when a rule lacks owner or purpose, or its approval expired.
        #[arg(long)]
        strict: bool,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// List every listening TCP and bound UDP port on the host (all network
    /// namespaces) with its process, cgroup and status against the policy:
    /// approved, unapproved (guarded but no rule) or unguarded.
    ///
    /// To name each port's process, scan reads every process's fd links, as
    /// `ss -p` and `lsof` do; that holds each socket for a moment, so a
    /// program closing and re-binding a port right then may see EADDRINUSE.
    /// The agent itself never does this.
    Scan {
        #[arg(long, default_value = DEFAULT_POLICY)]
        policy: PathBuf,
        /// The cgroup guard paths are relative to (as for `run`).
        #[arg(long)]
        cgroup_root: Option<PathBuf>,
        /// The running agent's state directory: pod guards are matched
        /// through the pods it follows.
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
        /// Exit 1 when any port is unapproved (a CI/CD gate).
        #[arg(long)]
        fail_on_unapproved: bool,
    },
    /// Show what a policy change opens and closes, guard by guard.
    Diff {
        /// The policy before the change.
        old: PathBuf,
        /// The policy after the change.
        new: PathBuf,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// Judge the operations in an audit trail under a new policy: which
    /// would now be denied, which newly allowed.
    Replay {
        /// The policy to judge with.
        #[arg(long)]
        policy: PathBuf,
        /// An audit trail written by `portguard run --audit-trail`.
        #[arg(long)]
        events: PathBuf,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// Write a draft policy from what workloads did in audit mode.
    Suggest {
        /// An audit trail written by `portguard run --audit-trail`.
        #[arg(long)]
        events: PathBuf,
        /// Only this guard (default: every guard with records).
        #[arg(long)]
        guard: Option<String>,
        /// The policy the trail was recorded under: draft guards keep its
        /// targets (`unit`, and the selector of pod guards).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// The mode the draft's guards get.
        #[arg(long, value_enum, default_value_t = DraftMode::Audit)]
        mode: DraftMode,
        /// Write the draft here instead of standard output.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Ask the running agent to re-read its policy (SIGHUP to the pid in
    /// the state directory's pid file).
    Reload {
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Show what is enforced, from the pinned maps (works whether or not the agent runs).
    Status {
        #[arg(long, default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// Prove that every guard holds, against the running agent's pinned
    /// state: the kernel holds exactly the policy, portguard's programs run
    /// at every hook of every guarded cgroup, and a probe process in a
    /// short-lived child cgroup is refused what the rules refuse and allowed
    /// what they allow (loopback only; no packet leaves the host). Exit
    /// status: 0 every guard holds, 1 one does not, 2 cannot verify.
    Verify {
        /// Only this guard.
        #[arg(long)]
        guard: Option<String>,
        /// The policy the kernel must hold (default: the agent's policy file).
        #[arg(long)]
        policy: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
        /// The running agent's state directory.
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// The agent's bpffs directory (default: from its state).
        #[arg(long)]
        bpffs: Option<PathBuf>,
    },
    /// Attach empty always-allow programs at the same hooks and exit
    /// (benchmark baseline; remove with `unload`).
    #[command(hide = true)]
    BenchNoop {
        #[arg(long)]
        cgroup_root: PathBuf,
        #[arg(long)]
        bpffs: PathBuf,
    },
    /// Work with the audit trail.
    #[command(subcommand)]
    Trail(TrailCommand),
    /// Detach portguard's programs and remove its pinned maps.
    Unload {
        /// bpffs directory portguard pinned its objects under.
        #[arg(long, default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum TrailCommand {
    /// Check the audit trail's hash chain: intact, or where it breaks
    /// (file, line, and whether a record was edited, deleted, reordered or
    /// the trail cut at its start). Exit status: 0 intact, 1 broken, 2
    /// unreadable.
    Verify {
        /// Trail files, oldest first. One file stands for itself and its
        /// rotated files (FILE.N .. FILE.1, FILE).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The policy file.
    #[arg(long, default_value = DEFAULT_POLICY)]
    pub policy: PathBuf,
    /// Cgroup to attach at; guard paths are relative to it. Default: the
    /// cgroup2 mount root, found in /proc/self/mounts.
    #[arg(long)]
    pub cgroup_root: Option<PathBuf>,
    /// bpffs directory for pinned programs and maps (mounted if missing
    /// when under /sys/fs/bpf).
    #[arg(long, default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
    /// Where /metrics, /healthz and /readyz are served. Loopback by
    /// default: widen it only as far as your Prometheus needs.
    #[arg(long, default_value = DEFAULT_METRICS_ADDR)]
    pub metrics_addr: std::net::SocketAddr,
    /// Where the pid file and state.json (read by `status` and `reload`) go.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Remove enforcement when the agent stops. By default it stays pinned,
    /// so workloads stay guarded while the agent restarts or upgrades.
    #[arg(long)]
    pub unload_on_exit: bool,
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// The audit trail: JSON lines of ports going live and closing and of
    /// refused or audited operations (read by `replay` and `suggest`).
    #[arg(long, default_value = DEFAULT_AUDIT_TRAIL)]
    pub audit_trail: PathBuf,
    /// Rotate the audit trail when it would grow past this many bytes.
    #[arg(long, default_value_t = 64 << 20)]
    pub audit_trail_max_bytes: u64,
    /// Rotated audit-trail files kept (FILE.1 newest .. FILE.N).
    #[arg(long, default_value_t = 5)]
    pub audit_trail_keep: usize,
    /// Kubernetes API server URL for pod guards, without credentials (a
    /// local test server, or `kubectl proxy`). Default: the in-cluster
    /// service account when KUBERNETES_SERVICE_HOST is set, else KUBECONFIG
    /// or ~/.kube/config.
    #[arg(long, value_name = "URL")]
    pub kube_api: Option<String>,
    /// This node's name in Kubernetes: pod guards follow the pods scheduled
    /// here. The DaemonSet passes it from the downward API.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// How long start-up waits for the first pod list before it applies the
    /// policy anyway (pod guards then apply as pods become known).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub kube_sync_timeout: std::time::Duration,
    /// How often every guard is verified (as `portguard verify` does:
    /// kernel state and a probe per guarded cgroup), besides after start-up
    /// and after each reload. 0 turns periodic verification off.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub verify_interval: std::time::Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, fields at the top level.
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DraftMode {
    Audit,
    Enforce,
}
