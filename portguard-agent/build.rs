//! Builds the eBPF object with the nightly toolchain (see README: Set-up);
//! the agent embeds it from OUT_DIR.

use anyhow::Context as _;
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = std::path::Path::new(&manifest_dir).join("../portguard-ebpf");
    let ebpf_dir = ebpf_dir.canonicalize().with_context(|| format!("{}", ebpf_dir.display()))?;
    let root_dir = ebpf_dir.to_str().context("non-UTF-8 path")?;
    aya_build::build_ebpf(
        [Package { name: "portguard-ebpf", root_dir, ..Default::default() }],
        Toolchain::default(),
    )
}
