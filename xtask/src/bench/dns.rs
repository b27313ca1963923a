//! What peers by DNS name cost (issue #17). One guarded cgroup resolves
//! names at dnsmasq on 127.0.0.1 in the sandbox's network namespace (an
//! unguarded cgroup beside it) and connects to the answers. Configurations,
//! set up side by side and their trials interleaved:
//!
//! * names at 10 and 10,000: the guard's connect rule lists the names; each
//!   connect is allowed by an address learned from an answer;
//! * addresses at 10 and 10,000: the same addresses as /32 rules, the names
//!   not in the policy (the guard has no names: nothing is recorded or
//!   learned, connect is judged by the address rules alone).
//!
//! Two workloads per trial: resolve only (every answer is walked, for the
//! names configurations), and resolve then connect to the answer at once.
//! The programs' own run statistics give the kernel's cost per query
//! (egress), per answer (ingress) and per connect (connect4).

use std::fmt::Write as _;

use portguard_tests::{Running, Sandbox};
use serde_json::{Value, json};

use super::{Section, median, overhead::Rng, prog_stats};

const TRIALS: usize = 5;
const LOOKUPS: &str = "2000";
const PORT: &str = "8080";
const SIZES: [usize; 2] = [10, 10_000];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Names,
    Addresses,
}

struct Config {
    label: String,
    kind: Kind,
    size: usize,
    /// Program ids at the guarded cgroup: egress, ingress, connect4.
    programs: [Option<u32>; 3],
    _servers: Vec<Running>,
    sb: Sandbox,
}

const PROGRAMS: [&str; 3] = ["pg_sock_egress", "pg_sock_ingress", "pg_connect4"];

fn address(i: usize) -> String {
    format!("127.3.{}.{}", i / 250, i % 250 + 1)
}

fn policy(kind: Kind, size: usize) -> String {
    let peers: Vec<String> = (0..size)
        .map(|i| match kind {
            Kind::Names => format!("\"n{i}.bench.test\""),
            Kind::Addresses => format!("\"{}\"", address(i)),
        })
        .collect();
    format!(
        "[[guard]]\nname = \"app\"\ncgroup = \"/app\"\nallow_ephemeral_bind = true\n\
         [[guard.connect]]\npeer = \"127.0.0.1\"\nports = [53]\nproto = \"udp\"\n\
         [[guard.connect]]\npeer = [{}]\nports = [{PORT}]\n",
        peers.join(", ")
    )
}

