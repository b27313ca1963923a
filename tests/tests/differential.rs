//! Differential test: a pure-Rust reference evaluator of the README's
//! semantics against the kernel. Random policies and random operations;
//! every operation is performed for real in a guarded cgroup, and the
//! kernel's verdict must equal the reference's every time.

use std::net::IpAddr;

use ipnet::IpNet;
use portguard_tests::{Sandbox, require_root};
use proptest::{prelude::*, test_runner::TestRunner};

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

#[derive(Debug, Clone)]
struct Rule {
    protos: Vec<&'static str>,
    ports: Vec<(u16, u16)>,
    peers: Vec<IpNet>,
    address: Option<IpAddr>,
}

#[derive(Debug, Clone)]
struct Policy {
    ephemeral: bool,
    bind: Vec<Rule>,
    connect: Vec<Rule>,
}

#[derive(Debug, Clone)]
enum Op {
    Bind { proto: &'static str, addr: IpAddr, port: u16 },
    Connect { proto: &'static str, addr: IpAddr, port: u16 },
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
    )
        .prop_map(move |((protos, _), ports, peers, with_addr, addr)| Rule {
            protos,
            ports,
            peers: if bind { vec![] } else { peers.iter().map(|p| parse_net(p)).collect() },
            address: (bind && with_addr).then(|| addr.parse().expect("addr")),
        })
}

fn policy() -> impl Strategy<Value = Policy> {
    (any::<bool>(), prop::collection::vec(rule(true), 0..5), prop::collection::vec(rule(false), 0..5))
        .prop_map(|(ephemeral, bind, connect)| Policy { ephemeral, bind, connect })
}

fn op() -> impl Strategy<Value = Op> {
    let proto = prop::sample::select(vec!["tcp", "udp"]);
    let port = prop::sample::select(OP_PORTS.to_vec());
    prop_oneof![
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
    let v4 = |a: IpAddr| match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        a => a,
    };
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
    }
}

#[test]
fn kernel_verdicts_equal_the_reference_evaluator() {
    require_root!();
    // proptest wants an Fn closure; the sandbox is used by one case at a time.
    let sb = std::cell::RefCell::new(Sandbox::enforcing(
        "diff",
        &["/app"],
        "[[guard]]\nname = \"app\"\ncgroup = \"/app\"\n",
    ));
    let mut runner = TestRunner::new(proptest::test_runner::Config {
        cases: 32,
        failure_persistence: None,
        ..Default::default()
    });
    let strategy = (policy(), prop::collection::vec(op(), 25));
    let checked = std::cell::Cell::new(0usize);
    let allowed = std::cell::Cell::new(0usize);
    let case = std::cell::Cell::new(0usize);
    runner
        .run(&strategy, |(policy, ops)| {
            let mut sb = sb.borrow_mut();
            // A unique first line: an identical policy would not reload.
            case.set(case.get() + 1);
            sb.reload_policy(&format!("# case {}\n{}", case.get(), toml(&policy)));
            for op in &ops {
                let args: Vec<String> = match op {
                    Op::Bind { proto, addr, port } => {
                        vec!["bind".into(), (*proto).into(), addr.to_string(), port.to_string()]
                    }
                    Op::Connect { proto, addr, port } => {
                        vec!["connect".into(), (*proto).into(), addr.to_string(), port.to_string()]
                    }
                };
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let out = sb.probe("/app", &args);
                let kernel_allows = out != "err EPERM";
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
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let (n, yes) = (checked.get(), allowed.get());
    eprintln!("differential: {n} operations ({yes} allowed, {} denied), kernel and reference agree", n - yes);
    assert!(yes > n / 20 && n - yes > n / 20, "the random cases must exercise both verdicts");
}
