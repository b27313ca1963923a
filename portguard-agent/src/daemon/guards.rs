//! Guards -> the cgroups they cover right now: a path guard's one cgroup
//! (when it exists), a pod guard's pod-level cgroup of every matching pod
//! on this node (when the kubelet has made it).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
};

use portguard_common::{MAX_CGROUP_DEPTH, MAX_GUARDS};

use crate::{
    cgroup,
    pods::{PodIndex, PodInfo},
    policy::{CompiledPolicy, Target},
};

/// One cgroup a guard covers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Covered {
    /// Relative to the cgroup root, like guard paths in the policy.
    pub(crate) path: String,
    pub(crate) id: u64,
    /// "namespace/name" when a pod guard covers this cgroup for a pod.
    pub(crate) pod: Option<String>,
}

/// What each guard covers, by guard name. A guard covering nothing (its
/// cgroup or pods do not exist yet) is absent.
pub(crate) type Coverage = BTreeMap<String, Vec<Covered>>;

/// A cgroup two guards claim (two pod selectors matching one pod, or a pod
/// selector matching a pod whose cgroup a path guard names). The kernel
/// holds one guard per cgroup: path guards win, then the first in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Conflict {
    pub(crate) cgroup: String,
    pub(crate) pod: Option<String>,
    pub(crate) kept: String,
    pub(crate) skipped: String,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Resolution {
    pub(crate) coverage: Coverage,
    pub(crate) conflicts: Vec<Conflict>,
    /// Pods left unguarded because the kernel's guard table is full.
    pub(crate) over_limit: Vec<String>,
}

impl Resolution {
    /// Cgroup ids by guard name, as the kernel policy is built from.
    pub(crate) fn cgroup_ids(&self) -> HashMap<String, Vec<u64>> {
        self.coverage.iter().map(|(name, c)| (name.clone(), c.iter().map(|c| c.id).collect())).collect()
    }

    /// How many cgroups are guarded.
    pub(crate) fn cgroups(&self) -> usize {
        self.coverage.values().map(Vec::len).sum()
    }
}

pub(crate) struct CgroupResolver {
    root: PathBuf,
    /// Level of `root` in the cgroup2 hierarchy (0 = the mount root).
    root_level: usize,
}

impl CgroupResolver {
    /// `root` is the attach cgroup, `mount` the cgroup2 mount it lies under.
    pub(crate) fn new(root: PathBuf, mount: &std::path::Path) -> Self {
        let root_level = root.strip_prefix(mount).map(|rel| rel.components().count()).unwrap_or(0);
        CgroupResolver { root, root_level }
    }

    pub(crate) fn root(&self) -> &std::path::Path {
        &self.root
    }

    /// The kernel records at most `MAX_CGROUP_DEPTH` levels per cgroup; a
    /// guard deeper than that could never be found, so refuse it up front.
    /// (Pod cgroups sit three levels below the root, containers four.)
    pub(crate) fn check_depths(&self, policy: &CompiledPolicy) -> Result<(), String> {
        for g in &policy.guards {
            let Some(path) = g.target.cgroup() else { continue };
            let depth = self.root_level + path.split('/').filter(|p| !p.is_empty()).count();
            if depth >= MAX_CGROUP_DEPTH {
                return Err(format!(
                    "guard {:?}: cgroup {path} sits at level {depth} of the cgroup tree; portguard follows {} levels",
                    g.name,
                    MAX_CGROUP_DEPTH - 1
                ));
            }
        }
        Ok(())
    }

    /// Every cgroupfs directory a guard may cover: what the cgroup watch
    /// follows, so a guard is applied the moment its cgroup appears.
    pub(crate) fn guard_paths(&self, policy: &CompiledPolicy, pods: &PodIndex) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for g in &policy.guards {
            match &g.target {
                Target::Cgroup(path) => out.push(cgroup::join(&self.root, path)),
                Target::Pods(sel) => out.extend(
                    pods.iter()
                        .filter(|p| sel.matches(&p.namespace, &p.labels))
                        .flat_map(PodInfo::cgroup_candidates)
                        .map(|c| cgroup::join(&self.root, &c)),
                ),
            }
        }
        out
    }

    /// What each guard covers now. Path guards claim their cgroups first,
    /// then pod guards in policy order; a cgroup already claimed is skipped
    /// and reported as a conflict.
    pub(crate) fn resolve(&self, policy: &CompiledPolicy, pods: &PodIndex) -> Resolution {
        let mut out = Resolution::default();
        let mut claimed: HashMap<u64, String> = HashMap::new();
        for g in policy.guards.iter().filter(|g| g.target.cgroup().is_some()) {
            let Target::Cgroup(path) = &g.target else { continue };
            if let Some(id) = self.cgroup_id(&g.name, path) {
                claimed.insert(id, g.name.clone());
                out.coverage.entry(g.name.clone()).or_default().push(Covered {
                    path: path.clone(),
                    id,
                    pod: None,
                });
            }
        }
        for g in &policy.guards {
            let Target::Pods(sel) = &g.target else { continue };
            let mut seen = HashSet::new();
            for pod in pods.iter().filter(|p| sel.matches(&p.namespace, &p.labels)) {
                // The first candidate that exists is the pod's cgroup.
                let found = pod
                    .cgroup_candidates()
                    .into_iter()
                    .find_map(|path| self.cgroup_id(&g.name, &path).map(|id| (path, id)));
                let Some((path, id)) = found else { continue };
                if !seen.insert(id) {
                    continue;
                }
                if let Some(kept) = claimed.get(&id) {
                    out.conflicts.push(Conflict {
                        cgroup: path,
                        pod: Some(pod.display_name()),
                        kept: kept.clone(),
                        skipped: g.name.clone(),
                    });
                    continue;
                }
                // One slot of the guard table holds MAX_GUARDS cgroups.
                if claimed.len() >= MAX_GUARDS as usize {
                    out.over_limit.push(pod.display_name());
                    continue;
                }
                claimed.insert(id, g.name.clone());
                out.coverage.entry(g.name.clone()).or_default().push(Covered {
                    path,
                    id,
                    pod: Some(pod.display_name()),
                });
            }
            if let Some(c) = out.coverage.get_mut(&g.name) {
                c.sort();
            }
        }
        out
    }

    fn cgroup_id(&self, guard: &str, path: &str) -> Option<u64> {
        match cgroup::cgroup_id(&cgroup::join(&self.root, path)) {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(guard = %guard, "cannot resolve cgroup: {e}");
                None
            }
        }
    }
}
