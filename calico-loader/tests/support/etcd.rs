//! A real etcd for tests (`testbed`'s [`EtcdServer`], as `cargo xtask bench` starts it): a
//! temporary data directory, 127.0.0.1 only, free ports; killed and removed on drop, also when a
//! test fails. Optionally inside a test's
//! network namespace, so that an agent running there reaches it on its own loopback (or, with
//! [`Etcd::start_on`], on an address of that namespace, for agents in other namespaces), and
//! optionally with TLS (certificates made with `openssl` in the temporary directory).

use std::{
    fs,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    process::{Command, Output},
};

use testbed::{
    etcd::{EtcdServer, EtcdTls},
    output::with_causes,
};

/// Where Debian installs openssl.
fn openssl() -> PathBuf {
    let path = PathBuf::from("/usr/bin/openssl");
    if path.exists() {
        return path;
    }
    testbed::privileges::which("openssl").unwrap_or_else(|| {
        panic!("openssl is not installed: the TLS tests make etcd's certificates with it")
    })
}

/// PEM files for etcd's TLS, all signed by one CA made for the test: etcd's certificate is for
/// `IP:127.0.0.1`.
pub type TlsFiles = EtcdTls;

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

/// Makes a CA (EC P-256), and a server and a client certificate signed by it, in `dir`.
fn create_tls_files(dir: &Path) -> TlsFiles {
    let openssl = openssl();
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
    TlsFiles {
        ca_cert: dir.join("ca.crt"),
        server_cert: dir.join("server.crt"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.crt"),
        client_key: dir.join("client.key"),
    }
}

/// A running etcd ([`EtcdServer`]) and its temporary directory.
pub struct Etcd {
    // Dropped first: etcd is killed before its directory goes.
    server: EtcdServer,
    _dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`, or `https://` with TLS.
    pub client_url: String,
}

impl Etcd {
    /// Starts etcd in the root namespace.
    pub fn start() -> Self {
        Self::start_in(None)
    }

    /// Starts etcd in `netns` (a `/run/netns/...` path), or the root namespace.
    pub fn start_in(netns: Option<&Path>) -> Self {
        Self::start_with(netns, false, IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// Starts etcd in `netns`, serving clients on `address` (an address of that namespace, so
    /// that agents in namespaces joined to it reach it).
    pub fn start_on(netns: &Path, address: IpAddr) -> Self {
        Self::start_with(Some(netns), false, address)
    }

    /// Starts etcd in the root namespace with TLS on its client URL (`https://`), requiring
    /// client certificates signed by the test's CA (`--client-cert-auth`). [`Etcd::etcdctl`]
    /// and [`Etcd::loader`] use the client certificate.
    pub fn start_tls() -> Self {
        Self::start_with(None, true, IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    fn start_with(netns: Option<&Path>, tls: bool, address: IpAddr) -> Self {
        let dir = tempfile::tempdir().expect("etcd temp dir");
        let tls = tls.then(|| create_tls_files(dir.path()));
        let server = EtcdServer::start(dir.path(), netns, address, tls)
            .unwrap_or_else(|e| panic!("{}", with_causes(&e)));
        Self {
            client_url: server.client_url.clone(),
            server,
            _dir: dir,
        }
    }

    /// Its TLS files, when it was started with TLS.
    pub fn tls(&self) -> Option<&EtcdTls> {
        self.server.tls.as_deref()
    }

    /// What etcd logged.
    pub fn log(&self) -> String {
        self.server.log()
    }

    /// Kills etcd (SIGKILL: as a crash) and waits for it.
    pub fn kill(&mut self) {
        self.server.kill();
    }

    /// Starts it again on the same data and ports.
    pub fn restart(&mut self) {
        self.server.kill();
        self.respawn();
    }

    /// Starts it again on the same ports with its data wiped: a new, empty store whose
    /// revisions start again from 1.
    pub fn restart_empty(&mut self) {
        self.server
            .kill_and_wipe()
            .unwrap_or_else(|e| panic!("{}", with_causes(&e)));
        self.respawn();
    }

    fn respawn(&mut self) {
        self.server
            .spawn()
            .unwrap_or_else(|e| panic!("{}", with_causes(&e)));
    }

    /// Runs `etcdctl ARGS` against this etcd (with the client certificate, with TLS).
    pub fn etcdctl_output(&self, args: &[&str]) -> Output {
        self.server
            .etcdctl_output(args)
            .unwrap_or_else(|e| panic!("{}", with_causes(&e)))
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
        let mut command = self
            .server
            .command(Path::new(super::topology::loader_bin()));
        command.args(args).env("RUST_BACKTRACE", "0");
        for name in ["ETCD_CA_CERT_FILE", "ETCD_CERT_FILE", "ETCD_KEY_FILE"] {
            command.env_remove(name);
        }
        command.envs(self.server.client_env());
        command
    }
}

/// A three-member etcd cluster ([`testbed::etcd::EtcdCluster`]) on 127.0.0.1 of a test's
/// namespace, and its temporary directory; killed and removed on drop.
pub struct EtcdCluster {
    // Dropped first: the members are killed before their directories go.
    pub cluster: testbed::etcd::EtcdCluster,
    _dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts three members in `netns`.
    pub fn start_in(netns: &Path) -> Self {
        let dir = tempfile::tempdir().expect("etcd temp dir");
        let cluster = testbed::etcd::EtcdCluster::start(dir.path(), Some(netns), 3)
            .unwrap_or_else(|e| panic!("{}", with_causes(&e)));
        Self { cluster, _dir: dir }
    }

    /// Every member's client URL, comma-separated (`--etcd-endpoints`, `ETCD_ENDPOINTS`).
    pub fn endpoints(&self) -> String {
        self.cluster.client_urls().join(",")
    }

    /// The member whose client URL ends in `:port`.
    pub fn member_on_port(&self, port: u16) -> Option<usize> {
        let suffix = format!(":{port}");
        self.cluster
            .members
            .iter()
            .position(|m| m.client_url.ends_with(&suffix))
    }

    /// Kills member `i` (SIGKILL: as a crash).
    pub fn kill(&mut self, i: usize) {
        self.cluster.members[i].kill();
    }

    /// Starts member `i` again on its data, and waits until it is healthy (back in the
    /// cluster, with a leader).
    pub fn restart(&mut self, i: usize) {
        self.cluster.members[i]
            .spawn()
            .unwrap_or_else(|e| panic!("{}", with_causes(&e)));
    }

    /// Starts every member that is down, all at once (a member alone has no quorum), and waits
    /// until each is healthy.
    pub fn restart_all(&mut self) {
        for member in &mut self.cluster.members {
            if !member.running() {
                member
                    .launch()
                    .unwrap_or_else(|e| panic!("{}", with_causes(&e)));
            }
        }
        for member in &mut self.cluster.members {
            member
                .wait_healthy()
                .unwrap_or_else(|e| panic!("{}", with_causes(&e)));
        }
    }

    /// Runs `etcdctl ARGS` against member `i` alone; its output, whatever its status.
    pub fn etcdctl_at(&self, i: usize, args: &[&str]) -> Output {
        self.cluster.members[i]
            .etcdctl_output(args)
            .unwrap_or_else(|e| panic!("{}", with_causes(&e)))
    }

    /// Runs `calico-loader ARGS` against the whole cluster (every member in
    /// `ETCD_ENDPOINTS`), in its namespace, with `stdin` as input.
    pub fn loader(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let member = &self.cluster.members[0];
        let mut command = member.command(Path::new(super::topology::loader_bin()));
        command.args(args).env("RUST_BACKTRACE", "0");
        for name in [
            "ETCD_CA_CERT_FILE",
            "ETCD_CERT_FILE",
            "ETCD_KEY_FILE",
            "NODENAME",
        ] {
            command.env_remove(name);
        }
        command.envs(self.cluster.client_env());
        super::cli::run_with_stdin(command, stdin)
    }

    /// What every member logged, for a failure message.
    pub fn logs(&self) -> String {
        self.cluster
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| format!("member {i}:\n{}", super::cli::tail(&m.log(), 15)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}
