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

pub const STATE_FILE: &str = "state.json";
pub const PID_FILE: &str = "portguard.pid";
/// The pods of this node last heard from the API, for a start-up while the
/// API is unreachable.
pub const PODS_FILE: &str = "pods.json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentState {
    pub policy: PathBuf,
    pub sha256: String,
    pub generation: u64,
    /// Seconds since the Unix epoch.
    pub applied_at: u64,
    pub cgroup_root: PathBuf,
    pub bpffs: PathBuf,
    pub guards: Vec<GuardState>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GuardState {
    pub name: String,
    pub id: u32,
    pub cgroup: String,
    /// None while the cgroup does not exist, and for pod guards.
    pub cgroup_id: Option<u64>,
    pub mode: String,
    /// For pod guards: the pods covered now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<PodCgroupState>,
}

/// One pod a pod guard covers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PodCgroupState {
    /// "namespace/name".
    pub pod: String,
    pub cgroup: String,
    pub cgroup_id: u64,
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Writes `contents` to `path` atomically (temp file, then rename).
fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, contents)?;
    fs::rename(&tmp, path)
}

pub fn write_state(dir: &Path, state: &AgentState) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let json = serde_json::to_vec_pretty(state).map_err(io::Error::other)?;
    write_atomic(&dir.join(STATE_FILE), &json)
}

pub fn read_state(dir: &Path) -> io::Result<AgentState> {
    let text = fs::read(dir.join(STATE_FILE))?;
    serde_json::from_slice(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

pub fn write_pods(dir: &Path, pods: &[crate::pods::PodInfo]) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let json = serde_json::to_vec(pods).map_err(io::Error::other)?;
    write_atomic(&dir.join(PODS_FILE), &json)
}

pub fn read_pods(dir: &Path) -> io::Result<Vec<crate::pods::PodInfo>> {
    let text = fs::read(dir.join(PODS_FILE))?;
    serde_json::from_slice(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

pub fn write_pid(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    write_atomic(&dir.join(PID_FILE), format!("{}\n", std::process::id()).as_bytes())
}

pub fn remove_pid(dir: &Path) {
    let _ = fs::remove_file(dir.join(PID_FILE));
}

/// The pid of a running agent, if the pid file names a live portguard.
pub fn running_pid(dir: &Path) -> Option<i32> {
    let pid: i32 = fs::read_to_string(dir.join(PID_FILE)).ok()?.trim().parse().ok()?;
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    (comm.trim() == "portguard").then_some(pid)
}
