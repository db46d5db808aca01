//! `cargo xtask run`: setup, build, then run the agent on this host.

use std::ffi::OsString;

use anyhow::{Context as _, Result, bail};
use testbed::{Cmd, output, signals};

use crate::{build, paths, root, setup};

/// Where the agent reads projectcalico.org/v3 resources from by default.
const DEFAULT_DATASTORE: &str = "/etc/calico-ebpf/datastore";

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Build and run the release profile.
    #[arg(long)]
    pub release: bool,

    /// Extra arguments for `calico-loader run` (after `--`), e.g.
    /// `-- --attach-mode xdp`. `--datastore` and `--node` given here replace
    /// the defaults.
    #[arg(last = true)]
    pub args: Vec<OsString>,
}

pub fn run(args: &RunArgs) -> Result<()> {
    root::ensure_can_become_root("the agent (it loads eBPF programs)")?;
    setup::setup()?;
    build::cargo_build(args.release)?;

    let loader = paths::built_binary("calico-loader", args.release);
    let mut cmd = Cmd::new(&loader).arg("run");
    if !has_flag(&args.args, "--datastore") {
        cmd = cmd.args(["--datastore", DEFAULT_DATASTORE]);
    }
    if !has_flag(&args.args, "--node") {
        cmd = cmd.args(["--node".to_owned(), hostname()?]);
    }
    if !has_flag(&args.args, "--networking-backend") {
        // BGP only where asked for: BIRD would otherwise start in this (root) namespace,
        // announcing to whatever peers the datastore names.
        cmd = cmd.args(["--networking-backend", "none"]);
    }
    if !has_flag(&args.args, "--data-interfaces") {
        // No programs on this machine's own interfaces (and no forwarding turned on there)
        // unless asked for: `'^$'` matches no interface.
        cmd = cmd.args(["--data-interfaces", "^$"]);
    }
    cmd = cmd.args(&args.args).privileged();

    output::step("Running the agent (Ctrl-C to stop)");
    output::explain(
        "calico-loader reads WorkloadEndpoints for this node from the datastore, attaches\n\
         the eBPF programs to their interfaces and keeps them in sync until stopped.",
    );
    // Ctrl-C reaches the agent directly (same process group); xtask only waits
    // for it and reports how it ended.
    let status = cmd.status()?;
    if !status.success() && !signals::interrupted() {
        bail!("`{}` failed ({status})", cmd.display());
    }
    Ok(())
}

/// This machine's host name.
fn hostname() -> Result<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for `buf.len()` bytes.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("gethostname failed");
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..len]).trim().to_owned();
    if name.is_empty() {
        bail!("this machine has an empty host name; pass --node NAME explicitly");
    }
    Ok(name)
}

/// Whether `flag` is among `args`, as `--flag VALUE` or `--flag=VALUE`.
fn has_flag(args: &[OsString], flag: &str) -> bool {
    args.iter().any(|arg| {
        let arg = arg.to_string_lossy();
        arg == flag || arg.starts_with(&format!("{flag}="))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn has_flag_matches_both_spellings_only() {
        let args: Vec<OsString> = ["--node=a", "--datastore-x", "/d"]
            .into_iter()
            .map(OsString::from)
            .collect();
        assert!(has_flag(&args, "--node"));
        assert!(!has_flag(&args, "--datastore"));
        assert!(has_flag(&[OsString::from("--datastore")], "--datastore"));
    }
}
