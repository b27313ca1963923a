//! cargo xtask: what cargo alone cannot do for portguard.
//!
//!   cargo xtask setup   install what building and testing need (idempotent)
//!   cargo xtask run     set up, build, and run the agent on ./policy.toml
//!   cargo xtask test    set up, check format and lints, build, check the book, and run every test
//!   cargo xtask docs    set up, build, build the book and check it
//!   cargo xtask bench   set up, build (release), and write BENCHMARKS.md (--only SECTION: one section)
//!   cargo xtask install build (release) and install the agent, unit and policy
//!   cargo xtask package build (release) the Debian package into target/debian
//!   cargo xtask image   build (release) the container image with podman

mod bench;
mod docs;
mod image;
mod install;
mod package;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the toolchain pieces and system packages portguard needs.
    Setup,
    /// Build the agent (and its eBPF object).
    Build,
    /// Set up, build, and run the agent in the foreground on ./policy.toml.
    Run {
        /// Extra arguments for `portguard run`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Measure (as root) and write BENCHMARKS.md and benchmarks.json.
    Bench {
        /// Run only this section, written to target/bench-NAME.md instead.
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(bench::SECTIONS))]
        only: Option<String>,
    },
    /// Build the book under docs/ into target/book and check its links,
    /// policy examples and command lines (part of `test`).
    Docs,
    /// Fuzz the policy parser and compiler (cargo fuzz, nightly).
    Fuzz {
        /// How long to run.
        #[arg(long, default_value_t = 300)]
        seconds: u64,
    },
    /// Build the agent (release) and install it with its systemd unit and
    /// the example policy (an existing policy is kept).
    Install {
        /// Install under this directory instead of / (packaging).
        #[arg(long, default_value = "/")]
        destdir: PathBuf,
        /// Install this binary instead of building one.
        #[arg(long)]
        binary: Option<PathBuf>,
    },
    /// Build (release) the Debian package into target/debian/ (cargo-deb).
    Package {
        /// The package version (with revision) instead of the crate's.
        #[arg(long)]
        deb_version: Option<String>,
    },
    /// Build (release) the container image `localhost/portguard:<version>`
    /// with podman, without a registry.
    Image,
    /// Set up, check formatting and lints, build, and run all tests,
    /// including those that need root.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_owned()
}

/// Runs `cmd`, echoing it first; fails on a non-zero exit.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: $ {}", display(cmd));
    let status = cmd.status().with_context(|| format!("failed to start {}", display(cmd)))?;
    if !status.success() {
        bail!("{} failed with {status}", display(cmd));
    }
    Ok(())
}

