//! A real etcd for tests (Debian's `etcd-server`): a temporary data directory, 127.0.0.1 only,
//! free ports; killed and removed on drop, also when a test fails. Optionally inside a test's
//! network namespace, so that an agent running there reaches it on its own loopback.

use std::{
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

/// Where Debian installs etcd.
fn binary(name: &str) -> PathBuf {
    let path = PathBuf::from("/usr/bin").join(name);
    if path.exists() {
        return path;
    }
    which(name).unwrap_or_else(|| {
        panic!(
            "{name} is not installed: these tests need a real etcd (Debian packages etcd-server and \
             etcd-client; `cargo xtask setup` installs them)"
        )
    })
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// A free TCP port on 127.0.0.1 (of the root namespace; a new namespace has them all free).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

/// A running etcd.
pub struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`.
    pub client_url: String,
    peer_url: String,
    /// The network namespace it runs in (`None`: the root one).
    netns: Option<PathBuf>,
}

impl Etcd {
    /// Starts etcd in the root namespace.
    pub fn start() -> Self {
        Self::start_in(None)
    }

    /// Starts etcd in `netns` (a `/run/netns/...` path), or the root namespace.
    pub fn start_in(netns: Option<&Path>) -> Self {
        let dir = tempfile::tempdir().expect("etcd temp dir");
        let mut etcd = Self {
            child: None,
            dir,
            client_url: format!("http://127.0.0.1:{}", free_port()),
            peer_url: format!("http://127.0.0.1:{}", free_port()),
            netns: netns.map(Path::to_path_buf),
        };
        etcd.spawn();
        etcd
    }

    /// A command running in etcd's namespace.
    fn command(&self, program: &Path) -> Command {
        match &self.netns {
            Some(netns) => {
                let mut command = Command::new("nsenter");
                command
                    .arg(format!("--net={}", netns.display()))
                    .arg(program);
                command
            }
            None => Command::new(program),
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// What etcd logged.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("etcd log");
        let child = self
            .command(&binary("etcd"))
            .arg("--name=test")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={}", self.client_url))
            .arg(format!("--advertise-client-urls={}", self.client_url))
            .arg(format!("--listen-peer-urls={}", self.peer_url))
            .arg(format!("--initial-advertise-peer-urls={}", self.peer_url))
            .arg(format!("--initial-cluster=test={}", self.peer_url))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("etcd log"))
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let health = self.etcdctl_output(&["endpoint", "health", "--command-timeout=1s"]);
            if health.status.success() {
                return;
            }
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("etcd exited ({status}) at start; log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "etcd at {} not healthy after 30 s; log:\n{}",
                self.client_url,
                self.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills etcd (SIGKILL: as a crash) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same data and ports.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Runs `etcdctl ARGS` against this etcd.
    pub fn etcdctl_output(&self, args: &[&str]) -> Output {
        self.command(&binary("etcdctl"))
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.client_url))
            .args(args)
            .output()
            .expect("run etcdctl")
    }

    /// Runs `etcdctl ARGS` and returns its stdout; panics if it fails.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let out = self.etcdctl_output(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `etcdctl put KEY VALUE`.
    pub fn put(&self, key: &str, value: &str) {
        self.etcdctl(&["put", key, value]);
    }

    /// `etcdctl del KEY`.
    pub fn del(&self, key: &str) {
        self.etcdctl(&["del", key]);
    }

    /// The value of `key`, if any.
    pub fn get(&self, key: &str) -> Option<String> {
        let out = self.etcdctl(&["get", key, "--print-value-only"]);
        let value = out.trim_end_matches('\n');
        (!value.is_empty()).then(|| value.to_owned())
    }

    /// Every key under `prefix`.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.etcdctl(&["get", prefix, "--prefix", "--keys-only"])
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// The store's current revision.
    pub fn revision(&self) -> i64 {
        let out = self.etcdctl(&["get", "/", "-w", "json"]);
        let json: serde_json::Value = serde_json::from_str(&out).expect("etcdctl json");
        json["header"]["revision"].as_i64().expect("revision")
    }

    /// Runs `calico-loader ARGS` against this etcd (in its namespace), with `stdin` as input.
    pub fn loader(&self, args: &[&str], stdin: Option<&str>) -> Output {
        use std::io::Write as _;
        let mut child = self
            .command(Path::new(super::netns::loader_bin()))
            .args(args)
            .env("DATASTORE_TYPE", "etcdv3")
            .env("ETCD_ENDPOINTS", &self.client_url)
            .env("RUST_BACKTRACE", "0")
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
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
