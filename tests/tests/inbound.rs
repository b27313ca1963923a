//! Who may reach a guarded port (`from` on bind rules), against the real
//! kernel: clients on other "hosts" (network namespaces joined by veth
//! pairs) reach real servers in guarded cgroups, or get no connection.

use std::{io::BufRead as _, io::BufReader, path::Path, time::Instant};

use portguard_tests::{Host, Running, Sandbox, metric_sum, require_root};

/// A denied SYN is dropped: the client hears nothing and gives up here.
const SHORT_MS: &str = "1000";

fn redis_policy(mode: &str, from: &[String]) -> String {
    let from: Vec<String> = from.iter().map(|a| format!("{a:?}")).collect();
    format!(
        r#"
[[guard]]
name = "db"
cgroup = "/db"
mode = "{mode}"

[[guard.bind]]
ports = [6379]
from = [{}]
owner = "cache-team"
purpose = "session cache"
"#,
        from.join(", ")
    )
}

fn start_redis(sb: &Sandbox, rel: &str, port: u16) -> Running {
    let redis = Path::new("/usr/bin/redis-server");
    assert!(redis.exists(), "redis-server is installed by `cargo xtask setup`");
    let port = port.to_string();
    Running(sb.spawn_in(
        rel,
        redis,
        &[
            "--port",
            &port,
            "--bind",
            "0.0.0.0",
            "--protected-mode",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ],
    ))
}

/// Waits until `program`'s TCP port is live in the sandbox (the agent
/// writes `port_opened` for it).
fn wait_live(sb: &Sandbox, proto: &str, port: u16) {
    sb.wait_for_audit_record("port live", |r| {
        r["event"] == "port_opened" && r["port"] == port && r["proto"] == proto
    });
}

/// redis-cli PING from `host`; "timed out" when no connection came within
/// 2 s (this redis-cli has no connect timeout of its own: coreutils'
/// `timeout` stops it).
fn redis_ping(host: &Host, server: &str, port: u16) -> String {
    let out = host.run(
        Path::new("/usr/bin/timeout"),
        &["2", "/usr/bin/redis-cli", "-h", server, "-p", &port.to_string(), "PING"],
    );
    if out.status.code() == Some(124) {
        return "timed out".into();
    }
    String::from_utf8_lossy(&out.stdout).trim().to_owned() + String::from_utf8_lossy(&out.stderr).trim()
}

fn accept_counter(metrics: &str, name: &str, port: u16) -> u64 {
    metric_sum(metrics, name, &[("op", "accept"), ("port", &port.to_string())])
}

#[test]
fn from_lets_only_listed_hosts_reach_a_real_server() {
    require_root!();
    let mut sb = Sandbox::new("inbound-redis");
    sb.cgroup("/db");
    let a = sb.add_host(1);
    let b = sb.add_host(2);
    sb.start_agent(&redis_policy("enforce", &[a.v4.to_string(), a.v6.to_string()]));
    let _redis = start_redis(&sb, "/db", 6379);
    wait_live(&sb, "tcp", 6379);

    assert_eq!(redis_ping(&a, &a.server_v4.to_string(), 6379), "PONG", "the listed host");
    let refused = redis_ping(&b, &b.server_v4.to_string(), 6379);
    assert!(refused.contains("timed out"), "the other host gets no connection at all: {refused}");

    // What the refusal looked like to the agent: the peer, its port, the
    // local port, why.
    let e = sb.agent().wait_for("accept denial", |l| l["event"] == "denial" && l["op"] == "accept");
    assert_eq!(
        (e["addr"].as_str(), e["port"].as_u64(), e["verdict"].as_str(), e["reason"].as_str()),
        (Some(b.v4.to_string().as_str()), Some(6379), Some("denied"), Some("not_from"))
    );
    assert!(e["peer_port"].as_u64().is_some_and(|p| p > 0), "{e}");
    let r = sb.wait_for_audit_record("accept record", |r| r["event"] == "denied" && r["op"] == "accept");
    assert_eq!((r["addr"].as_str(), r["port"].as_u64()), (Some(b.v4.to_string().as_str()), Some(6379)));
    assert!(r["peer_port"].as_u64().is_some_and(|p| p > 0), "{r}");
    assert_eq!(r["reason"], "not_from");
    let metrics = sb.agent().metrics();
    // Counted per SYN: the client's retransmissions count too (exact
    // counts are the SYN flood test's), and no other port or op moved.
    assert!(accept_counter(&metrics, "portguard_denials_total", 6379) >= 1, "{metrics}");
    assert_eq!(
        metric_sum(&metrics, "portguard_denials_total", &[]),
        accept_counter(&metrics, "portguard_denials_total", 6379)
    );
}

