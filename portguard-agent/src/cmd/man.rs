//! `portguard man [--out DIR]`: manual pages generated from the clap
//! definitions (clap_mangen), one per command, as the Debian package ships.

use std::path::Path;

use clap::CommandFactory as _;

use super::{CmdError, completions::write_stdout};
use crate::cli::Cli;

pub(super) fn run(out: Option<&Path>) -> Result<(), CmdError> {
    let Some(dir) = out else {
        let mut page = Vec::new();
        clap_mangen::Man::new(Cli::command())
            .render(&mut page)
            .map_err(|e| CmdError::Failed(format!("rendering the manual page: {e}")))?;
        return write_stdout(&page);
    };
    if !dir.is_dir() {
        return Err(CmdError::BadInput(format!("--out {}: no such directory", dir.display())));
    }
    clap_mangen::generate_to(Cli::command(), dir)
        .map_err(|e| CmdError::Failed(format!("writing manual pages into {}: {e}", dir.display())))
}
