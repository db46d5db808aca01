//! The integration tests' topologies: a host namespace with workloads wired to it the way
//! Calico's CNI plugin wires them, a datastore directory and the agent, each a guard that
//! removes what it made (namespaces, links, pins, processes), also when a test fails. The
//! namespaces themselves are `testbed`'s, which `cargo xtask demo|bench` use too.
//!
//! Only 198.18.0.0/15 and 2001:db8::/32 are used, and nothing is added to the root namespace:
//! the veth pairs are created directly inside the test's own namespaces.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use testbed::output::with_causes;
pub use testbed::{Netns, netns::unique, privileges::require_root};

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A namespace for a test, with its loopback up.
///
/// # Panics
///
/// `ip` failing.
pub fn netns(prefix: &str) -> Netns {
    let ns = Netns::create(unique(prefix)).unwrap_or_else(|e| panic!("{}", with_causes(&e)));
    ns.exec(&["ip", "link", "set", "lo", "up"]);
    ns
}

/// Polls `condition` until it holds, or panics with `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// A workload: its own namespace, and a veth whose host side sits in the host namespace.
pub struct Workload {
    pub ns: Netns,
    pub host_ifname: String,
    pub mac: [u8; 6],
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    pub index: u8,
}

impl Workload {
    /// Workload `i` of `host`, with addresses `v4` and `v6`: its namespace, and a veth whose
    /// host side (`cali...`) is in `host`, configured as Calico's CNI plugin does.
    pub fn create(host: &Netns, i: u8, v4: Ipv4Addr, v6: Ipv6Addr) -> Self {
        let ns = netns(&format!("cew{i}"));
        let host_ifname = format!(
            "cali{:08x}{i:02}",
            std::process::id() ^ u32::from(i) ^ NEXT_ID.fetch_add(1, Ordering::SeqCst)
        );
        let host_ifname: String = host_ifname.chars().take(15).collect();
        let workload = Workload {
            ns,
            host_ifname,
            mac: [0xca, 0xfe, 0, 0, 0, i],
            v4,
            v6,
            index: i,
        };
        host.add_veth(
            &workload.host_ifname,
            HOST_SIDE_MAC,
            &workload.ns,
            "eth0",
            &workload.mac_string(),
        )
        .unwrap_or_else(|e| panic!("{}", with_causes(&e)));
        workload.configure_eth0();
        workload
    }

