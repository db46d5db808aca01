//! The bench's topology and the parts its setups are made of: namespaces, kernel routes,
//! iptables chains, nftables tables, the agent and its pins, and the sysctls the bench changes.
//! Each is a guard that undoes itself on drop. Which setup is active is `active.rs`'s; what the
//! demo builds too (wiring a workload, starting the agent, its pins) is in `crate::topology`.

use std::{
    cell::Cell,
    fmt::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
    ops::ControlFlow,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    process::Child,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use testbed::{ChildGuard, Cmd, Netns, output, signals};

use super::{
    Ctx,
    loader::{NODE, dump_cmd, endpoint_yaml},
    policy::{self, PolicyCheck},
};
use crate::{
    root,
    topology::{self as shared, AttachMode, GATEWAY_V4, HOST_SIDE_MAC, Workload},
};

pub const IPERF_PORT: u16 = 5201;
/// UDP destination port of the generated packets: the sink's socket listens
/// there and never reads (`bench-udp-sink`).
pub const UDP_PORT: u16 = 9;

/// The host namespace and the two workloads (or, for the cross-host setups, the two hosts
/// and a workload on each: see `cross_host`). Fields drop in declaration order: the workload
/// namespaces, then the host namespaces.
pub struct Topology {
    pub gen_wl: Workload,
    pub sink: Workload,
    /// gen's host (and the sink's, on one host).
    pub host: Netns,
    /// The sink's host when it is another one (the cross-host setups).
    pub sink_host: Option<Netns>,
    /// Our process id, in the namespaces' names.
    pub pid: u32,
    /// Whether our own kernel routes and neighbours (for the setups without
    /// the agent) are in place.
    kernel_routes: Cell<bool>,
}

impl Topology {
    pub fn create(pid: u32) -> Result<Self> {
        output::step("Creating the topology");
        output::explain(format!(
            "cbench-host-{pid} plays the node; cbench-gen-{pid} and cbench-sink-{pid} are the\n\
             workloads, each wired to it by a veth pair created inside the namespaces\n\
             (`cali…`, MAC {HOST_SIDE_MAC}, on the host side). Each workload routes via\n\
             {GATEWAY_V4}, with a static neighbour entry for it: no ARP in any setup."
        ));
        let host = Netns::create(format!("cbench-host-{pid}"))?;
        host.ip(["link", "set", "lo", "up"]).run()?;
        host.command("sysctl")
            .args(["-qw", "net.ipv4.ip_forward=1"])
            .run()?;
        let gen_wl = create_workload(&host, pid, "gen", 0, 1)?;
        let sink = create_workload(&host, pid, "sink", 0, 2)?;
        Ok(Self::new(gen_wl, sink, host, None, pid))
    }

    /// The topology of these namespaces, without kernel routes to the workloads yet.
    pub fn new(
        gen_wl: Workload,
        sink: Workload,
        host: Netns,
        sink_host: Option<Netns>,
        pid: u32,
    ) -> Self {
        Self {
            gen_wl,
            sink,
            host,
            sink_host,
            pid,
            kernel_routes: Cell::new(false),
        }
    }

    pub fn workloads(&self) -> [&Workload; 2] {
        [&self.gen_wl, &self.sink]
    }

    /// The sink's host namespace.
    pub fn sink_host(&self) -> &Netns {
        self.sink_host.as_ref().unwrap_or(&self.host)
    }

    /// Each workload with the namespace of its host.
    pub fn placed_workloads(&self) -> [(&Netns, &Workload); 2] {
        [(&self.host, &self.gen_wl), (self.sink_host(), &self.sink)]
    }

    /// The host namespaces: one, or two for the cross-host setups.
    pub fn hosts(&self) -> Vec<&Netns> {
        std::iter::once(&self.host)
            .chain(self.sink_host.as_ref())
            .collect()
    }

    /// For the setups without the agent: what the agent would write, a
    /// scope-link route and a permanent neighbour entry per workload.
    pub fn install_kernel_routes(&self) -> Result<()> {
        if self.kernel_routes.get() {
            return Ok(());
        }
        output::info(
            "kernel routes and neighbour entries for the workloads (no agent in this setup):",
        );
        for (host, wl) in self.placed_workloads() {
            let ip = wl.ipv4.to_string();
            host.ip(["route", "replace", &format!("{ip}/32"), "dev", &wl.host_if])
                .args(["scope", "link", "proto", "static"])
                .run()?;
            host.ip([
                "neigh",
                "replace",
                &ip,
                "lladdr",
                &wl.mac,
                "dev",
                &wl.host_if,
            ])
            .args(["nud", "permanent"])
            .run()?;
        }
        self.kernel_routes.set(true);
        Ok(())
    }

    /// Before the agent starts: it writes its own routes and neighbours.
    pub fn remove_kernel_routes(&self) -> Result<()> {
        if !self.kernel_routes.get() {
            return Ok(());
        }
        output::info("removing our kernel routes and neighbour entries: the agent writes its own");
        for (host, wl) in self.placed_workloads() {
            let ip = wl.ipv4.to_string();
            host.ip(["route", "del", &format!("{ip}/32"), "dev", &wl.host_if])
                .args(["proto", "static"])
                .run()?;
            host.ip(["neigh", "del", &ip, "dev", &wl.host_if]).run()?;
        }
        self.kernel_routes.set(false);
        Ok(())
    }
}

/// A workload wired to `host` like the demo's, plus a static neighbour
/// entry for the gateway (no ARP in any setup) and GRO on its eth0 (NAPI) in
/// every setup. Its addresses are 198.18.SUBNET.INDEX and 2001:db8:0:SUBNET::INDEX.
pub fn create_workload(
    host: &Netns,
    pid: u32,
    name: &str,
    subnet: u8,
    index: u8,
) -> Result<Workload> {
    let netns = Netns::create(format!("cbench-{name}-{pid}"))?;
    let wl = Workload {
        name: name.to_owned(),
        netns,
        // Readable in the output; at most 15 characters.
        host_if: format!("calibench{name}"),
        mac: format!("ca:fe:00:00:{subnet:02x}:{index:02x}"),
        ipv4: Ipv4Addr::new(198, 18, subnet, index),
        ipv6: Ipv6Addr::new(
            0x2001,
            0xdb8,
            0,
            u16::from(subnet),
            0,
            0,
            0,
            u16::from(index),
        ),
    };
    wl.wire(host)?;
    wl.netns
        .ip([
            "neigh",
            "replace",
            GATEWAY_V4,
            "lladdr",
            HOST_SIDE_MAC,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ])
        .run()?;
    // For every setup: XDP-redirected frames need NAPI on the receiving veth
    // (GRO on). Transmit offloads stay on (the veth default) except in our
    // XDP setups: see `set_tx_offload`.
    // (Its "Actual changes" list goes nowhere: stdout is the results.)
    wl.netns
        .command("ethtool")
        .args(["-K", "eth0", "gro", "on"])
        .output()?;
    Ok(wl)
}

/// GRO (and with it NAPI) on the host side of gen's veth: on only while the
/// live-frames generator runs, as frames sent by XDP are only received by a
/// veth with NAPI; otherwise the veth default (off), as on a Calico host.
pub fn set_gen_host_gro(topo: &Topology, on: bool) -> Result<()> {
    topo.host
        .command("ethtool")
        .args([
            "-K",
            &topo.gen_wl.host_if,
            "gro",
            if on { "on" } else { "off" },
        ])
        .output()?;
    Ok(())
}

/// Transmit checksum offload (and with it TSO) on both workloads' eth0. Off
/// for our XDP setups only: a frame XDP redirects loses the skb's pending
/// checksum, so XDP mode needs workloads that fill in their checksums
/// themselves; every other setup runs with the veth default (on).
pub fn set_tx_offload(topo: &Topology, on: bool) -> Result<()> {
    for wl in topo.workloads() {
        wl.netns
            .command("ethtool")
            .args(["-K", "eth0", "tx", if on { "on" } else { "off" }])
            .output()?;
    }
    Ok(())
}

/// Writes both WorkloadEndpoints into `dir`, the agent's datastore.
pub fn write_datastore(topo: &Topology, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut yaml = crate::topology::allow_all_profile_yaml();
    for wl in topo.workloads() {
        yaml.push_str(&endpoint_yaml(wl));
    }
    let file = dir.join("workloadendpoints.yaml");
    std::fs::write(&file, yaml).with_context(|| format!("cannot write {}", file.display()))?;
    output::info(format!(
        "WorkloadEndpoints for gen and sink: {}",
        file.display()
    ));
    Ok(())
}

// ---------------------------------------------------------------------------
// Sysctl, iperf3 server
// ---------------------------------------------------------------------------

/// A sysctl of the root namespace set for the bench; the old value back on drop.
pub struct Sysctl {
    name: &'static str,
    old: String,
}

impl Sysctl {
    /// Sets `name` to `value` unless it already is; `why` is shown.
    pub fn set(name: &'static str, value: &str, why: &str) -> Result<Self> {
        let path = format!("/proc/sys/{}", name.replace('.', "/"));
        let old = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {name}"))?
            .trim()
            .to_owned();
        output::info(format!(
            "{name} is {old}; setting it to {value} for the bench ({why}), restored at the end"
        ));
        if old != value {
            Cmd::new("sysctl")
                .args(["-qw", &format!("{name}={value}")])
                .privileged()
                .run()?;
        }
        Ok(Self { name, old })
    }

    /// Sets it back now (and again, harmlessly, on drop).
    pub fn set_again(&self, value: &str) -> Result<()> {
        Cmd::new("sysctl")
            .args(["-qw", &format!("{}={value}", self.name)])
            .privileged()
            .quiet()
            .run()?;
        Ok(())
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let restore = Cmd::new("sysctl").args(["-qw", &format!("{}={}", self.name, self.old)]);
        if let Err(err) = restore.privileged().cleanup().run() {
            output::warn(format!(
                "could not restore {}: {}",
                self.name,
                output::with_causes(&err)
            ));
        }
    }
}

/// `iperf3 -s` in the sink namespace for the whole bench.
pub struct IperfServer {
    _child: ChildGuard,
}

impl IperfServer {
    pub fn start(topo: &Topology) -> Result<Self> {
        let sink = &topo.sink;
        let child = sink
            .netns
            .command("iperf3")
            .args(["-s", "-B", &sink.ipv4.to_string()])
            .args(["-p", &IPERF_PORT.to_string(), "-i", "0"])
            .spawn_prefixed("[iperf3 -s]")?;
        let mut child = ChildGuard::new("the iperf3 server", child, true);
        wait_listening(&mut child, sink, "-Hltn", IPERF_PORT, "[iperf3 -s]")?;
        Ok(Self { _child: child })
    }
}

/// The sink's UDP socket on the generated packets' port (`xtask bench-udp-sink`) for the
/// whole bench: it listens and never reads.
pub struct UdpSink {
    _child: ChildGuard,
}

impl UdpSink {
    pub fn start(topo: &Topology) -> Result<Self> {
        let sink = &topo.sink;
        let port = UDP_PORT.to_string();
        let exe = std::env::current_exe().context("cannot find the xtask binary")?;
        let child = sink
            .netns
            .command(exe)
            .args(["bench-udp-sink", "--port", &port])
            .spawn_prefixed("[udp sink]")?;
        let mut child = ChildGuard::new("the UDP sink", child, true);
        wait_listening(&mut child, sink, "-Hlun", UDP_PORT, "[udp sink]")?;
        Ok(Self { _child: child })
    }
}

/// Waits up to 10 s until `ss SS_FLAGS sport = :PORT` in the workload lists
/// the socket `child` opens; fails if `child` exits first (its output lines
/// carry `prefix`).
fn wait_listening(
    child: &mut ChildGuard,
    wl: &Workload,
    ss_flags: &str,
    port: u16,
    prefix: &str,
) -> Result<()> {
    let listening = wl
        .netns
        .command("ss")
        .args([ss_flags, &format!("sport = :{port}")])
        .quiet();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("{} exited ({status}); see its {prefix} lines", child.name());
        }
        if !listening.output()?.trim().is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{} is not listening on port {port} after 10s", child.name());
        }
        signals::sleep(Duration::from_millis(100))?;
    }
}

