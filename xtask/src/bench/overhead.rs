//! Cost per socket operation: every (configuration, workload, variant)
//! combination runs many short trials, interleaved in random order within
//! one run, so that drift in a noisy VM spreads over all of them alike.

use std::{collections::HashMap, fmt::Write as _};

use serde_json::json;

use super::{
    Section,
    configs::{self, Config, Kind},
    median, prog_stats, quantile,
    workloads::{ALL, Workload},
};

const TRIALS: usize = 9;

/// A tiny xorshift: shuffling needs no cryptographic randomness.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Fisher-Yates.
    pub(super) fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, (self.next() % (i as u64 + 1)) as usize);
        }
    }
}

fn trial(cfg: &Config, w: &Workload, allowed: bool) -> f64 {
    let port = w.port(allowed).to_string();
    let out = cfg.sandbox.probe(cfg.cgroup, &["bench", w.id, &port, &w.iterations.to_string()]);
    let ns = out
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("ns_per_op="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{}: {} {}: {out}", cfg.label, w.id, port));
    let refused: u64 = out
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("refused="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let enforced = match cfg.kind {
        Kind::Floor | Kind::Empty | Kind::Unguarded => false,
        Kind::Portguard | Kind::PortguardNoInventory => true,
        Kind::NftList | Kind::NftSet => w.nft_sees_it,
    };
    // Nothing listens on the denied port, so an unguarded TCP connect to it
    // is refused too (by the kernel's reset): W3 denied is always refused.
    let expect_refused = !allowed && (enforced || w.id == "w3");
    assert_eq!(
        refused > 0,
        expect_refused,
        "{}: {} {} refused={refused}",
        cfg.label,
        w.id,
        if allowed { "allowed" } else { "denied" }
    );
    ns
}

/// The program id behind one of a configuration's pinned links: portguard
/// pins each guarded cgroup's links under `links/<cgroup id>/`.
fn prog_id(cfg: &Config, program: &str) -> Option<u32> {
    let links = cfg.sandbox.bpffs.join("links");
    std::fs::read_dir(links).ok()?.flatten().find_map(|d| prog_stats::linked_program(&d.path().join(program)))
}

/// The program a workload exercises.
fn program_of(w: &Workload) -> &'static str {
    match w.id {
        "w1" | "w3" => "pg_connect4",
        "w2" => "pg_sendmsg4",
        _ => "pg_bind4",
    }
}

pub(super) struct Results {
    pub section: Section,
}

pub(super) fn run() -> anyhow::Result<Results> {
    let sizes = [10usize, 1_000, 100_000];
    let nft_sizes = [10usize, 1_000, 10_000];
    eprintln!("xtask: bench: setting up {} configurations", 4 + sizes.len() + 2 * nft_sizes.len());
    let configs = configs::build(&sizes, &nft_sizes)?;
    let stats_was = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_default();
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")?;

    let mut plan = Vec::new();
    for (ci, _) in configs.iter().enumerate() {
        for (wi, _) in ALL.iter().enumerate() {
            for allowed in [true, false] {
                for _ in 0..TRIALS {
                    plan.push((ci, wi, allowed));
                }
            }
        }
    }
    let mut rng =
        Rng(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos() as u64 | 1);
    for i in (1..plan.len()).rev() {
        plan.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    eprintln!("xtask: bench: {} trials in random order", plan.len());
    let ids: Vec<HashMap<&str, u32>> = configs
        .iter()
        .map(|c| {
            ["pg_connect4", "pg_sendmsg4", "pg_bind4"]
                .into_iter()
                .filter_map(|p| Some((p, prog_id(c, p)?)))
                .collect()
        })
        .collect();
    let mut samples: HashMap<(usize, usize, bool), Vec<f64>> = HashMap::new();
    // Run time and runs of the exercised program, summed over the trials of
    // each combination: the stats are read after every trial, and only
    // that trial's sandbox ran programs in between.
    let mut prog_totals: HashMap<(usize, usize, bool), (f64, f64)> = HashMap::new();
    for (n, &(ci, wi, allowed)) in plan.iter().enumerate() {
        if n % 100 == 0 {
            eprintln!("xtask: bench: trial {n}/{}", plan.len());
        }
        let id = ids[ci].get(program_of(&ALL[wi])).copied();
        let before = id.and_then(prog_stats::run_stats);
        samples.entry((ci, wi, allowed)).or_default().push(trial(&configs[ci], &ALL[wi], allowed));
        if let (Some((t0, c0)), Some((t1, c1))) = (before, id.and_then(prog_stats::run_stats)) {
            let e = prog_totals.entry((ci, wi, allowed)).or_default();
            e.0 += (t1 - t0) as f64;
            e.1 += (c1 - c0) as f64;
        }
    }
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", stats_was.trim())?;

    let med = |ci: usize, wi: usize, allowed: bool| median(samples[&(ci, wi, allowed)].clone());
    let floor = configs.iter().position(|c| c.kind == Kind::Floor).expect("C0");
    let empty = configs.iter().position(|c| c.kind == Kind::Empty).expect("C1");
    let mut md = String::from("## Cost per socket operation\n\n");
    let _ = writeln!(
        md,
        "Each cell: median ns per operation over {TRIALS} trials (p10-p90 in brackets), all trials of all \
         configurations interleaved in random order. *Overhead* is the median minus C0's. *x C1* is the \
         overhead divided by C1's (the empty program's). *prog* is the program's own average run time from \
         BPF run stats (`run_time_ns / run_cnt` of connect4, sendmsg4 or bind4, over this cell's trials only; the stats themselves add a little to every run). nftables \
         filters packets, so it never sees W1 (a UDP connect sends nothing) or W4 (bind): those cells are \
         marked *n/a*.\n"
    );
    let mut rows_json = Vec::new();
    for (wi, w) in ALL.iter().enumerate() {
        for allowed in [true, false] {
            let _ = writeln!(md, "### {} ({})\n", w.what, if allowed { "allowed" } else { "denied" });
            md.push_str("| configuration | ns/op | overhead | x C1 | prog ns/run |\n| --- | ---: | ---: | ---: | ---: |\n");
            let c0 = med(floor, wi, allowed);
            let c1_over = med(empty, wi, allowed) - c0;
            for (ci, c) in configs.iter().enumerate() {
                let s = &samples[&(ci, wi, allowed)];
                let m = median(s.clone());
                let over = m - c0;
                let prog_ns_run =
                    prog_totals.get(&(ci, wi, allowed)).filter(|t| t.1 > 0.0).map(|t| t.0 / t.1);
                let prog_ns = prog_ns_run.map_or("-".to_owned(), |v| format!("{v:.0}"));
                let nft_blind = matches!(c.kind, Kind::NftList | Kind::NftSet) && !w.nft_sees_it;
                let ratio = if c.kind == Kind::Floor || nft_blind {
                    "-".to_owned()
                } else {
                    format!("{:.2}", over / c1_over)
                };
                let _ = writeln!(
                    md,
                    "| {} | {:.0} [{:.0}-{:.0}] | {}{:.0} | {} | {} |",
                    c.label,
                    m,
                    quantile(s.clone(), 0.1),
                    quantile(s.clone(), 0.9),
                    if nft_blind { "n/a " } else { "" },
                    over,
                    ratio,
                    prog_ns
                );
                rows_json.push(json!({
                    "workload": w.id, "allowed": allowed, "config": c.label, "kind": format!("{:?}", c.kind),
                    "rules": c.rules, "median_ns": m, "p10_ns": quantile(s.clone(), 0.1), "p90_ns": quantile(s.clone(), 0.9),
                    "overhead_ns": over, "c0_ns": c0, "c1_overhead_ns": c1_over,
                    "overhead_vs_c1": if c1_over > 0.0 { Some(over / c1_over) } else { None }, "prog_ns_per_run": prog_ns_run,
                    "not_seen_by_nftables": nft_blind,
                }));
            }
            md.push('\n');
        }
    }
    md.push_str(&super::targets::reading(&rows_json));
    md.push_str(&super::targets::assess(&rows_json));
    super::plot::overhead_vs_rules(&rows_json)?;
    md.push_str("\n![overhead vs policy size](benchmarks-overhead.svg)\n");
    Ok(Results { section: Section { markdown: md, json: json!({ "overhead": rows_json }) } })
}
