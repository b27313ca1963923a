//! Differential test: a pure-Rust reference evaluator of the README's
//! semantics against the kernel. Random policies and random operations;
//! every operation is performed for real in a guarded cgroup, and the
//! kernel's verdict must equal the reference's every time. Inbound
//! operations reach servers that live in the guarded cgroup across all
//! cases (bound under a policy that allowed everything, so some ports are
//! ones a case's policy does not approve), from several source addresses
//! of the sandbox's network namespace.

use std::{
    io::{BufRead as _, BufReader},
    net::IpAddr,
    process::Child,
};

use ipnet::IpNet;
use portguard_tests::{Sandbox, metric_sum, require_root};
use proptest::{
    prelude::*,
    test_runner::{RngAlgorithm, TestRng, TestRunner},
};

const PORTS: [u16; 6] = [53, 80, 443, 5432, 8080, 9005];
const RANGES: [(u16, u16); 2] = [(9000, 9010), (1024, 2048)];
const PEERS: [&str; 8] =
    ["127.0.0.1", "127.0.0.0/8", "10.0.0.0/8", "10.1.0.0/16", "::1", "fd00::/8", "::/0", "0.0.0.0/0"];
const BIND_ADDRS: [&str; 2] = ["127.0.0.1", "::1"];
const OP_PEERS: [&str; 10] = [
    "127.0.0.1",
    "127.0.0.2",
    "10.1.2.3",
    "10.2.0.1",
    "::1",
    "fd00::1",
    "::ffff:127.0.0.1",
    "0.0.0.0",
    "::",
    "::ffff:10.1.2.3",
];
const OP_BIND_ADDRS: [&str; 5] = ["127.0.0.1", "0.0.0.0", "::1", "::", "::ffff:127.0.0.1"];
const OP_PORTS: [u16; 9] = [0, 53, 80, 443, 1500, 5432, 8080, 9005, 9999];

/// Who may reach a bind rule's ports; `any` and a v4-mapped network
/// included.
const FROMS: [&str; 9] = [
    "127.0.0.1",
    "127.0.0.0/8",
    "10.0.0.0/8",
    "10.1.2.3",
    "::1",
    "fd00::/8",
    "any",
    "::ffff:10.1.2.3",
    "127.0.0.2",
];
/// Servers in the guarded cgroup, both protocols each: (local address, port).
/// 9999 is in no rule; `::` is dual-stack.
const SERVERS: [(&str, u16); 6] =
    [("127.0.0.1", 5432), ("0.0.0.0", 8080), ("::1", 9005), ("::", 443), ("127.0.0.1", 1500), ("::", 9999)];
/// Source addresses of the clients (on the namespace's loopback).
const SOURCES: [&str; 5] = ["127.0.0.1", "127.0.0.2", "10.1.2.3", "::1", "fd00::1"];

#[derive(Debug, Clone)]
struct Rule {
    protos: Vec<&'static str>,
    ports: Vec<(u16, u16)>,
    peers: Vec<IpNet>,
    address: Option<IpAddr>,
    /// Bind rules: who may reach the ports; `None` for any peer.
    from: Option<Vec<IpNet>>,
}

#[derive(Debug, Clone)]
struct Policy {
    ephemeral: bool,
    bind: Vec<Rule>,
    connect: Vec<Rule>,
}

#[derive(Debug, Clone)]
enum Op {
    Bind {
        proto: &'static str,
        addr: IpAddr,
        port: u16,
    },
    Connect {
        proto: &'static str,
        addr: IpAddr,
        port: u16,
    },
    /// A TCP connection or UDP datagram from `src` to server `SERVERS[server]`.
    Inbound {
        proto: &'static str,
        server: usize,
        src: IpAddr,
    },
}

fn protos() -> impl Strategy<Value = (Vec<&'static str>, &'static str)> {
    prop_oneof![Just((vec!["tcp"], "tcp")), Just((vec!["udp"], "udp")), Just((vec!["tcp", "udp"], "both"))]
}

