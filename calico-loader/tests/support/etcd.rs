//! A real etcd for tests (Debian's `etcd-server`): a temporary data directory, 127.0.0.1 only,
//! free ports; killed and removed on drop, also when a test fails. Optionally inside a test's
//! network namespace, so that an agent running there reaches it on its own loopback (or, with
//! [`Etcd::start_on`], on an address of that namespace, for agents in other namespaces), and
//! optionally with TLS (certificates made with `openssl` in the temporary directory).

use std::{
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

/// Where Debian installs etcd, etcdctl and openssl.
fn binary(name: &str) -> PathBuf {
    let path = PathBuf::from("/usr/bin").join(name);
    if path.exists() {
        return path;
    }
    which(name).unwrap_or_else(|| {
        panic!(
            "{name} is not installed: these tests need a real etcd, and openssl for its TLS \
             certificates (Debian packages etcd-server, etcd-client and openssl; `cargo xtask \
             setup` installs them)"
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

/// PEM files for etcd's TLS, all signed by one CA made for the test.
pub struct TlsFiles {
    /// The CA's certificate: what clients check etcd's certificate with, and what etcd checks
    /// client certificates with.
    pub ca_cert: PathBuf,
    /// etcd's certificate, for `IP:127.0.0.1`, and its key.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// A client certificate (extended key usage `clientAuth`) and its key.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// The `openssl` configuration for the test certificates: no dependence on the system's.
const OPENSSL_CONFIG: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = calico-loader-test
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = IP:127.0.0.1
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
";

impl TlsFiles {
    /// Makes a CA (EC P-256), and a server and a client certificate signed by it, in `dir`.
    fn create(dir: &Path) -> Self {
        let openssl = binary("openssl");
        let config = dir.join("openssl.cnf");
        fs::write(&config, OPENSSL_CONFIG).expect("write openssl.cnf");
        let run = |args: &[&str]| {
            let out = Command::new(&openssl)
                .current_dir(dir)
                .args(args)
                .output()
                .expect("run openssl");
            assert!(
                out.status.success(),
                "openssl {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let new_key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec![
            "req",
            "-x509",
            "-new",
            "-config",
            "openssl.cnf",
            "-extensions",
            "ca",
        ];
        ca.extend(new_key);
        ca.extend(["-subj", "/CN=calico-loader test CA"]);
        ca.extend(["-keyout", "ca.key", "-out", "ca.crt", "-days", "2"]);
        run(&ca);
        for (name, serial) in [("server", "2"), ("client", "3")] {
            let (subject, key, csr, cert) = (
                format!("/CN=etcd test {name}"),
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.crt"),
            );
            let mut request = vec!["req", "-new", "-config", "openssl.cnf"];
            request.extend(new_key);
            request.extend(["-subj", subject.as_str()]);
            request.extend(["-keyout", key.as_str(), "-out", csr.as_str()]);
            run(&request);
            run(&[
                "x509",
                "-req",
                "-in",
                csr.as_str(),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-set_serial",
                serial,
                "-days",
                "2",
                "-extfile",
                "openssl.cnf",
                "-extensions",
                name,
                "-out",
                cert.as_str(),
            ]);
        }
        Self {
            ca_cert: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
        }
    }
}

/// A running etcd.
pub struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`, or `https://` with TLS.
    pub client_url: String,
    peer_url: String,
    /// The network namespace it runs in (`None`: the root one).
    netns: Option<PathBuf>,
    /// With TLS: the certificates; etcd then requires a client certificate.
    pub tls: Option<Box<TlsFiles>>,
}

impl Etcd {
    /// Starts etcd in the root namespace.
    pub fn start() -> Self {
        Self::start_in(None)
    }

    /// Starts etcd in `netns` (a `/run/netns/...` path), or the root namespace.
    pub fn start_in(netns: Option<&Path>) -> Self {
        Self::start_with(netns, false, "127.0.0.1")
    }

    /// Starts etcd in `netns`, serving clients on `address` (an address of that namespace, so
    /// that agents in namespaces joined to it reach it).
    pub fn start_on(netns: &Path, address: std::net::IpAddr) -> Self {
        let host = match address {
            std::net::IpAddr::V4(a) => a.to_string(),
            std::net::IpAddr::V6(a) => format!("[{a}]"),
        };
        Self::start_with(Some(netns), false, &host)
    }

    /// Starts etcd in the root namespace with TLS on its client URL (`https://`), requiring
    /// client certificates signed by the test's CA (`--client-cert-auth`). [`Etcd::etcdctl`]
    /// and [`Etcd::loader`] use the client certificate.
    pub fn start_tls() -> Self {
        Self::start_with(None, true, "127.0.0.1")
    }

    fn start_with(netns: Option<&Path>, tls: bool, host: &str) -> Self {
        let dir = tempfile::tempdir().expect("etcd temp dir");
        let tls = tls.then(|| Box::new(TlsFiles::create(dir.path())));
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut etcd = Self {
            child: None,
            dir,
            client_url: format!("{scheme}://{host}:{}", free_port()),
            peer_url: format!("http://127.0.0.1:{}", free_port()),
            netns: netns.map(Path::to_path_buf),
            tls,
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
        let mut command = self.command(&binary("etcd"));
        if let Some(tls) = &self.tls {
            command
                .arg(format!("--cert-file={}", tls.server_cert.display()))
                .arg(format!("--key-file={}", tls.server_key.display()))
                .arg("--client-cert-auth")
                .arg(format!("--trusted-ca-file={}", tls.ca_cert.display()));
        }
        let child = command
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

    /// Starts it again on the same ports with its data wiped: a new, empty store whose
    /// revisions start again from 1.
    pub fn restart_empty(&mut self) {
        self.kill();
        let data = self.dir.path().join("data");
        if data.exists() {
            fs::remove_dir_all(&data).expect("remove etcd data");
        }
        self.spawn();
    }

    /// Runs `etcdctl ARGS` against this etcd (with the client certificate, with TLS).
    pub fn etcdctl_output(&self, args: &[&str]) -> Output {
        let mut command = self.command(&binary("etcdctl"));
        command
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.client_url));
        if let Some(tls) = &self.tls {
            command
                .arg(format!("--cacert={}", tls.ca_cert.display()))
                .arg(format!("--cert={}", tls.client_cert.display()))
                .arg(format!("--key={}", tls.client_key.display()));
        }
        command.args(args).output().expect("run etcdctl")
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
    /// With TLS, `ETCD_CA_CERT_FILE`, `ETCD_CERT_FILE` and `ETCD_KEY_FILE` name the CA and the
    /// client certificate.
    pub fn loader(&self, args: &[&str], stdin: Option<&str>) -> Output {
        self.loader_with(args, stdin, |_| {})
    }

    /// The same, with the command adjusted by `adjust` first (to change its environment).
    pub fn loader_with(
        &self,
        args: &[&str],
        stdin: Option<&str>,
        adjust: impl FnOnce(&mut Command),
    ) -> Output {
        let mut command = self.loader_command(args);
        adjust(&mut command);
        super::cli::run_with_stdin(command, stdin)
    }

    /// The command `calico-loader ARGS` against this etcd (in its namespace), not yet started.
    pub fn loader_command(&self, args: &[&str]) -> Command {
        let mut command = self.command(Path::new(super::topology::loader_bin()));
        command
            .args(args)
            .env("DATASTORE_TYPE", "etcdv3")
            .env("ETCD_ENDPOINTS", &self.client_url)
            .env("RUST_BACKTRACE", "0");
        for name in ["ETCD_CA_CERT_FILE", "ETCD_CERT_FILE", "ETCD_KEY_FILE"] {
            command.env_remove(name);
        }
        if let Some(tls) = &self.tls {
            command
                .env("ETCD_CA_CERT_FILE", &tls.ca_cert)
                .env("ETCD_CERT_FILE", &tls.client_cert)
                .env("ETCD_KEY_FILE", &tls.client_key);
        }
        command
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
