//! GoBGP (Debian's `gobgpd`), an independent BGP speaker, as a top-of-rack router inside a
//! namespace of the caller's: its configuration (one eBGP neighbor per address), the daemon
//! (stopped on drop) with its API on the namespace's loopback, and the `gobgp` client against
//! it. GoBGP does not touch the kernel (no zebra). The routing tests and `cargo xtask bench`
//! run it the same way.

use std::{
    fmt::Write as _,
    fs, io,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

/// Why GoBGP does not serve.
#[derive(Debug, thiserror::Error)]
pub enum GobgpError {
    #[error(
        "{} is not installed: an independent BGP speaker is needed (Debian package gobgpd; \
         `cargo xtask setup` installs it)", .0.display()
    )]
    Missing(PathBuf),
    #[error("cannot {what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("gobgpd did not start ({why}); its log:\n{log}")]
    NotStarted { why: String, log: String },
}

/// The API's address inside the namespace.
const API_HOST: &str = "127.0.0.1";
const API_PORT: &str = "50051";

/// `/usr/bin/<name>`, or what is missing.
fn program(name: &str) -> Result<PathBuf, GobgpError> {
    let path = Path::new("/usr/bin").join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(GobgpError::Missing(path))
    }
}

/// gobgpd's configuration: the global AS and router id, and one neighbor per address, each
/// with the unicast family of its address and short timers (BIRD connects within seconds).
pub fn config_toml(
    asn: u32,
    router_id: Ipv4Addr,
    neighbors: &[IpAddr],
    neighbor_as: u32,
) -> String {
    let mut toml = format!("[global.config]\n  as = {asn}\n  router-id = \"{router_id}\"\n");
    for neighbor in neighbors {
        let family = if neighbor.is_ipv4() {
            "ipv4-unicast"
        } else {
            "ipv6-unicast"
        };
        let _ = write!(
            toml,
            "\n[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{neighbor}\"\n    \
             peer-as = {neighbor_as}\n  [neighbors.timers.config]\n    connect-retry = 5\n  \
             [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      \
             afi-safi-name = \"{family}\"\n"
        );
    }
    toml
}

/// gobgpd running in a namespace, its configuration and log in a directory of the caller's.
pub struct Gobgpd {
    netns: PathBuf,
    dir: PathBuf,
    daemon: Option<Child>,
}

impl Gobgpd {
    /// Writes `config` (see [`config_toml`]) to `<dir>/gobgpd.toml`, starts gobgpd in `netns`
    /// (a `/run/netns/...` path) with its API on the namespace's loopback and pprof off, and
    /// waits until the API answers.
    ///
    /// # Errors
    ///
    /// GoBGP is not installed, or gobgpd does not start within 10 s.
    pub fn start(netns: &Path, dir: &Path, config: &str) -> Result<Self, GobgpError> {
        let gobgpd = program("gobgpd")?;
        program("gobgp")?;
        let io = |what: &str| {
            let what = what.to_owned();
            move |source| GobgpError::Io { what, source }
        };
        let config_path = dir.join("gobgpd.toml");
        fs::write(&config_path, config).map_err(io("write gobgpd.toml"))?;
        let log = fs::File::create(dir.join("gobgpd.log")).map_err(io("create gobgpd's log"))?;
        let daemon = Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .arg(gobgpd)
            .arg("--config-file")
            .arg(&config_path)
            .args([
                "--log-plain",
                "--api-hosts",
                &format!("{API_HOST}:{API_PORT}"),
                "--pprof-disable",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io("open gobgpd's log"))?)
            .stderr(log)
            .spawn()
            .map_err(io("start gobgpd"))?;
        let mut gobgpd = Self {
            netns: netns.to_owned(),
            dir: dir.to_owned(),
            daemon: Some(daemon),
        };
        gobgpd.wait_api()?;
        Ok(gobgpd)
    }

    /// Waits until gobgpd answers on its API.
    fn wait_api(&mut self) -> Result<(), GobgpError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.gobgp(&["global"])?.status.success() {
                return Ok(());
            }
            let exited = self
                .daemon
                .as_mut()
                .and_then(|d| d.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() >= deadline {
                return Err(GobgpError::NotStarted {
                    why: exited.map_or("no answer on its API".to_owned(), |s| s.to_string()),
                    log: self.log(),
                });
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// What gobgpd logged.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("gobgpd.log")).unwrap_or_default()
    }

    /// gobgpd's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    /// The command `gobgp ARGS` against this gobgpd, in its namespace, not yet started.
    ///
    /// # Errors
    ///
    /// `gobgp` is not installed.
    pub fn command(&self, args: &[&str]) -> Result<Command, GobgpError> {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", self.netns.display()))
            .arg(program("gobgp")?)
            .args(["--host", API_HOST, "--port", API_PORT])
            .args(args);
        Ok(command)
    }

    /// Runs `gobgp ARGS`; its output, whatever its exit status.
    ///
    /// # Errors
    ///
    /// `gobgp` is not installed or cannot run.
    pub fn gobgp(&self, args: &[&str]) -> Result<Output, GobgpError> {
        self.command(args)?
            .output()
            .map_err(|source| GobgpError::Io {
                what: "run gobgp".into(),
                source,
            })
    }
}

impl Drop for Gobgpd {
    /// SIGTERM, then SIGKILL after 5 s.
    fn drop(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            if let Ok(pid) = libc::pid_t::try_from(daemon.id()) {
                // SAFETY: a signal to our own child, not yet reaped.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = daemon.try_wait() {
                    return;
                }
                thread::sleep(Duration::from_millis(50));
            }
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
    }
}
