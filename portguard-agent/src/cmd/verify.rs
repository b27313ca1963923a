//! `portguard verify`: proof that every guard holds, on demand. Exit status
//! 0 when every guard holds, 1 when one does not (the report names guard,
//! check, expected and got), 2 when nothing could be verified.

use std::path::Path;

use super::{CmdError, EXIT_BAD_INPUT, EXIT_FINDINGS};
use crate::{cli::OutputFormat, verify};

pub(super) struct VerifyArgs<'a> {
    pub(super) state_dir: &'a Path,
    pub(super) bpffs: Option<&'a Path>,
    pub(super) policy: Option<&'a Path>,
    pub(super) guard: Option<&'a str>,
    pub(super) trail: Option<&'a Path>,
    pub(super) format: OutputFormat,
}

pub(super) fn run(args: &VerifyArgs<'_>) -> Result<(), CmdError> {
    let opts = verify::Options {
        state_dir: args.state_dir,
        bpffs: args.bpffs,
        policy: args.policy,
        guard: args.guard,
        trail: args.trail,
        probe_gap: verify::PROBE_GAP,
        on_probe_cgroup: &|_| {},
        // Run from a shell, the probes count like any workload's refusals.
        own_counts: None,
    };
    let report = match verify::verify(&opts) {
        Ok(r) => r,
        Err(e) if args.format == OutputFormat::Json => {
            println!("{:#}", serde_json::json!({ "verified": false, "error": e.to_string() }));
            return Err(CmdError::Reported(EXIT_BAD_INPUT));
        }
        Err(e) => return Err(CmdError::BadInput(format!("cannot verify: {e}"))),
    };
    match args.format {
        OutputFormat::Json => {
            println!("{:#}", serde_json::to_value(&report).map_err(|e| CmdError::Failed(e.to_string()))?)
        }
        OutputFormat::Text => print!("{}", report.render_text()),
    }
    if report.verified { Ok(()) } else { Err(CmdError::Reported(EXIT_FINDINGS)) }
}
