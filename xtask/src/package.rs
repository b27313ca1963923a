//! `cargo xtask package`: the Debian package, built by cargo-deb from
//! `[package.metadata.deb]` in portguard-agent/Cargo.toml.
//!
//! What the package holds that is generated is generated here, from the
//! release binary, into target/package-assets/ (the metadata's asset
//! paths): the man pages and completions (`portguard man`, `portguard
//! completions`), and the systemd unit with the package's binary path.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{cargo, run, workspace_root};

/// Where `cargo xtask install` puts the binary, and so where the shipped
/// unit's ExecStart points; the package installs it where packages do.
const UNIT_BINARY: &str = "/usr/local/bin/portguard";
const PACKAGE_BINARY: &str = "/usr/bin/portguard";

/// Builds the release binary and the package; returns the .deb's path.
pub(crate) fn package(deb_version: Option<&str>) -> anyhow::Result<PathBuf> {
    run(cargo().args(["build", "--release", "--package", "portguard-agent", "--bin", "portguard"]))?;
    let root = workspace_root();
    generate_assets(&root.join("target/release/portguard"), &root.join("target/package-assets"))?;
    let out_dir = root.join("target/debian");
    fs::create_dir_all(&out_dir)?;
    let mut deb = cargo();
    deb.args(["deb", "--package", "portguard-agent", "--no-build", "--output"]).arg(&out_dir);
    if let Some(v) = deb_version {
        deb.args(["--deb-version", v]);
    }
    eprintln!("xtask: $ {deb:?}");
    let out = deb.output().context("failed to start cargo deb (cargo xtask setup installs it)")?;
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("cargo deb failed with {}", out.status);
    }
    // cargo-deb prints the path of the package it wrote.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = stdout.lines().last().map(PathBuf::from).filter(|p| p.is_file());
    let path = path.with_context(|| format!("cargo deb did not name the package it wrote: {stdout}"))?;
    let size = fs::metadata(&path)?.len();
    eprintln!("xtask: package: {} ({} KiB)", path.display(), size / 1024);
    Ok(path)
}

fn generate_assets(binary: &Path, dir: &Path) -> anyhow::Result<()> {
    // Start empty: a page for a command that was removed must not linger.
    let _ = fs::remove_dir_all(dir);
    let (man, completions, systemd) = (dir.join("man"), dir.join("completions"), dir.join("systemd"));
    for d in [&man, &completions, &systemd] {
        fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
    }
    run(Command::new(binary).arg("man").arg("--out").arg(&man))?;
    for (shell, file) in [("bash", "portguard.bash"), ("zsh", "_portguard"), ("fish", "portguard.fish")] {
        let out = Command::new(binary).args(["completions", shell]).output()?;
        if !out.status.success() || out.stdout.is_empty() {
            bail!("portguard completions {shell} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        fs::write(completions.join(file), out.stdout)?;
    }
    let unit = fs::read_to_string(workspace_root().join("deploy/systemd/portguard.service"))?;
    if !unit.contains(&format!("ExecStart={UNIT_BINARY} ")) {
        bail!("deploy/systemd/portguard.service: ExecStart no longer runs {UNIT_BINARY}");
    }
    fs::write(systemd.join("portguard.service"), unit.replace(UNIT_BINARY, PACKAGE_BINARY))?;
    Ok(())
}