    /// Configures the workload's side as Calico's CNI plugin does: eth0 up, its /32 and /128,
    /// the gateway 169.254.1.1 on the link and default routes through it (IPv6: through the
    /// host side's link-local address).
    pub fn configure_eth0(&self) {
        let ns = &self.ns;
        ns.exec(&["ip", "link", "set", "eth0", "up"]);
        let v4 = format!("{}/32", self.v4);
        ns.exec(&["ip", "addr", "add", &v4, "dev", "eth0"]);
        let v6 = format!("{}/128", self.v6);
        ns.exec(&["ip", "-6", "addr", "add", &v6, "dev", "eth0", "nodad"]);
        ns.exec(&[
            "ip",
            "route",
            "add",
            "169.254.1.1",
            "dev",
            "eth0",
            "scope",
            "link",
        ]);
        ns.exec(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            "169.254.1.1",
            "dev",
            "eth0",
        ]);
        ns.exec(&[
            "ip",
            "-6",
            "route",
            "add",
            "default",
            "via",
            "fe80::ecee:eeff:feee:eeee",
            "dev",
            "eth0",
        ]);
    }

    pub fn mac_string(&self) -> String {
        self.mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    /// The WorkloadEndpoint resource for this workload on `node`.
    pub fn endpoint_yaml(&self, node: &str) -> String {
        self.endpoint_yaml_labelled(node, &format!("app: wl{}", self.index))
    }

    /// The WorkloadEndpoint resource for this workload on `node`, with `labels` (YAML flow
    /// mapping entries, such as `app: wl1, host: a`).
    pub fn endpoint_yaml_labelled(&self, node: &str, labels: &str) -> String {
        format!(
            "apiVersion: projectcalico.org/v3\n\
             kind: WorkloadEndpoint\n\
             metadata:\n  name: {node}-cni-wl{i}-eth0\n  namespace: test\n  labels: {{{labels}}}\n\
             spec:\n  node: {node}\n  orchestrator: cni\n  workload: wl{i}\n  endpoint: eth0\n  \
             interfaceName: {ifname}\n  mac: \"{mac}\"\n  ipNetworks: [\"{v4}/32\", \"{v6}/128\"]\n  \
             profiles: [{ALLOW_ALL_PROFILE}]\n",
            i = self.index,
            ifname = self.host_ifname,
            mac = self.mac_string(),
            v4 = self.v4,
            v6 = self.v6,
        )
    }

    /// Pings `dst` from this workload; true when replies came back.
    pub fn ping(&self, dst: IpAddr) -> bool {
        let dst = dst.to_string();
        self.ns
            .try_exec(&["ping", "-c", "2", "-i", "0.2", "-W", "1", &dst])
    }

    /// Pings `dst` every 100 ms until [`Pinger::finish`]: what a user watches while
    /// something restarts.
    pub fn ping_continuously(&self, dst: IpAddr) -> Pinger {
        self.ping_every(dst, "0.1")
    }

    /// Pings `dst` every `interval` seconds (as ping's `-i` takes it; under 0.2 needs root)
    /// until [`Pinger::finish`].
    pub fn ping_every(&self, dst: IpAddr, interval: &str) -> Pinger {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                self.ns.name(),
                "ping",
                "-n",
                "-i",
                interval,
            ])
            .arg(dst.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ping");
        Pinger {
            child: Some(child),
            dst,
        }
    }
}

/// A ping running in the background; killed on drop.
pub struct Pinger {
    child: Option<Child>,
    dst: IpAddr,
}

