//! Command-line interface.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

pub const DEFAULT_POLICY: &str = "/etc/portguard/policy.toml";
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/portguard";
pub const DEFAULT_STATE_DIR: &str = "/run/portguard";
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";

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
    /// Validate a policy and print what it would enforce, without loading anything.
    Check {
        /// The policy file.
        policy: PathBuf,
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
    /// Attach empty always-allow programs at the same hooks and exit
    /// (benchmark baseline; remove with `unload`).
    #[command(hide = true)]
    BenchNoop {
        #[arg(long)]
        cgroup_root: PathBuf,
        #[arg(long)]
        bpffs: PathBuf,
    },
    /// Detach portguard's programs and remove its pinned maps.
    Unload {
        /// bpffs directory portguard pinned its objects under.
        #[arg(long, default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
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