fn setup(kind: Kind, size: usize) -> anyhow::Result<Config> {
    let label = match kind {
        Kind::Names => format!("names, {size}"),
        Kind::Addresses => format!("addresses, {size}"),
    };
    let mut sb = Sandbox::new("bench-dns");
    sb.cgroup("/app");
    sb.cgroup("/srv");
    let hosts = sb.dir.join("hosts");
    let text: String = (0..size).map(|i| format!("{} n{i}.bench.test\n", address(i))).collect();
    std::fs::write(&hosts, text)?;
    let addn = format!("--addn-hosts={}", hosts.display());
    let dns = sb.dnsmasq("/srv", Some("127.0.0.1"), 53, &["--cache-size=0", &addn]);
    let server = sb.accept_server("/srv", "0.0.0.0", PORT);
    sb.start_agent(&policy(kind, size));
    let links = std::fs::read_dir(sb.bpffs.join("links"))?.flatten().map(|d| d.path()).collect::<Vec<_>>();
    let programs = PROGRAMS.map(|p| links.iter().find_map(|d| prog_stats::linked_program(&d.join(p))));
    anyhow::ensure!(programs.iter().all(Option::is_some), "{label}: programs {programs:?}");
    // dnsmasq answers once it has bound its port.
    for _ in 0..100 {
        if sb
            .probe("/srv", &["dns-race", "127.0.0.1", "n", "bench.test", "1", "0", "1"])
            .contains("answered=1")
        {
            return Ok(Config { label, kind, size, programs, _servers: vec![dns, server], sb });
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    anyhow::bail!("{label}: dnsmasq never answered")
}

fn field(out: &str, key: &str) -> anyhow::Result<f64> {
    out.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no {key}= in {out:?}"))
}

/// Per program: (ns, runs) over one workload.
#[derive(Default, Clone)]
struct Sample {
    lookups_per_s: f64,
    runs: [(f64, f64); 3],
}

fn trial(c: &Config, connect: bool) -> anyhow::Result<Sample> {
    let before = c.programs.map(|p| p.and_then(prog_stats::run_stats));
    let port = if connect { PORT } else { "0" };
    let out =
        c.sb.probe("/app", &["dns-race", "127.0.0.1", "n", "bench.test", LOOKUPS, port, &c.size.to_string()]);
    let after = c.programs.map(|p| p.and_then(prog_stats::run_stats));
    let lookups = field(&out, "answered")?;
    anyhow::ensure!(lookups > 0.0 && field(&out, "refused")? == 0.0, "{}: {out}", c.label);
    if connect {
        anyhow::ensure!(field(&out, "connected")? + field(&out, "timeout")? == lookups, "{}: {out}", c.label);
    }
    let mut s = Sample { lookups_per_s: lookups / (field(&out, "ns")? / 1e9), ..Sample::default() };
    for i in 0..3 {
        if let (Some((t0, n0)), Some((t1, n1))) = (before[i], after[i]) {
            s.runs[i] = ((t1 - t0) as f64, (n1 - n0) as f64);
        }
    }
    Ok(s)
}

pub(super) fn run() -> anyhow::Result<Section> {
    let stats_was = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_default();
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")?;
    let result = measure();
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", stats_was.trim())?;
    result
}

fn measure() -> anyhow::Result<Section> {
    let mut configs = Vec::new();
    for kind in [Kind::Names, Kind::Addresses] {
        for size in SIZES {
            configs.push(setup(kind, size)?);
        }
    }
    // Every name learned once before the trials: connects then meet a
    // learned address, as a client that resolved a moment ago does.
    for c in &configs {
        trial(c, false)?;
    }
    let mut order: Vec<(usize, bool)> =
        (0..TRIALS).flat_map(|_| (0..configs.len()).flat_map(|c| [(c, false), (c, true)])).collect();
    Rng(0x5eed_d115).shuffle(&mut order);
    let mut samples: Vec<[Vec<Sample>; 2]> = configs.iter().map(|_| [Vec::new(), Vec::new()]).collect();
    eprintln!("xtask: bench: dns: {} trials in random order", order.len());
    for (c, connect) in order {
        samples[c][usize::from(connect)].push(trial(&configs[c], connect)?);
    }
    let per_run = |v: &[Sample], p: usize| {
        median(v.iter().filter(|s| s.runs[p].1 > 0.0).map(|s| s.runs[p].0 / s.runs[p].1).collect())
    };
    let mut md = String::from(
        "## DNS names\n\n\
         A guarded cgroup resolves names at dnsmasq on 127.0.0.1 (an unguarded cgroup in the same network \
         namespace, 2,000 lookups per trial over the configuration's names, each from a fresh connected UDP \
         socket) and, in the second workload, connects to each answer at once. *names, N*: the guard's \
         connect rule lists N names, every connect allowed by a learned address. *addresses, N*: the same \
         addresses as N /32 rules and no names, so nothing is recorded or learned. Program costs are the \
         programs' own run statistics (ns per run), medians of 5 interleaved trials; *lookups/s* is one \
         client and dnsmasq end to end.\n\n\
         | configuration | egress ns per query | ingress ns per answer | connect4 ns per connect | lookups/s |\n\
         | --- | ---: | ---: | ---: | ---: |\n",
    );
    let mut rows = Vec::new();
    for (c, s) in configs.iter().zip(&samples) {
        let (resolve, connect) = (&s[0], &s[1]);
        let egress = per_run(resolve, 0);
        let ingress = per_run(resolve, 1);
        let connect4 = per_run(connect, 2);
        let rate = median(resolve.iter().map(|s| s.lookups_per_s).collect());
        let _ = writeln!(md, "| {} | {egress:.0} | {ingress:.0} | {connect4:.0} | {rate:.0} |", c.label);
        rows.push(json!({
            "config": c.label,
            "names": c.kind == Kind::Names,
            "size": c.size,
            "egress_ns_per_query": egress,
            "ingress_ns_per_answer": ingress,
            "connect4_ns": connect4,
            "lookups_per_s": rate,
        }));
    }
    let value = |kind: Kind, size: usize, key: &str| -> f64 {
        rows.iter()
            .find(|r| r["names"] == (kind == Kind::Names) && r["size"] == size)
            .and_then(|r| r[key].as_f64())
            .unwrap_or(f64::NAN)
    };
    let learn_ns =
        value(Kind::Names, 10, "ingress_ns_per_answer") - value(Kind::Addresses, 10, "ingress_ns_per_answer");
    let _ = writeln!(
        md,
        "\n**Reading.** Connect by name at 10 / 10,000 names: {:.0} / {:.0} ns per connect4 run, against {:.0} / \
         {:.0} ns by address rules: a connect allowed by a name costs one learned-table lookup and one name \
         lookup per name the address stands for, whatever the number of names. Learning costs {learn_ns:.0} ns \
         per one-record answer over the ingress program without names (the walk: header, question hashed a word at \
         a time, one record, the table write), so one CPU could learn about {:.0} answers per second; the end-to-end \
         rate is bound by the client and dnsmasq, not by the kernel.",
        value(Kind::Names, 10, "connect4_ns"),
        value(Kind::Names, 10_000, "connect4_ns"),
        value(Kind::Addresses, 10, "connect4_ns"),
        value(Kind::Addresses, 10_000, "connect4_ns"),
        1e9 / value(Kind::Names, 10, "ingress_ns_per_answer"),
    );
    Ok(Section { markdown: md, json: Value::Array(rows) })
}