impl Pinger {
    /// Stops the ping (SIGINT, as Ctrl-C) and returns (transmitted, received) and its output.
    /// ping exits at once on SIGINT, so a last request still in flight has no reply yet: it is
    /// left out of both counts (it was cut off by the stop, not lost), while every earlier
    /// request without a reply counts as lost.
    pub fn finish(mut self) -> (u64, u64, String) {
        let child = self.child.take().expect("a running ping");
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let out = child.wait_with_output().expect("ping's output");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let summary = text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or_else(|| panic!("ping to {} printed no summary: {text}", self.dst));
        let number_before = |word: &str| -> u64 {
            let words: Vec<&str> = summary
                .split([' ', ','])
                .filter(|w| !w.is_empty())
                .collect();
            words
                .iter()
                .position(|w| *w == word)
                .and_then(|i| words.get(i.checked_sub(1)?))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no count before {word:?} in {summary:?}"))
        };
        let (transmitted, received) = (number_before("packets"), number_before("received"));
        let last_answered = text.lines().any(|l| {
            l.split_whitespace()
                .any(|w| w.strip_prefix("icmp_seq=") == Some(transmitted.to_string().as_str()))
        });
        if transmitted > received && !last_answered {
            (transmitted - 1, received, text)
        } else {
            (transmitted, received, text)
        }
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A host namespace with workloads attached to it.
pub struct Topology {
    pub host: Netns,
    pub workloads: Vec<Workload>,
    /// The third byte of the workloads' IPv4 addresses, and the fourth group of their IPv6
    /// addresses: hosts of one test use different ones.
    pub subnet: u8,
}

pub const HOST_SIDE_MAC: &str = "ee:ee:ee:ee:ee:ee";

impl Topology {
    /// A host and `count` workloads with addresses 198.18.0.1i and 2001:db8::1i.
    pub fn new(count: u8) -> Self {
        Self::with_subnet(0, count)
    }

    /// A host and `count` workloads with addresses 198.18.`subnet`.1i and
    /// 2001:db8:0:`subnet`::1i (inside 198.18.`subnet`.0/26 and 2001:db8:0:`subnet`::/122, the
    /// blocks Calico's IPAM would give the host).
    pub fn with_subnet(subnet: u8, count: u8) -> Self {
        require_root();
        let host = netns("ceh");
        let mut topology = Self {
            host,
            workloads: Vec::new(),
            subnet,
        };
        for i in 1..=count {
            topology.add_workload(i);
        }
        topology
    }

    /// Creates workload `i` (its namespace, veth, addresses and routes).
    pub fn add_workload(&mut self, i: u8) -> &Workload {
        let subnet = self.subnet;
        let workload = Workload::create(
            &self.host,
            i,
            Ipv4Addr::new(198, 18, subnet, 10 + i),
            Ipv6Addr::new(
                0x2001,
                0xdb8,
                0,
                u16::from(subnet),
                0,
                0,
                0,
                0x10 + u16::from(i),
            ),
        );
        self.workloads.push(workload);
        self.workloads.last().expect("just pushed")
    }

    pub fn workload(&self, i: u8) -> &Workload {
        self.workloads
            .iter()
            .find(|w| w.index == i)
            .expect("workload exists")
    }

    /// Prepares every workload's eth0 for XDP mode: GRO on, because frames redirected into a
    /// veth by XDP need NAPI there; transmit checksum offload off, because a frame redirected by
    /// XDP loses the skb's "checksum still to be filled in" state.
    pub fn prepare_for_xdp(&self) {
        for w in &self.workloads {
            w.ns.exec(&["ethtool", "-K", "eth0", "gro", "on", "tx", "off"]);
        }
    }

    /// How many packets the host namespace's kernel has forwarded itself
    /// ([`kernel_forwarded`]).
    pub fn kernel_forwarded(&self) -> (u64, u64) {
        kernel_forwarded(&self.host)
    }

    /// The value of a per-namespace sysctl of the host, such as
    /// `net/ipv4/conf/eth0/forwarding`.
    pub fn sysctl(&self, path: &str) -> String {
        let out = self.host.exec(&["cat", &format!("/proc/sys/{path}")]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

/// How many packets `ns`'s kernel has forwarded itself: IPv4 `ForwDatagrams`
/// (`/proc/net/snmp`) and IPv6 `Ip6OutForwDatagrams` (`/proc/net/snmp6`). Packets the
/// programs redirect never count here.
pub fn kernel_forwarded(ns: &Netns) -> (u64, u64) {
    (
        snmp_counter(ns, "/proc/net/snmp", "Ip:", "ForwDatagrams"),
        snmp_counter(ns, "/proc/net/snmp6", "", "Ip6OutForwDatagrams"),
    )
}

/// A counter of `/proc/net/snmp` (a line of names after `table`, then a line of values) or of
/// `/proc/net/snmp6` (`name value` lines, `table` empty), read inside `ns`.
fn snmp_counter(ns: &Netns, file: &str, table: &str, name: &str) -> u64 {
    let out = ns.exec(&["cat", file]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if table.is_empty() {
        return text
            .lines()
            .find_map(|line| {
                let mut fields = line.split_whitespace();
                (fields.next() == Some(name)).then(|| fields.next()?.parse().ok())?
            })
            .unwrap_or_else(|| panic!("no {name} in {file}:\n{text}"));
    }
    let rows: Vec<Vec<&str>> = text
        .lines()
        .filter(|line| line.starts_with(table))
        .map(|line| line.split_whitespace().collect())
        .collect();
    let [names, values] = rows.as_slice() else {
        panic!("{file} has no {table} table:\n{text}");
    };
    let column = names
        .iter()
        .position(|n| *n == name)
        .unwrap_or_else(|| panic!("no {name} in {file}'s {table} table"));
    values[column]
        .parse()
        .unwrap_or_else(|_| panic!("{name} in {file} is not a number"))
}

/// A temporary datastore directory.
pub struct Datastore {
    pub dir: tempfile::TempDir,
}

/// The profile every test workload names: allows everything both ways, as the namespace
/// profiles of a typical Calico install do. Without it an endpoint's traffic is denied.
pub const ALLOW_ALL_PROFILE: &str = "test-allow-all";

impl Datastore {
    /// A datastore directory holding the allow-all profile the test workloads name.
    pub fn new() -> Self {
        let datastore = Self {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        datastore.write(
            "profile-allow-all.yaml",
            &format!(
                "apiVersion: projectcalico.org/v3\nkind: Profile\nmetadata: {{name: {ALLOW_ALL_PROFILE}}}\n\
                 spec: {{ingress: [{{action: Allow}}], egress: [{{action: Allow}}]}}\n"
            ),
        );
        datastore
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file atomically (write then rename), as an editor or a CNI plugin would.
    pub fn write(&self, name: &str, contents: &str) {
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        fs::write(&tmp, contents).expect("write datastore file");
        fs::rename(&tmp, self.dir.path().join(name)).expect("rename datastore file");
    }

    pub fn remove(&self, name: &str) {
        fs::remove_file(self.dir.path().join(name)).expect("remove datastore file");
    }
}

/// The agent binary under test.
pub fn loader_bin() -> &'static str {
    env!("CARGO_BIN_EXE_calico-loader")
}

/// A running agent inside the host namespace. On drop it is stopped, its pins are removed
/// and the BIRD of its run directory is stopped (`calico-loader cleanup`), unless it was
/// [forgotten](Agent::forget).
pub struct Agent {
    child: Option<Child>,
    pub pin_path: PathBuf,
    /// BIRD's run directory (`--run-dir`).
    pub run_dir: PathBuf,
    pub log_path: PathBuf,
    host_ns: PathBuf,
    /// Whether dropping it cleans up after it.
    cleanup: bool,
    _log_dir: tempfile::TempDir,
    _run_dir: Option<tempfile::TempDir>,
}

impl Agent {
    /// Starts `calico-loader run` in the host namespace (only the network namespace is switched,
    /// so it shares our bpffs), with its own pin path.
    pub fn start(topology: &Topology, datastore: &Datastore, node: &str, extra: &[&str]) -> Self {
        let pin_path = PathBuf::from("/sys/fs/bpf").join(unique("calico-test-"));
        Self::start_with_pins(topology, datastore, node, pin_path, extra)
    }

    pub fn start_with_pins(
        topology: &Topology,
        datastore: &Datastore,
        node: &str,
        pin_path: PathBuf,
        extra: &[&str],
    ) -> Self {
        Self::start_with_env(topology, datastore, node, pin_path, extra, &[])
    }

    /// [`Agent::start_with_pins`], with `env` added to the agent's environment.
    pub fn start_with_env(
        topology: &Topology,
        datastore: &Datastore,
        node: &str,
        pin_path: PathBuf,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let run_dir = tempfile::tempdir().expect("run dir");
        let mut args = vec![
            "--datastore",
            datastore.path().to_str().expect("UTF-8 path"),
        ];
        args.extend_from_slice(extra);
        let mut agent = Self::spawn(
            &topology.host.path(),
            node,
            pin_path,
            run_dir.path().join("calico"),
            &args,
            env,
        );
        agent._run_dir = Some(run_dir);
        agent
    }

    /// Starts `calico-loader run --node NODE --pin-path PIN_PATH --run-dir RUN_DIR ARGS` in
    /// the namespace `host_ns`, with `env` added to its environment.
    pub fn spawn(
        host_ns: &Path,
        node: &str,
        pin_path: PathBuf,
        run_dir: PathBuf,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        Self::spawn_binary(loader_bin(), host_ns, node, pin_path, run_dir, args, env)
    }

    /// [`Agent::spawn`] of another build of the agent (`binary`), such as an older or newer
    /// version for an upgrade.
    pub fn spawn_binary(
        binary: &str,
        host_ns: &Path,
        node: &str,
        pin_path: PathBuf,
        run_dir: PathBuf,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let log_dir = tempfile::tempdir().expect("temp dir");
        let log_path = log_dir.path().join("agent.log");
        let log = fs::File::create(&log_path).expect("agent log");
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", host_ns.display()))
            .arg(binary)
            .args(["run", "--node", node, "--resync-interval", "2"])
            .arg("--pin-path")
            .arg(&pin_path)
            .arg("--run-dir")
            .arg(&run_dir)
            .args(args);
        for name in ["IP", "IP6", "AS", "CALICO_NETWORKING_BACKEND", "NODENAME"] {
            command.env_remove(name);
        }
        let child = command
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the agent");
        Self {
            child: Some(child),
            pin_path,
            run_dir,
            log_path,
            host_ns: host_ns.to_path_buf(),
            cleanup: true,
            _log_dir: log_dir,
            _run_dir: None,
        }
    }

    /// Kills the agent with SIGKILL, as a crash: nothing of its own clean-up runs.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Drops the guard without cleaning up after the agent (which must have exited): its pins
    /// and BIRD stay, for the next agent to take over.
    pub fn forget(mut self) {
        self.kill();
        self.cleanup = false;
    }

    /// The agent's process id, while it runs (nsenter execs it, so it is the child's).
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Runs `calico-loader dump WHAT -o json` against this agent's pins.
    pub fn dump(&self, what: &str) -> serde_json::Value {
        let output = Command::new(loader_bin())
            .args(["dump", what, "-o", "json", "--pin-path"])
            .arg(&self.pin_path)
            .output()
            .expect("run dump");
        if !output.status.success() {
            return serde_json::Value::Null;
        }
        serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// Runs `calico-loader trace ARGS -o json` against this agent's pins.
    pub fn trace(&self, args: &[&str]) -> serde_json::Value {
        let output = Command::new(loader_bin())
            .arg("trace")
            .args(args)
            .args(["-o", "json", "--pin-path"])
            .arg(&self.pin_path)
            .output()
            .expect("run trace");
        assert!(
            output.status.success(),
            "trace {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("trace JSON")
    }

    /// Whether the endpoint on `ifname` is programmed and attached.
    /// Whether `ifname` is attached with both of its programs: from the workload (TC ingress
    /// or XDP) and to it (TC egress). The agent attaches them one after the other.
    pub fn attached(&self, ifname: &str) -> bool {
        self.dump("endpoints").as_array().is_some_and(|rows| {
            rows.iter().any(|r| {
                let hooks: Vec<&str> = r["hooks"]
                    .as_array()
                    .map(|h| h.iter().filter_map(|v| v.as_str()).collect())
                    .unwrap_or_default();
                r["interface"] == ifname
                    && r["attached"] == true
                    && hooks.contains(&"tc_egress")
                    && (hooks.contains(&"tc_ingress") || hooks.contains(&"xdp"))
            })
        })
    }

    /// Waits until every given interface is attached, failing with the agent's log.
    pub fn wait_attached(&self, ifnames: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            self.assert_running();
            if ifnames.iter().all(|i| self.attached(i)) {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "interfaces {ifnames:?} not attached after 20 s; agent log:\n{}",
            self.log()
        );
    }

    /// Whether `ifname` has a data-interface program attached by this agent.
    pub fn data_interface_attached(&self, ifname: &str) -> bool {
        let dir = self.pin_path.join("links").join(ifname);
        dir.join("data_tc_ingress").exists() || dir.join("data_xdp").exists()
    }

    /// The counters row of `ifname`.
    pub fn counters(&self, ifname: &str) -> serde_json::Value {
        self.dump("counters")
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["interface"] == ifname).cloned())
            .unwrap_or(serde_json::Value::Null)
    }

    pub fn assert_running(&self) {
        if let Some(child) = &self.child {
            let pid = child.id() as i32;
            // SAFETY: signal 0 only checks that the process exists.
            let alive = unsafe { libc::kill(pid, 0) } == 0
                && !fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z "));
            assert!(alive, "the agent exited; log:\n{}", self.log());
        }
    }

    /// Stops the agent with SIGTERM and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: sending a signal to our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
        if !self.cleanup {
            return;
        }
        // Stop BIRD, detach whatever is still attached and remove the pins.
        let _ = Command::new("nsenter")
            .arg(format!("--net={}", self.host_ns.display()))
            .arg(loader_bin())
            .args(["cleanup", "--pin-path"])
            .arg(&self.pin_path)
            .arg("--run-dir")
            .arg(&self.run_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = fs::remove_dir_all(&self.pin_path);
    }
}

/// Sends one UDP datagram from `from` to `to` (port 5300 + index) and returns what arrived.
pub fn udp_exchange(
    from: &Workload,
    to: &Workload,
    dst: IpAddr,
    payload: &'static [u8],
) -> Option<Vec<u8>> {
    let port = 5300 + u16::from(to.index);
    let bind: SocketAddr = if dst.is_ipv4() {
        "0.0.0.0:0".parse()
    } else {
        "[::]:0".parse()
    }
    .expect("addr");
    let listen = SocketAddr::new(
        if dst.is_ipv4() {
            "0.0.0.0".parse().expect("addr")
        } else {
            "::".parse().expect("addr")
        },
        port,
    );
    let receiver = to.ns.enter(move || {
        let socket = UdpSocket::bind(listen).expect("bind UDP receiver");
        socket
            .set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        socket
    });
    let sender = from
        .ns
        .enter(move || UdpSocket::bind(bind).expect("bind UDP sender"));
    // The first datagram may wait for neighbour resolution; send a few.
    for _ in 0..3 {
        sender
            .send_to(payload, SocketAddr::new(dst, port))
            .expect("send UDP");
    }
    let mut buf = [0u8; 1500];
    receiver
        .recv_from(&mut buf)
        .ok()
        .map(|(n, _)| buf[..n].to_vec())
}

/// Opens a TCP connection from `from` to `to`, sends a line and reads the echo. The listener
/// is closed before this returns, whether the connection worked or not.
pub fn tcp_echo(
    from: &Workload,
    to: &Workload,
    dst: IpAddr,
    line: &'static str,
) -> std::io::Result<String> {
    let port = 5400 + u16::from(to.index);
    let listen = SocketAddr::new(
        if dst.is_ipv4() {
            "0.0.0.0".parse().expect("addr")
        } else {
            "::".parse().expect("addr")
        },
        port,
    );
    let listener = to
        .ns
        .enter(move || TcpListener::bind(listen).expect("bind TCP listener"));
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let client_done = Arc::new(AtomicBool::new(false));
    let done = client_done.clone();
    let server = thread::spawn(move || -> std::io::Result<()> {
        let mut stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        && !done.load(Ordering::SeqCst) =>
                {
                    thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e),
            }
        };
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut buf = [0u8; 256];
        let n = stream.read(&mut buf)?;
        stream.write_all(&buf[..n])?;
        Ok(())
    });
    let result = from.ns.enter(move || -> std::io::Result<String> {
        let mut stream =
            TcpStream::connect_timeout(&SocketAddr::new(dst, port), Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(line.as_bytes())?;
        let mut buf = [0u8; 256];
        let n = stream.read(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    });
    client_done.store(true, Ordering::SeqCst);
    let served = server.join().expect("server thread");
    if result.is_ok() {
        served.expect("server side of the TCP exchange");
    }
    result
}