#[test]
fn a_dual_stack_listener_is_judged_by_ipv4_and_ipv6_sources() {
    require_root!();
    let mut sb = Sandbox::new("inbound-dual");
    sb.cgroup("/db");
    let a = sb.add_host(1);
    let b = sb.add_host(2);
    let policy = format!(
        "[[guard]]\nname = \"db\"\ncgroup = \"/db\"\n[[guard.bind]]\nports = [7000]\nfrom = [\"{}/32\", \"fd00:200:1::/64\"]\n",
        a.v4
    );
    sb.start_agent(&policy);
    // One socket on [::]:7000: IPv4 clients arrive v4-mapped.
    let _server = hold_on(&sb, "/db", "tcp", "::", 7000);
    let try_ = |h: &Host, ip: String| h.probe(&["tcp-try", &ip, "7000", SHORT_MS]);
    assert_eq!(try_(&a, a.server_v4.to_string()), "ok", "IPv4 (v4-mapped on the socket) from the listed /32");
    assert_eq!(try_(&a, a.server_v6.to_string()), "ok", "IPv6 from the listed /64");
    assert_eq!(try_(&b, b.server_v4.to_string()), "timeout", "IPv4 from elsewhere");
    assert_eq!(try_(&b, b.server_v6.to_string()), "timeout", "IPv6 from elsewhere");
}

/// `pg-probe hold PROTO IP PORT` in `rel`, once its port is live.
fn hold_on(sb: &Sandbox, rel: &str, proto: &str, ip: &str, port: u16) -> Running {
    let mut child = sb.spawn_probe(rel, &["hold", proto, ip, &port.to_string()]);
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("stdout")).read_line(&mut line).expect("read");
    assert_eq!(line.trim(), format!("ok port={port}"), "hold {proto} {ip} {port} in {rel}");
    Running(child)
}

#[test]
fn audit_mode_lets_everyone_in_and_reports_the_unlisted() {
    require_root!();
    let mut sb = Sandbox::new("inbound-audit");
    sb.cgroup("/db");
    let a = sb.add_host(1);
    let b = sb.add_host(2);
    sb.start_agent(&redis_policy("audit", &[a.v4.to_string()]));
    let _redis = start_redis(&sb, "/db", 6379);
    wait_live(&sb, "tcp", 6379);
    assert_eq!(redis_ping(&a, &a.server_v4.to_string(), 6379), "PONG");
    assert_eq!(redis_ping(&b, &b.server_v4.to_string(), 6379), "PONG", "audit mode lets it through");
    let e = sb.agent().wait_for("audit", |l| l["event"] == "denial" && l["op"] == "accept");
    assert_eq!(
        (e["verdict"].as_str(), e["addr"].as_str()),
        (Some("audited"), Some(b.v4.to_string().as_str()))
    );
    let metrics = sb.agent().metrics();
    assert_eq!(accept_counter(&metrics, "portguard_audit_violations_total", 6379), 1, "{metrics}");
    assert_eq!(accept_counter(&metrics, "portguard_denials_total", 6379), 0, "{metrics}");
    assert_eq!(
        metric_sum(&metrics, "portguard_decisions_total", &[("op", "accept"), ("verdict", "allowed")]),
        1,
        "one connection from the listed host: its SYN counts, not its ACK: {metrics}"
    );
}

