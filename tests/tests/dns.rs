//! Peers by DNS name (#17), against the real kernel and a real resolver:
//! dnsmasq answers on 127.0.0.1:53 in the sandbox's network namespace (an
//! unguarded cgroup, like a node-local stub), real `dig` and pg-probe
//! clients resolve from guarded cgroups, and the connects that follow are
//! judged by what each guard's own sockets received.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
};

use portguard_tests::{Running, Sandbox, metric_sum, require_root};

const RESOLVER: &str = "127.0.0.1";
/// The port every name's rule allows; a listener on 0.0.0.0 answers for
/// every 127/8 address the names resolve to.
const APP_PORT: &str = "8080";

fn guard(name: &str, cgroup: &str, names: &[&str]) -> String {
    let names: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    format!(
        r#"
[[guard]]
name = "{name}"
cgroup = "{cgroup}"
allow_ephemeral_bind = true

[[guard.connect]]
peer = "{RESOLVER}"
ports = [53]
proto = "udp"
owner = "net"
purpose = "the node's resolver"

[[guard.connect]]
peer = [{}]
ports = [{APP_PORT}]
proto = "tcp"
owner = "app"
purpose = "services by name"
"#,
        names.join(", ")
    )
}

/// dnsmasq on 127.0.0.1:53 in the unguarded `/srv`, answering `records`
/// (`--host-record`, `--cname` ... arguments), and a TCP server on
/// 0.0.0.0:8080 beside it.
fn start_services(sb: &Sandbox, records: &[String]) -> (Running, Running) {
    sb.cgroup("/srv");
    let mut args = vec!["--log-facility=-"];
    args.extend(records.iter().map(String::as_str));
    let dns = sb.dnsmasq("/srv", Some(RESOLVER), 53, &args);
    let server = sb.accept_server("/srv", "0.0.0.0", APP_PORT);
    // dnsmasq answers once it has bound its port.
    for _ in 0..100 {
        if dig(sb, "/srv", "db.test") == "127.0.1.5" {
            return (dns, server);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("dnsmasq never answered");
}

fn dig(sb: &Sandbox, rel: &str, name: &str) -> String {
    sb.run_in(
        rel,
        Path::new("/usr/bin/dig"),
        &[&format!("@{RESOLVER}"), name, "A", "+short", "+time=2", "+tries=1"],
    )
}

fn connect(sb: &Sandbox, rel: &str, ip: &str) -> String {
    sb.probe(rel, &["connect", "tcp", ip, APP_PORT, "1000"])
}

fn records() -> Vec<String> {
    [
        "--host-record=db.test,127.0.1.5",
        // Another name for db.test's address.
        "--host-record=shared.test,127.0.1.5",
        "--host-record=db0.test,127.0.1.40",
        "--host-record=other.test,127.0.1.7",
        "--host-record=real.test,127.0.1.8",
        "--cname=alias.test,real.test",
    ]
    .map(String::from)
    .to_vec()
}

#[test]
fn a_name_opens_only_what_its_own_answers_gave() {
    require_root!();
    let mut sb = Sandbox::new("dns-names");
    sb.cgroup("/app");
    sb.cgroup("/other");
    let _services = start_services(&sb, &records());
    sb.start_agent(
        &(guard("app", "/app", &["db.test", "alias.test"]) + &guard("other", "/other", &["shared.test"])),
    );

    // Nothing resolved yet: the address is refused like any other.
    assert_eq!(connect(&sb, "/app", "127.0.1.5"), "err EPERM", "before any answer");
    assert_eq!(dig(&sb, "/app", "db.test"), "127.0.1.5");
    assert_eq!(connect(&sb, "/app", "127.0.1.5"), "ok", "after the workload's own answer");
    // Only the name's port, only the answered address.
    assert_eq!(
        sb.probe("/app", &["connect", "tcp", "127.0.1.5", "8081", "1000"]),
        "err EPERM",
        "another port"
    );
    assert_eq!(connect(&sb, "/app", "127.0.1.6"), "err EPERM", "an address never answered");
    // The refusals say what the guard's workload had learned (the kernel
    // reports the first refusal of a port per second: the one before dig).
    let e = sb.agent().wait_for("never", |l| l["event"] == "denial" && l["port"] == 8080);
    assert_eq!((e["addr"].as_str(), e["dns"].as_str()), (Some("127.0.1.5"), Some("never")), "{e}");
    let e = sb.agent().wait_for("other port", |l| l["event"] == "denial" && l["port"] == 8081);
    assert_eq!((e["dns"].as_str(), e["dns_names"].as_str()), (Some("other_port"), Some("db.test")), "{e}");
    // A name the policy does not list teaches nothing.
    assert_eq!(dig(&sb, "/app", "other.test"), "127.0.1.7");
    assert_eq!(connect(&sb, "/app", "127.0.1.7"), "err EPERM", "not a name of the guard");
    // The question is the name: a CNAME chain from it leads to the address.
    assert_eq!(dig(&sb, "/app", "alias.test"), "real.test.\n127.0.1.8");
    assert_eq!(connect(&sb, "/app", "127.0.1.8"), "ok", "through a CNAME");

    // Another guard, whose own name resolves to the same address, has
    // learned nothing from app's answer.
    assert_eq!(connect(&sb, "/other", "127.0.1.5"), "err EPERM", "learned by another guard");
    assert_eq!(dig(&sb, "/other", "shared.test"), "127.0.1.5");
    assert_eq!(connect(&sb, "/other", "127.0.1.5"), "ok", "after its own answer");
    // An unguarded cgroup is not judged at all.
    assert_eq!(connect(&sb, "/srv", "127.0.1.6"), "ok");
    let m = sb.agent().metrics();
    assert_eq!(metric_sum(&m, "portguard_dns_learned_addresses", &[("guard", "app")]), 2, "{m}");
    assert_eq!(metric_sum(&m, "portguard_dns_learned_addresses", &[("guard", "other")]), 1, "{m}");
    assert_eq!(metric_sum(&m, "portguard_dns_learned_evictions_total", &[]), 0, "{m}");
    // status reads the same table from the pins.
    let status = sb.status();
    let learned_of = |name: &str| {
        let guards = status["guards"].as_array().expect("guards");
        guards.iter().find(|g| g["name"] == name).map(|g| g["dns_learned_addresses"].clone())
    };
    assert_eq!((learned_of("app"), learned_of("other")), (Some(2.into()), Some(1.into())), "{status:#}");
    let table = &status["dns_learned_table"];
    assert_eq!((table["entries"].as_u64(), table["evictions"].as_u64()), (Some(3), Some(0)), "{status:#}");
}

#[test]
fn forged_answers_teach_nothing() {
    require_root!();
    let mut sb = Sandbox::new("dns-forged");
    sb.cgroup("/app");
    sb.cgroup("/forger");
    let _services = start_services(&sb, &records());
    // The client asks 127.0.0.9 (allowed, silent) and waits; the forger,
    // outside any guard, answers in its place.
    let resolver = "127.0.0.9";
    sb.start_agent(
        &guard("app", "/app", &["db.test"])
            .replace(&format!("peer = \"{RESOLVER}\""), "peer = \"127.0.0.0/24\""),
    );
    let mut client = sb.spawn_probe("/app", &["dns-ask", resolver, "db.test", "4660", "3000"]);
    let mut line = String::new();
    let mut out = BufReader::new(client.stdout.take().expect("stdout"));
    out.read_line(&mut line).expect("read");
    let port = line.trim().strip_prefix("port=").expect("port=N").to_owned();
    let forge = |src_port: &str, txid: &str, name: &str, addr: &str| {
        sb.probe("/forger", &["dns-forge", resolver, src_port, "127.0.0.1", &port, name, txid, addr])
    };
    assert_eq!(forge("53", "4661", "db.test", "127.0.2.1"), "ok", "wrong transaction id");
    assert_eq!(forge("54", "4660", "db.test", "127.0.2.2"), "ok", "wrong source port");
    assert_eq!(forge("53", "4660", "other.test", "127.0.2.3"), "ok", "wrong question");
    assert_eq!(forge("53", "4660", "db.test", "127.0.2.4"), "ok", "the right one");
    assert_eq!(forge("53", "4660", "db.test", "127.0.2.5"), "ok", "the right one, again");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).expect("read");
    let _ = client.wait();
    // The reply window let the datagrams from port 53 reach the client
    // (port 54 never did): each was seen by the kernel before it arrived.
    assert!(rest.contains("addrs=127.0.2.1") && rest.contains("addrs=127.0.2.4"), "{rest}");
    assert!(!rest.contains("127.0.2.2"), "{rest}");
    for (addr, why) in [
        ("127.0.2.1", "wrong transaction id"),
        ("127.0.2.2", "wrong source port"),
        ("127.0.2.3", "answer to another question"),
        ("127.0.2.5", "a second answer to a query already answered"),
    ] {
        assert_eq!(connect(&sb, "/app", addr), "err EPERM", "{why}");
    }
    assert_eq!(connect(&sb, "/app", "127.0.2.4"), "ok", "the one real answer opens it");
    // Counted exactly: one query; the wrong id, the other question and the
    // repeat matched none; the port-54 datagram never got past the filter.
    let m = sb.agent().metrics();
    assert_eq!(metric_sum(&m, "portguard_dns_queries_total", &[]), 1, "{m}");
    assert_eq!(metric_sum(&m, "portguard_dns_answers_total", &[("result", "no_query")]), 3, "{m}");
    assert_eq!(metric_sum(&m, "portguard_dns_answers_total", &[("result", "learned")]), 1, "{m}");
    assert_eq!(metric_sum(&m, "portguard_dns_addresses_learned_total", &[]), 1, "{m}");
}

/// 10,000 lookups of 10 names whose answers rotate over 100 addresses
/// (dnsmasq rereads its hosts file, rewritten between lookups, on every
/// SIGHUP), each connected to the instant its answer is read: the address
/// must already be allowed when `recv` returns. Every address answered is
/// learned, exactly those, and addresses no answer gave stay refused.
#[test]
fn a_client_connecting_the_instant_its_answer_arrives_is_never_refused() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };
    require_root!();
    let mut sb = Sandbox::new("dns-race");
    sb.cgroup("/app");
    const NAMES: usize = 10;
    const ADDRESSES: usize = 100;
    let hosts = sb.dir.join("race-hosts");
    // Name i answers 127.3.0.((10 i + turn) % 100 + 1): every name walks
    // all 100 addresses as the turns go by.
    let rotate = {
        let hosts = hosts.clone();
        move |turn: usize| {
            let text: String = (0..NAMES)
                .map(|i| {
                    format!("127.3.0.{} n{i}.race.test\n", (i * ADDRESSES / NAMES + turn) % ADDRESSES + 1)
                })
                .collect();
            let tmp = hosts.with_extension("tmp");
            std::fs::write(&tmp, text).expect("write hosts");
            std::fs::rename(&tmp, &hosts).expect("rename hosts");
        }
    };
    rotate(0);
    let mut recs = records();
    recs.push(format!("--addn-hosts={}", hosts.display()));
    // Answers valid for 10 minutes: every address answered is still
    // learned when the test counts them, however long the run took.
    recs.push("--local-ttl=600".into());
    let (dns, _server) = start_services(&sb, &recs);
    let names: Vec<String> = (0..NAMES).map(|i| format!("n{i}.race.test")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    sb.start_agent(&guard("app", "/app", &names));

    let done = Arc::new(AtomicBool::new(false));
    let rotator = {
        let (done, pid) = (done.clone(), dns.0.id() as libc::pid_t);
        std::thread::spawn(move || {
            let mut turn = 0;
            while !done.load(Ordering::Relaxed) {
                turn += 1;
                rotate(turn);
                // SAFETY: a signal to the dnsmasq this test started.
                unsafe { libc::kill(pid, libc::SIGHUP) };
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            turn
        })
    };
    let count = 10_000u32;
    let out = sb.probe(
        "/app",
        &["dns-race", RESOLVER, "n", "race.test", &count.to_string(), APP_PORT, &NAMES.to_string()],
    );
    done.store(true, Ordering::Relaxed);
    let turns = rotator.join().expect("rotator");
    let field = |key: &str| -> u32 {
        out.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
            .expect(key)
    };
    // Not one refusal; a connect that timed out was let through by the hook
    // (a refusal is immediate) and found the accept queue full.
    assert_eq!((field("answered"), field("refused"), field("other")), (count, 0, 0), "{out}");
    assert_eq!(field("connected") + field("timeout"), count, "{out}");
    assert!(turns > 1, "the answers never rotated");
    // Exactly the addresses answered are learned (all within their TTL).
    let m = sb.agent().metrics();
    let learned = metric_sum(&m, "portguard_dns_learned_addresses", &[("guard", "app")]);
    assert_eq!(learned, u64::from(field("addresses")), "{out} after {turns} turns");
    for i in 0..20 {
        assert_eq!(connect(&sb, "/app", &format!("127.3.1.{}", i + 1)), "err EPERM", "never answered");
    }
}

/// An answer dnsmasq truncates (60 A records, no EDNS: it sends 30 with
/// TC set, TTL 0) teaches exactly the 30 it holds, at once (the TTL floor);
/// the same question over TCP teaches nothing; over UDP with EDNS all 60.
#[test]
fn a_truncated_answer_teaches_what_it_holds_and_tcp_teaches_nothing() {
    require_root!();
    let mut sb = Sandbox::new("dns-truncated");
    sb.cgroup("/app");
    let hosts = sb.dir.join("big-hosts");
    let text: String = (1..=60).map(|i| format!("127.7.0.{i} big.test\n")).collect();
    std::fs::write(&hosts, text).expect("write hosts");
    let mut recs = records();
    recs.push(format!("--addn-hosts={}", hosts.display()));
    let _services = start_services(&sb, &recs);
    // DNS over TCP must be allowed too, or dig +tcp is refused outright.
    sb.start_agent(&guard("app", "/app", &["big.test"]).replacen("proto = \"udp\"", "proto = \"both\"", 1));
    let dig_big = |flags: &[&str]| -> Vec<String> {
        let mut args = vec![
            format!("@{RESOLVER}"),
            "big.test".into(),
            "A".into(),
            "+short".into(),
            "+time=2".into(),
            "+tries=1".into(),
        ];
        args.extend(flags.iter().map(|f| (*f).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut out: Vec<String> =
            sb.run_in("/app", Path::new("/usr/bin/dig"), &args).lines().map(String::from).collect();
        out.sort();
        out
    };
    let all: Vec<String> = (1..=60).map(|i| format!("127.7.0.{i}")).collect();
    let refused = |sb: &Sandbox| -> Vec<String> {
        all.iter().filter(|a| connect(sb, "/app", a) == "err EPERM").cloned().collect()
    };

    let held = dig_big(&["+noedns", "+ignore"]);
    assert_eq!(held.len(), 30, "dnsmasq truncates to 30: {held:?}");
    let mut not_held: Vec<String> = all.iter().filter(|a| !held.contains(a)).cloned().collect();
    not_held.sort();
    let mut got = refused(&sb);
    got.sort();
    assert_eq!(got, not_held, "the 30 held are allowed, the 30 cut off are not");

    assert_eq!(dig_big(&["+tcp"]).len(), 60, "TCP carries all 60");
    let mut got = refused(&sb);
    got.sort();
    assert_eq!(got, not_held, "an answer over TCP teaches nothing");

    assert_eq!(dig_big(&[]).len(), 60, "EDNS makes room for all 60");
    assert_eq!(refused(&sb), Vec::<String>::new(), "all 60 learned");
}

#[test]
fn a_wildcard_matches_one_label_and_a_double_wildcard_any_depth() {
    require_root!();
    let mut sb = Sandbox::new("dns-wild");
    sb.cgroup("/app");
    let mut recs = records();
    recs.extend(
        [
            "--host-record=a.svc.test,127.0.4.1",
            "--host-record=a.b.svc.test,127.0.4.2",
            "--host-record=svc.test,127.0.4.3",
            "--host-record=x.y.deep.test,127.0.4.4",
            "--host-record=deep.test,127.0.4.5",
        ]
        .map(String::from),
    );
    let _services = start_services(&sb, &recs);
    // a.svc.test is also a name of its own, on another port: its address
    // is learned for both, and each opens its own port.
    let policy = guard("app", "/app", &["*.svc.test", "**.deep.test"])
        + "[[guard.connect]]\npeer = \"a.svc.test\"\nports = [8081]\nowner = \"app\"\npurpose = \"admin\"\n";
    sb.start_agent(&policy);
    for (name, addr, allowed) in [
        ("a.svc.test", "127.0.4.1", "ok"),
        ("a.b.svc.test", "127.0.4.2", "err EPERM"),
        ("svc.test", "127.0.4.3", "err EPERM"),
        ("x.y.deep.test", "127.0.4.4", "ok"),
        ("deep.test", "127.0.4.5", "err EPERM"),
    ] {
        assert_eq!(dig(&sb, "/app", name), addr);
        assert_eq!(connect(&sb, "/app", addr), allowed, "{name}");
    }
    // Allowed by a.svc.test's own rule (nothing listens there: refused by
    // the stack, not by portguard).
    assert_eq!(sb.probe("/app", &["connect", "tcp", "127.0.4.1", "8081", "1000"]), "err ECONNREFUSED");
    assert_eq!(sb.probe("/app", &["connect", "tcp", "127.0.4.4", "8081", "1000"]), "err EPERM");
}

/// An answer is good for its TTL, at least 30 s, plus 5 s of grace (here
/// TTL 1; dnsmasq's default for host records, which the other tests get,
/// is 0): then the address is refused, and the refusal says the answer
/// expired, until the workload resolves the name again.
#[test]
fn an_address_is_refused_once_its_answer_expires() {
    require_root!();
    let mut sb = Sandbox::new("dns-expiry");
    sb.cgroup("/app");
    let mut recs = records();
    recs.push("--local-ttl=1".into());
    let _services = start_services(&sb, &recs);
    sb.start_agent(&guard("app", "/app", &["db.test"]));
    assert_eq!(dig(&sb, "/app", "db.test"), "127.0.1.5");
    let learned = std::time::Instant::now();
    assert_eq!(connect(&sb, "/app", "127.0.1.5"), "ok");
    std::thread::sleep(std::time::Duration::from_secs(36).saturating_sub(learned.elapsed()));
    assert_eq!(connect(&sb, "/app", "127.0.1.5"), "err EPERM", "expired");
    let e = sb.agent().wait_for("expired", |l| l["event"] == "denial" && l["addr"] == "127.0.1.5");
    assert_eq!((e["dns"].as_str(), e["dns_names"].as_str()), (Some("expired"), Some("db.test")), "{e}");
    assert_eq!(dig(&sb, "/app", "db.test"), "127.0.1.5");
    assert_eq!(connect(&sb, "/app", "127.0.1.5"), "ok", "resolved again");
}

/// Real resolver clients, as workloads use them: glibc's (`getent`, `curl`,
/// A and AAAA in parallel on one connected socket) through a local stub
/// (dnsmasq on 127.0.0.53, forwarding) and `dig` straight at the resolver
/// on another host, which the stub also forwards to.
#[test]
fn glibc_clients_learn_through_a_local_stub_and_dig_straight_from_the_resolver() {
    require_root!();
    let mut sb = Sandbox::new("dns-stub");
    sb.cgroup("/app");
    sb.cgroup("/srv");
    let upstream = sb.add_host(1);
    let _resolver = upstream.dnsmasq(
        Some(&upstream.v4.to_string()),
        53,
        &[
            "--host-record=db.test,127.0.1.5",
            "--host-record=web.test,127.0.1.9",
            "--host-record=other.test,127.0.1.7",
            "--host-record=v6.test,fd00::77",
        ],
    );
    let server = format!("--server={}", upstream.v4);
    let _stub = sb.dnsmasq("/srv", Some("127.0.0.53"), 53, &["--cache-size=0", &server]);
    let _web = sb.accept_server("/srv", "0.0.0.0", APP_PORT);
    let policy = guard("app", "/app", &["db.test", "web.test", "v6.test"])
        .replace(&format!("peer = \"{RESOLVER}\""), &format!("peer = [\"127.0.0.53\", \"{}\"]", upstream.v4));
    sb.start_agent(&policy);
    // glibc reads /etc/resolv.conf: give the clients their own, in a
    // private mount namespace.
    let resolv = sb.dir.join("resolv.conf");
    std::fs::write(&resolv, "nameserver 127.0.0.53\noptions attempts:1 timeout:2\n").expect("resolv.conf");
    let glibc = |command: &str| -> std::process::Output {
        let script = format!("mount --bind {} /etc/resolv.conf && exec {command}", resolv.display());
        sb.spawn_in("/app", Path::new("/usr/bin/unshare"), &["-m", "sh", "-c", &script])
            .wait_with_output()
            .expect("wait")
    };
    for _ in 0..100 {
        if String::from_utf8_lossy(&glibc("getent ahostsv4 db.test").stdout).contains("127.0.1.5") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(connect(&sb, "/app", "127.0.1.5"), "ok", "learned through the stub by getent");
    // curl resolves (A and AAAA at once) and connects in one go: the
    // server accepts and closes, so curl says "empty reply" (52) or
    // "receive failure" (56, a reset); a refused
    // connect is "could not connect" (7).
    let curl = |name: &str| {
        glibc(&format!("curl -s -o /dev/null --max-time 5 http://{name}:{APP_PORT}/")).status.code()
    };
    // The server's close can reach curl as an empty reply (52) or a reset
    // (56): either way the connection was made.
    let code = curl("web.test");
    assert!(matches!(code, Some(52 | 56)), "curl by a name of the guard: {code:?}");
    assert_eq!(curl("other.test"), Some(7), "curl by a name the guard does not list");
    // AAAA straight from the resolver on the other host.
    assert_eq!(sb.probe("/app", &["connect", "tcp", "fd00::77", APP_PORT, "1000"]), "err EPERM", "before");
    let aaaa = sb.run_in(
        "/app",
        Path::new("/usr/bin/dig"),
        &[&format!("@{}", upstream.v4), "v6.test", "AAAA", "+short", "+time=2", "+tries=1"],
    );
    assert_eq!(aaaa, "fd00::77");
    assert_ne!(sb.probe("/app", &["connect", "tcp", "fd00::77", APP_PORT, "1000"]), "err EPERM", "after");
}

/// Learning happens in the kernel: with the agent killed, answers still
/// open their addresses, and what was learned before stays.
#[test]
fn learning_goes_on_while_the_agent_is_down() {
    require_root!();
    let mut sb = Sandbox::new("dns-agentless");
    sb.cgroup("/app");
    let _services = start_services(&sb, &records());
    sb.start_agent(&guard("app", "/app", &["db.test", "alias.test", "db0.test"]));
    assert_eq!(dig(&sb, "/app", "db.test"), "127.0.1.5");
    // A client resolving and connecting in a loop while the agent dies.
    let race = sb.spawn_probe("/app", &["dns-race", RESOLVER, "db", "test", "10000", APP_PORT, "1"]);
    std::thread::sleep(std::time::Duration::from_millis(100));
    sb.agent().kill9();
    let out = race.wait_with_output().expect("race");
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.starts_with("lookups=10000 answered=10000"), "{out}");
    assert!(out.contains(" refused=0 ") && out.contains(" other=0 "), "refused across the kill: {out}");
    assert_eq!(connect(&sb, "/app", "127.0.1.5"), "ok", "learned before, agent gone");
    assert_eq!(connect(&sb, "/app", "127.0.1.8"), "err EPERM", "not learned yet");
    assert_eq!(dig(&sb, "/app", "alias.test"), "real.test.\n127.0.1.8");
    assert_eq!(connect(&sb, "/app", "127.0.1.8"), "ok", "learned with no agent running");
    sb.start_agent_with(&[]);
    assert_eq!(connect(&sb, "/app", "127.0.1.8"), "ok", "kept across the restart");
    assert_eq!(connect(&sb, "/app", "127.0.1.6"), "err EPERM");
}

/// What a resolver taught is trusted while the guard may still query that
/// resolver: a reload that adds a resolver, and an agent restart, keep
/// every learned address; a reload that takes the resolver away refuses
/// them at once (as expired), and giving it back does not bring them back
/// until the workload asks again.
#[test]
fn a_resolver_taken_out_of_the_policy_takes_what_it_taught_with_it() {
    require_root!();
    let mut sb = Sandbox::new("dns-trust");
    sb.cgroup("/app");
    let _services = start_services(&sb, &records());
    let with_resolvers = |peers: &str| {
        guard("app", "/app", &["db.test"])
            .replace(&format!("peer = \"{RESOLVER}\""), &format!("peer = {peers}"))
    };
    sb.start_agent(&with_resolvers(r#"["127.0.0.1"]"#));
    assert_eq!(dig(&sb, "/app", "db.test"), "127.0.1.5");
    assert_eq!(connect(&sb, "/app", "127.0.1.5"), "ok");

    sb.reload_policy(&with_resolvers(r#"["127.0.0.1", "127.0.0.2"]"#));
    assert_eq!(connect(&sb, "/app", "127.0.1.5"), "ok", "a resolver added: nothing to learn again");
    sb.stop_agent();
    sb.start_agent_with(&[]);
    assert_eq!(connect(&sb, "/app", "127.0.1.5"), "ok", "kept across a restart");

    sb.reload_policy(&with_resolvers(r#"["127.0.0.2"]"#));
    assert_eq!(connect(&sb, "/app", "127.0.1.5"), "err EPERM", "its resolver is no longer trusted");
    let e = sb.agent().wait_for("refusal", |l| l["event"] == "denial" && l["addr"] == "127.0.1.5");
    assert_eq!(e["dns"].as_str(), Some("expired"), "{e}");
    let m = sb.agent().metrics();
    assert_eq!(metric_sum(&m, "portguard_dns_learned_addresses", &[("guard", "app")]), 0, "{m}");

    sb.reload_policy(&with_resolvers(r#"["127.0.0.1"]"#));
    assert_eq!(
        connect(&sb, "/app", "127.0.1.5"),
        "err EPERM",
        "trust given back: answers before it do not count"
    );
    assert_eq!(dig(&sb, "/app", "db.test"), "127.0.1.5");
    assert_eq!(connect(&sb, "/app", "127.0.1.5"), "ok", "asked again");
}

/// A resolver behind NAT in the workload's own network namespace, as
/// Docker's embedded DNS (127.0.0.11:53 rewritten to another port) or a
/// Kubernetes ClusterIP: egress sees the rewritten destination, the answer
/// comes back with its source rewritten to the address the workload
/// asked. A connected socket (glibc, Go, this probe's `dns-race`) is
/// learned from by the address it connected to; an unconnected one
/// (`dns-ask`, musl) learns nothing there, and nothing is opened.
#[test]
fn a_resolver_behind_nat_teaches_connected_sockets() {
    require_root!();
    let mut sb = Sandbox::new("dns-nat");
    sb.cgroup("/app");
    sb.cgroup("/srv");
    // Docker's rule for its embedded DNS, in the sandbox's namespace only.
    let rules = sb.dir.join("nat.nft");
    std::fs::write(
        &rules,
        "table ip pgtest {\n  chain out {\n    type nat hook output priority -100;\n    \
         ip daddr 127.0.0.11 udp dport 53 dnat to 127.0.0.11:5353\n  }\n}\n",
    )
    .expect("write rules");
    sb.run_in("/srv", Path::new("/usr/sbin/nft"), &["-f", &rules.display().to_string()]);
    let _resolver = sb.dnsmasq(
        "/srv",
        Some("127.0.0.11"),
        5353,
        &["--host-record=db0.test,127.0.1.5", "--host-record=web.test,127.0.1.9"],
    );
    let _web = sb.accept_server("/srv", "0.0.0.0", APP_PORT);
    let policy = guard("app", "/app", &["db0.test", "web.test"])
        .replace(&format!("peer = \"{RESOLVER}\""), "peer = \"127.0.0.11\"");
    sb.start_agent(&policy);
    for _ in 0..100 {
        if sb.probe("/srv", &["dns-ask", "127.0.0.11", "web.test", "7", "500"]).contains("127.0.1.9") {
            break;
        }
    }
    let out = sb.probe("/app", &["dns-race", "127.0.0.11", "db", "test", "1", APP_PORT, "1"]);
    assert!(out.starts_with("lookups=1 answered=1 connected=1 refused=0"), "connected socket: {out}");
    let out = sb.probe("/app", &["dns-ask", "127.0.0.11", "web.test", "4660", "2000"]);
    assert!(out.contains("from 127.0.0.11:53 addrs=127.0.1.9"), "the answer arrives: {out}");
    assert_eq!(connect(&sb, "/app", "127.0.1.9"), "err EPERM", "unconnected socket behind NAT: not learned");
}

/// An AAAA record of a v4-mapped address (::ffff:a.b.c.d) opens the IPv4
/// address: that is what a dual-stack connect to it reaches and is judged as.
#[test]
fn a_v4_mapped_aaaa_opens_the_ipv4_address() {
    require_root!();
    let mut sb = Sandbox::new("dns-mapped");
    sb.cgroup("/app");
    let mut recs = records();
    recs.push("--host-record=mapped.test,::ffff:127.0.1.20".into());
    let _services = start_services(&sb, &recs);
    sb.start_agent(&guard("app", "/app", &["mapped.test"]));
    assert_eq!(connect(&sb, "/app", "127.0.1.20"), "err EPERM", "before");
    let aaaa = sb.run_in(
        "/app",
        Path::new("/usr/bin/dig"),
        &[&format!("@{RESOLVER}"), "mapped.test", "AAAA", "+short", "+time=2", "+tries=1"],
    );
    assert_eq!(aaaa, "::ffff:127.0.1.20");
    assert_eq!(connect(&sb, "/app", "127.0.1.20"), "ok", "over IPv4");
    assert_eq!(
        sb.probe("/app", &["connect", "tcp", "::ffff:127.0.1.20", APP_PORT, "1000"]),
        "ok",
        "dual stack"
    );
}

/// A rule with `resolve = "agent"`: the agent resolves its names itself
/// (from a dnsmasq on the host's loopback, `--dns-resolver`), so the
/// workload may reach the address without a lookup the kernel could read,
/// as a workload using DNS over HTTPS would; an address the name does not
/// resolve to stays refused.
#[test]
fn names_the_agent_resolves_open_without_the_workload_asking() {
    require_root!();
    let mut sb = Sandbox::new("dns-agent");
    sb.cgroup("/app");
    let _services = start_services(&sb, &records());
    // On the host, where the agent runs: an address and port of its own.
    let _agent_resolver =
        portguard_tests::dnsmasq_here("127.53.0.1", 53053, &["--host-record=doh.test,127.0.1.30"]);
    let policy = guard("app", "/app", &["doh.test", "db.test"])
        .replace("purpose = \"services by name\"", "purpose = \"services by name\"\nresolve = \"agent\"");
    sb.write_policy(&policy);
    sb.start_agent_with(&["--dns-resolver", "127.53.0.1:53053"]);
    // The agent's first round runs once the policy is applied.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while connect(&sb, "/app", "127.0.1.30") != "ok" {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent never opened doh.test: {:?}",
            sb.agent().logs()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(connect(&sb, "/app", "127.0.1.31"), "err EPERM", "not an answer for the name");
    // The agent's resolver does not know db.test: the workload's own
    // answers still teach it.
    assert_eq!(connect(&sb, "/app", "127.0.1.5"), "err EPERM", "before the workload's own lookup");
    assert_eq!(dig(&sb, "/app", "db.test"), "127.0.1.5");
    assert_eq!(connect(&sb, "/app", "127.0.1.5"), "ok");
    let m = sb.agent().metrics();
    assert_eq!(metric_sum(&m, "portguard_dns_agent_addresses", &[("guard", "app")]), 1, "{m}");
    assert_eq!(metric_sum(&m, "portguard_dns_learned_addresses", &[("guard", "app")]), 2, "{m}");
    assert!(metric_sum(&m, "portguard_dns_agent_lookups_total", &[("result", "answered")]) >= 1, "{m}");
    assert!(
        metric_sum(&m, "portguard_dns_agent_lookups_total", &[("result", "failed")]) >= 1,
        "db.test: {m}"
    );
    let status = sb.status();
    assert_eq!(status["guards"][0]["dns_agent_addresses"], 1, "{status:#}");
}
