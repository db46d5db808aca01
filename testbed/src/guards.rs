//! RAII guards for what a task starts or makes besides namespaces: a background process,
//! stopped on drop, and a directory, removed on drop. Drop runs on error and on panic too, so
//! nothing is left behind.

use std::{
    io,
    path::{Path, PathBuf},
    process::{Child, ExitStatus},
    thread,
    time::{Duration, Instant},
};

use crate::{
    cmd::Cmd,
    output::{info, styled, warn},
    privileges::is_root,
};

/// A directory that could not be made, or a process that could not be checked on.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("cannot create directory {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot check on {name}")]
    Wait {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// A directory removed (recursively) on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `path` (and its parents).
    ///
    /// # Errors
    ///
    /// The directory cannot be created.
    pub fn create(path: impl Into<PathBuf>) -> Result<Self, GuardError> {
        let path = path.into();
        std::fs::create_dir_all(&path).map_err(|source| GuardError::CreateDir {
            path: path.clone(),
            source,
        })?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        eprintln!(
            "{}",
            styled("36", format_args!("$ rm -rf {}", self.path.display()))
        );
        if let Err(err) = std::fs::remove_dir_all(&self.path) {
            warn(format!("could not remove {}: {err}", self.path.display()));
        }
    }
}

/// A background process that is stopped (SIGTERM, then SIGKILL after a
/// grace period) on drop unless it already exited.
pub struct ChildGuard {
    name: String,
    child: Child,
    privileged: bool,
}

impl ChildGuard {
    /// Guards `child`, called `name` in messages; `privileged` if it was started as root
    /// (through sudo, it may then not accept our signals).
    pub fn new(name: impl Into<String>, child: Child, privileged: bool) -> Self {
        Self {
            name: name.into(),
            child,
            privileged,
        }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// What the process is, as given to [`ChildGuard::new`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `Some(status)` if the process has exited.
    ///
    /// # Errors
    ///
    /// `waitpid` failing.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, GuardError> {
        self.child.try_wait().map_err(|source| GuardError::Wait {
            name: self.name.clone(),
            source,
        })
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = self.child.id();
        let Ok(pid_t) = libc::pid_t::try_from(pid) else {
            return;
        };
        // SAFETY: plain kill(2) on the pid of a child we have not reaped.
        let rc = unsafe { libc::kill(pid_t, signal) };
        if rc != 0 && self.privileged && !is_root() {
            // A child started through sudo may not accept our signals.
            let name = if signal == libc::SIGKILL {
                "-KILL"
            } else {
                "-TERM"
            };
            let _ = Cmd::new("kill")
                .args([name, &pid.to_string()])
                .privileged()
                .cleanup()
                .status();
        }
    }

    fn wait_for(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(100)),
                _ => return None,
            }
        }
    }

    /// Kills the process with SIGKILL (as a crash: none of its own clean-up runs) and returns
    /// how it exited.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        eprintln!(
            "{}",
            styled(
                "36",
                format_args!("$ kill -KILL {}   # {}", self.child.id(), self.name)
            )
        );
        self.signal(libc::SIGKILL);
        self.wait_for(Duration::from_secs(5))
    }

    /// Stops the process (SIGTERM; SIGKILL after `grace`) and returns how it
    /// exited.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        eprintln!(
            "{}",
            styled(
                "36",
                format_args!("$ kill -TERM {}   # {}", self.child.id(), self.name)
            )
        );
        self.signal(libc::SIGTERM);
        if let Some(status) = self.wait_for(grace) {
            return Some(status);
        }
        warn(format!(
            "{} did not stop within {grace:?}; killing it",
            self.name
        ));
        self.signal(libc::SIGKILL);
        self.wait_for(Duration::from_secs(5))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(status) = self.stop(Duration::from_secs(10)) {
            info(format!("{} exited ({status})", self.name));
        }
    }
}
