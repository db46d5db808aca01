//! What `cargo xtask demo` and `cargo xtask bench` both build: workloads
//! wired to a "host" namespace the way Calico's CNI plugin does it, their
//! WorkloadEndpoints, the agent in the host namespace and its pins, the
//! TCP exchanges between two workloads, and the final check that nothing was
//! left behind.
//!
//! Network safety: the callers name the namespaces and choose the addresses
//! (`198.18.0.0/15`, `2001:db8::/32` only). The veth pairs are created inside
//! those namespaces; nothing here touches the root namespace.

use std::{
    io::IsTerminal as _,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    ops::ControlFlow,
    path::{Path, PathBuf},
    process::Child,
    time::{Duration, Instant},
};

use crate::root;
use anyhow::{Context, Result, bail};
use serde_json::Value;
use testbed::{ChildGuard, Cmd, Netns, netns, output, signals};

/// The MAC every host-side workload interface gets, as in Calico.
pub const HOST_SIDE_MAC: &str = "ee:ee:ee:ee:ee:ee";
/// The IPv6 link-local address the kernel derives from `HOST_SIDE_MAC`.
pub const HOST_SIDE_LINK_LOCAL: &str = "fe80::ecee:eeff:feee:eeee";
/// Calico's fake next hop for IPv4 workloads.
pub const GATEWAY_V4: &str = "169.254.1.1";
/// How long the agent may take to attach to every workload.
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(20);

/// How the agent attaches its programs (its `--attach-mode`): the
/// from-workload hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// TC (clsact) programs on the host-side interfaces.
    Tc,
    /// XDP programs on the host-side interfaces.
    Xdp,
}

impl AttachMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tc => "tc",
            Self::Xdp => "xdp",
        }
    }
}

// ---------------------------------------------------------------------------
// Workloads
// ---------------------------------------------------------------------------

/// One workload: its namespace and how it is wired to the host namespace.
pub struct Workload {
    pub name: String,
    pub netns: Netns,
    pub host_if: String,
    pub mac: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
}

impl Workload {
    /// Wires the workload to `host` as Calico's CNI plugin does: a veth pair
    /// (`host_if`, MAC `HOST_SIDE_MAC`, in `host`; `eth0` in the workload),
    /// a /32 and a /128 on `eth0`, a link-scoped route to `GATEWAY_V4` and
    /// default routes via `GATEWAY_V4` / `HOST_SIDE_LINK_LOCAL`.
    pub fn wire(&self, host: &Netns) -> Result<()> {
        output::info(format!(
            "{}: {} (host side) <-> eth0 in {}, {} / {}",
            self.name,
            self.host_if,
            self.netns.name(),
            self.ipv4,
            self.ipv6
        ));
        // Created inside the host namespace, peer moved straight into the
        // workload namespace: nothing ever appears in the root namespace.
        host.add_veth(&self.host_if, HOST_SIDE_MAC, &self.netns, "eth0", &self.mac)?;
        let ip = |args: &[&str]| self.netns.ip(args).run();
        ip(&["link", "set", "lo", "up"])?;
        ip(&["link", "set", "eth0", "up"])?;
        ip(&["addr", "add", &format!("{}/32", self.ipv4), "dev", "eth0"])?;
        ip(&[
            "-6",
            "addr",
            "add",
            &format!("{}/128", self.ipv6),
            "dev",
            "eth0",
            "nodad",
        ])?;
        ip(&["route", "add", GATEWAY_V4, "dev", "eth0", "scope", "link"])?;
        ip(&["route", "add", "default", "via", GATEWAY_V4, "dev", "eth0"])?;
        ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            HOST_SIDE_LINK_LOCAL,
            "dev",
            "eth0",
        ])?;
        Ok(())
    }

    /// `ethtool -K eth0 gro on tx off` in the workload: frames XDP-redirected
    /// into a veth are only received when the peer has NAPI, which GRO turns
    /// on; and a redirected frame loses the skb's pending-checksum state, so
    /// the workload must fill in its checksums itself (transmit checksum
    /// offload off).
    pub fn ethtool_for_xdp(&self) -> Cmd {
        self.netns
            .command("ethtool")
            .args(["-K", "eth0", "gro", "on", "tx", "off"])
    }

    /// Its WorkloadEndpoint resource (`---` first), as the agent reads it. It
    /// names the [`ALLOW_ALL_PROFILE`], without which Calico (and the agent)
    /// deny all of an endpoint's traffic.
    pub fn endpoint_yaml(&self, node: &str, namespace: &str, app: &str) -> String {
        format!(
            "---\n\
             apiVersion: projectcalico.org/v3\n\
             kind: WorkloadEndpoint\n\
             metadata:\n  \
               name: {node}-cni-{name}-eth0\n  \
               namespace: {namespace}\n  \
               labels: {{app: {app}}}\n\
             spec:\n  \
               node: {node}\n  \
               orchestrator: cni\n  \
               workload: {name}\n  \
               endpoint: eth0\n  \
               interfaceName: {iface}\n  \
               mac: \"{mac}\"\n  \
               ipNetworks: [\"{v4}/32\", \"{v6}/128\"]\n  \
               profiles: [{ALLOW_ALL_PROFILE}]\n",
            name = self.name,
            iface = self.host_if,
            mac = self.mac,
            v4 = self.ipv4,
            v6 = self.ipv6,
        )
    }
}