#[test]
fn a_live_reload_opens_and_closes_reach_at_once() {
    require_root!();
    let mut sb = Sandbox::new("inbound-reload");
    sb.cgroup("/db");
    let a = sb.add_host(1);
    let b = sb.add_host(2);
    sb.start_agent(&redis_policy("enforce", &[a.v4.to_string()]));
    let _redis = start_redis(&sb, "/db", 6379);
    // An unguarded server beside it, in the sandbox's root cgroup.
    let _free = start_redis(&sb, "/", 6380);
    wait_live(&sb, "tcp", 6379);
    let b_server = b.server_v4.to_string();
    assert!(redis_ping(&b, &b_server, 6379).contains("timed out"));
    assert_eq!(redis_ping(&b, &b_server, 6380), "PONG", "the unguarded server is untouched");

    sb.reload_policy(&redis_policy("enforce", &[a.v4.to_string(), b.v4.to_string()]));
    assert_eq!(redis_ping(&b, &b_server, 6379), "PONG", "added: in at once, same listener");
    sb.reload_policy(&redis_policy("enforce", &[a.v4.to_string()]));
    assert!(redis_ping(&b, &b_server, 6379).contains("timed out"), "removed: its next connection is refused");
    assert_eq!(redis_ping(&a, &a.server_v4.to_string(), 6379), "PONG");
    assert_eq!(redis_ping(&b, &b_server, 6380), "PONG");
}

#[test]
fn udp_datagrams_come_only_from_listed_hosts_and_replies_need_no_connect_rule() {
    require_root!();
    let mut sb = Sandbox::new("inbound-udp");
    sb.cgroup("/svc");
    let a = sb.add_host(1);
    let b = sb.add_host(2);
    let c = sb.add_host(3);
    let policy = format!(
        "[[guard]]\nname = \"svc\"\ncgroup = \"/svc\"\n[[guard.bind]]\nports = [5353]\nproto = \"udp\"\nfrom = [\"{}\", \"{}\"]\n",
        a.v4, a.v6
    );
    sb.start_agent(&policy);
    let _server = hold_serve(&sb, "/svc", "::", 5353);
    assert_eq!(a.probe(&["udp-ask", &a.server_v4.to_string(), "5353", SHORT_MS]), "reply echo", "IPv4");
    assert_eq!(a.probe(&["udp-ask", &a.server_v6.to_string(), "5353", SHORT_MS]), "reply echo", "IPv6");
    assert_eq!(b.probe(&["udp-ask", &b.server_v4.to_string(), "5353", SHORT_MS]), "timeout", "unlisted");
    let e = sb.agent().wait_for("receive denial", |l| l["event"] == "denial" && l["op"] == "receive");
    assert_eq!((e["addr"].as_str(), e["port"].as_u64()), (Some(b.v4.to_string().as_str()), Some(5353)));

    // The same socket cannot start a send to a peer that never spoke to
    // it: c waits on a port, a asks the server to send there.
    let waiting = c.spawn_probe(&["udp-wait", "0.0.0.0", "4000", "1500"]);
    let asked =
        a.probe(&["udp-ask", &a.server_v4.to_string(), "5353", "3000", "send-to", &c.v4.to_string(), "4000"]);
    assert_eq!(asked, "reply err EPERM", "no connect rule, no query from that peer");
    let out = waiting.wait_with_output().expect("udp-wait");
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("timeout\n"), "{:?}", out);
}

/// `pg-probe udp-serve IP PORT` in `rel`, once bound.
fn hold_serve(sb: &Sandbox, rel: &str, ip: &str, port: u16) -> Running {
    let mut child = sb.spawn_probe(rel, &["udp-serve", ip, &port.to_string()]);
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("stdout")).read_line(&mut line).expect("read");
    assert_eq!(line.trim(), format!("ok port={port}"));
    Running(child)
}

