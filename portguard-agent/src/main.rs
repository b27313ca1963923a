//! `portguard`: the agent daemon and its command-line tools.

use std::process::ExitCode;

use clap::Parser as _;
use portguard_agent::{
    cli::Cli,
    cmd::{self, CmdError},
};

fn main() -> ExitCode {
    let Cli { command } = Cli::parse();
    match cmd::run(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The one place an error is printed.
            match &e {
                // `run` has its log set up by now: the error goes there.
                CmdError::Daemon { message, .. } => tracing::error!("{message}"),
                CmdError::BadInput(message) | CmdError::Failed(message) => eprintln!("portguard: {message}"),
                CmdError::Reported(_) => {}
            }
            ExitCode::from(e.exit_code())
        }
    }
}