fn display(cmd: &Command) -> String {
    std::iter::once(cmd.get_program().to_string_lossy().into_owned())
        .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

fn build() -> anyhow::Result<PathBuf> {
    run(cargo().args(["build", "--package", "portguard-agent", "--package", "portguard-tests", "--bins"]))?;
    Ok(workspace_root().join("target/debug/portguard"))
}

/// Formatting and lints, so CI fails on a warning. The eBPF crate only
/// builds for the BPF target, with the nightly toolchain, as aya-build
/// builds it from the agent's build.rs.
fn lint() -> anyhow::Result<()> {
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    run(Command::new("rustup")
        .current_dir(workspace_root().join("portguard-ebpf"))
        .args(["run", "nightly", "cargo", "clippy", "--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(["--", "-D", "warnings"])
        // Set by cargo for the stable toolchain running xtask.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER"))
}

/// What a clean `cargo xtask test` writes under target/ (debug, test and
/// release builds, three nested eBPF builds, the package and the image
/// context), measured from a fresh clone: 3.7 GiB.
const CLEAN_TEST_BUILD_BYTES: u64 = 4 << 30;

/// Says how much disk the build has before it starts: a full disk shows up
/// later as a linker killed by SIGBUS, which names nothing.
fn report_disk() {
    let root = workspace_root();
    let Ok(path) = std::ffi::CString::new(root.as_os_str().as_encoded_bytes()) else { return };
    // SAFETY: statvfs writes only into the zeroed struct we pass it; path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return;
    }
    let free = st.f_bavail as u64 * st.f_frsize as u64;
    eprintln!("xtask: {:.1} GiB free under {}", free as f64 / (1u64 << 30) as f64, root.display());
    if free < CLEAN_TEST_BUILD_BYTES {
        eprintln!(
            "xtask: warning: a clean build writes about {} GiB under target/; it may run out of disk",
            CLEAN_TEST_BUILD_BYTES >> 30
        );
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Uid:")).map(|u| u.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Setup => setup::all(),
        Cmd::Build => {
            setup::all()?;
            build().map(drop)
        }
        Cmd::Run { args } => {
            setup::all()?;
            let bin = build()?;
            if !is_root() {
                bail!("the agent loads eBPF programs and needs root: run `sudo -E cargo xtask run`");
            }
            let policy = workspace_root().join("policy.toml");
            run(Command::new(bin).arg("run").arg("--policy").arg(policy).args(args))
        }
        Cmd::Docs => {
            setup::all()?;
            let bin = build()?;
            docs::check(&bin)
        }
        Cmd::Bench { only } => {
            setup::all()?;
            if !is_root() {
                bail!("benchmarks attach eBPF programs and need root");
            }
            run(cargo().args([
                "build",
                "--release",
                "--package",
                "portguard-agent",
                "--package",
                "portguard-tests",
                "--bins",
            ]))?;
            // The harness drives the agent through the test sandbox.
            unsafe_set_env("PORTGUARD_BIN", workspace_root().join("target/release/portguard"));
            unsafe_set_env("PG_PROBE_BIN", workspace_root().join("target/release/pg-probe"));
            bench::run(only.as_deref())
        }
        Cmd::Install { destdir, binary } => {
            let binary = match binary {
                Some(b) => b,
                None => {
                    setup::all()?;
                    run(cargo().args([
                        "build",
                        "--release",
                        "--package",
                        "portguard-agent",
                        "--bin",
                        "portguard",
                    ]))?;
                    workspace_root().join("target/release/portguard")
                }
            };
            install::install(&install::Install { destdir, binary })
        }
        Cmd::Package { deb_version } => {
            setup::all()?;
            package::package(deb_version.as_deref()).map(drop)
        }
        Cmd::Image => {
            setup::all()?;
            package::package(None)?;
            image::build()
        }
        Cmd::Fuzz { seconds } => {
            setup::all()?;
            setup::cargo_fuzz()?;
            let root = workspace_root();
            run(Command::new("cargo")
                .current_dir(root.join("fuzz"))
                .args(["+nightly", "fuzz", "run", "policy", "corpus/policy", "--"])
                .arg(format!("-max_total_time={seconds}")))
        }
        Cmd::Test { args } => {
            report_disk();
            setup::all()?;
            lint()?;
            let bin = build()?;
            // The package and container tests install and run what users get.
            let deb = package::package(None)?;
            let container = image::context()?;
            docs::check(&bin)?;
            if !is_root() {
                eprintln!("xtask: not root: the kernel tests will skip (CI=true makes them fail instead)");
            }
            // Default members: every crate but the eBPF one, which only
            // builds for the BPF target (the agent's build.rs builds it).
            run(cargo()
                .arg("test")
                .env("PORTGUARD_BIN", &bin)
                .env("PORTGUARD_DEB", &deb)
                .env("PORTGUARD_CONTAINER_CONTEXT", &container)
                .env("RUST_BACKTRACE", "1")
                .args(args))
        }
    }
}

fn unsafe_set_env(key: &str, value: PathBuf) {
    // SAFETY: called before xtask starts any thread.
    unsafe { std::env::set_var(key, value) };
}
