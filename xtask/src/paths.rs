//! Where things are: the workspace, cargo's target directory and the binaries built there, and
//! cargo's own `bin` directory (where `cargo install` puts bpf-linker), put on `PATH` first.

use std::{
    env,
    path::{Path, PathBuf},
};

/// The workspace root: the parent of this crate's manifest directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` (relative paths are taken
/// relative to the workspace root, where xtask runs cargo) or `<root>/target`.
pub fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// Path of a binary built by `cargo build` for the given profile.
pub fn built_binary(name: &str, release: bool) -> PathBuf {
    target_dir()
        .join(if release { "release" } else { "debug" })
        .join(name)
}

/// `$CARGO_HOME/bin`, or `~/.cargo/bin`.
fn cargo_bin_dir() -> Option<PathBuf> {
    env::var_os("CARGO_HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .map(|home| home.join("bin"))
}

/// Makes sure `~/.cargo/bin` (where `cargo install` puts bpf-linker) is on the
/// `PATH` of every child process.
///
/// Must be called at the very start of `main`, before any thread exists.
pub fn ensure_cargo_bin_on_path() {
    let Some(bin) = cargo_bin_dir() else { return };
    let path = env::var_os("PATH").unwrap_or_default();
    if env::split_paths(&path).any(|p| p == bin) {
        return;
    }
    let joined = env::join_paths(std::iter::once(bin).chain(env::split_paths(&path)))
        .expect("PATH entries never contain ':'");
    // SAFETY: called from `main` before any other thread has been spawned, so
    // nothing can be reading the environment concurrently.
    unsafe { env::set_var("PATH", joined) };
}
