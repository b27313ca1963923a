//! `portguard unload`: detach everything and remove the pins.

use std::path::Path;

use super::CmdError;
use crate::{bpf, cli::LogFormat, logging};

pub(super) fn run(bpffs: &Path) -> Result<(), CmdError> {
    logging::init(LogFormat::Text);
    match bpf::unload(bpffs) {
        Ok(0) => println!("nothing pinned under {}", bpffs.display()),
        Ok(n) => {
            println!("removed {n} pinned objects under {}; portguard no longer enforces", bpffs.display())
        }
        Err(e) => return Err(CmdError::Failed(format!("unload {}: {e}", bpffs.display()))),
    }
    Ok(())
}
