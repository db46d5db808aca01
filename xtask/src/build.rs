//! `cargo xtask build`: setup, then `cargo build` of the default members.

use anyhow::Result;
use testbed::{Cmd, output};

use crate::{paths, setup};

#[derive(clap::Args, Debug)]
pub struct BuildArgs {
    /// Build with the release profile.
    #[arg(long)]
    pub release: bool,
}

pub fn build(args: &BuildArgs) -> Result<()> {
    setup::setup()?;
    cargo_build(args.release)
}

/// `cargo build` of the workspace's default members. calico-loader's build
/// script compiles the eBPF programs (nightly toolchain, via aya-build).
pub fn cargo_build(release: bool) -> Result<()> {
    output::step(format!(
        "Building the workspace ({})",
        if release { "release" } else { "debug" }
    ));
    let mut cmd = Cmd::new("cargo")
        .arg("build")
        .current_dir(paths::workspace_root());
    if release {
        cmd = cmd.arg("--release");
    }
    cmd.run()?;
    Ok(())
}
