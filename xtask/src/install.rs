//! `cargo xtask install`: the agent, its systemd unit and an example policy,
//! where the unit expects them. An existing policy is never overwritten: on
//! a host that runs portguard it is the live one.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{run, workspace_root};

pub(crate) struct Install {
    /// Prefix for every installed path (packaging, tests); `/` for the host.
    pub destdir: PathBuf,
    /// The `portguard` binary to install.
    pub binary: PathBuf,
}

pub(crate) fn install(opts: &Install) -> anyhow::Result<()> {
    if !opts.binary.is_file() {
        bail!("{}: no such binary", opts.binary.display());
    }
    let root = workspace_root();
    let at = |path: &str| opts.destdir.join(path.trim_start_matches('/'));
    copy(&opts.binary, &at("/usr/local/bin/portguard"), 0o755)?;
    copy(
        &root.join("deploy/systemd/portguard.service"),
        &at("/etc/systemd/system/portguard.service"),
        0o644,
    )?;
    let policy = at("/etc/portguard/policy.toml");
    if policy.exists() {
        eprintln!("xtask: install: keeping the existing {}", policy.display());
    } else {
        copy(&root.join("policy.toml"), &policy, 0o644)?;
    }
    // Only on the host itself, and only where systemd runs.
    if opts.destdir == Path::new("/") && Path::new("/run/systemd/system").is_dir() {
        run(Command::new("systemctl").arg("daemon-reload"))?;
        eprintln!("xtask: install: done; start it with `systemctl enable --now portguard`");
    }
    Ok(())
}

fn copy(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    let dir = to.parent().expect("absolute install path");
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    // Through a temporary name and a rename: a running agent's binary is
    // replaced, never written into.
    let tmp = to.with_extension("xtask-new");
    fs::copy(from, &tmp).with_context(|| format!("copy {} to {}", from.display(), tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, to).with_context(|| format!("install {}", to.display()))?;
    eprintln!("xtask: install: {} ({:o})", to.display(), mode);
    Ok(())
}
