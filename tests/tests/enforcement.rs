//! The core guarantees, against the real kernel: what a guard allows passes,
//! everything else fails with EPERM and is reported; unguarded cgroups are
//! untouched; the known ways around a sock_addr hook are closed.

use portguard_tests::{Sandbox, require_root};

/// A guard on /app that may bind 8080/tcp and reach `port` on 127.0.0.1/tcp.
fn app_policy(port: u16) -> String {
    format!(
        r#"
[[guard]]
name = "app"
cgroup = "/app"

[[guard.bind]]
ports = [8080]

[[guard.bind]]
ports = [9090]
address = "127.0.0.1"
proto = "both"

[[guard.connect]]
peer = "127.0.0.1"
ports = [{port}]
"#
    )
}

#[test]
fn bind_is_allowed_only_for_listed_ports() {
    require_root!();
    let sb = Sandbox::enforcing("bind", &["/app"], &app_policy(1));
    assert_eq!(sb.probe("/app", &["bind", "tcp", "127.0.0.1", "8080"]), "ok port=8080");
    assert_eq!(sb.probe("/app", &["bind", "tcp", "0.0.0.0", "8080"]), "ok port=8080");
    assert_eq!(
        sb.probe("/app", &["bind", "tcp", "::", "8080"]),
        "ok port=8080",
        "port rules do not depend on family"
    );
    assert_eq!(sb.probe("/app", &["bind", "tcp", "127.0.0.1", "8081"]), "err EPERM");
    assert_eq!(sb.probe("/app", &["bind", "udp", "127.0.0.1", "8080"]), "err EPERM", "the rule is tcp only");
    // Port 0 (kernel-chosen) is a port nobody approved.
    assert_eq!(sb.probe("/app", &["bind", "tcp", "127.0.0.1", "0"]), "err EPERM");
}

#[test]
fn bind_address_restriction_holds_for_every_form_of_the_address() {
    require_root!();
    let sb = Sandbox::enforcing("bindaddr", &["/app"], &app_policy(1));
    assert_eq!(sb.probe("/app", &["bind", "tcp", "127.0.0.1", "9090"]), "ok port=9090");
    assert_eq!(sb.probe("/app", &["bind", "udp", "127.0.0.1", "9090"]), "ok port=9090");
    assert_eq!(
        sb.probe("/app", &["bind", "tcp", "::ffff:127.0.0.1", "9090"]),
        "ok port=9090",
        "v4-mapped is the same address"
    );
    assert_eq!(
        sb.probe("/app", &["bind", "tcp", "0.0.0.0", "9090"]),
        "err EPERM",
        "wildcard is wider than loopback"
    );
    assert_eq!(
        sb.probe("/app", &["bind", "tcp", "::", "9090"]),
        "err EPERM",
        "dual-stack wildcard is wider too"
    );
    assert_eq!(sb.probe("/app", &["bind", "tcp", "::1", "9090"]), "err EPERM");
}

#[test]
fn af_unspec_bind_is_judged_as_ipv4() {
    require_root!();
    let sb = Sandbox::enforcing("unspec", &["/app"], &app_policy(1));
    assert_eq!(sb.probe("/app", &["bind-unspec", "tcp", "8081"]), "err EPERM");
    assert_eq!(sb.probe("/app", &["bind-unspec", "tcp", "8080"]), "ok port=8080");
    // 9090 is allowed on 127.0.0.1 only; AF_UNSPEC binds 0.0.0.0.
    assert_eq!(sb.probe("/app", &["bind-unspec", "tcp", "9090"]), "err EPERM");
}

#[test]
fn connect_reaches_only_listed_peers() {
    require_root!();
    let mut sb = Sandbox::new("connect");
    sb.cgroup("/app");
    let (_allowed, allowed_port) = sb.tcp_listener("127.0.0.1");
    let (_other, other_port) = sb.tcp_listener("127.0.0.1");
    sb.start_agent(&app_policy(allowed_port));
    let (a, o) = (allowed_port.to_string(), other_port.to_string());
    assert_eq!(sb.probe("/app", &["connect", "tcp", "127.0.0.1", &a]), "ok");
    assert_eq!(sb.probe("/app", &["connect", "tcp", "127.0.0.1", &o]), "err EPERM");
    assert_eq!(
        sb.probe("/app", &["connect", "tcp", "127.0.0.2", &a]),
        "err EPERM",
        "peer is 127.0.0.1/32 only"
    );
    assert_eq!(sb.probe("/app", &["connect", "udp", "127.0.0.1", &a]), "err EPERM", "the rule is tcp only");
    // The same peer written v4-mapped on an AF_INET6 socket meets the v4 rule.
    assert_eq!(sb.probe("/app", &["connect", "tcp", "::ffff:127.0.0.1", &a]), "ok");
    assert_eq!(sb.probe("/app", &["connect", "tcp", "::ffff:127.0.0.1", &o]), "err EPERM");
}

