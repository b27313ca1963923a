//! Where the kubelet puts a pod's cgroup, for both cgroup drivers.
//!
//! The kubelet makes one cgroup per pod and the container runtime puts each
//! container in a child of it, so guarding the pod-level cgroup covers every
//! container of the pod, including ones that start (or restart) later.
//!
//! systemd driver:  /kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid, - as _>.slice
//! cgroupfs driver: /kubepods/<qos>/pod<uid>
//! Guaranteed pods sit directly under the top: /kubepods.slice/kubepods-pod<uid_>.slice
//! and /kubepods/pod<uid>.

/// A pod's QoS class (`status.qosClass`), which picks the middle level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub(crate) enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    pub(crate) fn parse(s: &str) -> Option<Qos> {
        match s {
            "Guaranteed" => Some(Qos::Guaranteed),
            "Burstable" => Some(Qos::Burstable),
            "BestEffort" => Some(Qos::BestEffort),
            _ => None,
        }
    }

    /// The cgroup name part the kubelet uses; none for Guaranteed pods.
    fn part(self) -> Option<&'static str> {
        match self {
            Qos::Guaranteed => None,
            Qos::Burstable => Some("burstable"),
            Qos::BestEffort => Some("besteffort"),
        }
    }
}

/// The cgroup paths (relative to the cgroup root) where the pod with `uid`
/// may live: the systemd driver's first, then the cgroupfs driver's. With
/// the QoS class unknown (status not written yet) every class is tried.
/// The first path that exists is the pod's cgroup.
pub(crate) fn candidates(uid: &str, qos: Option<Qos>) -> Vec<String> {
    // A UID is a UUID; anything else must not become a path component.
    if uid.is_empty() || !uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Vec::new();
    }
    let classes: &[Qos] = match qos {
        Some(q) => &[q][..],
        None => &[Qos::Guaranteed, Qos::Burstable, Qos::BestEffort],
    };
    let systemd_uid = uid.replace('-', "_");
    let mut out = Vec::with_capacity(classes.len() * 2);
    for q in classes {
        out.push(match q.part() {
            Some(c) => format!("/kubepods.slice/kubepods-{c}.slice/kubepods-{c}-pod{systemd_uid}.slice"),
            None => format!("/kubepods.slice/kubepods-pod{systemd_uid}.slice"),
        });
    }
    for q in classes {
        out.push(match q.part() {
            Some(c) => format!("/kubepods/{c}/pod{uid}"),
            None => format!("/kubepods/pod{uid}"),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "4f1c2a8e-0b7d-4e55-9a43-2f6f3c9b1d10";

    #[test]
    fn systemd_and_cgroupfs_layouts() {
        assert_eq!(
            candidates(UID, Some(Qos::Burstable)),
            vec![
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod4f1c2a8e_0b7d_4e55_9a43_2f6f3c9b1d10.slice",
                "/kubepods/burstable/pod4f1c2a8e-0b7d-4e55-9a43-2f6f3c9b1d10",
            ]
        );
        assert_eq!(
            candidates(UID, Some(Qos::Guaranteed)),
            vec![
                "/kubepods.slice/kubepods-pod4f1c2a8e_0b7d_4e55_9a43_2f6f3c9b1d10.slice",
                "/kubepods/pod4f1c2a8e-0b7d-4e55-9a43-2f6f3c9b1d10",
            ]
        );
        assert_eq!(
            candidates(UID, Some(Qos::BestEffort))[1],
            "/kubepods/besteffort/pod4f1c2a8e-0b7d-4e55-9a43-2f6f3c9b1d10"
        );
    }

    #[test]
    fn unknown_qos_tries_every_class() {
        assert_eq!(candidates(UID, None).len(), 6);
    }

    #[test]
    fn odd_uids_give_no_path() {
        assert!(candidates("../../etc", None).is_empty());
        assert!(candidates("", Some(Qos::Burstable)).is_empty());
    }
}