// ---------------------------------------------------------------------------
// Setups
// ---------------------------------------------------------------------------

/// Calico-style iptables policy for the generator's endpoint, in the host
/// namespace: `FORWARD -i <gen> -j cali-fw-<gen>`, a chain of rules that do
/// not match the traffic, then ACCEPT.
pub struct IptablesRules<'a> {
    host: &'a Netns,
    iface: String,
    chain: String,
    installed: bool,
}

impl<'a> IptablesRules<'a> {
    pub fn install(ctx: &Ctx<'a>, rules: u32) -> Result<Self> {
        let iface = ctx.topo.gen_wl.host_if.clone();
        let chain = format!("cali-fw-{iface}");
        let file = ctx.scratch.join(format!("iptables-{rules}.rules"));
        std::fs::write(&file, iptables_rules(&iface, &chain, rules))
            .with_context(|| format!("cannot write {}", file.display()))?;
        output::info(format!(
            "{rules} non-matching rules (`-s 198.19.x.y/32 -j DROP`) then ACCEPT in {chain}, \
             jumped to from FORWARD for packets from {iface}; loaded with iptables-restore"
        ));
        let host = &ctx.topo.host;
        let mut guard = Self {
            host,
            iface,
            chain,
            installed: false,
        };
        host.command("iptables-restore")
            .arg("--noflush")
            .arg(&file)
            .run()?;
        guard.installed = true;
        let count = host
            .command("iptables")
            .args(["-S", &guard.chain])
            .output()?
            .lines()
            .filter(|l| l.starts_with("-A "))
            .count();
        if count != rules as usize + 1 {
            bail!(
                "{} has {count} rules after iptables-restore, expected {}",
                guard.chain,
                rules + 1
            );
        }
        Ok(guard)
    }

