//! `portguard completions <shell>`: a completion script generated from the
//! clap definitions, so it always knows every command and flag.

use clap::CommandFactory as _;
use clap_complete::Shell;

use super::CmdError;
use crate::cli::{Cli, CompletionShell};

pub(super) fn run(shell: CompletionShell) -> Result<(), CmdError> {
    let shell = match shell {
        CompletionShell::Bash => Shell::Bash,
        CompletionShell::Zsh => Shell::Zsh,
        CompletionShell::Fish => Shell::Fish,
    };
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "portguard", &mut out);
    write_stdout(&out)
}

pub(super) fn write_stdout(bytes: &[u8]) -> Result<(), CmdError> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .map_err(|e| CmdError::Failed(format!("stdout: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shell_gets_a_script_naming_every_visible_command() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "portguard", &mut out);
            let script = String::from_utf8(out).expect("utf-8");
            for cmd in Cli::command().get_subcommands().filter(|c| !c.is_hide_set()) {
                assert!(script.contains(cmd.get_name()), "{shell}: no {}", cmd.get_name());
            }
        }
    }
}
