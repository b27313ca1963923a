//! `portguard trail verify`: check the audit trail's hash chain.
//!
//! Exit status: 0 intact, 1 broken (each break on its own line: file,
//! line, kind), 2 a file cannot be read.

use std::path::PathBuf;

use super::{CmdError, EXIT_FINDINGS};
use crate::{
    cli::{OutputFormat, TrailCommand},
    trail::chain,
};

pub(super) fn run(command: TrailCommand) -> Result<(), CmdError> {
    match command {
        TrailCommand::Verify { files, format } => verify(files, format),
    }
}

fn verify(files: Vec<PathBuf>, format: OutputFormat) -> Result<(), CmdError> {
    let files = match &files[..] {
        [one] => chain::series(one),
        _ => files,
    };
    let report = chain::verify(&files).map_err(|e| CmdError::BadInput(e.to_string()))?;
    match format {
        OutputFormat::Text => println!("{report}"),
        OutputFormat::Json => {
            let mut v = serde_json::to_value(&report).expect("the report serialises");
            v["intact"] = report.intact().into();
            println!("{v}");
        }
    }
    if report.intact() { Ok(()) } else { Err(CmdError::Reported(EXIT_FINDINGS)) }
}