    pub fn remove(mut self) -> Result<()> {
        self.installed = false;
        self.commands().iter().try_for_each(Cmd::run)?;
        remove_empty_iptables_nft_table(self.host)
    }

    fn commands(&self) -> [Cmd; 3] {
        let iptables = |args: &[&str]| self.host.command("iptables").args(args);
        [
            iptables(&["-D", "FORWARD", "-i", &self.iface, "-j", &self.chain]),
            iptables(&["-F", &self.chain]),
            iptables(&["-X", &self.chain]),
        ]
    }
}

impl Drop for IptablesRules<'_> {
    fn drop(&mut self) {
        if !self.installed {
            return;
        }
        for cmd in self.commands() {
            if let Err(err) = cmd.cleanup().run() {
                output::warn(output::with_causes(&err));
            }
        }
    }
}

/// The tables in `host`'s nftables ruleset, as `FAMILY NAME`.
fn nft_tables(host: &Netns) -> Result<Vec<String>> {
    Ok(host
        .command("nft")
        .args(["list", "tables"])
        .output()?
        .lines()
        .filter_map(|l| l.trim().strip_prefix("table "))
        .map(str::to_owned)
        .collect())
}

/// With iptables-nft, `-F`/`-X` leave `table ip filter` and its FORWARD
/// base chain (empty, policy accept) behind, and every packet would still
/// pass through that hook in later setups. Delete it when it holds no rule:
/// the host namespace is ours, so nothing else uses it. (With
/// iptables-legacy there is no such nftables table.) Not on drop: after a
/// failure the namespace, and the table with it, is deleted anyway.
fn remove_empty_iptables_nft_table(host: &Netns) -> Result<()> {
    if !nft_tables(host)?.iter().any(|t| t == "ip filter") {
        return Ok(());
    }
    let listing = host
        .command("nft")
        .args(["-j", "list", "table", "ip", "filter"])
        .output()?;
    let listing: Value = serde_json::from_str(&listing)
        .context("`nft -j list table ip filter` printed invalid JSON")?;
    let rules = listing["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|o| o.get("rule").is_some())
        .count();
    if rules > 0 {
        output::warn(format!(
            "table ip filter still holds {rules} rule(s) after removing the chain; leaving it"
        ));
        return Ok(());
    }
    output::info("deleting the empty `table ip filter` iptables-nft leaves behind (no hook left)");
    host.command("nft")
        .args(["delete", "table", "ip", "filter"])
        .run()?;
    Ok(())
}

/// The iptables-restore input: the jump, `rules` misses, the final ACCEPT.
fn iptables_rules(iface: &str, chain: &str, rules: u32) -> String {
    let mut text = format!("*filter\n:{chain} - [0:0]\n-A FORWARD -i {iface} -j {chain}\n");
    for i in 0..rules {
        // 198.19.0.0/16: benchmarking space, never the workloads' addresses.
        let _ = writeln!(
            text,
            "-A {chain} -s 198.19.{}.{}/32 -j DROP",
            i / 256,
            i % 256
        );
    }
    let _ = writeln!(text, "-A {chain} -j ACCEPT\nCOMMIT");
    text
}

/// The nftables table of the `nft-*` setups, in the host namespace only.
pub const NFT_TABLE: &str = "calico_bench";

/// How an `nft-*` setup holds its N non-matching addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NftShape {
    /// N rules `ip saddr 198.19.x.y/32 drop`, like the iptables chain.
    List,
    /// One named `flags interval` set of the N addresses, matched by one
    /// rule `ip saddr @SET drop`.
    Set,
}

