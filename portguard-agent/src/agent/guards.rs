//! Guard cgroup paths -> cgroup ids, as they are right now.

use std::{collections::HashMap, path::PathBuf};

use portguard_common::MAX_CGROUP_DEPTH;

use crate::{cgroup, policy::CompiledPolicy};

pub struct CgroupResolver {
    root: PathBuf,
    /// Level of `root` in the cgroup2 hierarchy (0 = the mount root).
    root_level: usize,
}

impl CgroupResolver {
    /// `root` is the attach cgroup, `mount` the cgroup2 mount it lies under.
    pub fn new(root: PathBuf, mount: &std::path::Path) -> Self {
        let root_level = root.strip_prefix(mount).map(|rel| rel.components().count()).unwrap_or(0);
        CgroupResolver { root, root_level }
    }

    pub fn root(&self) -> &std::path::Path {
        &self.root
    }

    /// The kernel records at most `MAX_CGROUP_DEPTH` levels per cgroup; a
    /// guard deeper than that could never be found, so refuse it up front.
    pub fn check_depths(&self, policy: &CompiledPolicy) -> Result<(), String> {
        for g in &policy.guards {
            let depth = self.root_level + g.cgroup.split('/').filter(|p| !p.is_empty()).count();
            if depth >= MAX_CGROUP_DEPTH {
                return Err(format!(
                    "guard {:?}: cgroup {} sits at level {depth} of the cgroup tree; portguard follows {} levels",
                    g.name,
                    g.cgroup,
                    MAX_CGROUP_DEPTH - 1
                ));
            }
        }
        Ok(())
    }

    /// The cgroupfs directory of every guard.
    pub fn guard_paths(&self, policy: &CompiledPolicy) -> Vec<PathBuf> {
        policy.guards.iter().map(|g| cgroup::join(&self.root, &g.cgroup)).collect()
    }

    /// Ids of the guard cgroups that exist, by guard name.
    pub fn resolve(&self, policy: &CompiledPolicy) -> HashMap<String, u64> {
        policy
            .guards
            .iter()
            .filter_map(|g| match cgroup::cgroup_id(&cgroup::join(&self.root, &g.cgroup)) {
                Ok(Some(id)) => Some((g.name.clone(), id)),
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!(guard = %g.name, "cannot resolve cgroup: {e}");
                    None
                }
            })
            .collect()
    }
}
