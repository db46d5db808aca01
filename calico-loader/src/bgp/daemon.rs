//! Running BIRD: start it on a configuration, or adopt the one already running in a run
//! directory; reload it with a new configuration, ask it about its sessions, tell whether it
//! still runs, stop it or leave it running.
//!
//! Everything of one BIRD lives in its run directory (created with mode 0700): the
//! configuration in force (`bird.conf`, mode 0600: it may hold passwords), the candidate being
//! checked (`bird.conf.new`), the control socket (`bird.ctl`), the pid file (`bird.pid`) and
//! BIRD's messages (`bird.log`). BIRD runs in the foreground (`bird -f -R`; `-R` recovers
//! routes after a graceful restart) in a process group of its own, with its messages
//! (`log stderr all`) going to `bird.log`, which the agent follows into its own log (target
//! `bird`). Nothing ties BIRD to the agent's life: an agent that exits or is killed leaves it
//! running, and the next one adopts it through its socket ([`Bird::adopt`]). It runs in a
//! given network namespace if asked (through `nsenter --net=`, which becomes BIRD itself).
//!
//! A new configuration is checked first (`bird -p -c`); only then does it replace `bird.conf`
//! and BIRD re-read it (`birdc configure`). A configuration BIRD refuses leaves the last good
//! one in force, in the file as in BIRD.

use std::{
    fs,
    io::{self, BufRead as _, BufReader, Read as _, Seek as _, SeekFrom, Write as _},
    os::unix::{
        fs::{DirBuilderExt as _, OpenOptionsExt as _},
        process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use tracing::{debug, info, warn};

use super::{BgpError, bird, model::SessionKind};

/// BIRD's control client.
pub const BIRDC: &str = "birdc";
/// How many of BIRD's last messages an error about its start carries.
const KEPT_MESSAGES: usize = 20;
/// How often BIRD's log file is read for new messages.
const LOG_POLL: Duration = Duration::from_millis(200);
/// How long a stopping BIRD has before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how to run one BIRD.
#[derive(Clone, Debug)]
pub struct BirdSettings {
    /// The run directory: configuration, control socket, pid file, messages.
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
        socket_path(&self.run_dir)
    }

    /// BIRD's messages.
    pub fn log_path(&self) -> PathBuf {
        self.run_dir.join("bird.log")
    }

    /// BIRD's pid file.
    pub fn pid_path(&self) -> PathBuf {
        self.run_dir.join("bird.pid")
    }

    fn candidate_path(&self) -> PathBuf {
        self.run_dir.join("bird.conf.new")
    }
}

/// The control socket of the BIRD whose run directory is `run_dir`.
pub fn socket_path(run_dir: &Path) -> PathBuf {
    run_dir.join("bird.ctl")
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

/// How this agent knows the BIRD process.
enum Process {
    /// Started by this agent: its child.
    Child(Child),
    /// Started by an earlier agent and adopted: known by its pid (its parent is gone).
    Adopted(u32),
}

/// A running BIRD. Dropping it stops BIRD (its kernel routes stay: `persist`), unless it was
/// [released](Bird::release) to outlive the agent.
pub struct Bird {
    settings: BirdSettings,
    process: Process,
    /// The configuration in force.
    current: String,
    /// Where this BIRD's messages start in `bird.log`.
    log_start: u64,
    /// Relays `bird.log` into the agent's log until set.
    relay_stop: Arc<AtomicBool>,
    /// Set by [`Bird::release`]: dropping leaves BIRD running.
    released: bool,
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

/// Whether process `pid` runs BIRD (it exists, is not a zombie, and is called `bird`).
fn is_bird_process(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `<pid> (<comm>) <state> ...`: the name may hold spaces and parentheses.
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
        return false;
    };
    let name = &stat[open + 1..close];
    let state = stat[close + 1..].split_whitespace().next();
    name == bird::BIRD && !matches!(state, Some("Z" | "X"))
}

/// Follows `path` from `offset` on a thread of its own, logging each line BIRD writes (target
/// `bird`), until `stop` is set.
fn relay_log(path: PathBuf, offset: u64, stop: Arc<AtomicBool>) {
    let spawned = thread::Builder::new()
        .name("bird-log".into())
        .spawn(move || {
            let Ok(mut file) = fs::File::open(&path) else {
                return;
            };
            if file.seek(SeekFrom::Start(offset)).is_err() {
                return;
            }
            let mut reader = BufReader::new(file);
            let mut line = String::new();
            loop {
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        thread::sleep(LOG_POLL);
                    }
                    Ok(_) if line.ends_with('\n') => {
                        info!(target: "bird", "{}", line.trim_end());
                        line.clear();
                    }
                    // Part of a line: the rest comes with the next read.
                    Ok(_) => {}
                }
            }
        });
    if let Err(e) = spawned {
        warn!("cannot follow BIRD's messages in its log file: {e}");
    }
}

