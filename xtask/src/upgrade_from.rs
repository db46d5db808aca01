//! The agent of an earlier commit, for the bench's upgrade phase: its `calico-loader`, built
//! (release, with its own eBPF programs: its `build.rs` drives the same toolchain) from a git
//! worktree of that commit, in a target directory of its own so that the main build is not
//! disturbed:
//!
//! ```text
//! target/upgrade-from/<commit>/src      the worktree (`git worktree add --detach`), removed
//!                                       once the binary is built
//! target/upgrade-from/<commit>/target   its cargo target directory
//! target/upgrade-from/<commit>/target/release/calico-loader
//! ```
//!
//! The binary is cached: when it exists, nothing is built. A worktree left by an interrupted
//! build is reused when it is at the commit, and replaced otherwise.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use testbed::{Cmd, output};

use crate::paths;

/// Where the build of one commit lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OldBuild {
    /// The full commit id.
    pub commit: String,
    /// `target/upgrade-from/<commit>`.
    pub dir: PathBuf,
}

impl OldBuild {
    /// The build of `commit` (a full id) under the target directory `target`.
    pub fn new(target: &Path, commit: &str) -> Self {
        Self {
            commit: commit.to_owned(),
            dir: target.join("upgrade-from").join(commit),
        }
    }

    /// The worktree of the commit.
    pub fn source(&self) -> PathBuf {
        self.dir.join("src")
    }

    /// Its own cargo target directory.
    pub fn target(&self) -> PathBuf {
        self.dir.join("target")
    }

    /// The agent, once built.
    pub fn agent(&self) -> PathBuf {
        self.target().join("release").join("calico-loader")
    }
}

/// The agent of `commit` (any name git knows: a short id, a tag), built when not cached, and
/// the commit's full id.
pub fn agent(commit: &str) -> Result<(PathBuf, String)> {
    let root = paths::workspace_root();
    let full = resolve(&root, commit)?;
    let build = OldBuild::new(&paths::target_dir(), &full);
    let agent = build.agent();
    if agent.is_file() {
        output::info(format!(
            "the agent of {} is already built: {}",
            short(&full),
            agent.display()
        ));
        return Ok((agent, full));
    }
    output::step(format!(
        "Building the agent of {} (release, in {}; once, then cached)",
        short(&full),
        build.dir.display()
    ));
    prepare_worktree(&root, &build)?;
    Cmd::new("cargo")
        .args(["build", "--release", "-p", "calico-loader", "--bin"])
        .arg("calico-loader")
        .arg("--target-dir")
        .arg(build.target())
        .current_dir(build.source())
        .run()
        .with_context(|| format!("building the agent of {}", short(&full)))?;
    if !agent.is_file() {
        bail!("{} is missing after the build", agent.display());
    }
    // The binary is what is kept; the worktree would only be an entry in `git worktree list`.
    remove_worktree(&root, &build.source());
    Ok((agent, full))
}

/// The full id of `commit`. A clone too shallow to hold it is deepened from its origin first;
/// if the commit is still missing, the error says how to get it.
fn resolve(root: &Path, commit: &str) -> Result<String> {
    if let Ok(full) = resolve_here(root, commit) {
        return Ok(full);
    }
    let shallow = Cmd::new("git")
        .args(["rev-parse", "--is-shallow-repository"])
        .current_dir(root)
        .quiet()
        .output()
        .is_ok_and(|out| out.trim() == "true");
    if !shallow {
        return resolve_here(root, commit);
    }
    output::info(format!(
        "{commit} is not in this shallow clone: fetching the whole history"
    ));
    if let Err(err) = Cmd::new("git")
        .args(["fetch", "--unshallow", "origin"])
        .current_dir(root)
        .run()
    {
        output::warn(output::with_causes(&err));
    }
    resolve_here(root, commit).context("the clone is shallow and could not be deepened")
}

