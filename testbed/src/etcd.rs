//! A throwaway etcd (Debian's `etcd-server`): a data directory of the caller's, free ports,
//! clients served on one address (127.0.0.1, or an address of a namespace the caller made, so
//! that agents in namespaces joined to it reach it), optionally with TLS on its client URL.
//! Killed on drop. The integration tests and `cargo xtask bench` start it the same way.
//!
//! [`EtcdCluster`] runs several members of one cluster the same way (on 127.0.0.1 of one
//! namespace, each with its own ports and data), each of which can be killed and started again.

use std::{
    fs, io,
    net::{IpAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::privileges::which;

/// Why etcd is not serving.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error(
        "{0} is not installed: a real etcd is needed (Debian packages etcd-server and \
         etcd-client; `cargo xtask setup` installs them)"
    )]
    Missing(&'static str),
    #[error("cannot {what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("etcd exited ({status}) at start; its log:\n{log}")]
    Exited { status: String, log: String },
    #[error("etcd at {url} not healthy after {}s; its log:\n{log}", START_TIMEOUT.as_secs())]
    NotHealthy { url: String, log: String },
}

/// How long etcd may take to become healthy.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The PEM files of etcd's TLS, all signed by one CA: etcd then requires client certificates.
#[derive(Clone, Debug)]
pub struct EtcdTls {
    /// The CA's certificate: what clients check etcd's certificate with, and what etcd checks
    /// client certificates with.
    pub ca_cert: PathBuf,
    /// etcd's certificate and key.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// A client certificate (extended key usage `clientAuth`) and its key.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// Where etcd and its clients come from.
fn program(name: &'static str) -> Result<PathBuf, EtcdError> {
    let debian = Path::new("/usr/bin").join(name);
    if debian.is_file() {
        return Ok(debian);
    }
    which(name).ok_or(EtcdError::Missing(name))
}

/// A free TCP port on 127.0.0.1 (of the namespace we run in; a new namespace has them all
/// free).
fn free_port() -> Result<u16, EtcdError> {
    let io = |source| EtcdError::Io {
        what: "find a free port".into(),
        source,
    };
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io)?;
    Ok(listener.local_addr().map_err(io)?.port())
}

/// A running etcd: its data in `<dir>/data`, its log in `<dir>/etcd.log`.
pub struct EtcdServer {
    child: Option<Child>,
    dir: PathBuf,
    /// `http://HOST:PORT`, or `https://` with TLS.
    pub client_url: String,
    peer_url: String,
    /// Its member name and the cluster it was started in.
    member: Box<Member>,
    /// The network namespace it runs in (`None`: ours).
    netns: Option<PathBuf>,
    /// With TLS: the certificates.
    pub tls: Option<Box<EtcdTls>>,
}

/// A member's name and the members of the cluster it was started in (`name=peer-url,...`).
struct Member {
    name: String,
    initial_cluster: String,
}

impl EtcdServer {
    /// Starts etcd with its files in `dir` (which must exist), in `netns` (a `/run/netns/...`
    /// path) or ours, serving clients on `address`, with `tls` if given, and waits until it is
    /// healthy.
    ///
    /// # Errors
    ///
    /// etcd is not installed, cannot start, or does not become healthy.
    pub fn start(
        dir: &Path,
        netns: Option<&Path>,
        address: IpAddr,
        tls: Option<EtcdTls>,
    ) -> Result<Self, EtcdError> {
        let host = match address {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("[{a}]"),
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let peer_url = format!("http://127.0.0.1:{}", free_port()?);
        let mut etcd = Self {
            child: None,
            dir: dir.to_owned(),
            client_url: format!("{scheme}://{host}:{}", free_port()?),
            member: Box::new(Member {
                name: "test".into(),
                initial_cluster: format!("test={peer_url}"),
            }),
            peer_url,
            netns: netns.map(Path::to_path_buf),
            tls: tls.map(Box::new),
        };
        etcd.spawn()?;
        Ok(etcd)
    }

    /// A command running `program` in etcd's namespace.
    pub fn command(&self, program: &Path) -> Command {
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
        self.dir.join("etcd.log")
    }

    /// What etcd logged.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts etcd (on the same data and ports as before, if it ran), and waits until it is
    /// healthy. A member of a cluster is healthy once it has a leader: when the other members
    /// are down too, start them all with [`EtcdServer::launch`] first.
    ///
    /// # Errors
    ///
    /// As [`EtcdServer::start`].
    pub fn spawn(&mut self) -> Result<(), EtcdError> {
        self.launch()?;
        self.wait_healthy()
    }

    /// Starts the etcd process (on the same data and ports as before, if it ran), without
    /// waiting for it.
    ///
    /// # Errors
    ///
    /// etcd is not installed or cannot be started.
    pub fn launch(&mut self) -> Result<(), EtcdError> {
        let io = |what: &str| {
            let what = what.to_owned();
            move |source| EtcdError::Io { what, source }
        };
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(io("open etcd's log"))?;
        let mut command = self.command(&program("etcd")?);
        if let Some(tls) = &self.tls {
            command
                .arg(format!("--cert-file={}", tls.server_cert.display()))
                .arg(format!("--key-file={}", tls.server_key.display()))
                .arg("--client-cert-auth")
                .arg(format!("--trusted-ca-file={}", tls.ca_cert.display()));
        }
        let child = command
            .arg(format!("--name={}", self.member.name))
            .arg(format!("--data-dir={}", self.dir.join("data").display()))
            .arg(format!("--listen-client-urls={}", self.client_url))
            .arg(format!("--advertise-client-urls={}", self.client_url))
            .arg(format!("--listen-peer-urls={}", self.peer_url))
            .arg(format!("--initial-advertise-peer-urls={}", self.peer_url))
            .arg(format!("--initial-cluster={}", self.member.initial_cluster))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io("open etcd's log"))?)
            .stderr(log)
            .spawn()
            .map_err(io("start etcd"))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until etcd answers `endpoint health` (it has a leader), or fails with its log.
    ///
    /// # Errors
    ///
    /// etcd exited, or is not healthy within the start timeout.
    pub fn wait_healthy(&mut self) -> Result<(), EtcdError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let health = self.etcdctl_output(&["endpoint", "health", "--command-timeout=1s"])?;
            if health.status.success() {
                return Ok(());
            }
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(EtcdError::Exited {
                    status: status.to_string(),
                    log: self.log(),
                });
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(EtcdError::NotHealthy {
                    url: self.client_url.clone(),
                    log: self.log(),
                });
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether its process runs (it was started and not killed).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills etcd (SIGKILL: as a crash) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills etcd and removes its data: the next [`EtcdServer::spawn`] starts an empty store.
    ///
    /// # Errors
    ///
    /// The data cannot be removed.
    pub fn kill_and_wipe(&mut self) -> Result<(), EtcdError> {
        self.kill();
        let data = self.dir.join("data");
        if data.exists() {
            fs::remove_dir_all(&data).map_err(|source| EtcdError::Io {
                what: format!("remove {}", data.display()),
                source,
            })?;
        }
        Ok(())
    }