/// Calico-style nftables policy for the generator's endpoint, in the host
/// namespace's table `inet calico_bench`: a forward base chain jumping, for
/// packets from the generator's host side, to `cali-fw-<gen>`, whose
/// non-matching rules (or set) come before the final accept. Loaded
/// atomically with `nft -f`; `nft delete table` removes all of it.
pub struct NftRules<'a> {
    host: &'a Netns,
    installed: bool,
}

impl<'a> NftRules<'a> {
    pub fn install(ctx: &Ctx<'a>, shape: NftShape, rules: u32) -> Result<Self> {
        let iface = ctx.topo.gen_wl.host_if.clone();
        let chain = format!("cali-fw-{iface}");
        let set = format!("{chain}-src");
        let name = match shape {
            NftShape::List => "list",
            NftShape::Set => "set",
        };
        let file = ctx.scratch.join(format!("nft-{name}-{rules}.nft"));
        std::fs::write(&file, nft_ruleset(&iface, &chain, &set, shape, rules))
            .with_context(|| format!("cannot write {}", file.display()))?;
        output::info(match shape {
            NftShape::List => format!(
                "{rules} non-matching rules (`ip saddr 198.19.x.y/32 drop`) then accept in \
                 {chain} of table inet {NFT_TABLE}, jumped to from its forward chain for \
                 packets from {iface}; loaded with nft -f"
            ),
            NftShape::Set => format!(
                "one rule `ip saddr @{set} drop` ({rules} non-matching /32s in a `flags \
                 interval` set) then accept in {chain} of table inet {NFT_TABLE}, jumped to \
                 from its forward chain for packets from {iface}; loaded with nft -f"
            ),
        });
        let host = &ctx.topo.host;
        let tables = nft_tables(host)?;
        if !tables.is_empty() {
            bail!(
                "the host namespace already has nftables tables ({}); every nft setup \
                 expects to be the only ruleset",
                tables.join(", ")
            );
        }
        let mut guard = Self {
            host,
            installed: false,
        };
        // Marked first: a partly applied file cannot exist (nft -f is
        // atomic), and deleting a missing table only warns on cleanup.
        guard.installed = true;
        host.command("nft").arg("-f").arg(&file).run()?;

        let listing = host
            .command("nft")
            .args(["-j", "list", "table", "inet", NFT_TABLE])
            .output()?;
        let listing: Value = serde_json::from_str(&listing).with_context(|| {
            format!("`nft -j list table inet {NFT_TABLE}` printed invalid JSON")
        })?;
        let objects = listing["nftables"].as_array().cloned().unwrap_or_default();
        let chain_rules = objects
            .iter()
            .filter(|o| o["rule"]["chain"].as_str() == Some(chain.as_str()))
            .count();
        let elements = objects
            .iter()
            .find(|o| o["set"]["name"].as_str() == Some(set.as_str()))
            .map(|o| o["set"]["elem"].as_array().map_or(0, Vec::len));
        let (want_rules, want_elements) = match shape {
            NftShape::List => (rules as usize + 1, None),
            NftShape::Set => (2, Some(rules as usize)),
        };
        if chain_rules != want_rules || elements != want_elements {
            bail!(
                "{chain} has {chain_rules} rules and the set {elements:?} elements after \
                 nft -f, expected {want_rules} and {want_elements:?}"
            );
        }
        Ok(guard)
    }

