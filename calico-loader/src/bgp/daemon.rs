//! Running BIRD: start it on a configuration, reload it with a new one, ask it about its
//! sessions, stop it.
//!
//! Everything of one BIRD lives in its run directory (created with mode 0700): the
//! configuration in force (`bird.conf`, mode 0600: it may hold passwords), the candidate being
//! checked (`bird.conf.new`), the control socket (`bird.ctl`) and the pid file (`bird.pid`).
//! BIRD runs in the foreground as the agent's child (`bird -f -R`; `-R` recovers routes after a
//! graceful restart), in a given network namespace if asked (through `nsenter --net=`, which
//! becomes BIRD itself). Its messages (`log stderr all`) go to the agent's log, target `bird`.
//!
//! A new configuration is checked first (`bird -p -c`); only then does it replace `bird.conf`
//! and BIRD re-read it (`birdc configure`). A configuration BIRD refuses leaves the last good
//! one in force, in the file as in BIRD.

use std::{
    collections::VecDeque,
    fs,
    io::{self, BufRead as _, BufReader, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use tracing::{debug, info, warn};

use super::{BgpError, bird, model::SessionKind};

/// BIRD's control client.
pub const BIRDC: &str = "birdc";
/// How many of BIRD's last messages an error about its start carries.
const KEPT_MESSAGES: usize = 20;

/// Where and how to run one BIRD.
#[derive(Clone, Debug)]
pub struct BirdSettings {
    /// The run directory: configuration, control socket, pid file.
    pub run_dir: PathBuf,
    /// The network namespace to run BIRD in (`/run/netns/<name>`), or none for the agent's.
    pub netns: Option<PathBuf>,
    /// How long BIRD has to answer on its control socket once started.
    pub start_timeout: Duration,
}

impl BirdSettings {
    /// BIRD in the agent's namespace, with its files in `run_dir`.
    pub fn new(run_dir: impl Into<PathBuf>) -> Self {
        Self {
            run_dir: run_dir.into(),
            netns: None,
            start_timeout: Duration::from_secs(10),
        }
    }

    /// The configuration in force.
    pub fn config_path(&self) -> PathBuf {
        self.run_dir.join("bird.conf")
    }

    /// The control socket.
    pub fn socket_path(&self) -> PathBuf {
        self.run_dir.join("bird.ctl")
    }

    fn candidate_path(&self) -> PathBuf {
        self.run_dir.join("bird.conf.new")
    }

    fn pid_path(&self) -> PathBuf {
        self.run_dir.join("bird.pid")
    }
}

/// What [`Bird::apply`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reload {
    /// The configuration was already in force.
    Unchanged,
    /// BIRD re-read its configuration.
    Reconfigured,
}

/// A BGP session's state, as `birdc show protocols` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolStatus {
    /// The protocol's name (`Mesh_198_18_0_2`).
    pub name: String,
    /// Its kind of session, for ours.
    pub kind: Option<SessionKind>,
    /// BIRD's protocol state: `up`, `start`, `down`...
    pub state: String,
    /// Since when.
    pub since: String,
    /// The BGP state and more: `Established`, `Active Socket: Connection refused`...
    pub info: String,
}

impl ProtocolStatus {
    /// Whether the BGP session is established.
    pub fn established(&self) -> bool {
        self.state == "up" && self.info.starts_with("Established")
    }
}

/// A running BIRD, stopped when dropped (its kernel routes stay: `persist`).
pub struct Bird {
    settings: BirdSettings,
    child: Child,
    /// The configuration in force.
    current: String,
    /// BIRD's last messages.
    messages: Arc<Mutex<VecDeque<String>>>,
}

fn io_error(what: &str, path: &Path, error: &io::Error) -> BgpError {
    BgpError::Io {
        what: what.to_owned(),
        path: path.to_owned(),
        message: error.to_string(),
    }
}

/// Writes `text` to `path`, readable by its owner only.
fn write_private(path: &Path, text: &str) -> Result<(), BgpError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io_error("write", path, &e))?;
    file.write_all(text.as_bytes())
        .map_err(|e| io_error("write", path, &e))
}

/// Writes `text` as the candidate, has BIRD check it, and makes it the configuration file.
fn install(settings: &BirdSettings, text: &str) -> Result<(), BgpError> {
    let candidate = settings.candidate_path();
    write_private(&candidate, text)?;
    if let Err(e) = bird::check(&candidate) {
        let _ = fs::remove_file(&candidate);
        return Err(e);
    }
    let config = settings.config_path();
    fs::rename(&candidate, &config).map_err(|e| io_error("rename", &candidate, &e))
}

