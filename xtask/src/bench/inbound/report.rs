//! The inbound section's tables, targets and reading.

use std::{collections::HashMap, fmt::Write as _};

use serde_json::{Value, json};

use super::{Config, Kind, MILLIS, SIZES, Sample, TRIALS, WORKLOADS, Workload};
use crate::bench::{Section, median, quantile};

/// What a workload's unit is, and how its rate reads.
pub(super) fn unit(w: Workload) -> (&'static str, &'static str, f64) {
    match w {
        Workload::Stream => ("TCP stream", "MB/s", 1e-6),
        Workload::Udp => ("UDP datagrams (64 bytes) at an unconnected socket", "datagrams/s", 1.0),
        Workload::Conn => ("new TCP connections (connect, reset)", "connections/s", 1.0),
    }
}

/// Per configuration and workload: medians over the trials.
struct Cell {
    rate: f64,
    rate_p10: f64,
    rate_p90: f64,
    /// Wall-clock ns per unit (per byte for the stream: reported per MB).
    ns_per_unit: f64,
    prog_ns_per_run: Option<f64>,
    /// p10 and p90 of the per-trial run times: the VM's noise.
    prog_ns_per_run_spread: Option<(f64, f64)>,
    prog_runs_per_unit: Option<f64>,
    prog_ns_per_unit: Option<f64>,
}

fn cell(s: &[Sample], scale: f64) -> Cell {
    let rates: Vec<f64> = s.iter().map(|s| s.units * scale * 1e9 / s.ns).collect();
    let ran: Vec<&Sample> = s.iter().filter(|s| s.prog_runs > 0.0).collect();
    let runs: f64 = s.iter().map(|s| s.prog_runs).sum();
    // Medians of per-trial ratios: one trial that the VM's neighbours
    // slowed down moves a pooled average, not a median.
    let per_trial =
        |f: &dyn Fn(&Sample) -> f64| (runs > 0.0).then(|| median(ran.iter().map(|s| f(s)).collect()));
    Cell {
        rate: median(rates.clone()),
        rate_p10: quantile(rates.clone(), 0.1),
        rate_p90: quantile(rates, 0.9),
        ns_per_unit: median(s.iter().map(|s| s.ns / (s.units * scale)).collect()),
        prog_ns_per_run: per_trial(&|s| s.prog_ns / s.prog_runs),
        prog_ns_per_run_spread: (runs > 0.0).then(|| {
            let v: Vec<f64> = ran.iter().map(|s| s.prog_ns / s.prog_runs).collect();
            (quantile(v.clone(), 0.1), quantile(v, 0.9))
        }),
        prog_runs_per_unit: per_trial(&|s| s.prog_runs / (s.units * scale)),
        prog_ns_per_unit: per_trial(&|s| s.prog_ns / (s.units * scale)),
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".to_owned(), |v| format!("{v:.digits$}"))
}

pub(super) fn report(configs: &[Config], samples: &HashMap<(usize, Workload), Vec<Sample>>) -> Section {
    let mut md = String::from("## Inbound: cost per packet and per new connection\n\n");
    let _ = writeln!(
        md,
        "A server in a cgroup of one network namespace, a client in another, joined by a veth pair; the \
         client pushes one TCP stream (64 KiB writes), floods 64-byte UDP datagrams at an unconnected socket, \
         or opens and resets TCP connections, {MILLIS} ms per trial, {TRIALS} trials per cell, all interleaved \
         in random order. *rate*: median (p10-p90) per second of what the server received (stream, connections) \
         or the client sent (datagrams: veth runs the receive path, filters included, in the sender's \
         softirq, so the rate does not wait on the server's reads). *prog ns/run*: the \
         cgroup_skb ingress program's own average run time (BPF run stats, median (p10-p90) over this cell's trials; \
         the stats add their own timestamps to every run), *runs/unit* how often it ran per MB, datagram or \
         connection, *prog ns/unit* its time per MB, datagram or connection. `from` lists mix /32, /24 and /16 prefixes at every size; the \
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
                match (x.prog_ns_per_run, x.prog_ns_per_run_spread) {
                    (Some(m), Some((lo, hi))) => format!("{m:.0} ({lo:.0}-{hi:.0})"),
                    _ => "-".to_owned(),
                },
                opt(x.prog_runs_per_unit, 2),
                opt(x.prog_ns_per_unit, 0)
            );
            rows.push(json!({
                "workload": format!("{w:?}").to_lowercase(), "config": c.label, "kind": format!("{:?}", c.kind),
                "prefixes": c.prefixes, "rate": x.rate, "rate_unit": rate_unit, "rate_p10": x.rate_p10,
                "rate_p90": x.rate_p90, "wall_ns_per_unit": x.ns_per_unit, "prog_ns_per_run": x.prog_ns_per_run,
                "prog_ns_per_run_p10_p90": x.prog_ns_per_run_spread,
                "prog_runs_per_unit": x.prog_runs_per_unit, "prog_ns_per_unit": x.prog_ns_per_unit,
            }));
            cells.insert((ci, w), x);
        }
        md.push('\n');
    }
    let (targets, targets_json) = targets(configs, &cells);
    md.push_str(&targets);
    md.push_str(&reading(configs, &cells));
    Section { markdown: md, json: json!({ "inbound": { "rows": rows, "targets": targets_json } }) }
}

