//! `cargo xtask test`: setup, then the workspace's tests, as root.

use std::ffi::OsString;

use anyhow::Result;
use testbed::{Cmd, output, privileges};

use crate::{bench, build, paths, root, setup, vm};

#[derive(clap::Args, Debug)]
pub struct TestArgs {
    /// Extra arguments for `cargo test` (after `--`), e.g. a test name filter,
    /// or `-- FILTER -- --nocapture`.
    #[arg(last = true)]
    pub args: Vec<OsString>,
}

pub fn test(args: &TestArgs) -> Result<()> {
    // The tests load eBPF programs and create network namespaces: fail fast.
    root::ensure_can_become_root("`cargo xtask test` (the tests load eBPF programs)")?;
    setup::setup()?;
    // The VM tests boot this image; building it once here keeps its download out of them.
    vm::ensure(None)?;
    // The upgrade test runs this build against the one under test.
    let next_layout = build::next_layout_agent()?;

    output::step("Running the tests");
    output::explain(
        "calico-ebpf is excluded: it is a no_std crate for the BPF target and is\n\
         exercised through calico-loader's integration tests instead.",
    );
    let mut cmd = Cmd::new("cargo")
        .args(["test", "--workspace", "--exclude", "calico-ebpf"])
        .args(&args.args)
        .env("RUST_BACKTRACE", "1")
        .env(build::NEXT_LAYOUT_AGENT_ENV, &next_layout)
        .current_dir(paths::workspace_root());
    if !privileges::is_root() {
        // Cargo builds as this user; only the test binaries run as root,
        // e.g. CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="sudo -E".
        let arch = std::env::consts::ARCH.to_uppercase();
        cmd = cmd.env(
            format!("CARGO_TARGET_{arch}_UNKNOWN_LINUX_GNU_RUNNER"),
            "sudo -E",
        );
    }
    cmd.run()?;

    // The benchmark's quick mode, after the tests, so that CI (`.ci/run` ->
    // `cargo xtask test`) exercises it too: fails if any setup moved no
    // traffic, asserts nothing about speed.
    output::step("Running the quick benchmark (`cargo xtask bench --quick`)");
    bench::bench(&bench::BenchArgs::quick())?;

    Ok(())
}
