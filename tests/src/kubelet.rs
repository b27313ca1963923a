//! Pod cgroups laid out under a sandbox the way the kubelet and containerd
//! name them, for pod guards to find.

use serde_json::Value;

use crate::{kube_api::pod_uid, sandbox::Sandbox};

/// How the kubelet names pod cgroups (its `cgroupDriver` setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupDriver {
    Systemd,
    Cgroupfs,
}

impl Sandbox {
    /// Lays out `pod`'s cgroups under this sandbox's root as the kubelet
    /// (pod level, by QoS class) and containerd (one child per container)
    /// do, and returns the first container's cgroup, relative to the root.
    pub fn kubelet_pod(&self, driver: CgroupDriver, pod: &Value) -> String {
        let uid = pod_uid(pod);
        let qos = pod["status"]["qosClass"].as_str().expect("qosClass");
        let container = pod["status"]["containerStatuses"][0]["containerID"]
            .as_str()
            .and_then(|c| c.strip_prefix("containerd://"))
            .expect("containerd container id");
        let pod_cgroup = match (driver, qos) {
            (CgroupDriver::Systemd, "Guaranteed") => {
                format!("/kubepods.slice/kubepods-pod{}.slice", uid.replace('-', "_"))
            }
            (CgroupDriver::Systemd, q) => {
                let q = q.to_lowercase();
                format!("/kubepods.slice/kubepods-{q}.slice/kubepods-{q}-pod{}.slice", uid.replace('-', "_"))
            }
            (CgroupDriver::Cgroupfs, "Guaranteed") => format!("/kubepods/pod{uid}"),
            (CgroupDriver::Cgroupfs, q) => format!("/kubepods/{}/pod{uid}", q.to_lowercase()),
        };
        let container_cgroup = match driver {
            CgroupDriver::Systemd => format!("{pod_cgroup}/cri-containerd-{container}.scope"),
            CgroupDriver::Cgroupfs => format!("{pod_cgroup}/{container}"),
        };
        self.cgroup(&container_cgroup);
        container_cgroup
    }
}
