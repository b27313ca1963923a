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
use serde_json::{Value, json};

use super::{Section, median, overhead::Rng, prog_stats, quantile};

const TRIALS: usize = 5;
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
        serve(&sb, &["accept-serve", "0.0.0.0", &CONN_PORT.to_string()])?,
    ];
    let ingress = std::fs::read_dir(sb.bpffs.join("links"))
        .ok()
        .and_then(|d| d.flatten().find_map(|d| prog_stats::linked_program(&d.path().join("pg_sock_ingress"))));
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
            (c.host.probe(&["udp-flood", &server, &UDP_PORT.to_string(), MILLIS, UDP_SIZE]), "received")
        }
        Workload::Conn => (c.host.probe(&["conn-rate", &server, &CONN_PORT.to_string(), MILLIS]), "conns"),
    };
    let after = c.ingress.and_then(prog_stats::run_stats);
    let (prog_ns, prog_runs) = match (before, after) {
        (Some((t0, n0)), Some((t1, n1))) => ((t1 - t0) as f64, (n1 - n0) as f64),
        _ => (0.0, 0.0),
    };
    let s = Sample { units: field(&out, key)?, ns: field(&out, "ns")?, prog_ns, prog_runs };
    anyhow::ensure!(s.units > 0.0, "{}: {w:?} got nothing through: {out}", c.label);
    Ok(s)
}

