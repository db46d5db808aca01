//! Who we run as, and where programs are: what decides whether a command needs `sudo`, and
//! whether a privileged test can run at all.

use std::{env, path::PathBuf};

/// Whether the effective user is root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Fails the test unless it runs as root: the privileged tests need BPF and network
/// namespaces, and they never skip.
///
/// # Panics
///
/// Not root.
#[track_caller]
pub fn require_root() {
    assert!(
        is_root(),
        "integration tests need root (BPF, network namespaces): run them through `cargo xtask test`"
    );
}

/// Finds an executable on `PATH`.
pub fn which(program: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            use std::os::unix::fs::PermissionsExt as _;
            candidate
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}
