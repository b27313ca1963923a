//! `portguard run`: logging, the async runtime, then the daemon.

use crate::{cli::RunArgs, daemon, logging};

use super::CmdError;

pub(super) fn run(args: RunArgs) -> Result<(), CmdError> {
    logging::init(args.log_format);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(daemon::DaemonError::Runtime)?;
    Ok(runtime.block_on(daemon::run(args))?)
}
