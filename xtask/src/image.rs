//! `cargo xtask image`: the container image from deploy/kubernetes/Dockerfile,
//! built with podman from a rootfs assembled on the host (no registry).

use std::{path::PathBuf, process::Command};

use anyhow::Context as _;

use crate::{run, workspace_root};

/// The build context the Dockerfile's `prebuilt` stage copies from:
/// target/container/rootfs, assembled by deploy/kubernetes/rootfs.sh from
/// the release binary (which `package::package` builds).
pub(crate) fn context() -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let context = root.join("target/container");
    let rootfs = context.join("rootfs");
    let _ = std::fs::remove_dir_all(&rootfs);
    std::fs::create_dir_all(&context)?;
    run(Command::new(root.join("deploy/kubernetes/rootfs.sh"))
        .arg(root.join("target/release/portguard"))
        .arg(&rootfs))?;
    Ok(context)
}

/// Builds `localhost/portguard:<version>` and prints its size.
pub(crate) fn build() -> anyhow::Result<()> {
    let context = context()?;
    let version = env!("CARGO_PKG_VERSION");
    let tag = format!("localhost/portguard:{version}");
    run(Command::new("podman")
        .args(["build", "--file"])
        .arg(workspace_root().join("deploy/kubernetes/Dockerfile"))
        .args(["--build-arg", "ROOTFS=prebuilt", "--build-arg", &format!("VERSION={version}"), "--tag", &tag])
        .arg(&context))?;
    let out = Command::new("podman").args(["image", "inspect", "--format", "{{.Size}}", &tag]).output()?;
    let size: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().context("podman image inspect")?;
    eprintln!("xtask: image: {tag} ({} KiB)", size / 1024);
    Ok(())
}
