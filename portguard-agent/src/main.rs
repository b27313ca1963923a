//! `portguard`: the agent daemon and its command-line tools.

use std::process::ExitCode;

use clap::Parser as _;
use portguard_agent::{
    EXIT_BAD_INPUT, agent, bpf, check,
    cli::{Cli, Command, DraftMode, LogFormat},
    logging, review, scan, status,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            logging::init(args.log_format);
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("portguard: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(agent::run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
        Command::Check { policy, strict, format } => check::run(&policy, strict, format),
        Command::Scan { policy, cgroup_root, state_dir, format, fail_on_unapproved } => {
            scan::run(&scan::ScanArgs {
                policy: &policy,
                state_dir: &state_dir,
                cgroup_root: cgroup_root.as_deref(),
                format,
                fail_on_unapproved,
            })
        }
        Command::Diff { old, new, format } => review::diff::run(&old, &new, format),
        Command::Replay { policy, events, format } => review::replay::run(&policy, &events, format),
        Command::Suggest { events, guard, policy, mode, output } => {
            let mode = match mode {
                DraftMode::Audit => portguard_agent::policy::Mode::Audit,
                DraftMode::Enforce => portguard_agent::policy::Mode::Enforce,
            };
            let current = match policy.as_deref().map(portguard_agent::policy::load).transpose() {
                Ok(p) => p.map(|(p, _)| p),
                Err(e) => {
                    eprintln!("portguard: {e}");
                    return ExitCode::from(EXIT_BAD_INPUT);
                }
            };
            let opts = review::suggest::Options {
                guard,
                current,
                mode,
                ephemeral: review::suggest::local_port_range(),
            };
            review::suggest::run(&events, &opts, output.as_deref())
        }
        Command::Reload { state_dir } => status::reload(&state_dir),
        Command::Status { bpffs, state_dir, format } => status::status(&bpffs, &state_dir, format),
        Command::BenchNoop { cgroup_root, bpffs } => {
            match bpf::Enforcer::load_noop(&bpffs).and_then(|mut e| e.guard_path(&cgroup_root)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("portguard: {e}");
                    ExitCode::from(EXIT_BAD_INPUT)
                }
            }
        }
        Command::Unload { bpffs } => {
            logging::init(LogFormat::Text);
            match bpf::unload(&bpffs) {
                Ok(0) => {
                    println!("nothing pinned under {}", bpffs.display());
                    ExitCode::SUCCESS
                }
                Ok(n) => {
                    println!(
                        "removed {n} pinned objects under {}; portguard no longer enforces",
                        bpffs.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("portguard: unload {}: {e}", bpffs.display());
                    ExitCode::FAILURE
                }
            }
        }
    }
}
