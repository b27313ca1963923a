//! What a cgroup path says about the workload: its systemd unit, and for
//! Kubernetes its pod UID and container id (systemd and cgroupfs drivers).

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Workload {
    pub(crate) unit: Option<String>,
    pub(crate) pod_uid: Option<String>,
    pub(crate) container_id: Option<String>,
}

const UNIT_SUFFIXES: [&str; 3] = [".service", ".scope", ".socket"];
const RUNTIME_PREFIXES: [&str; 4] = ["cri-containerd-", "crio-", "docker-", "libpod-"];

pub(crate) fn parse(path: &str) -> Workload {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let mut w = Workload {
        unit: parts
            .iter()
            .rev()
            .find(|p| UNIT_SUFFIXES.iter().any(|s| p.ends_with(s)))
            .map(|p| (*p).to_owned()),
        ..Workload::default()
    };
    for (i, part) in parts.iter().enumerate() {
        // systemd driver: kubepods-burstable-pod<uid with _>.slice
        if let Some(stem) = part.strip_suffix(".slice")
            && let Some(idx) = stem.rfind("-pod")
        {
            w.pod_uid = Some(stem[idx + 4..].replace('_', "-"));
        }
        // cgroupfs driver: [...]/kubepods/<qos>/pod<uid>/<container id>
        if let Some(uid) = part.strip_prefix("pod")
            && parts[..i].contains(&"kubepods")
            && uid.len() >= 32
        {
            w.pod_uid = Some(uid.to_owned());
            if let Some(c) = parts.get(i + 1) {
                w.container_id = Some((*c).to_owned());
            }
        }
        if let Some(scope) = part.strip_suffix(".scope")
            && let Some(id) = RUNTIME_PREFIXES.iter().find_map(|p| scope.strip_prefix(p))
        {
            w.container_id = Some(id.to_owned());
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_service() {
        let w = parse("/system.slice/nginx.service");
        assert_eq!(w.unit.as_deref(), Some("nginx.service"));
        assert_eq!(w.pod_uid, None);
    }

    #[test]
    fn kubernetes_systemd_driver() {
        let w = parse(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c3d4e_5f60_7182_93a4_b5c6d7e8f901.slice/cri-containerd-0123abcd.scope",
        );
        assert_eq!(w.pod_uid.as_deref(), Some("1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901"));
        assert_eq!(w.container_id.as_deref(), Some("0123abcd"));
        assert_eq!(w.unit.as_deref(), Some("cri-containerd-0123abcd.scope"));
    }

    #[test]
    fn kubernetes_cgroupfs_driver() {
        let w = parse("/kubepods/besteffort/pod1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901/0123abcd");
        assert_eq!(w.pod_uid.as_deref(), Some("1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901"));
        assert_eq!(w.container_id.as_deref(), Some("0123abcd"));
        assert_eq!(w.unit, None);
    }

    #[test]
    fn plain_cgroup() {
        assert_eq!(parse("/app/worker"), Workload::default());
    }
}
