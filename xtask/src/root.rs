//! Becoming root: the tasks that load eBPF programs or create namespaces check first that they
//! run as root or can through `sudo`, and fail with a clear message otherwise.

use std::{
    io::{self, IsTerminal as _},
    path::Path,
};

use anyhow::{Result, bail};
use testbed::{Cmd, output, privileges};

/// Fails with a clear message unless we are root or can become root via sudo
/// (asking for a password only when a terminal is there to type it).
pub fn ensure_can_become_root(what: &str) -> Result<()> {
    if privileges::is_root() {
        return Ok(());
    }
    let hint = format!(
        "{what} needs root: run it as root, or install sudo and allow this user to use it \
         (passwordless when there is no terminal, as in CI)"
    );
    if privileges::which("sudo").is_none() {
        bail!("{hint} (sudo is not installed)");
    }
    let ok = if io::stdin().is_terminal() {
        output::info(format!(
            "{what} needs root; asking sudo for your credentials"
        ));
        Cmd::new("sudo").arg("-v").status()?.success()
    } else {
        Cmd::new("sudo").args(["-n", "true"]).status()?.success()
    };
    if !ok {
        bail!("{hint} (sudo refused)");
    }
    Ok(())
}

/// Whether `path` exists, looked at as root (bpffs is not readable by others).
pub fn exists_as_root(path: &Path) -> bool {
    if privileges::is_root() {
        path.exists()
    } else {
        Cmd::new("test")
            .arg("-e")
            .arg(path)
            .privileged()
            .quiet()
            .status()
            .is_ok_and(|s| s.success())
    }
}

/// Mounts the BPF filesystem on /sys/fs/bpf unless it is mounted already;
/// returns whether it already was.
pub fn mount_bpffs() -> Result<bool> {
    let mounted = Cmd::new("mountpoint")
        .args(["-q", "/sys/fs/bpf"])
        .status()?
        .success();
    if !mounted {
        Cmd::new("mount")
            .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
            .privileged()
            .run()?;
    }
    Ok(mounted)
}
