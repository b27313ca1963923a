//! A denial flood: one guarded process makes a million denied connects as
//! fast as it can. Reports how fast denials happen, how many events the
//! agent keeps up with, and what that costs the agent (CPU, peak RSS).

use std::time::{Duration, Instant};

use portguard_tests::{Sandbox, http_get, metric_sum};
use serde_json::json;

use super::Section;

const N: u64 = 1_000_000;

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the ")" of comm: utime is the 12th, stime the 13th.
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

fn vm_hwm_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

pub(super) fn run() -> Section {
    let mut sb = Sandbox::enforcing(
        "bench-flood",
        &["/app"],
        "[[guard]]\nname = \"app\"\ncgroup = \"/app\"\n[[guard.connect]]\npeer = \"127.0.0.1\"\nports = [53]\nproto = \"udp\"\n",
    );
    let addr = sb.agent().metrics_addr();
    let pid = sb.agent().pid();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let rss_before = vm_hwm_kb(pid);
    let cpu_before = cpu_ticks(pid);
    let t = Instant::now();
    let out = sb.probe("/app", &["flood", "udp", "127.0.0.1", "5353", &N.to_string()]);
    let flood_secs = t.elapsed().as_secs_f64();
    assert_eq!(out, format!("attempted={N} refused={N}"), "flood");
    let (received, lost) = loop {
        let text = http_get(&format!("http://{addr}/metrics"));
        let r = metric_sum(&text, "portguard_events_received_total", &[]);
        let l = metric_sum(&text, "portguard_events_lost_total", &[]);
        if r + l >= N || t.elapsed() > Duration::from_secs(60) {
            break (r, l);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let drained_secs = t.elapsed().as_secs_f64();
    let cpu_secs = (cpu_ticks(pid) - cpu_before) as f64 / hz;
    let rss_peak = vm_hwm_kb(pid);
    let lines = sb.agent().denials().len();
    let md = format!(
        "## Denial flood (1,000,000 denied UDP connects from one process)\n\n\
         | denials/s (caller) | events received | events lost | events/s through the agent | agent CPU | agent peak RSS | log lines |\n\
         | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n\
         | {:.0} | {received} | {lost} | {:.0} | {:.2} s ({:.0}% of one CPU) | {} MiB (was {} MiB) | {lines} |\n\n\
         Every denial is counted exactly in the kernel whatever happens to events; the ring buffer (1 MiB) \
         drops what the agent cannot read in time, and the drops are counted. The log holds coalesced lines \
         (first occurrence, then one summary per second).\n",
        N as f64 / flood_secs,
        received as f64 / drained_secs,
        cpu_secs,
        100.0 * cpu_secs / drained_secs,
        rss_peak / 1024,
        rss_before / 1024,
    );
    Section {
        markdown: md,
        json: json!({ "denial_flood": {
            "denials": N,
            "denials_per_s": N as f64 / flood_secs,
            "events_received": received,
            "events_lost": lost,
            "events_per_s": received as f64 / drained_secs,
            "agent_cpu_s": cpu_secs,
            "agent_peak_rss_kib": rss_peak,
            "log_lines": lines,
        }}),
    }
}
