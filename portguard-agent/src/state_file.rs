//! What the agent last applied, written where `portguard status` and
//! `portguard reload` find it: `<state-dir>/state.json` and
//! `<state-dir>/portguard.pid`.
//!
//! The kernel maps are the truth about what is enforced; this file names it
//! (policy file, hash, guard names). Status cross-checks the two by the
//! generation number.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

pub(crate) const STATE_FILE: &str = "state.json";
pub(crate) const PID_FILE: &str = "portguard.pid";
/// The agent's last verification of every guard, for `portguard status`.
pub(crate) const VERIFY_FILE: &str = "verify.json";
/// The pods of this node last heard from the API, for a start-up while the
/// API is unreachable.
pub(crate) const PODS_FILE: &str = "pods.json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct AgentState {
    pub(crate) policy: PathBuf,
    pub(crate) sha256: String,
    pub(crate) generation: u64,
    /// Seconds since the Unix epoch.
    pub(crate) applied_at: u64,
    pub(crate) cgroup_root: PathBuf,
    pub(crate) bpffs: PathBuf,
    /// The kernel's id of each cgroup program the agent loaded, by name.
    #[serde(default)]
    pub(crate) programs: std::collections::BTreeMap<String, u32>,
    pub(crate) guards: Vec<GuardState>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct GuardState {
    pub(crate) name: String,
    pub(crate) id: u32,
    pub(crate) cgroup: String,
    /// None while the cgroup does not exist, and for pod guards.
    pub(crate) cgroup_id: Option<u64>,
    pub(crate) mode: String,
    /// For pod guards: the pods covered now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) pods: Vec<PodCgroupState>,
}

/// One pod a pod guard covers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct PodCgroupState {
    /// "namespace/name".
    pub(crate) pod: String,
    pub(crate) cgroup: String,
    pub(crate) cgroup_id: u64,
}

pub(crate) fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Writes `contents` to `path` atomically (temp file, then rename).
fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, contents)?;
    fs::rename(&tmp, path)
}

pub(crate) fn write_state(dir: &Path, state: &AgentState) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let json = serde_json::to_vec_pretty(state).map_err(io::Error::other)?;
    write_atomic(&dir.join(STATE_FILE), &json)
}

pub(crate) fn read_state(dir: &Path) -> io::Result<AgentState> {
    let text = fs::read(dir.join(STATE_FILE))?;
    serde_json::from_slice(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

pub(crate) fn write_verification(dir: &Path, report: &serde_json::Value) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    write_atomic(&dir.join(VERIFY_FILE), &serde_json::to_vec(report).map_err(io::Error::other)?)
}

pub(crate) fn read_verification(dir: &Path) -> Option<serde_json::Value> {
    serde_json::from_slice(&fs::read(dir.join(VERIFY_FILE)).ok()?).ok()
}

pub(crate) fn write_pods(dir: &Path, pods: &[crate::pods::PodInfo]) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let json = serde_json::to_vec(pods).map_err(io::Error::other)?;
    write_atomic(&dir.join(PODS_FILE), &json)
}

pub(crate) fn read_pods(dir: &Path) -> io::Result<Vec<crate::pods::PodInfo>> {
    let text = fs::read(dir.join(PODS_FILE))?;
    serde_json::from_slice(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

pub(crate) fn write_pid(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    write_atomic(&dir.join(PID_FILE), format!("{}\n", std::process::id()).as_bytes())
}

pub(crate) fn remove_pid(dir: &Path) {
    let _ = fs::remove_file(dir.join(PID_FILE));
}

/// The pid of a running agent, if the pid file names a live portguard.
pub(crate) fn running_pid(dir: &Path) -> Option<i32> {
    let pid: i32 = fs::read_to_string(dir.join(PID_FILE)).ok()?.trim().parse().ok()?;
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    (comm.trim() == "portguard").then_some(pid)
}
