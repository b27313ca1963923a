//! Prerequisites, each checked first and installed only when missing.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::run;

/// The LLVM that bpf-linker links against; it must match the nightly
/// toolchain's LLVM major version (see ../shared/PLATFORM.md).
const LLVM: &str = "22";
const BPF_LINKER_VERSION: &str = "0.13.0";

pub(crate) fn all() -> anyhow::Result<()> {
    nightly_toolchain()?;
    rust_src()?;
    lint_tools()?;
    apt_packages(&[
        &format!("llvm-{LLVM}-dev"),
        &format!("libpolly-{LLVM}-dev"),
        "libzstd-dev",
        "zlib1g-dev",
        // `ip netns`: each kernel test runs its sockets in its own namespace.
        "iproute2",
        // A real Prometheus scrapes the agent in the tests; promtool checks
        // the metrics page and the shipped alert rules.
        "prometheus",
        // The benchmark compares against nftables and reads BPF run stats.
        "nftables",
        "bpftool",
        // `systemd-analyze verify` checks the shipped unit.
        "systemd",
        // A real server for the port-inventory tests (scan, audit trail)
        // and the inbound tests (redis-cli is its client).
        "redis-server",
        // A real UDP server and real DNS clients for the inbound tests'
        // reply window.
        "dnsmasq-base",
        "bind9-dnsutils",
        // A real glibc client resolving and connecting by name (the DNS
        // names tests; getent comes with libc-bin).
        "curl",
        // The Debian package: cargo-deb's dependency scan (dpkg-shlibdeps),
        // Debian's own checker, and what the package test installs it
        // with and checks it by (deb-systemd-helper, man, bash-completion).
        "dpkg-dev",
        "lintian",
        "debhelper",
        "init-system-helpers",
        "man-db",
        "bash-completion",
        // The container image: built with buildah, run with podman on runc
        // (crun refuses this machine's hybrid cgroup layout).
        "podman",
        "buildah",
        "runc",
    ])?;
    bpf_linker()?;
    cargo_deb()?;
    kubernetes_validate()?;
    mdbook()?;
    Ok(())
}

const MDBOOK_VERSION: &str = "0.4.52";

/// mdBook builds the book under docs/ (the tests check its links).
fn mdbook() -> anyhow::Result<()> {
    if let Some(v) = output(Command::new("mdbook").arg("--version")) {
        step(&format!("mdbook (builds docs/): present ({})", v.trim()));
        return Ok(());
    }
    step(&format!("mdbook (builds docs/): installing {MDBOOK_VERSION} from crates.io (a few minutes)"));
    run(Command::new("cargo").args(["install", "mdbook", "--locked", "--version", MDBOOK_VERSION]))
}

/// kubernetes-validate (PyPI) checks the shipped manifests in the tests.
fn kubernetes_validate() -> anyhow::Result<()> {
    if output(Command::new("kubernetes-validate").arg("--version")).is_some() {
        step("kubernetes-validate (checks deploy/kubernetes): present");
        return Ok(());
    }
    step("kubernetes-validate (checks deploy/kubernetes): installing from PyPI");
    run(Command::new("python3").args(["-m", "pip", "install", "--quiet", "kubernetes-validate"]))?;
    // Under pyenv a new console script needs its shim.
    let _ = Command::new("pyenv").arg("rehash").status();
    if output(Command::new("kubernetes-validate").arg("--version")).is_none() {
        bail!("kubernetes-validate was installed but is not on PATH");
    }
    Ok(())
}

