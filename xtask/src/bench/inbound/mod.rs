//! What judging inbound traffic costs (issue 14): a server in a cgroup of
//! a sandbox's network namespace, a client in a second namespace joined by
//! a veth pair, and three workloads from the client: one TCP stream
//! (established packets), a UDP datagram flood at an unconnected socket
//! (every datagram judged), and new TCP connections (SYN and handshake
//! ACK judged). Configurations, set up side by side and interleaved:
//!
//! * I0: nothing attached;
//! * I1: empty always-allow programs on every hook portguard uses
//!   (`portguard bench-noop`), cgroup_skb ingress included, at the server's
//!   cgroup;
//! * I2: portguard with a guard on a sibling cgroup, the server unguarded;
//! * I3: portguard guarding the server, its bind rule without `from`;
//! * I4: the same rule with `from` at 10 and at 10,000 prefixes (the
//!   client's network among them);
//! * I5: no portguard; an nftables input chain doing the `from` job with an
//!   interval set of the same prefixes, behind the usual
//!   `ct state established` accept.

use std::{
    collections::HashMap,
    fmt::Write as _,
    io::{BufRead as _, BufReader},
    process::{Child, Command},
};

use portguard_tests::{Host, Sandbox, agent_bin};

mod report;

use super::{Section, overhead::Rng, prog_stats};

const TRIALS: usize = 7;
const MILLIS: &str = "400";
const UDP_SIZE: &str = "64";
/// Ports inside the sandbox's own network namespace, so fixed ones cannot
/// meet another run's.
const TCP_PORT: u16 = 7101;
const UDP_PORT: u16 = 7102;
const CONN_PORT: u16 = 7103;
const SIZES: [usize; 2] = [10, 10_000];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Floor,
    Empty,
    Unguarded,
    Guarded,
    From,
    Nft,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Workload {
    Stream,
    Udp,
    Conn,
}

const WORKLOADS: [Workload; 3] = [Workload::Stream, Workload::Udp, Workload::Conn];

/// A server process, killed and reaped with its configuration.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Config {
    label: String,
    kind: Kind,
    prefixes: usize,
    /// Dropped first: the servers go before their cgroup and namespace.
    _servers: Vec<Running>,
    /// The cgroup_skb ingress program linked in this configuration (for
    /// I2, the one at the sibling: it must never run).
    ingress: Option<u32>,
    host: Host,
    _sb: Sandbox,
}

/// One trial: how much work got through (bytes, datagrams, connections)
/// in how long, and what the ingress program spent meanwhile.
#[derive(Clone, Copy, Default)]
struct Sample {
    units: f64,
    ns: f64,
    prog_ns: f64,
    prog_runs: f64,
}

/// The `from` list: the client's network, then fillers that never match,
/// in three prefix lengths (/32, /24, /16) at every size so that the
/// kernel does the same number of lookups per packet at 10 as at 10,000.
fn prefixes(n: usize) -> Vec<String> {
    let mut v = vec!["10.200.1.0/24".to_owned()];
    for i in 0..n.saturating_sub(1) {
        let k = i / 3;
        v.push(match i % 3 {
            0 => format!("100.{}.{}.{}/32", 64 + k / 65_536, (k / 256) % 256, k % 256),
            1 => format!("10.{}.{}.0/24", k / 256, k % 256),
            _ => format!("{}.{}.0.0/16", 11 + k / 256, k % 256),
        });
    }
    v
}

fn policy(cgroup: &str, from: Option<usize>) -> String {
    let mut s = format!(
        "[[guard]]\nname = \"s\"\ncgroup = \"{cgroup}\"\n[[guard.bind]]\nports = [{TCP_PORT}, {UDP_PORT}, {CONN_PORT}]\nproto = \"both\"\n"
    );
    if let Some(n) = from {
        let list: Vec<String> = prefixes(n).iter().map(|p| format!("{p:?}")).collect();
        let _ = writeln!(s, "from = [{}]", list.join(", "));
    }
    s
}

fn nft_ruleset(n: usize) -> String {
    format!(
        "table inet pginbound {{\n  set from4 {{\n    type ipv4_addr; flags interval\n    elements = {{ {} }}\n  }}\n\
         \x20 chain input {{\n    type filter hook input priority 0; policy accept;\n\
         \x20   ct state established,related accept\n\
         \x20   ip saddr @from4 tcp dport {{ {TCP_PORT}, {CONN_PORT} }} accept\n\
         \x20   ip saddr @from4 udp dport {UDP_PORT} accept\n\
         \x20   tcp dport {{ {TCP_PORT}, {CONN_PORT} }} drop\n\
         \x20   udp dport {UDP_PORT} drop\n  }}\n}}\n",
        prefixes(n).join(", ")
    )
}

/// Starts `pg-probe ARGS` in the server's cgroup and waits for its port.
fn serve(sb: &Sandbox, args: &[&str]) -> anyhow::Result<Running> {
    let mut child = Running(sb.spawn_probe("/s", args));
    let mut line = String::new();
    BufReader::new(child.0.stdout.as_mut().expect("piped stdout")).read_line(&mut line)?;
    anyhow::ensure!(line.starts_with("ok port="), "pg-probe {args:?} in /s: {line:?}");
    Ok(child)
}

