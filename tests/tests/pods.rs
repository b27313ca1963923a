//! Pod guards: the real agent follows a (stand-in) Kubernetes API server,
//! finds each selected pod's cgroup where the kubelet puts it (systemd and
//! cgroupfs drivers), and the kernel guards the pod's containers.

use portguard_tests::{
    CgroupDriver, Sandbox,
    kube_api::{FakeApi, pod_fixture, pod_uid},
    require_root,
};

use serde_json::{Value, json};

const NODE: &str = "node-a";

const POLICY: &str = r#"
[[guard]]
name = "payments-api"
pods = { namespace = "payments", labels = { app = "api" } }
[[guard.bind]]
ports = [8080]
"#;

/// Starts the agent on `policy`, pointed at `api` as node-a.
fn start(sb: &mut Sandbox, api: &FakeApi, policy: &str) {
    sb.write_policy(policy);
    sb.start_agent_with(&["--kube-api", &api.url(), "--node-name", NODE]);
}

fn bind(sb: &Sandbox, cgroup: &str, port: &str) -> String {
    sb.probe(cgroup, &["bind", "tcp", "127.0.0.1", port])
}

fn is_guarded_pod(l: &Value, pod: &str) -> bool {
    l["message"] == "guarded cgroup appeared" && l["pod"] == pod
}

fn is_released_pod(l: &Value, pod: &str) -> bool {
    l["message"].as_str().is_some_and(|m| m.starts_with("pod is no longer guarded")) && l["pod"] == pod
}

