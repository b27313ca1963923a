//! Denials are counted exactly, scraped by a real Prometheus, logged without
//! flooding, and the shipped alert rules are valid and tested.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use portguard_tests::{Prometheus, Sandbox, http_get, metric_sum, require_root, skip_test};

const POLICY: &str = r#"
[[guard]]
name = "app"
cgroup = "/app"
[[guard.connect]]
peer = "127.0.0.1"
ports = [53]
proto = "udp"
"#;

#[test]
fn prometheus_sees_exactly_the_denials_that_happened() {
    require_root!();
    let mut sb = Sandbox::enforcing("prom", &["/app"], POLICY);
    let addr = sb.agent().metrics_addr();
    let prom = Prometheus::start(&sb.dir, &addr);
    const N: u64 = 37;
    for _ in 0..N {
        assert_eq!(sb.probe("/app", &["connect", "udp", "127.0.0.1", "5353"]), "err EPERM");
    }
    assert_eq!(sb.probe("/app", &["connect", "udp", "127.0.0.1", "53"]), "ok");
    let query = r#"sum(portguard_denials_total{guard="app",op="connect",proto="udp",port="5353"})"#;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = None;
    while Instant::now() < deadline {
        last = prom.query(query);
        if last == Some(N as f64) {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(last, Some(N as f64), "PromQL {query}");
    assert_eq!(prom.query(r#"up{job="portguard"}"#), Some(1.0));
    assert_eq!(
        prom.query(r#"sum(portguard_decisions_total{op="connect",verdict="denied"})"#),
        Some(N as f64)
    );
    assert_eq!(prom.query(r#"sum(portguard_decisions_total{op="connect",verdict="allowed"})"#), Some(1.0));
    assert_eq!(prom.query("portguard_ready"), Some(1.0));
}

#[test]
fn promtool_accepts_the_metrics_page() {
    require_root!();
    let mut sb = Sandbox::enforcing("promtool", &["/app"], POLICY);
    assert_eq!(sb.probe("/app", &["connect", "udp", "127.0.0.1", "5353"]), "err EPERM");
    let addr = sb.agent().metrics_addr();
    let text = http_get(&format!("http://{addr}/metrics"));
    assert_eq!(metric_sum(&text, "portguard_denials_total", &[("port", "5353")]), 1, "{text}");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (installed by `cargo xtask setup`)");
    use std::io::Write as _;
    promtool.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("feed promtool");
    let out = promtool.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(http_get(&format!("http://{addr}/healthz")), "ok\n");
    assert!(http_get(&format!("http://{addr}/readyz")).starts_with("ready"));
}

#[test]
fn the_metrics_endpoint_listens_on_loopback_by_default() {
    require_root!();
    let mut sb = Sandbox::new("loopback");
    sb.cgroup("/app");
    sb.write_policy(POLICY);
    // The one test that uses the default address (127.0.0.1:9464).
    sb.start_agent_with(&["--metrics-addr", "127.0.0.1:9464"]);
    sb.stop_agent();
    let help = Command::new(portguard_tests::agent_bin()).args(["run", "--help"]).output().expect("help");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("[default: 127.0.0.1:9464]"), "the default must be loopback: {help}");
}

#[test]
fn a_million_denied_connects_are_counted_exactly_and_logged_in_a_few_lines() {
    require_root!();
    let mut sb = Sandbox::enforcing("flood", &["/app"], POLICY);
    let addr = sb.agent().metrics_addr();
    const N: u64 = 1_000_000;
    let out = sb.probe("/app", &["flood", "udp", "127.0.0.1", "5353", &N.to_string()]);
    assert_eq!(out, format!("attempted={N} refused={N}"));
    let metrics = || http_get(&format!("http://{addr}/metrics"));
    let text = metrics();
    assert_eq!(metric_sum(&text, "portguard_denials_total", &[("port", "5353")]), N, "exact, in the kernel");
    assert_eq!(metric_sum(&text, "portguard_decisions_total", &[("verdict", "denied")]), N);
    // The kernel sends the first denial of the kind per CPU and second as
    // an event and only counts the rest: a handful of events, none lost.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = metrics();
        let received = metric_sum(&text, "portguard_events_received_total", &[]);
        let lost = metric_sum(&text, "portguard_events_lost_total", &[]);
        assert_eq!(lost, 0, "first-of-kind events lost");
        if received >= 1 {
            eprintln!("flood: {received} events received for {N} denials, {lost} lost");
            assert!(received < N / 100, "{received} events: the kernel did not coalesce");
            break;
        }
        assert!(Instant::now() < deadline, "no denial event received");
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", sb.agent().pid())).expect("agent status");
    let hwm_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmHWM");
    assert!(hwm_kb < 100 * 1024, "agent peak RSS {hwm_kb} kB");
    std::thread::sleep(Duration::from_millis(1500));
    let lines = sb.agent().denials();
    assert!(!lines.is_empty() && lines.len() <= 20, "{} denial lines for one repeated denial", lines.len());
    // A first line stands for one event; a summary line for `repeats` more.
    let firsts = lines.iter().filter(|l| l["repeats"] == 0).count() as u64;
    let repeats: u64 = lines.iter().filter_map(|l| l["repeats"].as_u64()).sum();
    let received = metric_sum(&metrics(), "portguard_events_received_total", &[]);
    assert_eq!(firsts + repeats, received, "the log accounts for every event received");
    // Each event stands for the denials since the previous one of its kind
    // on its CPU; those after the last event are in the exact counters only.
    let logged: u64 = lines.iter().filter_map(|l| l["count"].as_u64()).sum();
    assert!(logged >= received && logged <= N, "the log stands for {logged} denials of {N}");
}

#[test]
fn the_shipped_alert_rules_are_valid_and_pass_their_tests() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/prometheus");
    for args in [["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]] {
        let out = match Command::new("promtool").args(args).current_dir(dir).output() {
            Ok(out) => out,
            Err(e) => skip_test!("promtool not installed ({e}); `cargo xtask setup` installs it"),
        };
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
