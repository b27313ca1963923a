//! The command line of `portguard diff OLD NEW`: load both files, print the
//! diff, answer with an exit code. The diff itself knows nothing of files.

use std::{path::Path, process::ExitCode};

use crate::{EXIT_BAD_INPUT, cli::OutputFormat, policy};

/// Runs `portguard diff OLD NEW`: 0 once the diff is printed, whether or not
/// anything changed; 2 when either policy cannot be used.
pub(crate) fn run(old: &Path, new: &Path, format: OutputFormat) -> ExitCode {
    let loaded = policy::load(old).and_then(|(old, _)| Ok((old, policy::load(new)?.0)));
    let (old, new) = match loaded {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("portguard: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let diff = super::diff(&old, &new);
    match format {
        OutputFormat::Text => print!("{}", super::text::render(&diff)),
        OutputFormat::Json => {
            println!("{}", serde_json::to_string_pretty(&diff).expect("the diff serialises"))
        }
    }
    ExitCode::SUCCESS
}