// ---------------------------------------------------------------------------
// The agent and its pins
// ---------------------------------------------------------------------------

/// Where a task's agent pins its maps and programs:
/// `/sys/fs/bpf/calico-<task>-<pid>`.
pub fn pin_path(task: &str, pid: u32) -> PathBuf {
    PathBuf::from(format!("/sys/fs/bpf/calico-{task}-{pid}"))
}

/// Starts `calico-loader run` in the host namespace (only the network
/// namespace is switched, so it shares our bpffs); its log lines are
/// prefixed `[agent]`. It detaches its programs when stopped.
pub fn spawn_agent(
    loader: &Path,
    host_netns: &Path,
    datastore: &Path,
    node: &str,
    mode: AttachMode,
    pin_path: &Path,
) -> Result<Child> {
    let mut run = netns::nsenter(host_netns, loader);
    if !std::io::stderr().is_terminal() {
        // Its log lines end up in a file or pipe: no colour codes there.
        run = run.env("NO_COLOR", "1");
    }
    run.arg("run")
        .arg("--datastore")
        .arg(datastore)
        .args([
            "--node",
            node,
            "--attach-mode",
            mode.as_str(),
            "--detach-on-exit",
            // No BIRD: these topologies have one host.
            "--networking-backend",
            "none",
        ])
        .arg("--pin-path")
        .arg(pin_path)
        .spawn_prefixed("[agent]")
        .map_err(Into::into)
}

/// Polls `dump` (a `calico-loader dump endpoints -o json`) every `poll`
/// until `attached` breaks with the line to print, for `ATTACH_TIMEOUT` at
/// most; `attached` continues with a description of what it saw. Fails early
/// if the agent exits. `waiting_for` and `what` complete the messages
/// "waiting up to …s for {waiting_for}" and "the agent did not attach {what}".
pub fn wait_for_attachment(
    agent: &mut ChildGuard,
    dump: Cmd,
    waiting_for: &str,
    what: &str,
    poll: Duration,
    mut attached: impl FnMut(&[Value]) -> ControlFlow<String, String>,
) -> Result<()> {
    output::info(format!(
        "waiting up to {}s for {waiting_for}: polling `{}`",
        ATTACH_TIMEOUT.as_secs(),
        dump.display()
    ));
    let dump = dump.quiet();
    let deadline = Instant::now() + ATTACH_TIMEOUT;
    loop {
        if let Some(status) = agent.try_wait()? {
            bail!("the agent exited early ({status}); see its [agent] lines above");
        }
        let output = dump.capture()?;
        let last = if output.status.success() {
            match serde_json::from_slice::<Value>(&output.stdout) {
                Ok(Value::Array(endpoints)) => match attached(&endpoints) {
                    ControlFlow::Break(done) => {
                        output::info(done);
                        return Ok(());
                    }
                    ControlFlow::Continue(seen) => seen,
                },
                Ok(other) => format!("unexpected JSON (not an array): {other}"),
                Err(err) => format!("invalid JSON: {err}"),
            }
        } else {
            String::from_utf8_lossy(&output.stderr).trim().to_owned()
        };
        if Instant::now() >= deadline {
            bail!(
                "the agent did not attach {what} within {}s (last: {last})",
                ATTACH_TIMEOUT.as_secs()
            );
        }
        signals::sleep(poll)?;
    }
}

