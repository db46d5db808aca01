//! The BGP phase's cluster: a fabric (`testbed::fabric`), an etcd on the fabric's bridge
//! address (`testbed::etcd`), and hosts, each a namespace plugged into the fabric with its own
//! agent (its own node name, pin path and run directory, so its own BIRD) and workloads wired as
//! Calico's CNI plugin wires them. Everything is a guard: agents and their BIRDs, etcd,
//! namespaces and directories go when the cluster does, also on failure or Ctrl-C.
//!
//! Namespaces are `cbgp-<what>-<pid>`; addresses are 198.18.0.0/15 and 2001:db8::/32 only;
//! nothing is added to the root namespace.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use testbed::{
    ChildGuard, Cmd, Netns, TempDir,
    etcd::EtcdServer,
    fabric::{self, FABRIC_BRIDGE_V4, FABRIC_PREFIX_V4, FABRIC_PREFIX_V6, fabric_v4, fabric_v6},
    netns, output, signals,
};

use crate::topology::{Workload, allow_all_profile_yaml};

/// The workloads' pools: IPv4 blocks (/26) of 198.18.0.0/18, IPv6 blocks (/122) of
/// 2001:db8:1::/48. The scale figures' prefixes are outside them.
pub const POOL_V4: &str = "198.18.0.0/18";
pub const POOL_V6: &str = "2001:db8:1::/48";

/// How long sessions, routes and agents have to come up.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A namespace `cbgp-<what>-<pid>` with its loopback up.
pub fn namespace(what: &str) -> Result<Netns> {
    let ns = Netns::create(format!("cbgp-{what}-{}", std::process::id()))?;
    ns.ip(["link", "set", "lo", "up"]).quiet().run()?;
    Ok(ns)
}

/// One host: its namespace (`eth0` on the fabric) and its agent.
pub struct Host {
    // Dropped in this order: the agent (and its BIRD), the workloads, the namespace.
    pub agent: Option<Agent>,
    pub workloads: Vec<Workload>,
    pub ns: Netns,
    /// `host-<i>`.
    pub name: String,
    pub index: u8,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    pub pin_path: PathBuf,
    pub run_dir: PathBuf,
    pub log: PathBuf,
}

impl Host {
    /// `ip ARGS` in the host's namespace, not echoed; its output.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        Ok(self.ns.ip(args).quiet().output()?)
    }

    /// The kernel's IPv4 routes to exactly `prefix`.
    pub fn routes_to(&self, prefix: &str) -> Result<String> {
        self.ip(&["-4", "route", "show", "exact", prefix])
    }

    /// Creates workload `name` with `v4` and `v6` on this host (its namespace and `cali…`
    /// veth); its WorkloadEndpoint is the caller's to write.
    pub fn add_workload(&mut self, name: &str, v4: Ipv4Addr, v6: Ipv6Addr) -> Result<&Workload> {
        let n = self.workloads.len() + 1;
        let workload = Workload {
            name: format!("{}-{name}", self.name),
            netns: namespace(&format!("h{}w{n}", self.index))?,
            host_if: format!("calibgp{}w{n}", self.index),
            mac: format!("ca:fe:00:00:{:02x}:{n:02x}", self.index),
            ipv4: v4,
            ipv6: v6,
        };
        workload.wire(&self.ns)?;
        self.workloads.push(workload);
        self.workloads.last().context("just pushed")
    }

    /// The workload called `name`.
    pub fn workload(&self, name: &str) -> Result<&Workload> {
        let full = format!("{}-{name}", self.name);
        self.workloads
            .iter()
            .find(|w| w.name == full)
            .with_context(|| format!("no workload {full}"))
    }

    /// The pid of the BIRD of this host's run directory, if it runs.
    pub fn bird_pid(&self) -> Option<u32> {
        let pid: u32 = fs::read_to_string(self.run_dir.join("bird.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        (comm.trim_end() == "bird").then_some(pid)
    }

    /// The last lines of the agent's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// A running agent: stopped on drop, then `calico-loader cleanup` (which stops its BIRD and
/// removes the routes BIRD installed, detaches and unpins), then the pins removed.
pub struct Agent {
    child: ChildGuard,
    loader: PathBuf,
    host_ns: PathBuf,
    pin_path: PathBuf,
    run_dir: PathBuf,
}

impl Agent {
    /// The agent's process id (nsenter execs it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the agent exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("the agent {} exited ({status})", self.child.name());
        }
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.child.stop(Duration::from_secs(10));
        let cleanup = netns::nsenter(&self.host_ns, &self.loader)
            .arg("cleanup")
            .arg("--pin-path")
            .arg(&self.pin_path)
            .arg("--run-dir")
            .arg(&self.run_dir)
            .cleanup();
        if let Err(err) = cleanup.capture() {
            output::warn(output::with_causes(&err));
        }
        let _ = Cmd::new("rm")
            .arg("-rf")
            .arg(&self.pin_path)
            .privileged()
            .cleanup()
            .quiet()
            .run();
    }
}