fn step(what: &str) {
    eprintln!("xtask: setup: {what}");
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn nightly_toolchain() -> anyhow::Result<()> {
    let have = output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is required (https://rustup.rs)")?
        .lines()
        .any(|l| l.starts_with("nightly"));
    if have {
        step("nightly toolchain (builds the eBPF programs): present");
        return Ok(());
    }
    step("nightly toolchain (builds the eBPF programs): installing");
    run(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))
}

fn rust_src() -> anyhow::Result<()> {
    rust_components(Some("nightly"), &["rust-src"], "for -Z build-std=core")
}

/// clippy and rustfmt: `cargo xtask test` checks formatting and lints
/// first, the eBPF crate's lints with the nightly toolchain that builds it.
fn lint_tools() -> anyhow::Result<()> {
    rust_components(None, &["clippy", "rustfmt"], "for the lint and format checks")?;
    rust_components(Some("nightly"), &["clippy"], "for the eBPF crate's lint check")
}

/// Adds the rustup `components` of `toolchain` (the workspace's own when
/// `None`) that are missing.
fn rust_components(toolchain: Option<&str>, components: &[&str], why: &str) -> anyhow::Result<()> {
    let name = toolchain.unwrap_or("the default toolchain");
    let with_toolchain = |cmd: &mut Command| {
        if let Some(t) = toolchain {
            cmd.args(["--toolchain", t]);
        }
    };
    let mut list = Command::new("rustup");
    list.current_dir(crate::workspace_root()).args(["component", "list", "--installed"]);
    with_toolchain(&mut list);
    let installed = output(&mut list).unwrap_or_default();
    // Installed components are listed with their target triple, except
    // target-independent ones such as rust-src.
    let missing: Vec<&str> = components
        .iter()
        .copied()
        .filter(|c| !installed.lines().any(|l| l == *c || l.starts_with(&format!("{c}-"))))
        .collect();
    if missing.is_empty() {
        step(&format!("{} for {name} ({why}): present", components.join(" ")));
        return Ok(());
    }
    step(&format!("{} for {name} ({why}): installing", missing.join(" ")));
    let mut add = Command::new("rustup");
    add.current_dir(crate::workspace_root()).args(["component", "add"]).args(&missing);
    with_toolchain(&mut add);
    run(&mut add)
}

fn apt_packages(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        step(&format!("system packages ({}): present", packages.join(" ")));
        return Ok(());
    }
    step(&format!("system packages: installing {}", missing.join(" ")));
    if Command::new("apt-get").arg("--version").output().is_err() {
        bail!("apt-get not found: install {} with your package manager", missing.join(" "));
    }
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn bpf_linker() -> anyhow::Result<()> {
    if let Some(v) = output(Command::new("bpf-linker").arg("--version")) {
        step(&format!("bpf-linker (links the eBPF object): present ({})", v.trim()));
        return Ok(());
    }
    step(&format!(
        "bpf-linker (links the eBPF object): building {BPF_LINKER_VERSION} against LLVM {LLVM} (about a minute)"
    ));
    let llvm_prefix = format!("/usr/lib/llvm-{LLVM}");
    let path = format!("{llvm_prefix}/bin:{}", std::env::var("PATH").unwrap_or_default());
    // Its default feature wants a newer LLVM than Debian ships here; point
    // its build at the packaged LLVM explicitly.
    run(Command::new("cargo")
        .args(["install", "bpf-linker", "--locked", "--version", BPF_LINKER_VERSION, "--no-default-features"])
        .args(["--features", &format!("llvm-{LLVM}")])
        .env("PATH", path)
        .env("LLVM_PREFIX", &llvm_prefix)
        .env(format!("LLVM_SYS_{LLVM}1_PREFIX"), &llvm_prefix))
}

/// cargo-fuzz, for `cargo xtask fuzz` only.
pub(crate) fn cargo_fuzz() -> anyhow::Result<()> {
    if output(Command::new("cargo").args(["fuzz", "--version"])).is_some() {
        step("cargo-fuzz: present");
        return Ok(());
    }
    step("cargo-fuzz (runs the policy fuzzer): installing");
    run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
}

/// cargo-deb builds the Debian package (`cargo xtask package`).
fn cargo_deb() -> anyhow::Result<()> {
    if let Some(v) = output(Command::new("cargo").args(["deb", "--version"])) {
        step(&format!("cargo-deb (builds the Debian package): present ({})", v.trim()));
        return Ok(());
    }
    step("cargo-deb (builds the Debian package): cargo install --locked cargo-deb");
    run(Command::new("cargo").args(["install", "--locked", "cargo-deb"]))
}
