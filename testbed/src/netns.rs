//! Network namespaces: the [`Netns`] guard, which deletes its namespace (and every interface in
//! it) on drop, also when a test panics or a task fails; veth pairs made inside namespaces, so
//! nothing ever appears in the namespace we run in; commands and threads inside a namespace;
//! and names unique to this process.

use std::{
    ffi::OsStr,
    fs::File,
    io,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Output,
    sync::atomic::{AtomicU32, Ordering},
    thread,
};

use crate::{
    cmd::{Cmd, CmdError},
    output::{warn, with_causes},
};

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call, short enough for interface names with a short
/// prefix.
pub fn unique(prefix: &str) -> String {
    let id = NEXT_ID.fetch_add(1, Ordering::SeqCst);
    format!("{prefix}{}x{id}", std::process::id() % 100_000)
}

/// The bind-mounted file of namespace `name`, usable with `nsenter --net=` and `setns`.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// A namespace file that could not be entered.
#[derive(Debug, thiserror::Error)]
pub enum EnterError {
    #[error("cannot open {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot enter {}", path.display())]
    Setns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Moves the calling thread into the network namespace of `path`: the sockets it creates from
/// then on live there. Other threads are not affected.
///
/// # Errors
///
/// The file cannot be opened, or is no network namespace.
pub fn enter_thread(path: &Path) -> Result<(), EnterError> {
    let file = File::open(path).map_err(|source| EnterError::Open {
        path: path.to_owned(),
        source,
    })?;
    // SAFETY: setns on a valid namespace fd; it only affects this thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(EnterError::Setns {
            path: path.to_owned(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// `nsenter --net=NETNS PROGRAM` as root: only the network namespace is
/// switched, so the program shares our bpffs.
pub fn nsenter(netns: &Path, program: &Path) -> Cmd {
    Cmd::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .arg(program)
        .privileged()
}

/// A network namespace created for the lifetime of the guard: `ip netns del`
/// on drop (which also deletes every veth end inside it).
pub struct Netns {
    name: String,
}

impl Netns {
    /// `ip netns add NAME` (as root).
    ///
    /// # Errors
    ///
    /// `ip` failing, for one because the name is taken.
    pub fn create(name: impl Into<String>) -> Result<Self, CmdError> {
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
    pub fn command(&self, program: impl AsRef<OsStr>) -> Cmd {
        Cmd::new("ip")
            .args(["netns", "exec", &self.name])
            .arg(program)
            .privileged()
    }

    /// A veth pair: `ifname` (with `mac`) here, `peer_ifname` (with `peer_mac`) in `peer`,
    /// created here with its peer moved straight into `peer`, so it never appears in the
    /// namespace we run in. `ifname` is set up; the peer is left down.
    ///
    /// # Errors
    ///
    /// `ip` failing.
    pub fn add_veth(
        &self,
        ifname: &str,
        mac: &str,
        peer: &Netns,
        peer_ifname: &str,
        peer_mac: &str,
    ) -> Result<(), CmdError> {
        self.ip(["link", "add", ifname, "address", mac])
            .args(["type", "veth", "peer", "name", peer_ifname])
            .args(["address", peer_mac, "netns", peer.name()])
            .run()?;
        self.ip(["link", "set", ifname, "up"]).run()
    }

    /// For tests: runs `args` inside the namespace and returns its output.
    ///
    /// # Panics
    ///
    /// The command cannot run or fails; the message has its output.
    #[track_caller]
    pub fn exec(&self, args: &[&str]) -> Output {
        let Some((program, rest)) = args.split_first() else {
            panic!("Netns::exec needs a command to run in {}", self.name);
        };
        let cmd = self.command(program).args(rest);
        let output = cmd
            .capture()
            .unwrap_or_else(|e| panic!("{}", with_causes(&e)));
        assert!(
            output.status.success(),
            "`{}` failed: {}{}",
            cmd.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// For tests: runs `args` inside the namespace; whether it succeeded.
    pub fn try_exec(&self, args: &[&str]) -> bool {
        let Some((program, rest)) = args.split_first() else {
            return false;
        };
        self.command(program)
            .args(rest)
            .capture()
            .is_ok_and(|o| o.status.success())
    }

    /// For tests: runs `f` on a thread that has entered this namespace (sockets it creates
    /// live here) and returns its result.
    ///
    /// # Panics
    ///
    /// The namespace cannot be entered, or `f` panics.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path();
        thread::spawn(move || {
            enter_thread(&path).unwrap_or_else(|e| panic!("{}", with_causes(&e)));
            f()
        })
        .join()
        .unwrap_or_else(|_| panic!("a thread in namespace {} panicked", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let del = Cmd::new("ip").args(["netns", "del", &self.name]);
        if let Err(err) = del.privileged().cleanup().run() {
            warn(format!(
                "could not delete network namespace {}: {}",
                self.name,
                with_causes(&err)
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_differ_and_fit_an_interface_name() {
        let a = unique("cew1");
        let b = unique("cew1");
        assert_ne!(a, b);
        assert!(a.len() <= 15, "{a} is too long for an interface name");
    }
}