#[test]
fn unconnected_udp_cannot_slip_past_the_connect_policy() {
    require_root!();
    let sb = Sandbox::enforcing(
        "sendto",
        &["/app"],
        r#"
[[guard]]
name = "app"
cgroup = "/app"
[[guard.connect]]
peer = "127.0.0.1"
ports = [5353]
proto = "udp"
"#,
    );
    assert_eq!(sb.probe("/app", &["sendto", "127.0.0.1", "5353"]), "ok");
    assert_eq!(sb.probe("/app", &["sendto", "127.0.0.1", "5354"]), "err EPERM");
    assert_eq!(sb.probe("/app", &["sendto", "127.0.0.2", "5353"]), "err EPERM");
    // A v4-mapped destination runs sendmsg4 in the kernel; still judged.
    assert_eq!(sb.probe("/app", &["sendto", "::ffff:127.0.0.1", "5354"]), "err EPERM");
    assert_eq!(sb.probe("/app", &["sendto", "::ffff:127.0.0.1", "5353"]), "ok");
    assert_eq!(sb.probe("/app", &["sendto", "::1", "5353"]), "err EPERM", "no IPv6 rule");
}

#[test]
fn connecting_to_the_unspecified_address_is_judged_as_loopback() {
    require_root!();
    let mut sb = Sandbox::new("zero");
    let (_l, port) = sb.tcp_listener("0.0.0.0");
    let p = port.to_string();
    sb.cgroup("/app");
    // Allows 10.0.0.0/8 and 0.0.0.0/32 literally, but not loopback.
    sb.start_agent(&format!(
        r#"
[[guard]]
name = "app"
cgroup = "/app"
[[guard.connect]]
peer = ["10.0.0.0/8", "0.0.0.0/32", "::/128"]
ports = [{port}]
"#
    ));
    assert_eq!(sb.probe("/app", &["connect", "tcp", "0.0.0.0", &p]), "err EPERM");
    assert_eq!(sb.probe("/app", &["connect", "tcp", "::", &p]), "err EPERM");
    assert_eq!(sb.probe("/app", &["connect", "tcp", "::ffff:0.0.0.0", &p]), "err EPERM");
    assert_eq!(sb.probe("/app", &["connect", "tcp", "127.0.0.1", &p]), "err EPERM");
}

#[test]
fn ipv6_peers_are_matched_by_prefix() {
    require_root!();
    let mut sb = Sandbox::new("v6");
    sb.cgroup("/app");
    let (_l, port) = sb.tcp_listener("::1");
    let p = port.to_string();
    sb.start_agent(&format!(
        r#"
[[guard]]
name = "app"
cgroup = "/app"
[[guard.connect]]
peer = "::/120"
ports = [{port}]
"#
    ));
    assert_eq!(sb.probe("/app", &["connect", "tcp", "::1", &p]), "ok");
    assert_eq!(sb.probe("/app", &["connect", "tcp", "::1:0", &p]), "err EPERM");
    assert_eq!(
        sb.probe("/app", &["connect", "tcp", "127.0.0.1", &p]),
        "err EPERM",
        "::/120 says nothing about IPv4"
    );
}

#[test]
fn unguarded_cgroups_are_untouched() {
    require_root!();
    let mut sb = Sandbox::new("unguarded");
    let (_l, port) = sb.tcp_listener("127.0.0.1");
    let p = port.to_string();
    sb.cgroup("/app");
    sb.cgroup("/other");
    sb.start_agent(&app_policy(1));
    assert_eq!(sb.probe("/other", &["bind", "tcp", "127.0.0.1", "0"]).split('=').next(), Some("ok port"));
    assert_eq!(sb.probe("/other", &["connect", "tcp", "127.0.0.1", &p]), "ok");
    assert_eq!(sb.probe("/other", &["sendto", "127.0.0.1", "9"]), "ok");
    assert_eq!(sb.probe("/", &["connect", "tcp", "127.0.0.1", &p]), "ok");
    assert!(sb.agent().denials().is_empty(), "unguarded operations are not reported");
}

