//! Shared helpers: echoed command execution, privilege handling, paths,
//! Ctrl-C handling, network namespaces (entering them, from a command or a
//! thread), bpffs, and RAII guards for throwaway resources.

use std::{
    env,
    ffi::{OsStr, OsString},
    fmt::Display,
    fs::File,
    io::{self, BufRead, BufReader, IsTerminal, Read},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

// ---------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------

fn color() -> bool {
    io::stderr().is_terminal() && env::var_os("NO_COLOR").is_none()
}

fn styled(code: &str, text: impl Display) -> String {
    if color() {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

/// Prints a step header.
pub fn step(title: impl Display) {
    eprintln!("\n{}", styled("1;34", format_args!("==> {title}")));
}

/// Prints an informational line.
pub fn info(text: impl Display) {
    eprintln!("{}", styled("32", format_args!("    {text}")));
}

/// Prints an explanation (indented, dimmed).
pub fn explain(text: impl Display) {
    for line in text.to_string().lines() {
        eprintln!("{}", styled("2", format_args!("    {line}")));
    }
}

/// Prints a warning.
pub fn warn(text: impl Display) {
    eprintln!("{}", styled("1;33", format_args!("warning: {text}")));
}

// ---------------------------------------------------------------------------
// Ctrl-C
// ---------------------------------------------------------------------------

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Catches the given signals instead of dying on them, so RAII guards can
/// clean up. Children in our process group still receive a terminal's Ctrl-C
/// themselves (and stop); xtask notices the flag at the next command or poll.
pub fn catch_signals(signals: &[libc::c_int]) {
    for &signal in signals {
        // SAFETY: the handler only performs an atomic store; the sigaction
        // struct is fully initialised (zeroed, then the fields we need).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&raw mut action.sa_mask);
            libc::sigaction(signal, &raw const action, std::ptr::null_mut());
        }
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

pub fn bail_if_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps, but returns an error early when interrupted.
pub fn sleep(duration: Duration) -> Result<()> {
    let deadline = Instant::now() + duration;
    while Instant::now() < deadline {
        bail_if_interrupted()?;
        thread::sleep(Duration::from_millis(50).min(deadline - Instant::now()));
    }
    bail_if_interrupted()
}

// ---------------------------------------------------------------------------
// Privileges
// ---------------------------------------------------------------------------

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Fails with a clear message unless we are root or can become root via sudo
/// (asking for a password only when a terminal is there to type it).
pub fn ensure_can_become_root(what: &str) -> Result<()> {
    if is_root() {
        return Ok(());
    }
    let hint = format!(
        "{what} needs root: run it as root, or install sudo and allow this user to use it \
         (passwordless when there is no terminal, as in CI)"
    );
    if which("sudo").is_none() {
        bail!("{hint} (sudo is not installed)");
    }
    let ok = if io::stdin().is_terminal() {
        info(format!(
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
    if is_root() {
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

/// This machine's host name.
pub fn hostname() -> Result<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for `buf.len()` bytes.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return Err(io::Error::last_os_error()).context("gethostname failed");
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..len]).trim().to_owned();
    if name.is_empty() {
        bail!("this machine has an empty host name; pass --node NAME explicitly");
    }
    Ok(name)
}

// ---------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------

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

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Runs the command as root: directly when we are root, else via `sudo -E`.
    pub fn privileged(mut self) -> Self {
        self.privileged = true;
        self
    }

    /// Does not echo the command (for polling loops).
    pub fn quiet(mut self) -> Self {
        self.quiet = true;
        self
    }

    /// Part of a cleanup: runs even after Ctrl-C.
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

    fn command(&self) -> Result<Command> {
        if !self.cleanup {
            bail_if_interrupted()?;
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

    fn spawn_error(&self, err: io::Error) -> anyhow::Error {
        let program = if self.via_sudo() {
            "sudo".into()
        } else {
            self.program.to_string_lossy()
        };
        let hint = if err.kind() == io::ErrorKind::NotFound {
            format!(" (`{program}` not found; did `cargo xtask setup` run?)")
        } else {
            String::new()
        };
        anyhow::Error::new(err).context(format!("failed to start `{}`{hint}", self.display()))
    }

    fn check(&self, status: ExitStatus) -> Result<()> {
        if status.success() {
            Ok(())
        } else {
            bail!("`{}` failed ({status})", self.display())
        }
    }

    /// Runs with inherited stdio; fails unless it exits successfully.
    pub fn run(&self) -> Result<()> {
        let status = self.status()?;
        self.check(status)
    }

    /// Runs with inherited stdio and returns its exit status, whatever it is.
    pub fn status(&self) -> Result<ExitStatus> {
        self.command()?
            .stdin(Stdio::inherit())
            .status()
            .map_err(|e| self.spawn_error(e))
    }

    /// Runs, capturing stdout and stderr, whatever the exit status.
    pub fn capture(&self) -> Result<Output> {
        self.command()?
            .stdin(Stdio::null())
            .output()
            .map_err(|e| self.spawn_error(e))
    }

    /// Runs, capturing stdout (stderr goes to ours); fails unless it exits
    /// successfully.
    pub fn output(&self) -> Result<String> {
        let output = self
            .command()?
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| self.spawn_error(e))?;
        self.check(output.status)?;
        String::from_utf8(output.stdout)
            .with_context(|| format!("`{}` printed invalid UTF-8", self.display()))
    }

    /// Starts it in the background with stdout and stderr piped; each line
    /// is printed to our stderr with `prefix`.
    pub fn spawn_prefixed(&self, prefix: &str) -> Result<Child> {
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

// ---------------------------------------------------------------------------
// Network namespaces and bpffs
// ---------------------------------------------------------------------------

/// `nsenter --net=NETNS PROGRAM` as root: only the network namespace is
/// switched, so the program shares our bpffs.
pub fn nsenter(netns: &Path, program: &Path) -> Cmd {
    Cmd::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .arg(program)
        .privileged()
}

/// Runs `f` on a new thread that has entered network namespace `netns`:
/// sockets it creates live in that namespace.
pub fn spawn_in_netns<T, F>(netns: &str, f: F) -> thread::JoinHandle<Result<T>>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let path = netns_path(netns);
    thread::spawn(move || {
        let file = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: setns on a valid namespace fd; it only affects this thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("cannot enter {}", path.display()));
        }
        f()
    })
}

/// Waits for a thread's result; `what` names the thread if it panicked.
pub fn join<T>(handle: thread::JoinHandle<Result<T>>, what: &str) -> Result<T> {
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("the {what} thread panicked"))?
}

/// A TCP server's start: binds `addr`, tells `ready`, then accepts one
/// connection, polling every `poll` (so Ctrl-C is noticed) for `timeout` at
/// most. The returned stream is blocking.
pub fn accept_one(
    addr: SocketAddr,
    ready: &mpsc::Sender<()>,
    timeout: Duration,
    poll: Duration,
) -> Result<(TcpStream, SocketAddr)> {
    let listener =
        TcpListener::bind(addr).with_context(|| format!("server: cannot bind {addr}"))?;
    listener.set_nonblocking(true)?;
    let _ = ready.send(());
    let deadline = Instant::now() + timeout;
    let (stream, peer) = loop {
        match listener.accept() {
            Ok(accepted) => break accepted,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    bail!("server: no connection within {timeout:?}");
                }
                sleep(poll)?;
            }
            Err(e) => return Err(e).context("server: accept failed"),
        }
    };
    stream.set_nonblocking(false)?;
    Ok((stream, peer))
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

// ---------------------------------------------------------------------------
// Guards
// ---------------------------------------------------------------------------

/// A network namespace created for the lifetime of the guard: `ip netns del`
/// on drop (which also deletes every veth end inside it).
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn create(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        Cmd::new("ip")
            .args(["netns", "add", &name])
            .privileged()
            .run()?;
        Ok(Self { name })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mounted namespace file, usable with `nsenter --net=` / `setns`.
    pub fn path(&self) -> PathBuf {
        netns_path(&self.name)
    }

    /// `ip -n NAME ARGS...` (as root).
    pub fn ip<I, S>(&self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Cmd::new("ip")
            .args(["-n", &self.name])
            .args(args)
            .privileged()
    }

    /// `ip netns exec NAME PROGRAM` (as root); add arguments to the result.
    pub fn exec(&self, program: impl AsRef<OsStr>) -> Cmd {
        Cmd::new("ip")
            .args(["netns", "exec", &self.name])
            .arg(program)
            .privileged()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let del = Cmd::new("ip").args(["netns", "del", &self.name]);
        if let Err(err) = del.privileged().cleanup().run() {
            warn(format!(
                "could not delete network namespace {}: {err:#}",
                self.name
            ));
        }
    }
}

pub fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// A directory removed (recursively) on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn create(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create directory {}", path.display()))?;
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
    pub fn new(name: impl Into<String>, child: Child, privileged: bool) -> Self {
        Self {
            name: name.into(),
            child,
            privileged,
        }
    }

    /// What the process is, as given to [`ChildGuard::new`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `Some(status)` if the process has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        self.child
            .try_wait()
            .with_context(|| format!("cannot check on {}", self.name))
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