fn port_specs() -> impl Strategy<Value = Vec<(u16, u16)>> {
    prop::collection::vec(
        prop_oneof![
            prop::sample::select(PORTS.to_vec()).prop_map(|p| (p, p)),
            prop::sample::select(RANGES.to_vec())
        ],
        1..3,
    )
}

fn rule(bind: bool) -> impl Strategy<Value = Rule> {
    (
        protos(),
        port_specs(),
        prop::collection::vec(prop::sample::select(PEERS.to_vec()), 1..3),
        any::<bool>(),
        prop::sample::select(BIND_ADDRS.to_vec()),
        prop::option::of(prop::collection::vec(prop::sample::select(FROMS.to_vec()), 1..3)),
    )
        .prop_map(move |((protos, _), ports, peers, with_addr, addr, from)| Rule {
            protos,
            ports,
            peers: if bind { vec![] } else { peers.iter().map(|p| parse_net(p)).collect() },
            address: (bind && with_addr).then(|| addr.parse().expect("addr")),
            from: from.filter(|_| bind).map(|f| f.iter().flat_map(|p| parse_peers(p)).collect()),
        })
}

fn policy() -> impl Strategy<Value = Policy> {
    (any::<bool>(), prop::collection::vec(rule(true), 0..5), prop::collection::vec(rule(false), 0..5))
        .prop_map(|(ephemeral, bind, connect)| one_audience_per_port(Policy { ephemeral, bind, connect }))
}

fn v4(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        a => a,
    }
}

/// A v4-mapped network as the IPv4 network it stands for.
fn unmap(n: IpNet) -> IpNet {
    match n {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => v6
            .network()
            .to_ipv4_mapped()
            .map_or(n, |a| IpNet::new(IpAddr::V4(a), v6.prefix_len() - 96).expect("prefix")),
        n => n,
    }
}

/// The README refuses two bind rules that approve one port with
/// different `from`, and a `from` without a peer of its rule's address
/// family: bind rules that share a port (on the same address, or one of
/// them on any) take the first one's `from`, and a group whose `from`
/// could not reach one of its addresses drops its `from`.
fn one_audience_per_port(mut p: Policy) -> Policy {
    let n = p.bind.len();
    let shares = |a: &Rule, b: &Rule| {
        a.protos.iter().any(|x| b.protos.contains(x))
            && a.ports.iter().any(|(f, l)| b.ports.iter().any(|(f2, l2)| f <= l2 && f2 <= l))
            && (a.address.is_none() || b.address.is_none() || a.address.map(v4) == b.address.map(v4))
    };
    let mut group: Vec<usize> = (0..n).collect();
    let root = |group: &Vec<usize>, mut i: usize| {
        while group[i] != i {
            i = group[i];
        }
        i
    };
    for i in 0..n {
        for j in i + 1..n {
            if shares(&p.bind[i], &p.bind[j]) {
                let (a, b) = (root(&group, i), root(&group, j));
                group[a.max(b)] = a.min(b);
            }
        }
    }
    let roots: Vec<usize> = (0..n).map(|i| root(&group, i)).collect();
    for (i, &r) in roots.iter().enumerate() {
        p.bind[i].from = p.bind[r].from.clone();
    }
    for r in 0..n {
        let members: Vec<usize> = (0..n).filter(|&i| roots[i] == r).collect();
        let unreachable = members.iter().any(|&i| {
            let rule = &p.bind[i];
            match (rule.address.map(v4), &rule.from) {
                (Some(a), Some(f)) => !f.iter().any(|net| unmap(*net).addr().is_ipv4() == a.is_ipv4()),
                _ => false,
            }
        });
        if unreachable {
            for i in members {
                p.bind[i].from = None;
            }
        }
    }
    p
}