    fn delete_table(&self) -> Cmd {
        self.host
            .command("nft")
            .args(["delete", "table", "inet", NFT_TABLE])
    }

    pub fn remove(mut self) -> Result<()> {
        self.installed = false;
        self.delete_table().run()?;
        let tables = nft_tables(self.host)?;
        if !tables.is_empty() {
            bail!(
                "nftables tables left in the host namespace after `nft delete table inet \
                 {NFT_TABLE}`: {}",
                tables.join(", ")
            );
        }
        Ok(())
    }
}

impl Drop for NftRules<'_> {
    fn drop(&mut self) {
        if !self.installed {
            return;
        }
        if let Err(err) = self.delete_table().cleanup().run() {
            output::warn(output::with_causes(&err));
        }
    }
}

/// The `nft -f` input: the table is created empty and deleted first, so the
/// file replaces whatever it held, in one transaction.
fn nft_ruleset(iface: &str, chain: &str, set: &str, shape: NftShape, rules: u32) -> String {
    // 198.19.0.0/16: benchmarking space, never the workloads' addresses.
    let address = |i: u32| format!("198.19.{}.{}/32", i / 256, i % 256);
    let mut text = format!(
        "table inet {NFT_TABLE}\n\
         delete table inet {NFT_TABLE}\n\
         table inet {NFT_TABLE} {{\n"
    );
    if shape == NftShape::Set {
        let _ = writeln!(
            text,
            "\tset {set} {{\n\t\ttype ipv4_addr\n\t\tflags interval"
        );
        if rules > 0 {
            text.push_str("\t\telements = {\n");
            for i in 0..rules {
                let _ = writeln!(text, "\t\t\t{},", address(i));
            }
            text.push_str("\t\t}\n");
        }
        text.push_str("\t}\n");
    }
    let _ = write!(
        text,
        "\tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tiifname \"{iface}\" jump {chain}\n\
         \t}}\n\
         \tchain {chain} {{\n"
    );
    match shape {
        NftShape::List => {
            for i in 0..rules {
                let _ = writeln!(text, "\t\tip saddr {} drop", address(i));
            }
        }
        NftShape::Set => {
            let _ = writeln!(text, "\t\tip saddr @{set} drop");
        }
    }
    text.push_str("\t\taccept\n\t}\n}\n");
    text
}