#[test]
fn child_cgroups_are_covered_including_ones_created_after_start() {
    require_root!();
    let sb = Sandbox::enforcing("child", &["/app"], &app_policy(1));
    // Created after the policy was applied: covered at once, in the kernel.
    sb.cgroup("/app/worker/deeper");
    assert_eq!(sb.probe("/app/worker/deeper", &["bind", "tcp", "127.0.0.1", "8081"]), "err EPERM");
    assert_eq!(sb.probe("/app/worker/deeper", &["bind", "tcp", "127.0.0.1", "8080"]), "ok port=8080");
}

#[test]
fn nearest_guarded_ancestor_decides() {
    require_root!();
    let sb = Sandbox::enforcing(
        "nearest",
        &["/app/inner"],
        r#"
[[guard]]
name = "outer"
cgroup = "/app"
[[guard.bind]]
ports = [7001]

[[guard]]
name = "inner"
cgroup = "/app/inner"
[[guard.bind]]
ports = [7002]
"#,
    );
    assert_eq!(sb.probe("/app", &["bind", "tcp", "127.0.0.1", "7001"]), "ok port=7001");
    assert_eq!(sb.probe("/app", &["bind", "tcp", "127.0.0.1", "7002"]), "err EPERM");
    assert_eq!(sb.probe("/app/inner", &["bind", "tcp", "127.0.0.1", "7002"]), "ok port=7002");
    assert_eq!(
        sb.probe("/app/inner", &["bind", "tcp", "127.0.0.1", "7001"]),
        "err EPERM",
        "the inner guard replaces the outer one"
    );
}

#[test]
fn a_socket_stays_judged_by_the_cgroup_it_was_created_in() {
    require_root!();
    let mut sb = Sandbox::new("moved");
    let (_l, port) = sb.tcp_listener("127.0.0.1");
    let p = port.to_string();
    sb.cgroup("/app");
    let outside = sb.procs("/outside");
    sb.start_agent(&app_policy(1));
    // Created in /app, used after moving to the unguarded /outside: denied.
    let verdict =
        sb.probe("/app", &["move-then-connect", "tcp", "127.0.0.1", &p, outside.to_str().expect("utf8")]);
    assert_eq!(verdict, "err EPERM");
    // Control: a socket created in /outside is free.
    assert_eq!(sb.probe("/outside", &["connect", "tcp", "127.0.0.1", &p]), "ok");
    // And the other way round: created outside, moved into /app: still free.
    let inside = sb.procs("/app");
    let verdict =
        sb.probe("/outside", &["move-then-connect", "tcp", "127.0.0.1", &p, inside.to_str().expect("utf8")]);
    assert_eq!(verdict, "ok");
}

#[test]
fn audit_mode_allows_and_reports() {
    require_root!();
    let mut sb = Sandbox::enforcing(
        "audit",
        &["/app"],
        r#"
[[guard]]
name = "app"
cgroup = "/app"
mode = "audit"
[[guard.bind]]
ports = [8080]
"#,
    );
    assert_eq!(sb.probe("/app", &["bind", "tcp", "127.0.0.1", "8081"]), "ok port=8081");
    assert_eq!(sb.probe("/app", &["bind", "tcp", "127.0.0.1", "8080"]), "ok port=8080");
    let e = sb.agent().wait_for("audit event", |l| l["event"] == "denial" && l["port"] == 8081);
    assert_eq!(e["verdict"], "audited");
    assert_eq!(e["guard"], "app");
    let count = sb.agent().denials().len();
    assert_eq!(count, 1, "the allowed bind is not reported: {:?}", sb.agent().denials());
}

#[test]
fn a_denial_event_carries_the_facts() {
    require_root!();
    let mut sb = Sandbox::enforcing("event", &["/app/worker"], &app_policy(1));
    let (_l, port) = sb.tcp_listener("127.0.0.1");
    assert_eq!(sb.probe("/app/worker", &["connect", "tcp", "127.0.0.1", &port.to_string()]), "err EPERM");
    let e = sb.agent().wait_for("denial event", |l| l["event"] == "denial");
    assert_eq!(e["guard"], "app");
    assert_eq!(e["cgroup"], "/app/worker");
    assert_eq!(e["op"], "connect");
    assert_eq!(e["proto"], "tcp");
    assert_eq!(e["addr"], "127.0.0.1");
    assert_eq!(e["port"], port);
    assert_eq!(e["verdict"], "denied");
    assert_eq!(e["comm"], "pg-probe");
    assert!(e["pid"].as_u64().is_some_and(|p| p > 1), "pid: {e}");
    assert_eq!(e["level"], "WARN");
}