/// `calico-loader cleanup` in the host namespace, then `rm -rf` of the pins,
/// on drop.
pub struct PinGuard {
    loader: PathBuf,
    host_netns: PathBuf,
    pin_path: PathBuf,
}

impl PinGuard {
    pub fn new(loader: &Path, host_netns: &Path, pin_path: &Path) -> Self {
        Self {
            loader: loader.to_owned(),
            host_netns: host_netns.to_owned(),
            pin_path: pin_path.to_owned(),
        }
    }
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        cleanup_pins(&self.loader, &self.host_netns, &self.pin_path);
    }
}

/// Removes the agent's pins: `calico-loader cleanup` (inside the host
/// namespace, where the interfaces are), then `rm -rf` as a fallback.
pub fn cleanup_pins(loader: &Path, host_netns: &Path, pin_path: &Path) {
    let cleanup = netns::nsenter(host_netns, loader)
        .arg("cleanup")
        .arg("--pin-path")
        .arg(pin_path)
        .cleanup();
    if let Err(err) = cleanup.run() {
        output::warn(format!(
            "{}; removing the pins by hand",
            output::with_causes(&err)
        ));
    }
    let rm = Cmd::new("rm").arg("-rf").arg(pin_path);
    if let Err(err) = rm.privileged().cleanup().run() {
        output::warn(output::with_causes(&err));
    }
}

/// Double-checks that the teardown left none of our namespaces
/// (`<netns_prefix>…-<pid>`) or pins (when given).
pub fn check_nothing_left(netns_prefix: &str, pid: u32, pins: Option<&Path>) {
    let suffix = format!("-{pid}");
    let leftovers: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(netns_prefix) && name.ends_with(&suffix))
        .collect();
    if !leftovers.is_empty() {
        output::warn(format!(
            "namespaces left behind: {} (remove with `ip netns del NAME`)",
            leftovers.join(" ")
        ));
    }
    if let Some(pins) = pins.filter(|p| root::exists_as_root(p)) {
        output::warn(format!("pins left behind: rm -rf {}", pins.display()));
    }
}

// ---------------------------------------------------------------------------
// TCP between two workloads
// ---------------------------------------------------------------------------

/// The two namespaces of an in-process TCP exchange (a thread enters each)
/// and the server's address. Entering a namespace needs root: when not
/// root, the exchange runs through `sudo xtask <subcommand>` with these as
/// arguments.
#[derive(clap::Args, Clone, Debug)]
pub struct NetnsPair {
    #[arg(long)]
    pub server_netns: String,
    #[arg(long)]
    pub client_netns: String,
    #[arg(long)]
    pub addr: SocketAddr,
}

impl NetnsPair {
    /// `xtask SUBCOMMAND --server-netns S --client-netns C --addr A` as root;
    /// add the subcommand's other arguments to the result.
    pub fn xtask_as_root(&self, subcommand: &str) -> Result<Cmd> {
        let exe = std::env::current_exe().context("cannot find the xtask binary")?;
        Ok(Cmd::new(exe)
            .arg(subcommand)
            .args(["--server-netns", &self.server_netns])
            .args(["--client-netns", &self.client_netns])
            .args(["--addr", &self.addr.to_string()])
            .privileged())
    }
}

/// The profile the workloads name: allows everything both ways, like the
/// namespace profiles of a typical Calico install.
pub const ALLOW_ALL_PROFILE: &str = "allow-all";

/// The [`ALLOW_ALL_PROFILE`] resource (`---` first).
pub fn allow_all_profile_yaml() -> String {
    format!(
        "---\napiVersion: projectcalico.org/v3\nkind: Profile\nmetadata:\n  name: {ALLOW_ALL_PROFILE}\n\
         spec:\n  ingress: [{{action: Allow}}]\n  egress: [{{action: Allow}}]\n"
    )
}