/// How many agents the bench started: each logs into its own file.
static AGENT_STARTS: AtomicU32 = AtomicU32::new(0);

/// A new agent's log file in the scratch directory, named `agent-<n>-<what>.log`.
pub fn agent_log(ctx: &Ctx<'_>, what: &str) -> AgentLog {
    let n = AGENT_STARTS.fetch_add(1, Ordering::Relaxed);
    AgentLog {
        path: ctx.scratch.join(format!("agent-{n:02}-{what}.log")),
    }
}

/// Our agent in the host namespace.
pub struct Agent {
    child: ChildGuard,
    /// Its process id (found by its command line), for /proc/<pid>/status and fdinfo.
    pub pid: Option<u32>,
    pub hook: AttachMode,
    /// A copy of its log lines.
    pub log: AgentLog,
    /// The policy check made when it started; taken after the measurements.
    pub policy: Option<PolicyCheck>,
}

impl Agent {
    /// Writes the datastore's policy for `rules` rules, starts the agent, waits until gen and
    /// sink are attached and the expected rule decides trafgen's packet at the sink.
    pub fn start(ctx: &Ctx<'_>, hook: AttachMode, rules: u32) -> Result<Self> {
        policy::write_policy(ctx.datastore, rules, ctx.topo.gen_wl.ipv4)?;
        let log = agent_log(ctx, &format!("{}-{rules}", hook.as_str()));
        let started = Instant::now();
        let place = AgentPlace {
            host: &ctx.topo.host,
            node: NODE,
            pin_path: ctx.pin_path,
        };
        let child = spawn_agent(ctx, &place, hook, &log.path, "[agent]")?;
        let mut child = ChildGuard::new(format!("the agent ({})", hook.as_str()), child, true);
        wait_for_attachment(&mut child, ctx)?;
        let mut check = policy::verify(ctx, rules, &mut child, started)?;
        check.agent_compile_ms = log
            .lines_from(0)
            .iter()
            .find(|l| l.contains("policy compiled"))
            .and_then(|l| log_field(l, "elapsed_ms"))
            .and_then(|v| v.parse().ok());
        let pid = agent_pid(ctx.loader, ctx.pin_path);
        if pid.is_none() {
            output::warn("cannot find the agent's process id in /proc");
        }
        Ok(Self {
            child,
            pid,
            hook,
            log,
            policy: Some(check),
        })
    }

    /// SIGTERM; the agent detaches and removes its pins (see `stop_agent`).
    pub fn stop(mut self, ctx: &Ctx<'_>) -> Result<()> {
        let place = AgentPlace {
            host: &ctx.topo.host,
            node: NODE,
            pin_path: ctx.pin_path,
        };
        stop_agent(&mut self.child, ctx.loader, &place)
    }
}

/// SIGTERM; the agent detaches (`--detach-on-exit`). Pins it leaves behind are reported and
/// removed, so the next setup starts clean.
pub fn stop_agent(child: &mut ChildGuard, loader: &Path, place: &AgentPlace<'_>) -> Result<()> {
    match child.stop(Duration::from_secs(10)) {
        Some(status) if status.success() => {}
        Some(status) => output::warn(format!(
            "the agent of node {} exited with {status} on SIGTERM",
            place.node
        )),
        None => bail!("the agent of node {} did not stop", place.node),
    }
    if root::exists_as_root(place.pin_path) {
        output::warn(format!(
            "the agent left {} behind despite --detach-on-exit; cleaning up",
            place.pin_path.display()
        ));
        shared::cleanup_pins(loader, &place.host.path(), place.pin_path);
    }
    Ok(())
}

/// Polls `dump endpoints -o json` until both workloads are attached.
fn wait_for_attachment(child: &mut ChildGuard, ctx: &Ctx<'_>) -> Result<()> {
    let wanted: Vec<&str> = ctx.topo.workloads().map(|w| w.host_if.as_str()).to_vec();
    shared::wait_for_attachment(
        child,
        dump_cmd(ctx.loader, ctx.pin_path, "endpoints"),
        "gen and sink to be attached",
        "gen and sink",
        Duration::from_millis(200),
        |endpoints| {
            let attached: Vec<&str> = endpoints
                .iter()
                .filter(|e| e["attached"].as_bool() == Some(true))
                .filter_map(|e| e["interface"].as_str())
                .collect();
            if wanted.iter().all(|w| attached.contains(w)) {
                ControlFlow::Break("gen and sink attached".to_owned())
            } else {
                ControlFlow::Continue(format!("attached: {attached:?}"))
            }
        },
    )
}

/// Where and as what an agent runs: its host namespace, node name and pins.
pub struct AgentPlace<'a> {
    pub host: &'a Netns,
    pub node: &'a str,
    pub pin_path: &'a Path,
}