/// What a workload's unit is, and how its rate reads.
fn unit(w: Workload) -> (&'static str, &'static str, f64) {
    match w {
        Workload::Stream => ("TCP stream", "MB/s", 1e-6),
        Workload::Udp => ("UDP datagrams (64 bytes) at an unconnected socket", "datagrams/s", 1.0),
        Workload::Conn => ("new TCP connections (connect, reset)", "connections/s", 1.0),
    }
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
    let mut rng = Rng(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos() as u64 | 1);
    for i in (1..plan.len()).rev() {
        plan.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    eprintln!("xtask: bench: inbound: {} trials of {MILLIS} ms in random order", plan.len());
    let mut samples: HashMap<(usize, Workload), Vec<Sample>> = HashMap::new();
    let measured: anyhow::Result<()> = plan.iter().try_for_each(|&(ci, w)| {
        samples.entry((ci, w)).or_default().push(trial(&configs[ci], w)?);
        Ok(())
    });
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", stats_was.trim())?;
    measured?;
    Ok(report(&configs, &samples))
}

/// Per configuration and workload: medians over the trials.
struct Cell {
    rate: f64,
    rate_p10: f64,
    rate_p90: f64,
    /// Wall-clock ns per unit (per byte for the stream: reported per MB).
    ns_per_unit: f64,
    prog_ns_per_run: Option<f64>,
    prog_runs_per_unit: Option<f64>,
    prog_ns_per_unit: Option<f64>,
}

fn cell(s: &[Sample], scale: f64) -> Cell {
    let rates: Vec<f64> = s.iter().map(|s| s.units * scale * 1e9 / s.ns).collect();
    let runs: f64 = s.iter().map(|s| s.prog_runs).sum();
    let (prog_ns, units): (f64, f64) = (s.iter().map(|s| s.prog_ns).sum(), s.iter().map(|s| s.units * scale).sum());
    Cell {
        rate: median(rates.clone()),
        rate_p10: quantile(rates.clone(), 0.1),
        rate_p90: quantile(rates, 0.9),
        ns_per_unit: median(s.iter().map(|s| s.ns / (s.units * scale)).collect()),
        prog_ns_per_run: (runs > 0.0).then(|| prog_ns / runs),
        prog_runs_per_unit: (runs > 0.0).then(|| runs / units),
        prog_ns_per_unit: (runs > 0.0).then(|| prog_ns / units),
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".to_owned(), |v| format!("{v:.digits$}"))
}

fn report(configs: &[Config], samples: &HashMap<(usize, Workload), Vec<Sample>>) -> Section {
    let mut md = String::from("## Inbound: cost per packet and per new connection\n\n");
    let _ = writeln!(
        md,
        "A server in a cgroup of one network namespace, a client in another, joined by a veth pair; the \
         client pushes one TCP stream (64 KiB writes), floods 64-byte UDP datagrams at an unconnected socket, \
         or opens and resets TCP connections, {MILLIS} ms per trial, {TRIALS} trials per cell, all interleaved \
         in random order. *rate*: median (p10-p90) of what the server received per second. *prog ns/run*: the \
         cgroup_skb ingress program's own average run time (BPF run stats over this cell's trials; the stats \
         add their own timestamps to every run), *runs/unit* how often it ran per MB, datagram or connection, \
         *prog ns/unit* the two multiplied. `from` lists mix /32, /24 and /16 prefixes at every size; the \
         client's /24 is one of them. I5 is nftables without portguard: an input chain accepting `ct state \
         established`, then sources in an interval set of the same prefixes.\n"
    );
    let mut rows = Vec::new();
    let mut cells: HashMap<(usize, Workload), Cell> = HashMap::new();
    for w in WORKLOADS {
        let (what, rate_unit, scale) = unit(w);
        let per = if w == Workload::Stream { "MB" } else { "unit" };
        let _ = writeln!(md, "### {what}\n");
        let _ = writeln!(
            md,
            "| configuration | rate ({rate_unit}) | wall ns/{per} | prog ns/run | runs/{per} | prog ns/{per} |\n\
             | --- | ---: | ---: | ---: | ---: | ---: |"
        );
        for (ci, c) in configs.iter().enumerate() {
            let x = cell(&samples[&(ci, w)], scale);
            let _ = writeln!(
                md,
                "| {} | {:.0} ({:.0}-{:.0}) | {:.0} | {} | {} | {} |",
                c.label,
                x.rate,
                x.rate_p10,
                x.rate_p90,
                x.ns_per_unit,
                opt(x.prog_ns_per_run, 0),
                opt(x.prog_runs_per_unit, 2),
                opt(x.prog_ns_per_unit, 0)
            );
            rows.push(json!({
                "workload": format!("{w:?}").to_lowercase(), "config": c.label, "kind": format!("{:?}", c.kind),
                "prefixes": c.prefixes, "rate": x.rate, "rate_unit": rate_unit, "rate_p10": x.rate_p10,
                "rate_p90": x.rate_p90, "wall_ns_per_unit": x.ns_per_unit, "prog_ns_per_run": x.prog_ns_per_run,
                "prog_runs_per_unit": x.prog_runs_per_unit, "prog_ns_per_unit": x.prog_ns_per_unit,
            }));
            cells.insert((ci, w), x);
        }
        md.push('\n');
    }
    let (targets, targets_json) = targets(configs, &cells);
    md.push_str(&targets);
    md.push_str(READING);
    Section { markdown: md, json: json!({ "inbound": { "rows": rows, "targets": targets_json } }) }
}

fn targets(configs: &[Config], cells: &HashMap<(usize, Workload), Cell>) -> (String, Value) {
    let find = |kind: Kind, n: usize| configs.iter().position(|c| c.kind == kind && (n == 0 || c.prefixes == n));
    let get = |kind: Kind, n: usize, w: Workload| find(kind, n).map(|ci| &cells[&(ci, w)]);
    let mut md = String::from("### Targets\n\n| target | numbers | met |\n| --- | --- | --- |\n");
    let mut out = Vec::new();
    let mut row = |target: &str, numbers: String, met: bool| {
        let _ = writeln!(md, "| {target} | {numbers} | {} |", if met { "met" } else { "**not met**" });
        out.push(json!({ "target": target, "numbers": numbers, "met": met }));
    };

    // Per new connection, from the program's own time: wall-clock
    // connections/s on two shared CPUs move by more than the program costs.
    let (small, large) = (SIZES[0], SIZES[1]);
    if let (Some(a), Some(b)) = (get(Kind::From, small, Workload::Conn), get(Kind::From, large, Workload::Conn)) {
        let (pa, pb) = (a.prog_ns_per_unit.unwrap_or(f64::NAN), b.prog_ns_per_unit.unwrap_or(f64::NAN));
        row(
            "per new connection, `from` 10 to 10,000 prefixes: flat (within 1.2x)",
            format!(
                "program {pa:.0} ns vs {pb:.0} ns per connection ({:.2}x); wall {:.0} vs {:.0} ns per connection",
                pb / pa,
                a.ns_per_unit,
                b.ns_per_unit
            ),
            pb / pa <= 1.2,
        );
    }
    // The established stream: the ingress program per packet, guarded
    // configurations against the empty program.
    if let Some(empty) = get(Kind::Empty, 0, Workload::Stream).and_then(|c| c.prog_ns_per_run) {
        let guarded: Vec<(String, f64)> = configs
            .iter()
            .enumerate()
            .filter(|(_, c)| matches!(c.kind, Kind::Guarded | Kind::From))
            .filter_map(|(ci, c)| Some((c.label.clone(), cells[&(ci, Workload::Stream)].prog_ns_per_run?)))
            .collect();
        let worst = guarded.iter().map(|g| g.1).fold(0.0, f64::max);
        let list: Vec<String> = guarded.iter().map(|(l, v)| format!("{l}: {v:.0}")).collect();
        row(
            "established TCP stream, per packet: within 1.2x of the empty program",
            format!("empty {empty:.0} ns/run; {} ns/run (worst {:.2}x)", list.join(", "), worst / empty),
            worst <= 1.2 * empty,
        );
    }
    // Unguarded: no program may run at all, and the rate must sit within
    // the nothing-attached configuration's own spread.
    if let (Some(ci), Some(c0)) = (find(Kind::Unguarded, 0), find(Kind::Floor, 0)) {
        for w in [Workload::Stream, Workload::Udp] {
            let (u, f) = (&cells[&(ci, w)], &cells[&(c0, w)]);
            let runs = u.prog_runs_per_unit.unwrap_or(0.0);
            let noise = (f.rate_p90 - f.rate_p10).max(u.rate_p90 - u.rate_p10);
            let (name, rate_unit, _) = unit(w);
            row(
                &format!("unguarded, {name}: within noise of nothing attached"),
                format!(
                    "{:.0} vs {:.0} {rate_unit} (difference {:.0}, p10-p90 spread {noise:.0}); ingress runs per unit: {runs}",
                    u.rate,
                    f.rate,
                    (u.rate - f.rate).abs()
                ),
                runs == 0.0 && (u.rate - f.rate).abs() <= noise,
            );
        }
    }
    md.push('\n');
    (md, Value::Array(out))
}

const READING: &str = "\
**Reading.** The empty program's run time is mostly the run statistics' own two clock reads and the \
indirect call: the floor any cgroup_skb design pays per packet. On an established stream portguard's \
program adds one socket-state read to it (any TCP socket not listening, any connected UDP socket, \
passes there), and GRO hands it one run per several segments, so the per-MB cost is a few runs. A \
datagram at an unconnected guarded UDP socket pays the full judgment: the socket's stamp \
(socket-local storage), the config, the bind rule's hash lookup, one hash lookup per distinct `from` \
prefix length (not per prefix: flat from 10 to 10,000), the reply-window note for the sender, and the \
decision counter. A new TCP connection is judged twice at the listener (the SYN, counted and \
reported, and the handshake's last ACK) and then runs the fast path for its reset. An unguarded server \
runs no portguard program at all: portguard attaches only at guarded cgroups. nftables pays conntrack \
on every packet, and its interval-set lookup for every new flow.\n";
