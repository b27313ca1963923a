//! Command-line interface.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use std::sync::LazyLock;

pub const DEFAULT_POLICY: &str = "/etc/portguard/policy.toml";
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/portguard";
pub const DEFAULT_STATE_DIR: &str = "/run/portguard";
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";
pub const DEFAULT_AUDIT_TRAIL: &str = "/var/lib/portguard/audit.jsonl";

/// `--version`: the release, and the layout of the pinned maps, which
/// decides whether a new agent adopts the maps the running one pinned.
static VERSION: LazyLock<String> = LazyLock::new(|| {
    format!("{} (map ABI {})", env!("CARGO_PKG_VERSION"), portguard_common::MAP_ABI_VERSION)
});

#[derive(Debug, Parser)]
#[command(
    name = "portguard",
    version = VERSION.as_str(),
    propagate_version = true,
    about = "Kernel-enforced allowlists for the ports each workload binds and the peers it reaches",
    after_help = "Example:\n  portguard check /etc/portguard/policy.toml && portguard run\n\n\
                  `portguard <command> --help` shows each command's options and an example."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Enforce the policy: load the eBPF programs, apply it, report denials until stopped.
    #[command(after_help = "Example:\n  portguard run --policy /etc/portguard/policy.toml --log-format json")]
    Run(RunArgs),
    /// Validate a policy and check its catalog, without loading anything.
    ///
    /// Prints what the policy would enforce and checks its catalog (owner,
    /// purpose, approval expiry). Exit status: 0 ok, 1 catalog findings with
    /// --strict, 2 invalid policy.
    #[command(after_help = "Example:\n  portguard check --strict /etc/portguard/policy.toml")]
    Check {
        /// The policy file.
        policy: PathBuf,
        /// Fail (exit 1) when a rule lacks owner or purpose, or its approval expired.
        #[arg(long)]
        strict: bool,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// List every live port on the host with its process, cgroup and status against the policy.
    ///
    /// Every listening TCP and bound UDP port (all network namespaces), and
    /// its status: approved, unapproved (guarded but no rule) or unguarded.
    /// Without a policy file every port is unguarded.
    ///
    /// To name each port's process, scan reads every process's fd links, as
    /// `ss -p` and `lsof` do; that holds each socket for a moment, so a
    /// program closing and re-binding a port right then may see EADDRINUSE.
    /// The agent itself never does this.
    #[command(after_help = "Example:\n  portguard scan --fail-on-unapproved --format json")]
    Scan {
        /// The policy (default: /etc/portguard/policy.toml when it exists;
        /// without a policy every port is listed as unguarded).
        #[arg(long)]
        policy: Option<PathBuf>,
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
    #[command(after_help = "Example:\n  portguard diff /etc/portguard/policy.toml policy.new.toml")]
    Diff {
        /// The policy before the change.
        old: PathBuf,
        /// The policy after the change.
        new: PathBuf,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// Judge the operations in an audit trail under a new policy.
    ///
    /// Lists which recorded operations would now be denied, which newly
    /// allowed.
    #[command(
        after_help = "Example:\n  portguard replay --policy policy.new.toml --events /var/lib/portguard/audit.jsonl"
    )]
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
    #[command(
        after_help = "Example:\n  portguard suggest --events /var/lib/portguard/audit.jsonl --guard web --output draft.toml"
    )]
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
    /// Ask the running agent to re-read its policy.
    ///
    /// Sends SIGHUP to the pid in the state directory's pid file.
    #[command(after_help = "Example:\n  portguard reload --state-dir /run/portguard")]
    Reload {
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Show what is enforced, from the pinned maps (whether or not the agent runs).
    #[command(after_help = "Example:\n  portguard status --format json")]
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
    #[command(
        after_help = "Example:\n  portguard verify --trail /var/lib/portguard/audit.jsonl || echo a guard does not hold"
    )]
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
        /// Also check this audit trail's hash chain (FILE and its rotated
        /// files), as `portguard trail verify` does.
        #[arg(long, value_name = "FILE")]
        trail: Option<PathBuf>,
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
    #[command(subcommand, after_help = "Example:\n  portguard trail verify /var/lib/portguard/audit.jsonl")]
    Trail(TrailCommand),
    /// Detach portguard's programs and remove its pinned maps.
    #[command(after_help = "Example:\n  systemctl stop portguard && portguard unload")]
    Unload {
        /// bpffs directory portguard pinned its objects under.
        #[arg(long, default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
    },
    /// Print a shell completion script for bash, zsh or fish.
    #[command(after_help = "Example:\n  portguard completions bash > /etc/bash_completion.d/portguard")]
    Completions {
        /// The shell to complete for.
        shell: CompletionShell,
    },
    /// Write the manual pages: one for portguard and one per command.
    ///
    /// Without --out, prints the page for portguard itself.
    #[command(after_help = "Example:\n  portguard man --out /usr/local/share/man/man1 && man portguard-run")]
    Man {
        /// Write portguard.1 and portguard-<command>.1 into this directory.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
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
    /// and after each reload. 0 turns the agent's verification off.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub verify_interval: std::time::Duration,
    /// The resolver the agent asks for the names of rules with
    /// `resolve = "agent"` (IP, or IP:PORT); default: the nameservers of
    /// /etc/resolv.conf.
    #[arg(long, value_name = "IP[:PORT]", value_parser = parse_resolver)]
    pub dns_resolver: Option<std::net::SocketAddr>,
}

/// `10.0.0.53`, `10.0.0.53:5353`, `[fd00::53]:53`, `fd00::53`.
fn parse_resolver(s: &str) -> Result<std::net::SocketAddr, String> {
    s.parse::<std::net::SocketAddr>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(|ip| std::net::SocketAddr::new(ip, 53)))
        .map_err(|_| format!("{s:?} is not an IP address or IP:PORT"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, fields at the top level.
    Json,
}

/// The shells `completions` writes for (clap_complete's generators).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn version_names_the_release_and_the_map_abi() {
        let v = Cli::command().render_version();
        assert_eq!(
            v.trim(),
            format!(
                "portguard {} (map ABI {})",
                env!("CARGO_PKG_VERSION"),
                portguard_common::MAP_ABI_VERSION
            )
        );
    }

    #[test]
    fn every_command_has_a_one_line_purpose_and_an_example() {
        let cli = Cli::command();
        for cmd in cli.get_subcommands().filter(|c| !c.is_hide_set()) {
            let about = cmd.get_about().map(ToString::to_string).unwrap_or_default();
            assert!(!about.is_empty() && !about.contains('\n'), "{}: about {about:?}", cmd.get_name());
            let after = cmd.get_after_help().map(ToString::to_string).unwrap_or_default();
            assert!(
                after.starts_with("Example:\n  ") && after.contains("portguard"),
                "{}: no example in --help: {after:?}",
                cmd.get_name()
            );
        }
    }
}