/// `calico-loader run` in the place's host namespace, with the arguments of
/// `shared::spawn_agent`, its lines prefixed `prefix` (`[agent]` as there); `tee` also appends
/// them to `log`, where the bench reads the agent's own timings ("policy compiled …
/// elapsed_ms=…"). bash execs nsenter, which execs the agent: the child's pid is the agent's
/// (when root), so SIGTERM reaches it; `tee -i` outlives a Ctrl-C to pass on the agent's last
/// lines, and ends with them.
pub fn spawn_agent(
    ctx: &Ctx<'_>,
    place: &AgentPlace<'_>,
    hook: AttachMode,
    log: &Path,
    prefix: &str,
) -> Result<Child> {
    const TEE: &str = r#"log=$1; shift; exec "$@" 2> >(exec tee -i -a "$log" >&2)"#;
    output::info(format!(
        "starting the agent of node {}; its log is also copied to {}",
        place.node,
        log.display()
    ));
    Cmd::new("bash")
        .args(["-c", TEE, "bash"])
        .arg(log)
        .arg("nsenter")
        .arg(format!("--net={}", place.host.path().display()))
        .arg(ctx.loader)
        .arg("run")
        .arg("--datastore")
        .arg(ctx.datastore)
        .args([
            "--node",
            place.node,
            "--attach-mode",
            hook.as_str(),
            "--detach-on-exit",
            // No BIRD: routes between hosts, where there are two, are static.
            "--networking-backend",
            "none",
        ])
        .arg("--pin-path")
        .arg(place.pin_path)
        // Its log goes into a pipe: no colour codes there.
        .env("NO_COLOR", "1")
        .privileged()
        .spawn_prefixed(prefix)
        .map_err(Into::into)
}

/// The pid of the process running `loader run … --pin-path <pin_path>` (argv[0] is the
/// loader's path: nsenter execs it as given).
pub fn agent_pid(loader: &Path, pin_path: &Path) -> Option<u32> {
    let loader = loader.as_os_str().as_bytes();
    let pins = pin_path.as_os_str().as_bytes();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let argv: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            (argv.first() == Some(&loader)
                && argv.get(1) == Some(&b"run".as_slice())
                && argv.contains(&pins))
            .then_some(pid)
        })
}

/// The copy of an agent's log lines (tracing's format: `<RFC 3339 UTC time>  INFO target:
/// message key=value …`).
pub struct AgentLog {
    pub path: PathBuf,
}

impl AgentLog {
    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    /// The complete lines after the first `offset` bytes.
    pub fn lines_from(&self, offset: u64) -> Vec<String> {
        let Ok(bytes) = std::fs::read(&self.path) else {
            return Vec::new();
        };
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        let text = String::from_utf8_lossy(&bytes[start..]);
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete.lines().map(str::to_owned).collect()
    }

    /// Waits up to `timeout` for a line after `offset` containing `what`.
    pub fn wait_for(&self, offset: u64, what: &str, timeout: Duration) -> Result<Option<String>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self
                .lines_from(offset)
                .into_iter()
                .find(|l| l.contains(what))
            {
                return Ok(Some(line));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            signals::sleep(Duration::from_millis(10))?;
        }
    }
}

/// The value of `key=value` in a log line (unquoted).
pub fn log_field<'l>(line: &'l str, key: &str) -> Option<&'l str> {
    line.split_whitespace().find_map(|word| {
        word.strip_prefix(key)?
            .strip_prefix('=')
            .map(|v| v.trim_matches('"'))
    })
}

/// The time of a log line: its first word, `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC).
pub fn log_time(line: &str) -> Option<SystemTime> {
    let word = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = word.split_once('T')?;
    let mut date = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (date.next()??, date.next()??, date.next()??);
    let mut time = time.splitn(3, ':');
    let hour: u64 = time.next()?.parse().ok()?;
    let minute: u64 = time.next()?.parse().ok()?;
    let seconds: f64 = time.next()?.parse().ok()?;
    // Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    let whole = days * 86_400 + hour * 3600 + minute * 60;
    Some(UNIX_EPOCH + Duration::from_secs(whole) + Duration::from_secs_f64(seconds))
}

