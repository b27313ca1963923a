//! One log line per denial or audit-mode violation.

use std::{collections::HashMap, path::PathBuf};

use portguard_common::{ORPHAN_GUARD_ID, Verdict};

use crate::{bpf::DecodedEvent, cgroup::CgroupNames};

pub struct DenialLog {
    names: CgroupNames,
}

impl DenialLog {
    pub fn new(root: PathBuf) -> Self {
        DenialLog { names: CgroupNames::new(root) }
    }

    pub fn log(&mut self, e: &DecodedEvent, ids: &HashMap<String, u32>) {
        let guard = if e.guard_id == ORPHAN_GUARD_ID {
            "(unknown guard)".to_owned()
        } else {
            ids.iter()
                .find(|(_, id)| **id == e.guard_id)
                .map(|(name, _)| name.clone())
                .unwrap_or_else(|| format!("guard-id:{}", e.guard_id))
        };
        let cgroup = self.names.name(e.sock_cgroup);
        let op = e.op.map_or("?", |o| o.as_str());
        let verdict = e.verdict.map_or("?", |v| v.as_str());
        let peer = match e.addr {
            std::net::IpAddr::V4(a) => format!("{a}:{}", e.port),
            std::net::IpAddr::V6(a) => format!("[{a}]:{}", e.port),
        };
        let message = match e.verdict {
            Some(Verdict::Audited) => format!("audit: {op} {peer}/{} would be denied", e.proto),
            _ => format!("denied {op} {peer}/{}", e.proto),
        };
        tracing::warn!(
            event = "denial",
            guard = %guard,
            cgroup = %cgroup,
            pid = e.pid,
            comm = %e.comm,
            op,
            proto = e.proto,
            addr = %e.addr,
            port = e.port,
            verdict,
            generation = e.generation,
            "{message}"
        );
    }
}