#[test]
fn dnsmasq_answers_real_dig_clients_with_only_its_bind_rule() {
    require_root!();
    let mut sb = Sandbox::new("inbound-dns");
    sb.cgroup("/dns");
    let a = sb.add_host(1);
    let b = sb.add_host(2);
    sb.start_agent(
        "[[guard]]\nname = \"dns\"\ncgroup = \"/dns\"\n[[guard.bind]]\nports = [53]\nproto = \"both\"\nowner = \"net\"\npurpose = \"resolver\"\n",
    );
    // Upstream for names it does not know: host b, which never queries it.
    let upstream = format!("--server={}", b.v4);
    let _dns = sb.dnsmasq(
        "/dns",
        None,
        53,
        &["--address=/known.test/10.1.2.3", "--address=/known.test/fd00::123", &upstream, "--log-facility=-"],
    );
    wait_live(&sb, "udp", 53);
    let dig = |h: &Host, server: String, name: &str, ty: &str| {
        h.run_text(
            Path::new("/usr/bin/dig"),
            &[&format!("@{server}"), name, ty, "+short", "+time=2", "+tries=1"],
        )
    };
    assert_eq!(dig(&a, a.server_v4.to_string(), "known.test", "A"), "10.1.2.3", "over IPv4");
    assert_eq!(dig(&a, a.server_v6.to_string(), "known.test", "AAAA"), "fd00::123", "over IPv6");

    // A name it must forward: the send to b (no connect rule, b never
    // asked) is refused; b hears nothing.
    let upstream_listener = b.spawn_probe(&["udp-wait", "0.0.0.0", "53", "3000"]);
    let forwarded = dig(&a, a.server_v4.to_string(), "unknown.test", "A");
    assert!(!forwarded.contains("10."), "no answer from upstream: {forwarded}");
    let out = upstream_listener.wait_with_output().expect("udp-wait");
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("timeout\n"), "b heard dnsmasq: {out:?}");
    let e = sb.agent().wait_for("refused forward", |l| {
        l["event"] == "denial" && l["addr"] == b.v4.to_string() && l["port"] == 53 && l["comm"] == "dnsmasq"
    });
    assert!(matches!(e["op"].as_str(), Some("sendmsg" | "connect")), "{e}");
}

#[test]
fn a_listener_that_went_live_without_bind_receives_nothing() {
    require_root!();
    let mut sb = Sandbox::new("inbound-unbound");
    sb.cgroup("/app");
    let a = sb.add_host(1);
    sb.start_agent("[[guard]]\nname = \"app\"\ncgroup = \"/app\"\n[[guard.bind]]\nports = [8080]\n");
    let mut child = Running(sb.spawn_probe("/app", &["hold-unbound"]));
    let mut line = String::new();
    BufReader::new(child.0.stdout.as_mut().expect("stdout")).read_line(&mut line).expect("read");
    let Some(port) = line.trim().strip_prefix("ok port=") else {
        // The BPF LSM refused the listen() itself: the stronger close.
        assert_eq!(line.trim(), "err EPERM");
        return;
    };
    assert_eq!(a.probe(&["tcp-try", &a.server_v4.to_string(), port, SHORT_MS]), "timeout");
    let e = sb.agent().wait_for("unapproved listener", |l| l["event"] == "denial" && l["op"] == "accept");
    assert_eq!((e["reason"].as_str(), e["port"].as_u64()), (Some("unapproved_port"), port.parse().ok()));
    // The same listen() unguarded is reachable.
    let mut free = Running(sb.spawn_probe("/", &["hold-unbound"]));
    let mut line = String::new();
    BufReader::new(free.0.stdout.as_mut().expect("stdout")).read_line(&mut line).expect("read");
    let free_port = line.trim().strip_prefix("ok port=").expect("unguarded listen").to_owned();
    assert_eq!(a.probe(&["tcp-try", &a.server_v4.to_string(), &free_port, SHORT_MS]), "ok");
}

#[test]
fn a_syn_flood_at_a_denied_port_is_counted_exactly_and_reported_coalesced() {
    require_root!();
    const SYNS: u64 = 100_000;
    let mut sb = Sandbox::new("inbound-flood");
    sb.cgroup("/db");
    let a = sb.add_host(1);
    let b = sb.add_host(2);
    sb.start_agent(&redis_policy("enforce", &[a.v4.to_string()]));
    let _server = hold_on(&sb, "/db", "tcp", "0.0.0.0", 6379);
    let before = sb.agent().metrics();
    let received_before = metric_sum(&before, "portguard_events_received_total", &[]);
    let cpu_before = agent_cpu_ticks(sb.agent().pid());
    let start = Instant::now();
    let sent =
        b.probe(&["syn-flood", &b.v4.to_string(), &b.server_v4.to_string(), "6379", &SYNS.to_string()]);
    let seconds = start.elapsed().as_secs() + 1;
    assert_eq!(sent, format!("sent={SYNS}"));
    let metrics = sb.agent().metrics();
    assert_eq!(accept_counter(&metrics, "portguard_denials_total", 6379), SYNS, "exact: {metrics}");
    // Coalesced in the kernel: at most one event per CPU per second (and
    // one more per CPU for the interval the flood started in).
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let events = metric_sum(&metrics, "portguard_events_received_total", &[]) - received_before;
    assert!(events >= 1 && events <= cpus * (seconds + 1), "{events} events for {SYNS} SYNs in {seconds} s");
    let agent_pid = sb.agent().pid();
    let cpu_after = agent_cpu_ticks(agent_pid);
    let status = std::fs::read_to_string(format!("/proc/{agent_pid}/status")).expect("agent status");
    let rss = status.lines().find(|l| l.starts_with("VmRSS")).unwrap_or("VmRSS: ?");
    eprintln!(
        "SYN flood: {SYNS} SYNs, {events} events, agent CPU {} ticks (1/100 s) during the flood, {rss}",
        cpu_after - cpu_before
    );
}