fn targets(configs: &[Config], cells: &HashMap<(usize, Workload), Cell>) -> (String, Value) {
    let find =
        |kind: Kind, n: usize| configs.iter().position(|c| c.kind == kind && (n == 0 || c.prefixes == n));
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
    if let (Some(a), Some(b)) =
        (get(Kind::From, small, Workload::Conn), get(Kind::From, large, Workload::Conn))
    {
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

/// What each nanosecond pays for, with this run's differences.
fn reading(configs: &[Config], cells: &HashMap<(usize, Workload), Cell>) -> String {
    let of = |kind: Kind, n: usize, w: Workload, f: fn(&Cell) -> Option<f64>| {
        configs
            .iter()
            .position(|c| c.kind == kind && c.prefixes == n)
            .and_then(|ci| f(&cells[&(ci, w)]))
            .unwrap_or(f64::NAN)
    };
    let per_unit = |kind, n, w| of(kind, n, w, |c| c.prog_ns_per_unit);
    let (small, large) = (SIZES[0], SIZES[1]);
    let (empty_udp, rule_udp, from_udp) = (
        per_unit(Kind::Empty, 0, Workload::Udp),
        per_unit(Kind::Guarded, 0, Workload::Udp),
        per_unit(Kind::From, small, Workload::Udp),
    );
    format!(
        "**Reading.** The empty program's run time ({:.0} ns per stream packet, {empty_udp:.0} ns per datagram: \
         cache state differs between the two paths) is mostly the run statistics' own two clock reads and the \
         call: the floor any cgroup_skb design pays per packet. On an established stream portguard's program \
         is that floor plus one socket-state read ({:.0} ns per packet with `from` at {large}): a TCP socket \
         that is not listening, or a connected UDP socket, passes at once, and GRO hands the program one \
         packet per several segments (about {:.0} runs per MB). The stream's *prog ns/run* spread (p10-p90) is \
         the noise between trials on this VM: read the stream target's ratio against it. A datagram at an unconnected guarded UDP \
         socket pays the full judgment: the socket's stamp (socket-local storage), the live config, the bind \
         rule's hash lookup, the reply-window note for the sender and the decision counter \
         ({:.0} ns over the empty program without `from`), and with `from` one hash lookup per distinct \
         prefix length, not per prefix ({:.0} ns more at {small} prefixes, {:+.0} ns from {small} to {large}). \
         A new TCP connection runs the program three times: the SYN and the handshake's last ACK are judged at \
         the listener (the SYN is counted and reported), the client's reset takes the fast path: {:.0} ns per \
         connection at {small} prefixes, {:.0} at {large}, against {:.0} for the empty program. An unguarded \
         server runs no portguard program at all (portguard attaches only at guarded cgroups), so any gap \
         between its rates and those with nothing attached is the VM's noise. nftables has no run statistics; its cost shows \
         in the wall-clock columns only (conntrack for every packet, the interval-set lookup while a flow is \
         new, which a one-way UDP flow stays).\n",
        of(Kind::Empty, 0, Workload::Stream, |c| c.prog_ns_per_run),
        of(Kind::From, large, Workload::Stream, |c| c.prog_ns_per_run),
        of(Kind::From, large, Workload::Stream, |c| c.prog_runs_per_unit),
        rule_udp - empty_udp,
        from_udp - rule_udp,
        per_unit(Kind::From, large, Workload::Udp) - from_udp,
        per_unit(Kind::From, small, Workload::Conn),
        per_unit(Kind::From, large, Workload::Conn),
        per_unit(Kind::Empty, 0, Workload::Conn),
    )
}