/// Milliseconds from `from` to `to` (negative when `to` is earlier).
pub fn millis_between(from: SystemTime, to: SystemTime) -> f64 {
    match to.duration_since(from) {
        Ok(d) => d.as_secs_f64() * 1e3,
        Err(e) => -e.duration().as_secs_f64() * 1e3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iptables_rules_jump_miss_then_accept() {
        let text = iptables_rules("calibenchgen", "cali-fw-calibenchgen", 300);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "*filter");
        assert_eq!(lines[1], ":cali-fw-calibenchgen - [0:0]");
        assert_eq!(
            lines[2],
            "-A FORWARD -i calibenchgen -j cali-fw-calibenchgen"
        );
        assert_eq!(lines[3], "-A cali-fw-calibenchgen -s 198.19.0.0/32 -j DROP");
        assert_eq!(
            lines[3 + 299],
            "-A cali-fw-calibenchgen -s 198.19.1.43/32 -j DROP"
        );
        assert_eq!(lines[lines.len() - 2], "-A cali-fw-calibenchgen -j ACCEPT");
        assert_eq!(lines[lines.len() - 1], "COMMIT");
        assert_eq!(lines.len(), 3 + 300 + 2);
    }

    #[test]
    fn nft_list_jump_miss_then_accept() {
        let text = nft_ruleset(
            "calibenchgen",
            "cali-fw-calibenchgen",
            "cali-fw-calibenchgen-src",
            NftShape::List,
            300,
        );
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        assert_eq!(lines[0], "table inet calico_bench");
        assert_eq!(lines[1], "delete table inet calico_bench");
        assert_eq!(lines[2], "table inet calico_bench {");
        assert_eq!(lines[3], "chain forward {");
        assert_eq!(
            lines[4],
            "type filter hook forward priority filter; policy accept;"
        );
        assert_eq!(
            lines[5],
            "iifname \"calibenchgen\" jump cali-fw-calibenchgen"
        );
        assert_eq!(lines[7], "chain cali-fw-calibenchgen {");
        assert_eq!(lines[8], "ip saddr 198.19.0.0/32 drop");
        assert_eq!(lines[8 + 299], "ip saddr 198.19.1.43/32 drop");
        assert_eq!(lines[8 + 300], "accept");
        assert_eq!(&lines[lines.len() - 2..], ["}", "}"]);
        assert!(!text.contains("set "));
    }

    #[test]
    fn nft_set_holds_the_addresses_one_rule_matches() {
        let text = nft_ruleset("g", "cali-fw-g", "cali-fw-g-src", NftShape::Set, 300);
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        assert_eq!(lines[3], "set cali-fw-g-src {");
        assert_eq!(lines[4], "type ipv4_addr");
        assert_eq!(lines[5], "flags interval");
        assert_eq!(lines[6], "elements = {");
        assert_eq!(lines[7], "198.19.0.0/32,");
        assert_eq!(lines[7 + 299], "198.19.1.43/32,");
        let chain = lines
            .iter()
            .position(|l| *l == "chain cali-fw-g {")
            .expect("the chain");
        assert_eq!(lines[chain + 1], "ip saddr @cali-fw-g-src drop");
        assert_eq!(lines[chain + 2], "accept");
        assert_eq!(text.matches(" drop").count(), 1);
        // No elements: an empty set (nft rejects `elements = { }`).
        let empty = nft_ruleset("g", "cali-fw-g", "cali-fw-g-src", NftShape::Set, 0);
        assert!(!empty.contains("elements"));
        assert!(empty.contains("ip saddr @cali-fw-g-src drop"));
    }

    #[test]
    fn iptables_chain_names_fit() {
        // iptables chain names are at most 28 characters.
        let iface = format!("calibench{}", "sink");
        assert!(iface.len() <= 15);
        assert!(format!("cali-fw-{iface}").len() <= 28);
    }

    #[test]
    fn agent_log_lines_are_read() {
        let line = "2026-11-23T22:59:33.507652Z  INFO calico_loader::agent: policy compiled \
                    endpoints=2 elapsed_ms=17";
        assert_eq!(log_field(line, "elapsed_ms"), Some("17"));
        assert_eq!(log_field(line, "endpoints"), Some("2"));
        assert_eq!(log_field(line, "ms"), None);
        assert_eq!(log_field("… attached mode=\"tc\" x=1", "mode"), Some("tc"));
        let at = log_time(line).expect("a time");
        let secs = at
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs_f64();
        // 2026-11-23T22:59:33.507652Z
        assert!((secs - 1_795_474_773.507_652).abs() < 1e-5, "{secs}");
        assert_eq!(
            log_time("1970-01-01T00:00:01.5Z x"),
            Some(UNIX_EPOCH + Duration::from_millis(1500))
        );
        assert_eq!(log_time("not a time"), None);
        let t = UNIX_EPOCH + Duration::from_secs(10);
        assert!((millis_between(t, t + Duration::from_millis(5)) - 5.0).abs() < 1e-9);
        assert!((millis_between(t + Duration::from_millis(5), t) + 5.0).abs() < 1e-9);
    }
}
