//! `cargo xtask bench`: measurements taken side by side in one run, written
//! to BENCHMARKS.md (tables and a reading of them) and benchmarks.json.

mod apply;
mod configs;
mod dns;
mod flood;
mod inbound;
mod overhead;
mod plot;
mod prog_stats;
mod targets;
mod verify;
mod workloads;

use std::fmt::Write as _;

use anyhow::Context as _;
use serde_json::Value;

use crate::workspace_root;

pub(crate) struct Section {
    pub markdown: String,
    pub json: Value,
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The value below which a fraction `q` of the samples lie.
pub(crate) fn quantile(mut v: Vec<f64>, q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// The sections, in the order BENCHMARKS.md lists them.
pub(crate) const SECTIONS: [&str; 6] = ["overhead", "apply", "flood", "verify", "inbound", "dns"];

fn section(name: &str) -> anyhow::Result<Section> {
    Ok(match name {
        "overhead" => overhead::run()?.section,
        "apply" => apply::run(),
        "flood" => flood::run(),
        "verify" => verify::run(),
        "inbound" => inbound::run()?,
        "dns" => dns::run()?,
        _ => anyhow::bail!("no benchmark section {name:?} (sections: {})", SECTIONS.join(", ")),
    })
}

/// Runs every section, or only `only` (for development: written to
/// target/bench-NAME.md and .json, leaving BENCHMARKS.md as it is).
pub(crate) fn run(only: Option<&str>) -> anyhow::Result<()> {
    if let Some(name) = only {
        let s = section(name)?;
        let target = workspace_root().join("target");
        std::fs::write(target.join(format!("bench-{name}.md")), &s.markdown)
            .context("write bench markdown")?;
        std::fs::write(target.join(format!("bench-{name}.json")), serde_json::to_string_pretty(&s.json)?)
            .context("write bench json")?;
        eprintln!("xtask: wrote target/bench-{name}.md and target/bench-{name}.json");
        return Ok(());
    }
    let sections = SECTIONS.iter().map(|n| section(n)).collect::<anyhow::Result<Vec<_>>>()?;
    let mut md = String::from("# portguard benchmarks\n\n");
    let _ = writeln!(
        md,
        "Written by `cargo xtask bench` on {} (kernel {}, {} CPUs). Numbers from one noisy VM: compare ratios within this file, not absolutes across machines.\n",
        humantime_now(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut json = serde_json::Map::new();
    for s in sections {
        md.push_str(&s.markdown);
        md.push('\n');
        if let Value::Object(o) = s.json {
            json.extend(o);
        }
    }
    let root = workspace_root();
    std::fs::write(root.join("BENCHMARKS.md"), md).context("write BENCHMARKS.md")?;
    std::fs::write(root.join("benchmarks.json"), serde_json::to_string_pretty(&Value::Object(json))?)
        .context("write benchmarks.json")?;
    eprintln!("xtask: wrote BENCHMARKS.md and benchmarks.json");
    Ok(())
}

fn humantime_now() -> String {
    let out = std::process::Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default()
}