impl Bird {
    /// Starts BIRD on `config` (checked first) and waits until it answers on its control
    /// socket.
    pub fn start(settings: BirdSettings, config: &str) -> Result<Bird, BgpError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&settings.run_dir)
            .map_err(|e| io_error("create", &settings.run_dir, &e))?;
        install(&settings, config)?;
        let socket = settings.socket_path();
        if socket.exists() {
            fs::remove_file(&socket).map_err(|e| io_error("remove", &socket, &e))?;
        }
        let mut command = match &settings.netns {
            Some(netns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", netns.display())).arg(bird::BIRD);
                c
            }
            None => Command::new(bird::BIRD),
        };
        command
            .arg("-f")
            .arg("-R")
            .arg("-c")
            .arg(settings.config_path())
            .arg("-s")
            .arg(&socket)
            .arg("-P")
            .arg(settings.pid_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let program = if settings.netns.is_some() {
            "nsenter"
        } else {
            bird::BIRD
        };
        let mut child = command.spawn().map_err(|e| BgpError::BirdMissing {
            program: program.to_owned(),
            message: e.to_string(),
        })?;
        let messages = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(stderr) = child.stderr.take() {
            let kept = Arc::clone(&messages);
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    info!(target: "bird", "{line}");
                    if let Ok(mut kept) = kept.lock() {
                        if kept.len() == KEPT_MESSAGES {
                            kept.pop_front();
                        }
                        kept.push_back(line);
                    }
                }
            });
        }
        let mut bird = Bird {
            settings,
            child,
            current: config.to_owned(),
            messages,
        };
        bird.wait_ready()?;
        info!(pid = bird.pid(), run_dir = %bird.settings.run_dir.display(), "BIRD started");
        Ok(bird)
    }

    fn wait_ready(&mut self) -> Result<(), BgpError> {
        let deadline = Instant::now() + self.settings.start_timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(BgpError::Start {
                    message: format!("bird exited ({status}){}", self.last_messages()),
                });
            }
            if self.birdc(&["show", "status"]).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(BgpError::Start {
                    message: format!(
                        "bird did not answer on {} within {:?}{}",
                        self.settings.socket_path().display(),
                        self.settings.start_timeout,
                        self.last_messages()
                    ),
                });
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn last_messages(&self) -> String {
        let kept = self.messages.lock().map(|k| k.clone()).unwrap_or_default();
        if kept.is_empty() {
            String::new()
        } else {
            format!("; its last messages:\n{}", Vec::from(kept).join("\n"))
        }
    }

    /// BIRD's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The settings BIRD runs with.
    pub fn settings(&self) -> &BirdSettings {
        &self.settings
    }

    /// The configuration in force.
    pub fn configuration(&self) -> &str {
        &self.current
    }

    /// Puts `config` in force: checked by BIRD, written, then re-read by BIRD. If BIRD refuses
    /// it, the configuration in force stays, in the file as in BIRD.
    pub fn apply(&mut self, config: &str) -> Result<Reload, BgpError> {
        if config == self.current {
            return Ok(Reload::Unchanged);
        }
        install(&self.settings, config)?;
        if let Err(e) = self.birdc(&["configure"]) {
            warn!(error = %e, "BIRD refused the new configuration; restoring the last good one");
            write_private(&self.settings.config_path(), &self.current)?;
            return Err(e);
        }
        self.current = config.to_owned();
        debug!("BIRD reconfigured");
        Ok(Reload::Reconfigured)
    }

    /// Runs `birdc` with `args` on this BIRD's socket and returns what it printed.
    pub fn birdc(&self, args: &[&str]) -> Result<String, BgpError> {
        let command = args.join(" ");
        let output = Command::new(BIRDC)
            .arg("-s")
            .arg(self.settings.socket_path())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| BgpError::BirdMissing {
                program: BIRDC.to_owned(),
                message: e.to_string(),
            })?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() {
            Ok(stdout)
        } else {
            let stderr = String::from_utf8_lossy(&output.stderr);
            Err(BgpError::Control {
                command,
                message: format!("{}{}", stdout.trim(), stderr.trim()),
            })
        }
    }

    /// The state of each protocol (`birdc show protocols`).
    pub fn protocols(&self) -> Result<Vec<ProtocolStatus>, BgpError> {
        let text = self.birdc(&["show", "protocols"])?;
        Ok(parse_protocols(&text))
    }

    /// Stops BIRD (`birdc down`, else killed) and waits for it.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        if self.birdc(&["down"]).is_ok() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
        warn!(pid = self.pid(), "BIRD did not stop; killing it");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// The rows of `birdc show protocols`: `Name Proto Table State Since Info`, where Since is one
/// or two words (a time, or a date and a time) and Info the rest.
fn parse_protocols(text: &str) -> Vec<ProtocolStatus> {
    text.lines()
        .filter(|line| !line.starts_with("BIRD ") && !line.starts_with("Name "))
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let [name, _proto, _table, state, rest @ ..] = words.as_slice() else {
                return None;
            };
            let (since, info) = match rest {
                [date, time, info @ ..] if date.contains('-') && time.contains(':') => {
                    (format!("{date} {time}"), info.join(" "))
                }
                [time, info @ ..] => ((*time).to_owned(), info.join(" ")),
                [] => (String::new(), String::new()),
            };
            Some(ProtocolStatus {
                name: (*name).to_owned(),
                kind: SessionKind::of_protocol(name),
                state: (*state).to_owned(),
                since,
                info,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_protocols_is_read_by_column() {
        let text = "BIRD 2.0.12 ready.\n\
            Name       Proto      Table      State  Since         Info\n\
            device1    Device     ---        up     02:52:54.450  \n\
            kernel4    Kernel     master4    up     02:52:54.450  \n\
            Mesh_198_18_0_2 BGP        ---        up     02:53:01.002  Established   \n\
            Global_198_18_0_254_port_1790 BGP ---  start  2026-12-07 02:53:01  Active        Socket: Connection refused\n";
        let rows = parse_protocols(text);
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[0].name, "device1");
        assert_eq!(rows[0].kind, None);
        let mesh = &rows[2];
        assert_eq!(mesh.kind, Some(SessionKind::Mesh));
        assert!(mesh.established());
        let global = &rows[3];
        assert_eq!(global.kind, Some(SessionKind::Global));
        assert_eq!(global.since, "2026-12-07 02:53:01");
        assert_eq!(global.info, "Active Socket: Connection refused");
        assert!(!global.established());
    }
}