/// The fabric, the hosts and etcd.
pub struct Cluster {
    // Dropped in this order: the hosts (agents, BIRDs, workloads, namespaces), etcd, the
    // fabric, the files.
    pub hosts: Vec<Host>,
    pub etcd: EtcdServer,
    pub fabric: Netns,
    pub dir: TempDir,
    loader: PathBuf,
}

impl Cluster {
    /// `count` hosts on the fabric, etcd on the bridge's address, the pools and the allow-all
    /// profile in it. No agent runs yet.
    pub fn create(loader: &Path, count: u8) -> Result<Self> {
        let pid = std::process::id();
        let dir = TempDir::create(std::env::temp_dir().join(format!("calico-bench-bgp-{pid}")))?;
        let fabric = namespace("fabric")?;
        fabric::create_bridge(&fabric)?;
        let mut hosts = Vec::new();
        for i in 1..=count {
            let ns = namespace(&format!("host{i}"))?;
            fabric::plug(&fabric, &ns, i)?;
            let host_dir = dir.path().join(format!("host-{i}"));
            fs::create_dir_all(&host_dir)
                .with_context(|| format!("cannot create {}", host_dir.display()))?;
            hosts.push(Host {
                agent: None,
                workloads: Vec::new(),
                ns,
                name: format!("host-{i}"),
                index: i,
                v4: fabric_v4(i),
                v6: fabric_v6(i),
                pin_path: PathBuf::from(format!("/sys/fs/bpf/calico-bench-bgp-{pid}-{i}")),
                run_dir: host_dir.join("run"),
                log: host_dir.join("agent.log"),
            });
        }
        let etcd_dir = dir.path().join("etcd");
        fs::create_dir_all(&etcd_dir)
            .with_context(|| format!("cannot create {}", etcd_dir.display()))?;
        output::info(format!(
            "etcd in {} on {FABRIC_BRIDGE_V4}, data in {}",
            fabric.name(),
            etcd_dir.display()
        ));
        let etcd = EtcdServer::start(
            &etcd_dir,
            Some(&fabric.path()),
            IpAddr::V4(FABRIC_BRIDGE_V4),
            None,
        )?;
        let cluster = Self {
            hosts,
            etcd,
            fabric,
            dir,
            loader: loader.to_owned(),
        };
        cluster.apply(&format!(
            "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {{name: pool-v4}}\n\
             spec: {{cidr: {POOL_V4}}}\n---\n\
             apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {{name: pool-v6}}\n\
             spec: {{cidr: '{POOL_V6}'}}\n{}",
            allow_all_profile_yaml()
        ))?;
        Ok(cluster)
    }

    /// Host `i` (from 1).
    pub fn host(&self, i: u8) -> &Host {
        &self.hosts[usize::from(i - 1)]
    }

    pub fn host_mut(&mut self, i: u8) -> &mut Host {
        &mut self.hosts[usize::from(i - 1)]
    }

    /// `calico-loader ARGS` against the cluster's etcd (in the fabric's namespace), with
    /// `stdin`; its stdout, or an error with its stderr.
    pub fn loader(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let mut command = self.etcd.command(&self.loader);
        command
            .args(args)
            .envs(self.etcd.client_env())
            .env("RUST_LOG", "warn")
            .env_remove("NODENAME")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        run_with_stdin(command, stdin).with_context(|| format!("calico-loader {}", args.join(" ")))
    }

    /// `calico-loader apply -f -` of `yaml`.
    pub fn apply(&self, yaml: &str) -> Result<()> {
        self.loader(&["apply", "-f", "-"], Some(yaml)).map(drop)
    }

