//! External commands that are echoed (`$ ...`) before they run, so a task's output or a failed
//! test's shows what was done; as root when asked, directly or through `sudo -E`. Once a caught
//! signal arrived (see [`crate::signals`]), only cleanup commands still run.

use std::{
    ffi::{OsStr, OsString},
    io::{self, BufRead as _, BufReader, Read},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Output, Stdio},
    thread,
};

use crate::{output::styled, privileges::is_root, signals};

/// Why a command did not do its job.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error(transparent)]
    Interrupted(#[from] signals::Interrupted),
    #[error("failed to start `{command}`{hint}")]
    Spawn {
        command: String,
        /// Why, when it is likely: the program is not installed.
        hint: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed ({status})")]
    Failed { command: String, status: ExitStatus },
    #[error("`{command}` printed invalid UTF-8")]
    Utf8 {
        command: String,
        #[source]
        source: std::string::FromUtf8Error,
    },
}

/// An external command that is echoed (`$ ...`) before it runs.
#[derive(Clone, Debug)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
    privileged: bool,
    quiet: bool,
    cleanup: bool,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Self {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            envs: Vec::new(),
            cwd: None,
            privileged: false,
            quiet: false,
            cleanup: false,
        }
    }

    #[must_use]
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    #[must_use]
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    #[must_use]
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    #[must_use]
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Runs the command as root: directly when we are root, else via `sudo -E`.
    #[must_use]
    pub fn privileged(mut self) -> Self {
        self.privileged = true;
        self
    }

    /// Does not echo the command (for polling loops).
    #[must_use]
    pub fn quiet(mut self) -> Self {
        self.quiet = true;
        self
    }

    /// Part of a cleanup: runs even after Ctrl-C.
    #[must_use]
    pub fn cleanup(mut self) -> Self {
        self.cleanup = true;
        self
    }

    fn via_sudo(&self) -> bool {
        self.privileged && !is_root()
    }

    /// The command line as a shell would read it.
    pub fn display(&self) -> String {
        let mut words: Vec<String> = Vec::new();
        words.extend(self.envs.iter().map(|(k, v)| {
            format!(
                "{}={}",
                k.to_string_lossy(),
                shell_quote(&v.to_string_lossy())
            )
        }));
        if self.via_sudo() {
            words.extend(["sudo".into(), "-E".into()]);
        }
        words.push(shell_quote(&self.program.to_string_lossy()));
        words.extend(self.args.iter().map(|a| shell_quote(&a.to_string_lossy())));
        words.join(" ")
    }

    fn command(&self) -> Result<Command, CmdError> {
        if !self.cleanup {
            signals::check_interrupted()?;
        }
        if !self.quiet {
            eprintln!("{}", styled("36", format_args!("$ {}", self.display())));
        }
        let mut command = if self.via_sudo() {
            let mut c = Command::new("sudo");
            c.arg("-E").arg(&self.program);
            c
        } else {
            Command::new(&self.program)
        };
        command.args(&self.args);
        command.envs(self.envs.iter().map(|(k, v)| (k, v)));
        if let Some(cwd) = &self.cwd {
            command.current_dir(cwd);
        }
        Ok(command)
    }

    fn spawn_error(&self, source: io::Error) -> CmdError {
        let program = if self.via_sudo() {
            "sudo".into()
        } else {
            self.program.to_string_lossy()
        };
        let hint = if source.kind() == io::ErrorKind::NotFound {
            format!(" (`{program}` not found; did `cargo xtask setup` run?)")
        } else {
            String::new()
        };
        CmdError::Spawn {
            command: self.display(),
            hint,
            source,
        }
    }

    fn check(&self, status: ExitStatus) -> Result<(), CmdError> {
        if status.success() {
            Ok(())
        } else {
            Err(CmdError::Failed {
                command: self.display(),
                status,
            })
        }
    }

    /// Runs with inherited stdio; fails unless it exits successfully.
    ///
    /// # Errors
    ///
    /// Interrupted, not started, or failed.
    pub fn run(&self) -> Result<(), CmdError> {
        let status = self.status()?;
        self.check(status)
    }

    /// Runs with inherited stdio and returns its exit status, whatever it is.
    ///
    /// # Errors
    ///
    /// Interrupted, or not started.
    pub fn status(&self) -> Result<ExitStatus, CmdError> {
        self.command()?
            .stdin(Stdio::inherit())
            .status()
            .map_err(|e| self.spawn_error(e))
    }

    /// Runs, capturing stdout and stderr, whatever the exit status.
    ///
    /// # Errors
    ///
    /// Interrupted, or not started.
    pub fn capture(&self) -> Result<Output, CmdError> {
        self.command()?
            .stdin(Stdio::null())
            .output()
            .map_err(|e| self.spawn_error(e))
    }

    /// Runs, capturing stdout (stderr goes to ours); fails unless it exits
    /// successfully.
    ///
    /// # Errors
    ///
    /// Interrupted, not started, failed, or printed something other than UTF-8.
    pub fn output(&self) -> Result<String, CmdError> {
        let output = self
            .command()?
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| self.spawn_error(e))?;
        self.check(output.status)?;
        String::from_utf8(output.stdout).map_err(|source| CmdError::Utf8 {
            command: self.display(),
            source,
        })
    }

    /// Starts it in the background with stdout and stderr piped; each line
    /// is printed to our stderr with `prefix`.
    ///
    /// # Errors
    ///
    /// Interrupted, or not started.
    pub fn spawn_prefixed(&self, prefix: &str) -> Result<Child, CmdError> {
        let mut child = self
            .command()?
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.spawn_error(e))?;
        if let Some(out) = child.stdout.take() {
            forward_lines(out, prefix.to_owned());
        }
        if let Some(err) = child.stderr.take() {
            forward_lines(err, prefix.to_owned());
        }
        Ok(child)
    }
}

fn forward_lines(stream: impl Read + Send + 'static, prefix: String) {
    thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            eprintln!("{} {line}", styled("35", &prefix));
        }
    });
}

/// Quotes a word for display the way a POSIX shell would need it.
pub fn shell_quote(word: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_./:=,+@%^".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quote_leaves_plain_words_alone() {
        assert_eq!(shell_quote("ip"), "ip");
        assert_eq!(shell_quote("--net=/run/netns/x"), "--net=/run/netns/x");
        assert_eq!(shell_quote("198.18.0.11/32"), "198.18.0.11/32");
    }

    #[test]
    fn shell_quote_quotes_everything_else() {
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("hello world"), "'hello world'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("${Status}"), "'${Status}'");
    }

    #[test]
    fn display_shows_environment_and_arguments() {
        let cmd = Cmd::new("apt-get")
            .args(["install", "-y", "sudo"])
            .env("DEBIAN_FRONTEND", "noninteractive");
        assert_eq!(
            cmd.display(),
            "DEBIAN_FRONTEND=noninteractive apt-get install -y sudo"
        );
    }
}