impl Bird {
    /// Starts BIRD on `config` (checked first) and waits until it answers on its control
    /// socket. A BIRD already answering on the socket is an error: [`Bird::adopt`] it instead.
    pub fn start(settings: BirdSettings, config: &str) -> Result<Bird, BgpError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&settings.run_dir)
            .map_err(|e| io_error("create", &settings.run_dir, &e))?;
        let socket = settings.socket_path();
        if birdc_at(&socket, &["show", "status"]).is_ok() {
            return Err(BgpError::Start {
                message: format!(
                    "a BIRD already answers on {}; adopt it or stop it first",
                    socket.display()
                ),
            });
        }
        install(&settings, config)?;
        if socket.exists() {
            fs::remove_file(&socket).map_err(|e| io_error("remove", &socket, &e))?;
        }
        // A new BIRD's log starts empty: the last one's messages were relayed already.
        let log_path = settings.log_path();
        let log = fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&log_path)
            .map_err(|e| io_error("write", &log_path, &e))?;
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
            .stderr(log)
            // Its own process group: a signal to the agent's group (Ctrl-C) is not BIRD's.
            .process_group(0);
        let program = if settings.netns.is_some() {
            "nsenter"
        } else {
            bird::BIRD
        };
        let child = command.spawn().map_err(|e| BgpError::BirdMissing {
            program: program.to_owned(),
            message: e.to_string(),
        })?;
        let mut bird = Bird {
            settings,
            process: Process::Child(child),
            current: config.to_owned(),
            log_start: 0,
            relay_stop: Arc::new(AtomicBool::new(false)),
            released: false,
        };
        relay_log(bird.settings.log_path(), 0, Arc::clone(&bird.relay_stop));
        bird.wait_ready()?;
        info!(pid = bird.pid(), run_dir = %bird.settings.run_dir.display(), "BIRD started");
        Ok(bird)
    }

    /// The BIRD already running with `settings`' run directory, if one answers on its socket:
    /// started by an earlier agent, it is taken over as it is, with the configuration of
    /// `bird.conf` in force. `None` if no BIRD answers.
    ///
    /// # Errors
    ///
    /// A BIRD answers but its pid file does not name a running BIRD.
    pub fn adopt(settings: BirdSettings) -> Result<Option<Bird>, BgpError> {
        let socket = settings.socket_path();
        if !socket.exists() || birdc_at(&socket, &["show", "status"]).is_err() {
            return Ok(None);
        }
        let pid_path = settings.pid_path();
        let pid = fs::read_to_string(&pid_path)
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok())
            .filter(|&pid| is_bird_process(pid))
            .ok_or_else(|| BgpError::Start {
                message: format!(
                    "a BIRD answers on {}, but {} does not name a running bird process",
                    socket.display(),
                    pid_path.display()
                ),
            })?;
        // The configuration BIRD last accepted; unreadable, the next apply reloads.
        let current = fs::read_to_string(settings.config_path()).unwrap_or_default();
        let log_start = fs::metadata(settings.log_path()).map_or(0, |m| m.len());
        let bird = Bird {
            settings,
            process: Process::Adopted(pid),
            current,
            log_start,
            relay_stop: Arc::new(AtomicBool::new(false)),
            released: false,
        };
        relay_log(
            bird.settings.log_path(),
            log_start,
            Arc::clone(&bird.relay_stop),
        );
        info!(pid, run_dir = %bird.settings.run_dir.display(), "BIRD adopted: it was running already");
        Ok(Some(bird))
    }

    fn wait_ready(&mut self) -> Result<(), BgpError> {
        let deadline = Instant::now() + self.settings.start_timeout;
        loop {
            if !self.is_running() {
                return Err(BgpError::Start {
                    message: format!("bird exited{}", self.last_messages()),
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

    /// BIRD's last messages since this BIRD started or was adopted, for an error.
    fn last_messages(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = fs::File::open(self.settings.log_path())
            && file.seek(SeekFrom::Start(self.log_start)).is_ok()
        {
            let _ = file.read_to_string(&mut text);
        }
        let lines: Vec<&str> = text.lines().collect();
        let kept = &lines[lines.len().saturating_sub(KEPT_MESSAGES)..];
        if kept.is_empty() {
            String::new()
        } else {
            format!("; its last messages:\n{}", kept.join("\n"))
        }
    }

    /// BIRD's process id.
    pub fn pid(&self) -> u32 {
        match &self.process {
            Process::Child(child) => child.id(),
            Process::Adopted(pid) => *pid,
        }
    }

    /// Whether BIRD still runs. A child that exited is reaped here.
    pub fn is_running(&mut self) -> bool {
        match &mut self.process {
            Process::Child(child) => matches!(child.try_wait(), Ok(None)),
            Process::Adopted(pid) => is_bird_process(*pid),
        }
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
        birdc_at(&self.settings.socket_path(), args)
    }

    /// The state of each protocol (`birdc show protocols`).
    pub fn protocols(&self) -> Result<Vec<ProtocolStatus>, BgpError> {
        protocols_at(&self.settings.socket_path())
    }

    /// Stops BIRD (`birdc down`, else killed) and waits for it. Its BGP peers are told, and
    /// withdraw its routes.
    pub fn stop(mut self) {
        self.shut_down();
    }

    /// Leaves BIRD running when this handle goes, for the next agent to adopt.
    pub fn release(mut self) {
        self.released = true;
        info!(pid = self.pid(), "BIRD left running");
    }

    fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !self.is_running() {
                return true;
            }
            thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn shut_down(&mut self) {
        if !self.is_running() {
            return;
        }
        if self.birdc(&["down"]).is_ok() && self.wait_exit(STOP_TIMEOUT) {
            info!(pid = self.pid(), "BIRD stopped");
            return;
        }
        warn!(pid = self.pid(), "BIRD did not stop; killing it");
        match &mut self.process {
            Process::Child(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Process::Adopted(pid) => {
                if let Ok(pid) = i32::try_from(*pid) {
                    // SAFETY: a signal to a process checked to be BIRD just before.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                let _ = self.wait_exit(STOP_TIMEOUT);
            }
        }
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        if !self.released {
            self.shut_down();
        }
        self.relay_stop.store(true, Ordering::Relaxed);
    }
}

/// Runs `birdc -s <socket>` with `args` and returns what it printed.
pub fn birdc_at(socket: &Path, args: &[&str]) -> Result<String, BgpError> {
    let command = args.join(" ");
    let output = Command::new(BIRDC)
        .arg("-s")
        .arg(socket)
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

/// The state of each protocol of the BIRD on `socket` (`birdc show protocols`).
pub fn protocols_at(socket: &Path) -> Result<Vec<ProtocolStatus>, BgpError> {
    Ok(parse_protocols(&birdc_at(socket, &["show", "protocols"])?))
}

/// The rows of `birdc show protocols`: `Name Proto Table State Since Info`, where Since is one
/// or two words (a time, or a date and a time) and Info the rest. Lines that are not such rows
/// (BIRD's greeting, the header, anything shorter than four columns) are skipped.
pub fn parse_protocols(text: &str) -> Vec<ProtocolStatus> {
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