    /// The command `etcdctl ARGS` against this etcd (with the client certificate, with TLS),
    /// in its namespace, not yet started.
    ///
    /// # Errors
    ///
    /// etcdctl is not installed.
    pub fn etcdctl(&self, args: &[&str]) -> Result<Command, EtcdError> {
        let mut command = self.command(&program("etcdctl")?);
        command
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.client_url));
        if let Some(tls) = &self.tls {
            command
                .arg(format!("--cacert={}", tls.ca_cert.display()))
                .arg(format!("--cert={}", tls.client_cert.display()))
                .arg(format!("--key={}", tls.client_key.display()));
        }
        command.args(args);
        Ok(command)
    }

    /// Runs `etcdctl ARGS`; its output, whatever its exit status.
    ///
    /// # Errors
    ///
    /// etcdctl is not installed or cannot run.
    pub fn etcdctl_output(&self, args: &[&str]) -> Result<Output, EtcdError> {
        self.etcdctl(args)?
            .output()
            .map_err(|source| EtcdError::Io {
                what: "run etcdctl".into(),
                source,
            })
    }

    /// The environment `calico-loader` reads to use this etcd: `DATASTORE_TYPE`,
    /// `ETCD_ENDPOINTS`, and with TLS `ETCD_CA_CERT_FILE`, `ETCD_CERT_FILE`, `ETCD_KEY_FILE`.
    pub fn client_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("DATASTORE_TYPE", "etcdv3".to_owned()),
            ("ETCD_ENDPOINTS", self.client_url.clone()),
        ];
        if let Some(tls) = &self.tls {
            for (name, path) in [
                ("ETCD_CA_CERT_FILE", &tls.ca_cert),
                ("ETCD_CERT_FILE", &tls.client_cert),
                ("ETCD_KEY_FILE", &tls.client_key),
            ] {
                env.push((name, path.display().to_string()));
            }
        }
        env
    }
}

/// Several etcd members of one cluster, in one namespace (or ours), on 127.0.0.1, each with its
/// own data under the caller's directory and its own ports; killed on drop.
pub struct EtcdCluster {
    pub members: Vec<EtcdServer>,
}

impl EtcdCluster {
    /// Starts `size` members (named `m0`, `m1`, ...) with their files in `dir/m<i>` (`dir` must
    /// exist), in `netns` or ours, and waits until each is healthy.
    ///
    /// # Errors
    ///
    /// As [`EtcdServer::start`].
    pub fn start(dir: &Path, netns: Option<&Path>, size: usize) -> Result<Self, EtcdError> {
        // Each port is held until all are chosen, so that no two members get the same one.
        let io = |source| EtcdError::Io {
            what: "find free ports".into(),
            source,
        };
        let held: Vec<TcpListener> = (0..2 * size)
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<Result<_, _>>()
            .map_err(io)?;
        let ports: Vec<u16> = held
            .iter()
            .map(|l| l.local_addr().map(|a| a.port()))
            .collect::<Result<_, _>>()
            .map_err(io)?;
        drop(held);
        let mut members = Vec::new();
        for i in 0..size {
            let member_dir = dir.join(format!("m{i}"));
            fs::create_dir_all(&member_dir).map_err(|source| EtcdError::Io {
                what: format!("create {}", member_dir.display()),
                source,
            })?;
            members.push(EtcdServer {
                child: None,
                dir: member_dir,
                client_url: format!("http://127.0.0.1:{}", ports[2 * i]),
                peer_url: format!("http://127.0.0.1:{}", ports[2 * i + 1]),
                member: Box::new(Member {
                    name: format!("m{i}"),
                    initial_cluster: String::new(),
                }),
                netns: netns.map(Path::to_path_buf),
                tls: None,
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.member.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self { members };
        for member in &mut cluster.members {
            member.member.initial_cluster.clone_from(&initial_cluster);
            member.launch()?;
        }
        for member in &mut cluster.members {
            member.wait_healthy()?;
        }
        Ok(cluster)
    }

    /// Every member's client URL, in order.
    pub fn client_urls(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// The environment `calico-loader` reads to use this cluster: `DATASTORE_TYPE` and every
    /// member in `ETCD_ENDPOINTS`.
    pub fn client_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("DATASTORE_TYPE", "etcdv3".to_owned()),
            ("ETCD_ENDPOINTS", self.client_urls().join(",")),
        ]
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}