/// The full id of `commit`, when this clone holds it.
fn resolve_here(root: &Path, commit: &str) -> Result<String> {
    rev_parse(root, &format!("{commit}^{{commit}}")).with_context(|| {
        format!(
            "the commit {commit} to upgrade from is not in this clone: fetch it (`git fetch \
             origin {commit}`, or `git fetch --unshallow`) and run again"
        )
    })
}

/// `git rev-parse --verify` of `rev`, when git knows it.
fn rev_parse(root: &Path, rev: &str) -> Option<String> {
    Cmd::new("git")
        .args(["rev-parse", "--verify", "--quiet", rev])
        .current_dir(root)
        .quiet()
        .output()
        .ok()
        .map(|out| out.trim().to_owned())
        .filter(|id| !id.is_empty())
}

/// Makes `build.source()` a worktree at the commit: reuses one already there, replaces
/// anything else.
fn prepare_worktree(root: &Path, build: &OldBuild) -> Result<()> {
    let source = build.source();
    if source.exists() {
        if rev_parse(&source, "HEAD").as_deref() == Some(build.commit.as_str()) {
            output::info(format!("reusing the worktree {}", source.display()));
            return Ok(());
        }
        output::info(format!(
            "{} is not a worktree at {}: replacing it",
            source.display(),
            short(&build.commit)
        ));
        remove_worktree(root, &source);
        std::fs::remove_dir_all(&source)
            .or_else(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .with_context(|| format!("cannot remove {}", source.display()))?;
    }
    std::fs::create_dir_all(&build.dir)
        .with_context(|| format!("cannot create {}", build.dir.display()))?;
    Cmd::new("git")
        // --force: the path may still be registered from a worktree whose directory is gone
        // (`cargo clean`).
        .args(["worktree", "add", "--force", "--detach"])
        .arg(&source)
        .arg(&build.commit)
        .current_dir(root)
        .run()
        .with_context(|| format!("making a worktree of {}", short(&build.commit)))?;
    Ok(())
}

/// `git worktree remove --force` (of this worktree only); a failure only warns.
fn remove_worktree(root: &Path, source: &Path) {
    let remove = Cmd::new("git")
        .args(["worktree", "remove", "--force"])
        .arg(source)
        .current_dir(root)
        .quiet()
        .capture();
    if let Ok(out) = &remove
        && !out.status.success()
        && source.exists()
    {
        output::warn(format!(
            "`git worktree remove` of {}: {}",
            source.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
}

/// The first 7 characters of a commit id, as git shows them.
pub fn short(commit: &str) -> &str {
    commit.get(..7).unwrap_or(commit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_builds_in_its_own_directory_under_target() {
        let build = OldBuild::new(
            Path::new("/w/target"),
            "4511f18f710f5a134cc2a9cf78fb2d4ee29c75a9",
        );
        assert_eq!(
            build.dir,
            Path::new("/w/target/upgrade-from/4511f18f710f5a134cc2a9cf78fb2d4ee29c75a9")
        );
        assert_eq!(build.source(), build.dir.join("src"));
        assert_eq!(build.target(), build.dir.join("target"));
        assert_eq!(
            build.agent(),
            build.dir.join("target/release/calico-loader")
        );
        assert_eq!(short(&build.commit), "4511f18");
        assert_eq!(short("abc"), "abc");
    }

    #[test]
    fn commits_resolve_to_full_ids_and_unknown_ones_are_refused() {
        let root = paths::workspace_root();
        let head = resolve_here(&root, "HEAD").expect("HEAD resolves");
        assert_eq!(head.len(), 40, "{head}");
        assert!(head.chars().all(|c| c.is_ascii_hexdigit()), "{head}");
        assert_eq!(resolve_here(&root, short(&head)).expect("a short id"), head);
        let err = resolve_here(&root, "0000000000000000000000000000000000000001")
            .expect_err("no such commit");
        assert!(err.to_string().contains("not in this clone"), "{err:#}");
    }
}
