//! Kubernetes pods on this node: who they are (UID, namespace, labels, QoS
//! class), learnt from the API server, and where their cgroups are.
//!
//! The agent lists and watches only the pods scheduled on its own node
//! (`fieldSelector=spec.nodeName=<node>`), keeps the few fields guards select
//! on, and matches guard selectors itself. Nothing here touches the kernel.

mod cgroups;
mod watch;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

pub(crate) use cgroups::{Qos, candidates};
pub(crate) use watch::{ApiSettings, PodUpdate, PodWatch, WatchError, connect, spawn_watch};

/// What portguard needs to know about one pod.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct PodInfo {
    pub(crate) uid: String,
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) labels: BTreeMap<String, String>,
    /// None until the kubelet has written the pod's status.
    pub(crate) qos: Option<Qos>,
}

impl PodInfo {
    /// None for an object without a UID (never seen from a real API server).
    pub(crate) fn from_pod(pod: &Pod) -> Option<PodInfo> {
        let meta = &pod.metadata;
        Some(PodInfo {
            uid: meta.uid.clone().filter(|u| !u.is_empty())?,
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            labels: meta.labels.clone().unwrap_or_default(),
            qos: pod.status.as_ref().and_then(|s| s.qos_class.as_deref()).and_then(Qos::parse),
        })
    }

    /// "namespace/name", as logs show a pod.
    pub(crate) fn display_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Where this pod's cgroup may be, relative to the cgroup root.
    pub(crate) fn cgroup_candidates(&self) -> Vec<String> {
        candidates(&self.uid, self.qos)
    }
}

/// The pods this agent knows, by UID. When the API is unreachable it keeps
/// the last known set, so guards keep covering the pods they covered.
#[derive(Debug, Default)]
pub(crate) struct PodIndex {
    pods: BTreeMap<String, PodInfo>,
    /// True once a complete list has arrived.
    listed: bool,
}

impl PodIndex {
    /// Applies one update; true when the set of pods changed.
    pub(crate) fn apply(&mut self, update: PodUpdate) -> bool {
        match update {
            PodUpdate::Listed(pods) => {
                self.listed = true;
                let new: BTreeMap<String, PodInfo> = pods.into_iter().map(|p| (p.uid.clone(), p)).collect();
                let changed = new != self.pods;
                self.pods = new;
                changed
            }
            PodUpdate::Applied(pod) => self.pods.insert(pod.uid.clone(), pod.clone()).as_ref() != Some(&pod),
            PodUpdate::Deleted(uid) => self.pods.remove(&uid).is_some(),
            PodUpdate::Unreachable(_) => false,
        }
    }

    /// Takes `pods` as known without a list from the API (the last run's
    /// pods, at a start-up with the API unreachable); the next list
    /// replaces them.
    pub(crate) fn seed(&mut self, pods: Vec<PodInfo>) {
        self.pods = pods.into_iter().map(|p| (p.uid.clone(), p)).collect();
    }

    pub(crate) fn listed(&self) -> bool {
        self.listed
    }

    pub(crate) fn len(&self) -> usize {
        self.pods.len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &PodInfo> {
        self.pods.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, app: &str) -> PodInfo {
        PodInfo {
            uid: uid.into(),
            namespace: "ns".into(),
            name: format!("p-{uid}"),
            labels: [("app".to_owned(), app.to_owned())].into(),
            qos: Some(Qos::Burstable),
        }
    }

    #[test]
    fn a_list_replaces_what_was_known() {
        let mut idx = PodIndex::default();
        assert!(idx.apply(PodUpdate::Applied(pod("a", "x"))));
        assert!(!idx.apply(PodUpdate::Applied(pod("a", "x"))), "the same object again changes nothing");
        assert!(idx.apply(PodUpdate::Applied(pod("a", "y"))), "a label change is a change");
        // A pod deleted while the watch was down disappears with the next list.
        assert!(idx.apply(PodUpdate::Listed(vec![pod("b", "x")])));
        assert_eq!(idx.iter().map(|p| p.uid.as_str()).collect::<Vec<_>>(), ["b"]);
        assert!(idx.listed());
        assert!(!idx.apply(PodUpdate::Unreachable("down".into())), "errors keep what is known");
        assert_eq!(idx.len(), 1);
        assert!(idx.apply(PodUpdate::Deleted("b".into())));
        assert!(idx.is_empty());
    }

    #[test]
    fn reads_the_fields_guards_need_from_a_pod_object() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "api-0", "namespace": "payments", "uid": "0a1b2c3d-0000-4000-8000-000000000001",
                         "labels": {"app": "api"}},
            "status": {"qosClass": "BestEffort"}
        }))
        .expect("pod");
        let info = PodInfo::from_pod(&pod).expect("has a uid");
        assert_eq!(info.display_name(), "payments/api-0");
        assert_eq!(info.qos, Some(Qos::BestEffort));
        assert_eq!(info.labels["app"], "api");
        assert_eq!(info.cgroup_candidates().len(), 2);
    }
}