fn config(label: String, kind: Kind, prefixes: usize) -> anyhow::Result<Config> {
    let mut sb = Sandbox::new("inb");
    let server_cgroup = sb.cgroup("/s");
    let host = sb.add_host(1);
    // The connection server's deep accept queue (see pg-probe conn-sink):
    // the namespace's own limit, not the host's.
    crate::run(Command::new("ip").args([
        "netns",
        "exec",
        &sb.netns,
        "sysctl",
        "-qw",
        "net.core.somaxconn=65535",
    ]))?;
    match kind {
        Kind::Floor => {}
        Kind::Empty => crate::run(
            Command::new(agent_bin())
                .arg("bench-noop")
                .arg("--cgroup-root")
                .arg(&server_cgroup)
                .arg("--bpffs")
                .arg(&sb.bpffs),
        )?,
        Kind::Unguarded => {
            sb.cgroup("/other");
            sb.start_agent(&policy("/other", Some(prefixes)));
        }
        Kind::Guarded => drop(sb.start_agent(&policy("/s", None))),
        Kind::From => drop(sb.start_agent(&policy("/s", Some(prefixes)))),
        Kind::Nft => {
            let file = sb.dir.join("inbound.nft");
            std::fs::write(&file, nft_ruleset(prefixes))?;
            crate::run(Command::new("ip").args(["netns", "exec", &sb.netns, "nft", "-f"]).arg(&file))?;
        }
    }
    let servers = vec![
        serve(&sb, &["sink", "tcp", "0.0.0.0", &TCP_PORT.to_string()])?,
        serve(&sb, &["sink", "udp", "0.0.0.0", &UDP_PORT.to_string()])?,
        serve(&sb, &["conn-sink", "0.0.0.0", &CONN_PORT.to_string()])?,
    ];
    let ingress = std::fs::read_dir(sb.bpffs.join("links")).ok().and_then(|d| {
        d.flatten().find_map(|d| prog_stats::linked_program(&d.path().join("pg_sock_ingress")))
    });
    anyhow::ensure!(
        ingress.is_some() == matches!(kind, Kind::Empty | Kind::Unguarded | Kind::Guarded | Kind::From),
        "{label}: ingress program {ingress:?}"
    );
    Ok(Config { label, kind, prefixes, _servers: servers, ingress, host, _sb: sb })
}

fn field(out: &str, key: &str) -> anyhow::Result<f64> {
    out.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no {key}= in {out:?}"))
}

fn trial(c: &Config, w: Workload) -> anyhow::Result<Sample> {
    let server = c.host.server_v4.to_string();
    let before = c.ingress.and_then(prog_stats::run_stats);
    let (out, key) = match w {
        Workload::Stream => (c.host.probe(&["stream", &server, &TCP_PORT.to_string(), MILLIS]), "bytes"),
        Workload::Udp => {
            (c.host.probe(&["udp-flood", &server, &UDP_PORT.to_string(), MILLIS, UDP_SIZE]), "sent")
        }
        Workload::Conn => (c.host.probe(&["conn-rate", &server, &CONN_PORT.to_string(), MILLIS]), "conns"),
    };
    let after = c.ingress.and_then(prog_stats::run_stats);
    let (prog_ns, prog_runs) = match (before, after) {
        (Some((t0, n0)), Some((t1, n1))) => ((t1 - t0) as f64, (n1 - n0) as f64),
        _ => (0.0, 0.0),
    };
    let s = Sample { units: field(&out, key)?, ns: field(&out, "ns")?, prog_ns, prog_runs };
    // The UDP rate counts what the client sent: veth delivers each datagram
    // in the sender's own softirq, through the filters, whether or not the
    // server then finds room to queue it. The server must still hear them.
    let heard = if w == Workload::Udp { field(&out, "received")? } else { s.units };
    anyhow::ensure!(s.units > 0.0 && heard > 0.0, "{}: {w:?} got nothing through: {out}", c.label);
    Ok(s)
}

pub(super) fn run() -> anyhow::Result<Section> {
    let mut specs = vec![
        ("I0 nothing".to_owned(), Kind::Floor, 0),
        ("I1 empty programs, every hook".to_owned(), Kind::Empty, 0),
        ("I2 portguard, unguarded".to_owned(), Kind::Unguarded, 10),
        ("I3 portguard, guarded, no `from`".to_owned(), Kind::Guarded, 0),
    ];
    for n in SIZES {
        specs.push((format!("I4 portguard, `from` {n} prefixes"), Kind::From, n));
    }
    for n in SIZES {
        specs.push((format!("I5 nftables input set, {n} prefixes"), Kind::Nft, n));
    }
    eprintln!("xtask: bench: inbound: setting up {} configurations", specs.len());
    let configs = specs.into_iter().map(|(l, k, n)| config(l, k, n)).collect::<anyhow::Result<Vec<_>>>()?;

    let stats_was = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_default();
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")?;
    let mut plan: Vec<(usize, Workload)> = (0..configs.len())
        .flat_map(|ci| WORKLOADS.iter().flat_map(move |&w| std::iter::repeat_n((ci, w), TRIALS)))
        .collect();
    let mut rng =
        Rng(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos() as u64 | 1);
    for i in (1..plan.len()).rev() {
        plan.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    eprintln!("xtask: bench: inbound: {} trials of {MILLIS} ms in random order", plan.len());
    let mut samples: HashMap<(usize, Workload), Vec<Sample>> = HashMap::new();
    let t = std::time::Instant::now();
    let measured: anyhow::Result<()> = plan.iter().try_for_each(|&(ci, w)| {
        samples.entry((ci, w)).or_default().push(trial(&configs[ci], w)?);
        Ok(())
    });
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", stats_was.trim())?;
    measured?;
    eprintln!("xtask: bench: inbound: measured in {:.0} s", t.elapsed().as_secs_f64());
    Ok(report::report(&configs, &samples))
}