fn guards_the_selected_pods(driver: CgroupDriver, test: &str) {
    let api = FakeApi::start();
    let mut sb = Sandbox::new(test);
    let mut containers = Vec::new();
    for name in ["payments-api", "payments-worker", "shop-api", "payments-api-node-b"] {
        let pod = pod_fixture(name);
        // Every pod gets cgroups here, even the one scheduled on node-b:
        // only the field selector keeps the agent away from it.
        containers.push(sb.kubelet_pod(driver, &pod));
        api.add(pod);
    }
    start(&mut sb, &api, POLICY);
    let [api_pod, worker, shop, other_node] = &containers[..] else { unreachable!() };

    assert_eq!(bind(&sb, api_pod, "8081"), "err EPERM", "the selected pod's container is guarded");
    assert_eq!(bind(&sb, api_pod, "8080"), "ok port=8080");
    assert_eq!(bind(&sb, worker, "8081"), "ok port=8081", "other labels: not guarded");
    assert_eq!(bind(&sb, shop, "8081"), "ok port=8081", "other namespace: not guarded");
    assert_eq!(bind(&sb, other_node, "8081"), "ok port=8081", "another node's pod: not guarded");

    // A container that starts later in the pod is covered by the pod's cgroup.
    let sidecar = format!("{}/sidecar", api_pod.rsplit_once('/').expect("pod/container").0);
    sb.cgroup(&sidecar);
    assert_eq!(bind(&sb, &sidecar, "8081"), "err EPERM");

    // The watch follows the list; on a loaded machine it may not have been
    // sent yet when the binds above are done.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let requests = loop {
        let requests = api.requests();
        if requests.iter().any(|r| r.contains("watch=true")) || std::time::Instant::now() > deadline {
            break requests;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(
        requests.iter().all(|r| r.contains(&format!("fieldSelector=spec.nodeName={NODE}"))),
        "every list and watch asks for this node's pods only: {requests:?}"
    );
    assert!(requests.iter().any(|r| r.contains("watch=true")), "the agent watches: {requests:?}");

    let status = sb.status();
    let guards = status["guards"].as_array().expect("guards");
    assert_eq!(guards.len(), 1, "{status:#}");
    assert_eq!(guards[0]["name"], "payments-api");
    assert_eq!(guards[0]["pod"], "payments/payments-api-7d9f8b6c5-x2x4q");

    // The port inventory knows the pod guard too: from the kernel for the
    // live inventory, and from the agent's state for `portguard scan`.
    let mut listener = sb.hold(api_pod, "tcp", 8080);
    let (code, out, err) =
        sb.scan(&["--state-dir", sb.state_dir().to_str().expect("utf-8"), "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let scan: Value = serde_json::from_str(&out).expect("scan json");
    let port = scan["ports"]
        .as_array()
        .expect("ports")
        .iter()
        // Its own listener: scan lists every namespace's ports, and other
        // tests may hold 8080 in theirs meanwhile.
        .find(|p| p["port"] == 8080 && p["pid"] == listener.id())
        .expect("the pod's listener on 8080 in scan")
        .clone();
    assert_eq!(
        (port["status"].as_str(), port["guard"].as_str()),
        (Some("approved"), Some("payments-api")),
        "{port:#}"
    );
    assert_eq!(port["pod_uid"], pod_uid(&pod_fixture("payments-api")));
    let opened =
        sb.wait_for_audit_record("the pod's listener", |r| r["event"] == "port_opened" && r["port"] == 8080);
    assert_eq!(
        (opened["status"].as_str(), opened["guard"].as_str()),
        (Some("approved"), Some("payments-api"))
    );
    assert_eq!(opened["pod_uid"], pod_uid(&pod_fixture("payments-api")));
    listener.kill().expect("kill");
    listener.wait().expect("wait");
}

#[test]
fn pod_guards_cover_the_selected_pods_under_the_systemd_driver() {
    require_root!();
    guards_the_selected_pods(CgroupDriver::Systemd, "pods-systemd");
}

#[test]
fn pod_guards_cover_the_selected_pods_under_the_cgroupfs_driver() {
    require_root!();
    guards_the_selected_pods(CgroupDriver::Cgroupfs, "pods-cgroupfs");
}

#[test]
fn pods_that_arrive_change_labels_and_leave_are_followed() {
    require_root!();
    let api = FakeApi::start();
    let mut sb = Sandbox::new("pods-follow");
    start(&mut sb, &api, POLICY);
    sb.agent().wait_for("pod guard waiting", |l| {
        l["guard"] == "payments-api"
            && l["message"].as_str().is_some_and(|m| m.contains("waiting for matching pods"))
    });

    // Scheduled after the agent started: the API event comes first, the
    // kubelet makes the cgroup afterwards.
    let pod = pod_fixture("payments-api");
    let (uid, name) = (pod_uid(&pod), "payments/payments-api-7d9f8b6c5-x2x4q");
    let mark = sb.agent().mark();
    api.add(pod.clone());
    std::thread::sleep(std::time::Duration::from_millis(300));
    let container = sb.kubelet_pod(CgroupDriver::Systemd, &pod);
    sb.agent().wait_for_after(mark, "new pod guarded", |l| is_guarded_pod(l, name));
    assert_eq!(bind(&sb, &container, "8081"), "err EPERM");

    // Relabelled out of the selector: released.
    let mark = sb.agent().mark();
    api.modify(&uid, |p| p["metadata"]["labels"]["app"] = json!("api-canary"));
    sb.agent().wait_for_after(mark, "relabelled pod released", |l| is_released_pod(l, name));
    assert_eq!(bind(&sb, &container, "8081"), "ok port=8081");

    // Relabelled back in: guarded again.
    let mark = sb.agent().mark();
    api.modify(&uid, |p| p["metadata"]["labels"]["app"] = json!("api"));
    sb.agent().wait_for_after(mark, "relabelled pod guarded", |l| is_guarded_pod(l, name));
    assert_eq!(bind(&sb, &container, "8081"), "err EPERM");

    // Deleted: no longer tracked (its cgroup lingers here; the kubelet
    // would remove it).
    let mark = sb.agent().mark();
    api.delete(&uid);
    sb.agent().wait_for_after(mark, "deleted pod released", |l| is_released_pod(l, name));
    assert_eq!(bind(&sb, &container, "8081"), "ok port=8081");
}

#[test]
fn with_the_api_down_the_agent_keeps_enforcing_and_catches_up() {
    require_root!();
    let mut api = FakeApi::start();
    let mut sb = Sandbox::new("pods-apidown");
    let first = pod_fixture("payments-api");
    let first_container = sb.kubelet_pod(CgroupDriver::Cgroupfs, &first);
    api.add(first.clone());
    start(&mut sb, &api, POLICY);
    assert_eq!(bind(&sb, &first_container, "8081"), "err EPERM");

    // The API server dies: what the agent knows stays enforced.
    let mark = sb.agent().mark();
    api.stop();
    sb.agent().wait_for_after(mark, "API unreachable warning", |l| {
        l["level"] == "WARN"
            && l["message"].as_str().is_some_and(|m| m.starts_with("Kubernetes API unreachable"))
    });
    assert_eq!(bind(&sb, &first_container, "8081"), "err EPERM", "still enforced with the API down");

    // A pod scheduled while the agent cannot hear about it is guarded once
    // the server is back (the watch resumes from its resourceVersion).
    let mut second = pod_fixture("payments-api");
    second["metadata"]["uid"] = json!("1d5b9f3e-7c2a-4e8d-b4f6-0a2c4e6f8b95");
    second["metadata"]["name"] = json!("payments-api-7d9f8b6c5-r5t7y");
    second["status"]["containerStatuses"][0]["containerID"] =
        json!("containerd://2a4c6e8f0b1d3f5a7c9e1b3d5f7a9c1e3b5d7f9a1c3e5b7d9f1a3c5e7b9d1f3a");
    let second_container = sb.kubelet_pod(CgroupDriver::Cgroupfs, &second);
    api.add(second);
    let mark = sb.agent().mark();
    api.restart();
    sb.agent().wait_for_after(mark, "pod added while down is guarded", |l| {
        is_guarded_pod(l, "payments/payments-api-7d9f8b6c5-r5t7y")
    });
    assert_eq!(bind(&sb, &second_container, "8081"), "err EPERM");

    // Down again; the first pod is deleted meanwhile and the history is
    // compacted, so the resumed watch gets 410 Gone and the agent lists
    // again: the deletion it never saw as an event still takes effect.
    api.stop();
    api.delete(&pod_uid(&first));
    api.compact();
    let mark = sb.agent().mark();
    api.restart();
    sb.agent().wait_for_after(mark, "relist drops the deleted pod", |l| {
        is_released_pod(l, "payments/payments-api-7d9f8b6c5-x2x4q")
    });
    assert_eq!(bind(&sb, &first_container, "8081"), "ok port=8081");
    assert_eq!(bind(&sb, &second_container, "8081"), "err EPERM");

    let metrics = sb.agent().metrics();
    assert_eq!(portguard_tests::metric_sum(&metrics, "portguard_kube_pods", &[]), 1, "{metrics}");
    assert!(
        portguard_tests::metric_sum(&metrics, "portguard_kube_watch_errors_total", &[]) >= 1,
        "{metrics}"
    );
    assert_eq!(portguard_tests::metric_sum(&metrics, "portguard_guarded_cgroups", &[]), 1, "{metrics}");
}

#[test]
fn a_restart_with_the_api_down_keeps_guarding_the_pods_last_known() {
    require_root!();
    let mut api = FakeApi::start();
    let mut sb = Sandbox::new("pods-restart");
    let pod = pod_fixture("payments-api");
    let container = sb.kubelet_pod(CgroupDriver::Systemd, &pod);
    api.add(pod.clone());
    start(&mut sb, &api, POLICY);
    assert_eq!(bind(&sb, &container, "8081"), "err EPERM");

    // Agent and API server both go down; the agent comes back first.
    sb.stop_agent();
    api.stop();
    sb.start_agent_with(&["--kube-api", &api.url(), "--node-name", NODE, "--kube-sync-timeout", "1s"]);
    sb.agent().wait_for("start-up without a list", |l| {
        l["message"].as_str().is_some_and(|m| m.starts_with("no pod list from the Kubernetes API yet"))
            && l["last_known_pods"] == 1
    });
    assert_eq!(bind(&sb, &container, "8081"), "err EPERM", "the last run's pods stay guarded");

    // The server returns without the pod: the list releases it.
    api.delete(&pod_uid(&pod));
    let mark = sb.agent().mark();
    api.restart();
    sb.agent().wait_for_after(mark, "list releases the deleted pod", |l| {
        is_released_pod(l, "payments/payments-api-7d9f8b6c5-x2x4q")
    });
    assert_eq!(bind(&sb, &container, "8081"), "ok port=8081");
}

#[test]
fn pod_guards_without_a_kubernetes_api_exit_2() {
    require_root!();
    let sb = Sandbox::new("pods-noapi");
    let (code, out) = sb.run_agent_expecting_failure(POLICY);
    assert_eq!(code, 2, "{out}");
    let line =
        out.lines().find(|l| l.contains("selects pods")).unwrap_or_else(|| panic!("no error line: {out}"));
    assert!(
        line.contains("policy.toml") && line.contains("payments-api") && line.contains("--kube-api"),
        "{line}"
    );
    assert!(!sb.bpffs.exists(), "nothing may be pinned after a refused start");
}