    /// `calico-loader ipam assign --node NODE --handle HANDLE ARGS`: the addresses assigned.
    pub fn assign(&self, node: &str, handle: &str, args: &[&str]) -> Result<Vec<IpAddr>> {
        let mut all = vec!["ipam", "assign", "--node", node, "--handle", handle];
        all.extend_from_slice(args);
        let out = self.loader(&all, None)?;
        Ok(out
            .lines()
            .filter_map(|l| l.trim().parse::<IpAddr>().ok())
            .collect())
    }

    /// Starts host `i`'s agent on the cluster's etcd, with its fabric addresses, its own pins
    /// and run directory, its log in a file.
    pub fn start_agent(&mut self, i: u8) -> Result<()> {
        let loader = self.loader.clone();
        let env = self.etcd.client_env();
        let host = self.host_mut(i);
        if host.agent.is_some() {
            bail!("{}'s agent runs already", host.name);
        }
        let log = fs::File::create(&host.log)
            .with_context(|| format!("cannot create {}", host.log.display()))?;
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", host.ns.path().display()))
            .arg(&loader)
            .args(["run", "--node", &host.name, "--resync-interval", "2"])
            .arg("--pin-path")
            .arg(&host.pin_path)
            .arg("--run-dir")
            .arg(&host.run_dir)
            .args(["--ip", &host.v4.to_string(), "--ip6", &host.v6.to_string()])
            .envs(env)
            .env("NO_COLOR", "1")
            .env_remove("NODENAME")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        output::info(format!(
            "{}: calico-loader run --node {} --pin-path {} --run-dir {} --ip {} --ip6 {} \
             (etcd; log in {})",
            host.ns.name(),
            host.name,
            host.pin_path.display(),
            host.run_dir.display(),
            host.v4,
            host.v6,
            host.log.display()
        ));
        let child = command.spawn().context("cannot start the agent")?;
        host.agent = Some(Agent {
            child: ChildGuard::new(format!("the agent of {}", host.name), child, true),
            loader,
            host_ns: host.ns.path(),
            pin_path: host.pin_path.clone(),
            run_dir: host.run_dir.clone(),
        });
        Ok(())
    }

    /// Host `i`'s Node as its agent registers it (its fabric addresses), to put back after
    /// it was deleted.
    pub fn node_yaml(&self, i: u8) -> String {
        let host = self.host(i);
        format!(
            "apiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {{name: {}}}\n\
             spec: {{bgp: {{ipv4Address: {}/{FABRIC_PREFIX_V4}, ipv6Address: '{}/{FABRIC_PREFIX_V6}'}}}}\n",
            host.name, host.v4, host.v6
        )
    }

    /// Waits until `condition` holds (polled every `poll`), failing after `timeout` with
    /// `what` and the agents' logs; fails early if an agent exited.
    pub fn wait(
        &mut self,
        what: &str,
        timeout: Duration,
        poll: Duration,
        mut condition: impl FnMut(&Self) -> Result<bool>,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if condition(self)? {
                return Ok(());
            }
            for host in &mut self.hosts {
                if let Some(agent) = &mut host.agent {
                    agent
                        .check_running()
                        .map_err(|e| anyhow::anyhow!("{e}; its log:\n{}", host.log_tail(30)))?;
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {}s waiting for {what}\n{}",
                    timeout.as_secs(),
                    self.logs()
                );
            }
            signals::sleep(poll)?;
        }
    }

    /// The tails of every agent's log, for a failure message.
    pub fn logs(&self) -> String {
        self.hosts
            .iter()
            .map(|h| format!("--- {} agent log (tail):\n{}", h.name, h.log_tail(30)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Runs `command` with `stdin` as its input; its stdout, or an error with its stderr.
fn run_with_stdin(mut command: Command, stdin: Option<&str>) -> Result<String> {
    use std::io::Write as _;
    let mut child = command.spawn().context("cannot start it")?;
    if let Some(mut input) = child.stdin.take()
        && let Some(text) = stdin
    {
        input
            .write_all(text.as_bytes())
            .context("cannot write its input")?;
    }
    let output = child.wait_with_output().context("cannot wait for it")?;
    if !output.status.success() {
        bail!(
            "failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
