//! A cluster of hosts for the routing tests: each host a network namespace with its own agent,
//! pin path and run directory (so its own BIRD), joined by a fabric (`testbed::fabric`: a bridge
//! in a namespace of its own) on 198.19.0.0/24 and 2001:db8:0:ff::/64, all sharing one etcd that runs in the
//! fabric's namespace. Every part is a guard: agents (and their BIRDs), etcd, namespaces and
//! directories go when the cluster does, also when a test fails. Routers other than the hosts
//! (a top-of-rack router, `gobgp.rs`) plug into the same fabric.
//!
//! Only 198.18.0.0/15 and 2001:db8::/32 are used, and nothing is added to the root namespace.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    process::{Command, Output},
    time::Duration,
};

use super::{
    etcd::Etcd,
    topology::{
        Agent, Netns, Workload, kernel_forwarded, loader_bin, netns, require_root, unique, wait_for,
    },
};

pub use testbed::fabric::{FABRIC_BRIDGE_V4, fabric_v4, fabric_v6};
use testbed::{fabric, output::with_causes};

/// One host: its namespace (`eth0` on the fabric), and what its agent keeps across restarts.
pub struct Host {
    /// The node's name: `host-<i>`.
    pub name: String,
    pub index: u8,
    pub ns: Netns,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    pub pin_path: PathBuf,
    /// The agent's run directory (BIRD's files).
    pub run_dir: PathBuf,
    /// The agent, while one runs.
    pub agent: Option<Agent>,
    /// Workloads attached to the host (dropped before the host's namespace).
    pub workloads: Vec<Workload>,
    _dirs: tempfile::TempDir,
}

impl Host {
    /// `ip ARGS` in the host's namespace; its output.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["ip"];
        full.extend_from_slice(args);
        String::from_utf8_lossy(&self.ns.exec(&full).stdout).into_owned()
    }

    /// The kernel's routes to exactly `prefix`.
    pub fn routes_to(&self, prefix: &str) -> String {
        let family = if prefix.contains(':') { "-6" } else { "-4" };
        self.ip(&[family, "route", "show", "exact", prefix])
    }

    /// The routes BIRD installed here (both families).
    pub fn bird_routes(&self) -> String {
        self.ip(&["-4", "route", "show", "proto", "bird"])
            + &self.ip(&["-6", "route", "show", "proto", "bird"])
    }

    /// Creates workload `i` on this host with addresses `v4` and `v6` (its namespace and
    /// `cali...` veth, configured as Calico's CNI plugin does); its WorkloadEndpoint is the
    /// test's to write ([`Workload::endpoint_yaml`]).
    pub fn add_workload(&mut self, i: u8, v4: Ipv4Addr, v6: Ipv6Addr) -> &Workload {
        let workload = Workload::create(&self.ns, i, v4, v6);
        self.workloads.push(workload);
        self.workloads.last().expect("just pushed")
    }

    /// Turns on IPv4 and IPv6 forwarding in the host's namespace (a new namespace has it
    /// off), so that its kernel forwards by the routes BIRD installed.
    pub fn enable_forwarding(&self) {
        enable_forwarding(&self.ns);
    }

    /// How many packets the host's kernel has forwarded itself: IPv4 `ForwDatagrams` and IPv6
    /// `Ip6OutForwDatagrams`.
    pub fn kernel_forwarded(&self) -> (u64, u64) {
        kernel_forwarded(&self.ns)
    }

    /// The agent (panics if none runs).
    pub fn agent(&self) -> &Agent {
        self.agent.as_ref().expect("the host's agent runs")
    }

    /// The agent's log, or nothing.
    pub fn log(&self) -> String {
        self.agent.as_ref().map(Agent::log).unwrap_or_default()
    }

    /// Starts the agent on etcd at `etcd_url`, with `env` (`IP`, `IP6`, `AS`) and `args`.
    pub fn start_agent(&mut self, etcd_url: &str, env: &[(&str, &str)], args: &[&str]) {
        assert!(self.agent.is_none(), "{}'s agent runs already", self.name);
        let mut all = vec!["--datastore-type", "etcdv3", "--etcd-endpoints", etcd_url];
        all.extend_from_slice(args);
        self.agent = Some(Agent::spawn(
            &self.ns.path(),
            &self.name,
            self.pin_path.clone(),
            self.run_dir.clone(),
            &all,
            env,
        ));
    }

    /// The pid BIRD's pid file names, if BIRD runs (the process exists and is `bird`).
    pub fn bird_pid(&self) -> Option<u32> {
        let pid: u32 = fs::read_to_string(self.run_dir.join("bird.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        (comm.trim_end() == "bird").then_some(pid)
    }

    /// `birdc ARGS` on the host's BIRD (its run directory's socket): what it printed.
    pub fn birdc(&self, args: &[&str]) -> String {
        let output = Command::new("birdc")
            .arg("-s")
            .arg(self.run_dir.join("bird.ctl"))
            .args(args)
            .output()
            .expect("run birdc (Debian package bird2)");
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr)
    }

    /// `calico-loader node status --run-dir RUN_DIR`.
    pub fn node_status(&self) -> Output {
        Command::new(loader_bin())
            .args(["node", "status", "--run-dir"])
            .arg(&self.run_dir)
            .output()
            .expect("run node status")
    }

    /// The rows of `node status` (lines starting with `| ` below a header), as their cells.
    pub fn status_rows(&self) -> Vec<Vec<String>> {
        let output = self.node_status();
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("| PEER ADDRESS"))
            .map(|l| {
                l.trim_matches('|')
                    .split(" | ")
                    .map(|cell| cell.trim().to_owned())
                    .collect()
            })
            .collect()
    }

    /// Whether `node status` lists exactly `peers`, each established.
    pub fn sessions_established(&self, peers: &[IpAddr]) -> bool {
        let rows = self.status_rows();
        rows.len() == peers.len()
            && peers.iter().all(|peer| {
                let peer = peer.to_string();
                rows.iter().any(|r| {
                    r.first() == Some(&peer)
                        && r.get(4).is_some_and(|i| i.starts_with("Established"))
                })
            })
    }
}

