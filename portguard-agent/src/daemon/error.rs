//! Why `portguard run` stopped, and the exit status that says so.

use std::path::PathBuf;

use crate::{bpf, cgroup, cmd::EXIT_BAD_INPUT, pods, policy};

#[derive(Debug, thiserror::Error)]
pub(crate) enum DaemonError {
    #[error("{0}")]
    Policy(#[from] policy::PolicyError),
    #[error("{0}")]
    PolicyPermissions(#[from] policy::PermissionError),
    #[error("cgroup root: {0}")]
    Cgroup(#[from] cgroup::CgroupError),
    #[error("{0}")]
    Guard(String),
    #[error("{0}")]
    Kube(#[from] pods::WatchError),
    #[error(transparent)]
    Load(#[from] bpf::LoadError),
    #[error("policy maps: {0}")]
    Maps(#[from] bpf::MapsError),
    #[error("events: {0}")]
    Events(#[from] bpf::EventsError),
    #[error("watching {what}: {source}")]
    Watch {
        what: String,
        #[source]
        source: notify::Error,
    },
    #[error("state directory {dir}: {source}")]
    State {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel counters: {0}")]
    Counters(#[from] bpf::PinnedError),
    #[error("metrics endpoint {addr}: {source}")]
    MetricsAddr {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("audit trail {path}: {source}")]
    Trail {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("signals: {0}")]
    Signal(#[source] std::io::Error),
    #[error("must run as root (or with CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN): effective uid is {0}")]
    NotRoot(u32),
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

impl DaemonError {
    /// 2 for input the agent cannot use (nothing was changed), 1 for a
    /// failure while it ran.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            DaemonError::Policy(_)
            | DaemonError::PolicyPermissions(_)
            | DaemonError::Cgroup(_)
            | DaemonError::Guard(_)
            | DaemonError::Kube(_)
            | DaemonError::Load(_)
            | DaemonError::NotRoot(_)
            | DaemonError::MetricsAddr { .. }
            | DaemonError::Trail { .. } => EXIT_BAD_INPUT,
            DaemonError::Maps(_)
            | DaemonError::Events(_)
            | DaemonError::Signal(_)
            | DaemonError::Watch { .. }
            | DaemonError::State { .. }
            | DaemonError::Counters(_)
            | DaemonError::Runtime(_) => 1,
        }
    }
}
