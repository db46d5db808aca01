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

/// The environment variable through which the upgrade test finds the `next-layout` agent.
pub const NEXT_LAYOUT_AGENT_ENV: &str = "CALICO_EBPF_NEXT_LAYOUT_AGENT";

/// Builds the test-only agent whose maps are one layout version ahead (calico-loader's
/// `next-layout` feature), in a target directory of its own so that the normal build is not
/// rebuilt, and returns its path. The upgrade test runs it against the normal build.
pub fn next_layout_agent() -> Result<std::path::PathBuf> {
    output::step("Building the agent with the next map layouts (for the upgrade test)");
    let target = paths::target_dir().join("next-layout");
    Cmd::new("cargo")
        .args(["build", "-p", "calico-loader", "--bin", "calico-loader"])
        .args(["--features", "next-layout", "--target-dir"])
        .arg(&target)
        .current_dir(paths::workspace_root())
        .run()?;
    Ok(target.join("debug").join("calico-loader"))
}