impl Drop for Host {
    /// The agent goes first (its clean-up stops BIRD, inside the namespace), then the
    /// workloads, then the namespace.
    fn drop(&mut self) {
        self.agent = None;
        // A BIRD no agent took over (the test failed between an agent's end and the next).
        if let Some(pid) = self.bird_pid() {
            // SAFETY: a signal to the BIRD of this host's run directory.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        self.workloads.clear();
    }
}

/// The fabric, the hosts and etcd.
pub struct Cluster {
    // Dropped in this order: the agents (and their BIRDs) first, then etcd, then the
    // namespaces.
    pub hosts: Vec<Host>,
    pub etcd: Etcd,
    pub fabric: Netns,
}

impl Cluster {
    /// `count` hosts on the fabric, and etcd on the bridge's address. No agent runs yet.
    pub fn new(count: u8) -> Self {
        require_root();
        let fabric = netns("cfab");
        fabric::create_bridge(&fabric).unwrap_or_else(|e| panic!("{}", with_causes(&e)));
        let mut hosts = Vec::new();
        for i in 1..=count {
            let ns = netns(&format!("chost{i}"));
            plug(&fabric, &ns, i);
            let (v4, v6) = (fabric_v4(i), fabric_v6(i));
            let dirs = tempfile::tempdir().expect("host dir");
            hosts.push(Host {
                name: format!("host-{i}"),
                index: i,
                ns,
                v4,
                v6,
                pin_path: PathBuf::from("/sys/fs/bpf").join(unique("calico-test-")),
                run_dir: dirs.path().join("run"),
                agent: None,
                workloads: Vec::new(),
                _dirs: dirs,
            });
        }
        let etcd = Etcd::start_on(&fabric.path(), IpAddr::V4(FABRIC_BRIDGE_V4));
        Self {
            hosts,
            etcd,
            fabric,
        }
    }

    /// Plugs `ns` into the fabric as member `i` (not a host's index): its `eth0` on the bridge,
    /// with addresses [`fabric_v4`]`(i)` and [`fabric_v6`]`(i)`. For routers beside the hosts.
    pub fn plug(&self, ns: &Netns, i: u8) {
        assert!(
            self.hosts.iter().all(|h| h.index != i),
            "fabric address {i} belongs to a host"
        );
        plug(&self.fabric, ns, i);
    }

    /// Host `i` (from 1).
    pub fn host(&self, i: u8) -> &Host {
        &self.hosts[usize::from(i - 1)]
    }

    pub fn host_mut(&mut self, i: u8) -> &mut Host {
        &mut self.hosts[usize::from(i - 1)]
    }

    /// Runs `calico-loader ARGS` against the cluster's etcd; panics if it fails.
    pub fn loader(&self, args: &[&str], stdin: Option<&str>) -> String {
        let output = self.etcd.loader(args, stdin);
        assert!(
            output.status.success(),
            "calico-loader {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `calico-loader apply -f -` of `yaml`.
    pub fn apply(&self, yaml: &str) {
        self.loader(&["apply", "-f", "-"], Some(yaml));
    }

    /// Waits until every host's agent has written its Node.
    pub fn wait_nodes(&self, timeout: Duration) {
        for host in &self.hosts {
            wait_for(&format!("{}'s Node", host.name), timeout, || {
                self.etcd
                    .loader(&["get", "node", &host.name], None)
                    .status
                    .success()
            });
        }
    }

    /// The logs of every agent, for a failure message.
    pub fn logs(&self) -> String {
        self.hosts
            .iter()
            .map(|h| format!("--- {} agent log:\n{}", h.name, tail(&h.log(), 40)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Joins `ns` to the fabric's bridge as member `i` ([`fabric::plug`]).
fn plug(fabric: &Netns, ns: &Netns, i: u8) {
    fabric::plug(fabric, ns, i).unwrap_or_else(|e| panic!("{}", with_causes(&e)));
}

/// Turns on IPv4 and IPv6 forwarding in `ns` (never called on the root namespace: every
/// namespace here is one a test created).
pub fn enable_forwarding(ns: &Netns) {
    fabric::enable_forwarding(ns).unwrap_or_else(|e| panic!("{}", with_causes(&e)));
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