fn op() -> impl Strategy<Value = Op> {
    let proto = prop::sample::select(vec!["tcp", "udp"]);
    let port = prop::sample::select(OP_PORTS.to_vec());
    let inbound = (proto.clone(), 0..SERVERS.len(), prop::sample::select(SOURCES.to_vec()))
        .prop_map(|(proto, server, src)| Op::Inbound { proto, server, src: src.parse().expect("ip") })
        .prop_filter("the source must be able to reach the server's address", |op| match op {
            Op::Inbound { server, src, .. } => destination(*server, *src).is_some(),
            _ => true,
        });
    prop_oneof![
        inbound,
        (proto.clone(), prop::sample::select(OP_BIND_ADDRS.to_vec()), port.clone())
            .prop_map(|(proto, a, port)| Op::Bind { proto, addr: a.parse().expect("ip"), port }),
        (
            proto,
            prop::sample::select(OP_PEERS.to_vec()),
            port.prop_filter("connect to port 0 is not a thing", |p| *p != 0)
        )
            .prop_map(|(proto, a, port)| Op::Connect { proto, addr: a.parse().expect("ip"), port }),
    ]
}

/// The address a client from `src` dials to reach server `server`: the
/// server's own address, or for a wildcard one the source itself (every
/// source is an address of the namespace). `None` across families, and
/// from IPv6 to an IPv4-only wildcard.
fn destination(server: usize, src: IpAddr) -> Option<IpAddr> {
    let local: IpAddr = SERVERS[server].0.parse().expect("ip");
    match local {
        IpAddr::V6(a) if a.is_unspecified() => Some(src),
        l if l.is_unspecified() => src.is_ipv4().then_some(src),
        l => (l.is_ipv4() == src.is_ipv4()).then_some(l),
    }
}

fn parse_peers(s: &str) -> Vec<IpNet> {
    if s == "any" {
        return vec![parse_net("0.0.0.0/0"), parse_net("::/0")];
    }
    vec![parse_net(s)]
}

fn parse_net(s: &str) -> IpNet {
    s.parse::<IpNet>().unwrap_or_else(|_| IpNet::from(s.parse::<IpAddr>().expect("peer")))
}

