//! `portguard reload`: ask the running agent to re-read its policy (SIGHUP).

use std::path::Path;

use super::CmdError;
use crate::state_file;

pub(super) fn run(state_dir: &Path) -> Result<(), CmdError> {
    let Some(pid) = state_file::running_pid(state_dir) else {
        return Err(CmdError::Failed(format!(
            "no running agent (no live pid in {})",
            state_dir.join(state_file::PID_FILE).display()
        )));
    };
    // SAFETY: kill(2) takes plain integers; the pid was just read from the
    // pid file and checked to be a live portguard.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        return Err(CmdError::Failed(format!(
            "cannot signal pid {pid}: {}",
            std::io::Error::last_os_error()
        )));
    }
    println!("asked portguard (pid {pid}) to reload its policy; its log shows the outcome");
    Ok(())
}
