//! The CLI (`calico-loader ...`) run against a datastore the test owns: a real etcd or a local
//! directory. Commands get their environment from here, so a test names only its arguments.

use std::{
    io::Write as _,
    process::{Command, Output, Stdio},
};

use super::{etcd::Etcd, topology::loader_bin};

/// Where the CLI runs against.
pub enum Backend {
    Etcd(Etcd),
    Local(tempfile::TempDir),
}

impl Backend {
    /// A fresh etcd.
    pub fn etcd() -> Self {
        Backend::Etcd(Etcd::start())
    }

    /// A fresh, empty directory.
    pub fn local() -> Self {
        Backend::Local(tempfile::tempdir().expect("tempdir"))
    }

    /// The command `calico-loader ARGS` against this datastore, not yet started, its input and
    /// output piped. `NODENAME` is taken out of the environment, so the node name is the one
    /// the test gives, or the host's.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = match self {
            Backend::Etcd(etcd) => etcd.loader_command(args),
            Backend::Local(dir) => {
                let mut command = Command::new(loader_bin());
                command
                    .args(args)
                    .env("DATASTORE_TYPE", "local")
                    .env("CALICO_DATASTORE_DIR", dir.path())
                    .env("RUST_BACKTRACE", "0");
                command
            }
        };
        command
            .env_remove("NODENAME")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// Runs `calico-loader ARGS` with `stdin` as its input.
    pub fn loader(&self, args: &[&str], stdin: Option<&str>) -> Output {
        run_with_stdin(self.command(args), stdin)
    }

    /// Runs the CLI and expects success; returns stdout.
    pub fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.loader(args, stdin);
        assert!(
            out.status.success(),
            "calico-loader {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            self.etcd_log_hint()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the CLI and expects failure; returns stderr.
    pub fn fails(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.loader(args, stdin);
        assert!(
            !out.status.success(),
            "calico-loader {args:?} should have failed; stdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// The tail of etcd's log, for a failure message.
    pub fn etcd_log_hint(&self) -> String {
        match self {
            Backend::Etcd(etcd) => format!("\netcd log tail:\n{}", tail(&etcd.log(), 20)),
            Backend::Local(_) => String::new(),
        }
    }
}

/// Runs `command` with its output captured and `stdin` as its input.
pub fn run_with_stdin(mut command: Command, stdin: Option<&str>) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run calico-loader");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("write stdin");
    }
    drop(input);
    child.wait_with_output().expect("calico-loader output")
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
