//! How much of the kernel's brief-port counts the audit trail already
//! holds, kept in the state directory. The kernel goes on counting while no
//! agent runs (`PG_BRIEF_PORTS` is pinned); the next agent starts from what
//! the previous one wrote, so the brief ports of the gap are written once,
//! and none twice. The counts belong to one instance of the map (its id):
//! after an unload the kernel starts from zero and an older baseline means
//! nothing.

use std::{
    collections::HashMap,
    fs, io,
    net::IpAddr,
    path::{Path, PathBuf},
};

use portguard_common::Transport;
use serde::{Deserialize, Serialize};

use crate::bpf::BriefKind;

const FILE: &str = "brief-ports.json";

#[derive(Serialize, Deserialize)]
struct Baseline {
    /// The kernel's id of the `PG_BRIEF_PORTS` these counts were read from.
    map_id: u32,
    counts: Vec<Count>,
}

#[derive(Serialize, Deserialize)]
struct Count {
    sock_cgroup: u64,
    guard_id: u32,
    proto: u8,
    addr: IpAddr,
    port: u16,
    count: u64,
}

pub(crate) struct BriefBaseline {
    path: PathBuf,
    map_id: Option<u32>,
}

impl BriefBaseline {
    pub(crate) fn new(state_dir: &Path, map_id: Option<u32>) -> BriefBaseline {
        BriefBaseline { path: state_dir.join(FILE), map_id }
    }

    /// The counts the previous agent wrote from this same map, if any.
    pub(crate) fn load(&self) -> Option<HashMap<BriefKind, u64>> {
        let b: Baseline = serde_json::from_slice(&fs::read(&self.path).ok()?).ok()?;
        if Some(b.map_id) != self.map_id {
            return None;
        }
        Some(
            b.counts
                .into_iter()
                .map(|c| {
                    let kind = BriefKind {
                        sock_cgroup: c.sock_cgroup,
                        guard_id: c.guard_id,
                        proto: Transport::from(c.proto),
                        addr: c.addr,
                        port: c.port,
                    };
                    (kind, c.count)
                })
                .collect(),
        )
    }

    /// Records `counts` as written (replacing the file atomically).
    pub(crate) fn save(&self, counts: &HashMap<BriefKind, u64>) -> io::Result<()> {
        let Some(map_id) = self.map_id else { return Ok(()) };
        let counts = counts
            .iter()
            .map(|(k, &count)| Count {
                sock_cgroup: k.sock_cgroup,
                guard_id: k.guard_id,
                proto: k.proto.number(),
                addr: k.addr,
                port: k.port,
                count,
            })
            .collect();
        let tmp = self.path.with_extension("json.tmp");
        fs::write(&tmp, serde_json::to_vec(&Baseline { map_id, counts })?)?;
        fs::rename(&tmp, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(port: u16) -> BriefKind {
        BriefKind {
            sock_cgroup: 7,
            guard_id: 1,
            proto: Transport::Udp,
            addr: "127.0.0.1".parse().unwrap(),
            port,
        }
    }

    #[test]
    fn counts_come_back_only_for_the_same_map() {
        let dir = std::env::temp_dir().join(format!("pg-brief-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let counts: HashMap<BriefKind, u64> = [(kind(53), 12), (kind(54), 3)].into();
        BriefBaseline::new(&dir, Some(41)).save(&counts).unwrap();
        assert_eq!(BriefBaseline::new(&dir, Some(41)).load(), Some(counts));
        assert_eq!(
            BriefBaseline::new(&dir, Some(42)).load(),
            None,
            "another map: its counts started from zero"
        );
        assert_eq!(BriefBaseline::new(&dir, None).load(), None);
        fs::remove_dir_all(&dir).unwrap();
    }
}
