//! What a full `portguard verify` costs: wall-clock time and CPU (the
//! verifier and its probe processes) at 10, 100 and 1,024 guards, one
//! cgroup each. The probes are spaced 2 ms apart on purpose (rate limit),
//! so wall-clock time is at least 2 ms per guarded cgroup.

use std::{process::Command, time::Instant};

use portguard_tests::{Sandbox, agent_bin};
use serde_json::{Value, json};

use super::{Section, median};

fn policy(guards: usize) -> String {
    let mut s = String::with_capacity(guards * 160);
    for i in 0..guards {
        s.push_str(&format!(
            "[[guard]]\nname = \"g{i}\"\ncgroup = \"/g{i}\"\n[[guard.bind]]\nports = [8080]\n[[guard.connect]]\npeer = \"10.0.0.0/8\"\nports = [5432]\n[[guard.connect]]\npeer = \"any\"\nports = [53]\nproto = \"udp\"\n"
        ));
    }
    s
}

/// CPU seconds (user + system) of this process's waited-for descendants.
fn children_cpu() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

struct Run {
    wall_ms: Vec<f64>,
    cpu_ms: Vec<f64>,
    checks: u64,
}

fn measure(guards: usize) -> Run {
    let mut sb = Sandbox::new("bench-verify");
    for i in 0..guards {
        sb.cgroup(&format!("/g{i}"));
    }
    sb.write_policy(&policy(guards));
    sb.start_agent_with(&["--verify-interval", "0"]);
    let state = sb.state_dir().display().to_string();
    let mut run = Run { wall_ms: Vec::new(), cpu_ms: Vec::new(), checks: 0 };
    for _ in 0..3 {
        let cpu = children_cpu();
        let t = Instant::now();
        let out = Command::new(agent_bin())
            .args(["verify", "--state-dir", &state, "--format", "json"])
            .output()
            .expect("run portguard verify");
        run.wall_ms.push(t.elapsed().as_secs_f64() * 1e3);
        run.cpu_ms.push((children_cpu() - cpu) * 1e3);
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        assert!(out.status.success(), "verify at {guards} guards failed: {report:#}");
        run.checks = report["guards"]
            .as_array()
            .map_or(0, |g| g.iter().map(|g| g["checks"].as_array().map_or(0, Vec::len) as u64).sum());
    }
    run
}

pub(super) fn run() -> Section {
    let mut md = String::from(
        "## Verification\n\n\
         `portguard verify` of every guard against a running agent (release build), one cgroup per guard, \
         each guard with a bind rule and two connect rules: kernel checks (maps, generation, hooks) and one \
         probe process per cgroup (about 16 attempts). *CPU* is user + system time of the verifier and its \
         probe processes. Probes are spaced 2 ms apart (the rate limit), so the wall-clock time is at least \
         2 ms per cgroup. Medians of 3 runs.\n\n\
         | guards | checks | wall-clock | CPU | CPU per guard |\n\
         | ---: | ---: | ---: | ---: | ---: |\n",
    );
    let mut rows = Vec::new();
    for guards in [10usize, 100, 1024] {
        let r = measure(guards);
        let (wall, cpu) = (median(r.wall_ms.clone()), median(r.cpu_ms.clone()));
        md.push_str(&format!(
            "| {guards} | {} | {wall:.0} ms | {cpu:.0} ms | {:.2} ms |\n",
            r.checks,
            cpu / guards as f64
        ));
        rows.push(json!({ "guards": guards, "checks": r.checks, "wall_ms": wall, "cpu_ms": cpu }));
    }
    Section { markdown: md, json: json!({ "verify": rows }) }
}
