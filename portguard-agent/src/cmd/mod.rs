//! The subcommands, one file each, and the one error type they return:
//! `main` prints it and exits with its status.

mod bench_noop;
mod check;
mod completions;
mod diff;
mod man;
mod reload;
mod replay;
mod run;
mod scan;
mod status;
mod suggest;
mod trail;
mod unload;
mod verify;

use std::process::ExitCode;

use crate::cli::Command;

/// Exit status for input that cannot be used (bad policy, missing cgroup,
/// no privileges, unsupported kernel): nothing was changed.
pub(crate) const EXIT_BAD_INPUT: u8 = 2;
/// Exit status for findings a gate asked for: `check --strict` catalog
/// findings, `scan --fail-on-unapproved` unapproved ports, `verify` a guard
/// that does not hold.
pub(crate) const EXIT_FINDINGS: u8 = 1;

/// Why a command failed. `main` prints it (`portguard: <message>` on
/// stderr, or the log for `run`) and exits with [`CmdError::exit_code`].
#[derive(Debug)]
pub enum CmdError {
    /// Input the command cannot use: nothing was changed. Exit 2.
    BadInput(String),
    /// The command ran and failed, or a gate found what it looks for. Exit 1.
    Failed(String),
    /// The command's output already said what is wrong (catalog findings,
    /// an error in JSON): only the exit status is left to give.
    Reported(u8),
    /// `portguard run` stopped; its log takes the message.
    Daemon { message: String, code: u8 },
}

impl CmdError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CmdError::BadInput(_) => EXIT_BAD_INPUT,
            CmdError::Failed(_) => 1,
            CmdError::Reported(code) | CmdError::Daemon { code, .. } => *code,
        }
    }
}

impl From<crate::daemon::DaemonError> for CmdError {
    fn from(e: crate::daemon::DaemonError) -> CmdError {
        CmdError::Daemon { message: e.to_string(), code: e.exit_code() }
    }
}

/// Runs one subcommand.
pub fn run(command: Command) -> Result<(), CmdError> {
    match command {
        Command::Run(args) => run::run(args),
        Command::Check { policy, strict, format } => check::run(&policy, strict, format),
        Command::Scan { policy, cgroup_root, state_dir, format, fail_on_unapproved } => {
            scan::run(&scan::ScanArgs {
                policy: policy.as_deref(),
                state_dir: &state_dir,
                cgroup_root: cgroup_root.as_deref(),
                format,
                fail_on_unapproved,
            })
        }
        Command::Diff { old, new, format } => diff::run(&old, &new, format),
        Command::Replay { policy, events, format } => replay::run(&policy, &events, format),
        Command::Suggest { events, guard, policy, mode, output } => {
            suggest::run(&events, guard, policy.as_deref(), mode, output.as_deref())
        }
        Command::Reload { state_dir } => reload::run(&state_dir),
        Command::Status { bpffs, state_dir, format } => status::run(&bpffs, &state_dir, format),
        Command::BenchNoop { cgroup_root, bpffs } => bench_noop::run(&cgroup_root, &bpffs),
        Command::Trail(command) => trail::run(command),
        Command::Unload { bpffs } => unload::run(&bpffs),
        Command::Verify { guard, policy, format, state_dir, bpffs, trail } => {
            verify::run(&verify::VerifyArgs {
                state_dir: &state_dir,
                bpffs: bpffs.as_deref(),
                policy: policy.as_deref(),
                guard: guard.as_deref(),
                trail: trail.as_deref(),
                format,
            })
        }
        Command::Completions { shell } => completions::run(shell),
        Command::Man { out } => man::run(out.as_deref()),
    }
}

/// The exit status of a `review` command that printed its own output and
/// errors, as a result. Those commands still return an `ExitCode`; this
/// goes once they return `Result<_, CmdError>` themselves.
fn reported(code: ExitCode) -> Result<(), CmdError> {
    if code == ExitCode::SUCCESS {
        return Ok(());
    }
    let n = (1..=u8::MAX).find(|n| ExitCode::from(*n) == code).unwrap_or(1);
    Err(CmdError::Reported(n))
}