/// utime + stime of `pid`, in clock ticks.
fn agent_cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("agent stat");
    let fields: Vec<&str> = stat.rsplit_once(") ").map_or(vec![], |(_, r)| r.split_whitespace().collect());
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

#[test]
fn a_kernel_chosen_port_is_a_client_and_refusing_one_says_why() {
    require_root!();
    let mut sb = Sandbox::new("inbound-ephemeral");
    sb.cgroup("/app");
    sb.cgroup("/strict");
    let a = sb.add_host(1);
    let b = sb.add_host(2);
    sb.start_agent(&format!(
        "[[guard]]\nname = \"app\"\ncgroup = \"/app\"\nallow_ephemeral_bind = true\n[[guard.connect]]\npeer = \"{}\"\nports = [5300]\nproto = \"udp\"\n\n[[guard]]\nname = \"strict\"\ncgroup = \"/strict\"\n",
        a.v4
    ));
    // A client on a kernel-chosen port hears the server it asked...
    let mut server = Running(a.spawn_probe(&["udp-serve", "0.0.0.0", "5300"]));
    let mut line = String::new();
    BufReader::new(server.0.stdout.as_mut().expect("stdout")).read_line(&mut line).expect("read");
    assert_eq!(sb.probe("/app", &["udp-ask", &a.v4.to_string(), "5300", SHORT_MS]), "reply echo");
    // ...but nobody else: its port is no approved server.
    let mut waiting = sb.spawn_probe("/app", &["udp-wait", "0.0.0.0", "0", "1500"]);
    let mut line = String::new();
    BufReader::new(waiting.stdout.as_mut().expect("stdout")).read_line(&mut line).expect("read");
    let port = line.trim().strip_prefix("ok port=").expect("bound").to_owned();
    assert_eq!(b.probe(&["udp-ask", &b.server_v4.to_string(), &port, "300"]), "timeout");
    let mut rest = String::new();
    BufReader::new(waiting.stdout.take().expect("stdout")).read_line(&mut rest).expect("read");
    assert_eq!(rest.trim(), "timeout", "the unsolicited datagram never arrived");
    let _ = waiting.wait();
    let e = sb.agent().wait_for("receive denial", |l| l["event"] == "denial" && l["op"] == "receive");
    assert_eq!(e["reason"], "unapproved_port");
    // A TCP listener on a kernel-chosen port receives no connection.
    let (_listener, lport) = hold_on_any(&sb, "/app");
    assert_eq!(b.probe(&["tcp-try", &b.server_v4.to_string(), &lport, SHORT_MS]), "timeout");

    // Without the flag, port 0 is refused and the log says why in words.
    assert_eq!(sb.probe("/strict", &["bind", "udp", "0.0.0.0", "0"]), "err EPERM");
    let e = sb.agent().wait_for("port 0 refusal", |l| l["event"] == "denial" && l["guard"] == "strict");
    assert_eq!(e["message"], "bind to port 0 refused: guard strict does not set allow_ephemeral_bind");
}

/// A TCP listener on a kernel-chosen port (bind to port 0) in `rel`.
fn hold_on_any(sb: &Sandbox, rel: &str) -> (Running, String) {
    let mut child = sb.spawn_probe(rel, &["hold", "tcp", "0.0.0.0", "0"]);
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("stdout")).read_line(&mut line).expect("read");
    let port = line.trim().strip_prefix("ok port=").expect("listening").to_owned();
    (Running(child), port)
}