fn toml(p: &Policy) -> String {
    let mut s =
        format!("[[guard]]\nname = \"app\"\ncgroup = \"/app\"\nallow_ephemeral_bind = {}\n", p.ephemeral);
    let ports = |r: &Rule| -> String {
        r.ports
            .iter()
            .map(|(a, b)| if a == b { a.to_string() } else { format!("\"{a}-{b}\"") })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let proto = |r: &Rule| if r.protos.len() == 2 { "both" } else { r.protos[0] };
    for r in &p.bind {
        s.push_str(&format!("[[guard.bind]]\nports = [{}]\nproto = \"{}\"\n", ports(r), proto(r)));
        if let Some(a) = r.address {
            s.push_str(&format!("address = \"{a}\"\n"));
        }
        if let Some(f) = &r.from {
            let nets: Vec<String> = f.iter().map(|n| format!("\"{n}\"")).collect();
            s.push_str(&format!("from = [{}]\n", nets.join(", ")));
        }
    }
    for r in &p.connect {
        let peers: Vec<String> = r.peers.iter().map(|n| format!("\"{n}\"")).collect();
        s.push_str(&format!(
            "[[guard.connect]]\npeer = [{}]\nports = [{}]\nproto = \"{}\"\n",
            peers.join(", "),
            ports(r),
            proto(r)
        ));
    }
    s
}

/// The README's words in code.
fn reference_allows(p: &Policy, op: &Op) -> bool {
    let in_ports = |r: &Rule, port: u16| r.ports.iter().any(|(a, b)| *a <= port && port <= *b);
    match op {
        Op::Bind { proto, addr, port } => {
            if *port == 0 {
                return p.ephemeral;
            }
            p.bind.iter().any(|r| {
                r.protos.contains(proto)
                    && in_ports(r, *port)
                    && r.address.is_none_or(|want| v4(want) == v4(*addr))
            })
        }
        Op::Connect { proto, addr, port } => {
            let mut peer = v4(*addr);
            if peer.is_unspecified() {
                peer = match peer {
                    IpAddr::V4(_) => "127.0.0.1".parse().expect("ip"),
                    IpAddr::V6(_) => "::1".parse().expect("ip"),
                };
            }
            p.connect.iter().any(|r| {
                r.protos.contains(proto) && in_ports(r, *port) && r.peers.iter().any(|n| n.contains(&peer))
            })
        }
        // The rule approving the socket's port (any address first, then
        // its own), and that rule's `from`; none: the port receives
        // nothing (these servers never send, so no UDP reply window).
        Op::Inbound { proto, server, src } => {
            let (local, port) = SERVERS[*server];
            let local: IpAddr = local.parse().expect("ip");
            let covers = |r: &&Rule| r.protos.contains(proto) && in_ports(r, port);
            let rule = (p.bind.iter().filter(covers).find(|r| r.address.is_none()))
                .or_else(|| p.bind.iter().filter(covers).find(|r| r.address.map(v4) == Some(v4(local))));
            rule.is_some_and(|r| {
                r.from.as_ref().is_none_or(|f| f.iter().any(|n| unmap(*n).contains(&v4(*src))))
            })
        }
    }
}

/// Starts every server in `/app` (the policy allows every bind then).
fn start_servers(sb: &Sandbox) -> Vec<Child> {
    let mut out = Vec::new();
    for (ip, port) in SERVERS {
        for mode in ["accept-serve", "udp-serve"] {
            let mut child = sb.spawn_probe("/app", &[mode, ip, &port.to_string()]);
            let mut line = String::new();
            BufReader::new(child.stdout.as_mut().expect("stdout")).read_line(&mut line).expect("read");
            assert_eq!(line.trim(), format!("ok port={port}"), "{mode} {ip} {port}");
            out.push(child);
        }
    }
    out
}

/// The kernel's inbound refusals so far of `op` to local `port`: exact
/// (the kernel counts every one), where the client's view is only a
/// timeout.
fn inbound_refusals(sb: &mut Sandbox, proto: &str, port: u16) -> u64 {
    let op = if proto == "tcp" { "accept" } else { "receive" };
    metric_sum(&sb.agent().metrics(), "portguard_denials_total", &[("op", op), ("port", &port.to_string())])
}

#[test]
fn kernel_verdicts_equal_the_reference_evaluator() {
    require_root!();
    // proptest wants an Fn closure; the sandbox is used by one case at a time.
    let sb = std::cell::RefCell::new(Sandbox::enforcing(
        "diff",
        &["/app", "/client"],
        "[[guard]]\nname = \"app\"\ncgroup = \"/app\"\n[[guard.bind]]\nports = [\"1-65535\"]\nproto = \"both\"\n",
    ));
    for addr in ["10.1.2.3/32", "fd00::1/128"] {
        let netns = sb.borrow().netns.clone();
        let out = std::process::Command::new("ip")
            .args(["-n", &netns, "addr", "add", addr, "dev", "lo", "nodad"])
            .output()
            .expect("ip");
        assert!(out.status.success(), "ip addr add {addr}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut servers = start_servers(&sb.borrow());
    let (seed, default_seed) = seed();
    eprintln!("differential: seed {seed} (PORTGUARD_DIFF_SEED=<u64> runs other cases)");
    let config = proptest::test_runner::Config { cases: 32, failure_persistence: None, ..Default::default() };
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[seed.to_le_bytes(); 4].concat());
    let mut runner = TestRunner::new_with_rng(config, rng);
    let strategy = (policy(), prop::collection::vec(op(), 25));
    let checked = std::cell::Cell::new(0usize);
    let allowed = std::cell::Cell::new(0usize);
    // Inbound operations: (checked, allowed).
    let inbound = std::cell::Cell::new((0usize, 0usize));
    let case = std::cell::Cell::new(0usize);
    // Where the time goes (seconds): reloads, outbound probes, inbound probes
    // with their two scrapes. Printed, never asserted.
    let spent = std::cell::Cell::new([0f64; 3]);
    let add = |i: usize, since: std::time::Instant| {
        let mut s = spent.get();
        s[i] += since.elapsed().as_secs_f64();
        spent.set(s);
    };
    runner
        .run(&strategy, |(policy, ops)| {
            let mut sb = sb.borrow_mut();
            // A unique first line: an identical policy would not reload.
            case.set(case.get() + 1);
            let t = std::time::Instant::now();
            sb.reload_policy(&format!("# case {}\n{}", case.get(), toml(&policy)));
            add(0, t);
            for op in &ops {
                let args: Vec<String> = match op {
                    Op::Bind { proto, addr, port } => {
                        vec!["bind".into(), (*proto).into(), addr.to_string(), port.to_string()]
                    }
                    // A SYN the case's policy drops at a server in /app
                    // would hang a plain connect for two minutes.
                    Op::Connect { proto, addr, port } => vec![
                        "connect".into(),
                        (*proto).into(),
                        addr.to_string(),
                        port.to_string(),
                        "300".into(),
                    ],
                    Op::Inbound { proto, server, src } => {
                        let dst = destination(*server, *src).expect("filtered");
                        let port = SERVERS[*server].1.to_string();
                        vec![
                            "reach".into(),
                            (*proto).into(),
                            src.to_string(),
                            dst.to_string(),
                            port,
                            "300".into(),
                        ]
                    }
                };
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let t = std::time::Instant::now();
                let (out, kernel_allows) = match op {
                    Op::Inbound { proto, server, .. } => {
                        // The kernel's verdict is its count of refusals;
                        // a refused client must also have got nothing.
                        let port = SERVERS[*server].1;
                        let before = inbound_refusals(&mut sb, proto, port);
                        let out = sb.probe("/client", &args);
                        let refused = inbound_refusals(&mut sb, proto, port) - before;
                        prop_assert!(out == "ok" || out == "timeout", "{:?}: the client said {}", op, out);
                        prop_assert!(refused <= 1, "{:?}: {} refusals for one packet", op, refused);
                        prop_assert!(
                            refused == 0 || out == "timeout",
                            "{:?} refused but the client got {}",
                            op,
                            out
                        );
                        (out, refused == 0)
                    }
                    _ => {
                        let out = sb.probe("/app", &args);
                        let allows = out != "err EPERM";
                        (out, allows)
                    }
                };
                add(if matches!(op, Op::Inbound { .. }) { 2 } else { 1 }, t);
                let reference = reference_allows(&policy, op);
                prop_assert_eq!(
                    kernel_allows,
                    reference,
                    "{:?} -> kernel said {:?}\npolicy:\n{}",
                    op,
                    out,
                    toml(&policy)
                );
                checked.set(checked.get() + 1);
                allowed.set(allowed.get() + usize::from(reference));
                if matches!(op, Op::Inbound { .. }) {
                    let (c, a) = inbound.get();
                    inbound.set((c + 1, a + usize::from(reference)));
                }
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    for mut s in servers.drain(..) {
        let _ = s.kill();
        let _ = s.wait();
    }
    let (n, yes) = (checked.get(), allowed.get());
    eprintln!("differential: {n} operations ({yes} allowed, {} denied), kernel and reference agree", n - yes);
    let [reloads, outbound, inbound_s] = spent.get();
    eprintln!(
        "differential: {reloads:.1} s in reloads, {outbound:.1} s in outbound operations, {inbound_s:.1} s in inbound ones"
    );
    let (inbound_n, inbound_yes) = inbound.get();
    eprintln!(
        "differential: of them {inbound_n} inbound ({inbound_yes} reached, {} refused)",
        inbound_n - inbound_yes
    );
    if default_seed {
        assert!(
            inbound_yes > inbound_n / 20 && inbound_n - inbound_yes > inbound_n / 20,
            "the inbound cases must exercise both verdicts"
        );
        assert!(yes > n / 20 && n - yes > n / 20, "the cases must exercise both verdicts");
    }
}

/// The cases' seed, and whether it is the default. The default is fixed, so
/// every run checks the same operations and the floors on both verdicts are
/// a fact about them, not a chance: with a seed from entropy, a run of 32
/// random policies now and then drew too few reachable ports (11 of 263
/// inbound operations in one full suite) and failed a check that proves
/// nothing about the kernel. Another seed explores other cases; the floors
/// are then not checked.
fn seed() -> (u64, bool) {
    match std::env::var("PORTGUARD_DIFF_SEED") {
        Ok(v) => (v.parse().unwrap_or_else(|_| panic!("PORTGUARD_DIFF_SEED={v:?} is not a u64")), false),
        Err(_) => (0x706f_7274_6775_6172, true),
    }
}
