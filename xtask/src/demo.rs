//! `cargo xtask demo`: a throwaway three-workload topology, the agent
//! attached to it, some traffic, and the counters that traffic moved.
//!
//! Network safety: everything happens in network namespaces created here
//! (`cdemo-*-<pid>`), with benchmarking and documentation addresses only
//! (`198.18.0.0/15`, `2001:db8::/32`). The veth pairs are created directly
//! inside those namespaces; nothing is added to the root namespace. All of it
//! is removed at the end, on failure and on Ctrl-C (RAII guards).

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    ops::ControlFlow,
    path::{Path, PathBuf},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use testbed::{ChildGuard, Cmd, Netns, TempDir, netns, output, privileges, signals};

pub use crate::topology::AttachMode;
use crate::{
    build, paths, root, setup, sockets,
    topology::{
        self, GATEWAY_V4, HOST_SIDE_LINK_LOCAL, HOST_SIDE_MAC, NetnsPair, PinGuard, Workload,
    },
};

const NODE: &str = "demo-node";
const WORKLOADS: u8 = 3;
const TCP_PORT: u16 = 7777;

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// How the agent attaches its programs.
    #[arg(long, value_enum, default_value_t = AttachMode::Tc)]
    pub attach_mode: AttachMode,
}

/// Internal: the demo's TCP exchange, run through sudo when not root.
#[derive(clap::Args, Debug)]
pub struct TcpEchoArgs {
    #[command(flatten)]
    pub pair: NetnsPair,
    #[arg(long)]
    pub message: String,
}

/// Everything the demo created. Fields drop in declaration order, which is
/// the teardown order: agent, pins, workload namespaces, host namespace,
/// datastore directory.
#[derive(Default)]
struct Demo {
    agent: Option<ChildGuard>,
    pins: Option<PinGuard>,
    workloads: Vec<Workload>,
    host: Option<Netns>,
    datastore: Option<TempDir>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        output::step("Cleaning up");
        output::explain(
            "Stopping the agent (it detaches its programs: --detach-on-exit), removing its\n\
             pins, then deleting the namespaces (which deletes the veth pairs in them).",
        );
    }
}

pub fn demo(args: &DemoArgs) -> Result<()> {
    // SIGINT is already caught (see main); also clean up when told to stop.
    signals::catch_signals(&[libc::SIGTERM, libc::SIGHUP]);
    let pid = std::process::id();
    let mode = args.attach_mode;

    output::step("calico-ebpf demo");
    output::explain(
        "Three workloads (network namespaces wl1..wl3) are wired to a \"host\" namespace\n\
         through veth pairs, the way Calico's CNI plugin does it: pure L3, a /32 (/128)\n\
         per workload, every workload routed via a fake gateway. calico-loader attaches\n\
         eBPF programs to the host-side interfaces and forwards between workloads itself.\n\
         Everything is torn down at the end (also on failure or Ctrl-C).",
    );

    root::ensure_can_become_root("the demo (namespaces, eBPF)")?;
    output::step("Setup and build");
    setup::setup()?;
    build::cargo_build(false)?;
    let loader = paths::built_binary("calico-loader", false);
    if !loader.is_file() {
        bail!("{} is missing after the build", loader.display());
    }

    let mut demo = Demo::default();
    let result = run(&mut demo, &loader, pid, mode);
    if let Err(err) = &result {
        output::warn(format!("the demo failed: {err:#}"));
    }
    drop(demo);
    let pins = topology::pin_path("demo", pid);
    // Not root: bpffs is not readable, so the pins are not looked at.
    topology::check_nothing_left(
        "cdemo-",
        pid,
        privileges::is_root().then_some(pins.as_path()),
    );
    if result.is_ok() {
        output::step("Done: the demo's namespaces, pins and files are gone");
    }
    result
}

fn run(demo: &mut Demo, loader: &Path, pid: u32, mode: AttachMode) -> Result<()> {
    mount_bpffs()?;
    create_topology(demo, pid, mode)?;
    let datastore = write_datastore(demo, pid)?;
    let agent = AgentCli {
        loader: loader.to_owned(),
        host_netns: demo.host.as_ref().expect("host created").path(),
        pin_path: topology::pin_path("demo", pid),
    };
    start_agent(demo, &agent, &datastore, mode)?;

    output::step("Endpoints");
    output::explain("The WorkloadEndpoints the agent found, and where it attached programs:");
    agent.dump("endpoints").run()?;
    output::step("Routes");
    output::explain(
        "The route map the programs look up: each workload address and the interface\n\
         (and MAC) to redirect to.",
    );
    agent.dump("routes").run()?;
    let before = agent.counters("Counters before any traffic")?;

    traffic(&demo.workloads)?;

    let after = agent.counters("Counters after the traffic")?;
    report_counter_difference(&before, &after)
}

/// How to reach the demo's agent with `calico-loader` subcommands.
struct AgentCli {
    loader: PathBuf,
    host_netns: PathBuf,
    pin_path: PathBuf,
}

impl AgentCli {
    /// `calico-loader` inside the host namespace, as root.
    fn loader(&self) -> Cmd {
        netns::nsenter(&self.host_netns, &self.loader)
    }

    /// `calico-loader dump WHAT --pin-path P`.
    fn dump(&self, what: &str) -> Cmd {
        self.loader()
            .args(["dump", what, "--pin-path"])
            .arg(&self.pin_path)
    }

    /// Shows the counters under a step header; returns them as JSON.
    fn counters(&self, title: &str) -> Result<String> {
        output::step(title);
        self.dump("counters").run()?;
        Ok(self
            .dump("counters")
            .args(["-o", "json"])
            .quiet()
            .output()?)
    }
}

fn mount_bpffs() -> Result<()> {
    output::step("bpffs");
    output::explain("The agent pins its maps and programs in the BPF filesystem.");
    if root::mount_bpffs()? {
        output::info("/sys/fs/bpf is mounted");
    }
    Ok(())
}

fn create_topology(demo: &mut Demo, pid: u32, mode: AttachMode) -> Result<()> {
    output::step("Creating the host namespace");
    output::explain(format!(
        "cdemo-host-{pid} plays the node: the agent runs in it and the host side of\n\
         every workload's veth pair lives in it."
    ));
    let host = demo
        .host
        .insert(Netns::create(format!("cdemo-host-{pid}"))?);
    host.ip(["link", "set", "lo", "up"]).run()?;

    output::step("Creating workloads wl1..wl3");
    output::explain(format!(
        "Each workload gets a namespace and a veth pair: `cali…` (MAC {HOST_SIDE_MAC}) on the\n\
         host side, `eth0` in the workload, with a /32 and a /128, a link-scoped route to\n\
         {GATEWAY_V4} and default routes via {GATEWAY_V4} / {HOST_SIDE_LINK_LOCAL}."
    ));
    for index in 1..=WORKLOADS {
        let netns = Netns::create(format!("cdemo-wl{index}-{pid}"))?;
        let workload = Workload {
            name: format!("wl{index}"),
            host_if: host_interface_name(&format!("demo{index}")),
            mac: format!("ca:fe:00:00:00:{index:02x}"),
            ipv4: Ipv4Addr::new(198, 18, 0, 10 + index),
            ipv6: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10 + u16::from(index)),
            netns,
        };
        // Push first, so the namespace is deleted even if wiring it fails.
        demo.workloads.push(workload);
        let workload = demo.workloads.last().expect("just pushed");
        wire_workload(demo.host.as_ref().expect("host created"), workload, mode)?;
    }
    Ok(())
}

/// Writes the workload endpoints; returns the datastore directory.
fn write_datastore(demo: &mut Demo, pid: u32) -> Result<PathBuf> {
    output::step("Writing the datastore");
    let datastore = demo.datastore.insert(TempDir::create(
        std::env::temp_dir().join(format!("calico-demo-{pid}")),
    )?);
    let mut yaml = crate::topology::allow_all_profile_yaml();
    yaml.extend(
        demo.workloads
            .iter()
            .map(|wl| wl.endpoint_yaml(NODE, "demo", "demo")),
    );
    let file = datastore.path().join("workloadendpoints.yaml");
    std::fs::write(&file, &yaml).with_context(|| format!("cannot write {}", file.display()))?;
    output::explain(format!(
        "The agent reads projectcalico.org/v3 resources from a directory. {}:",
        file.display()
    ));
    eprintln!("{yaml}");
    Ok(datastore.path().to_owned())
}

fn start_agent(
    demo: &mut Demo,
    agent: &AgentCli,
    datastore: &Path,
    mode: AttachMode,
) -> Result<()> {
    output::step(format!(
        "Starting the agent (attach mode {})",
        mode.as_str()
    ));
    output::explain(format!(
        "Only the network namespace is switched (nsenter --net), so the agent shares our\n\
         bpffs; its pins go to {}. Its log lines are prefixed [agent].",
        agent.pin_path.display()
    ));
    demo.pins = Some(PinGuard::new(
        &agent.loader,
        &agent.host_netns,
        &agent.pin_path,
    ));
    let child = topology::spawn_agent(
        &agent.loader,
        &agent.host_netns,
        datastore,
        NODE,
        mode,
        &agent.pin_path,
    )?;
    let guard = demo.agent.insert(ChildGuard::new("the agent", child, true));
    topology::wait_for_attachment(
        guard,
        agent.dump("endpoints").args(["-o", "json"]),
        &format!("{WORKLOADS} attached endpoints"),
        &format!("to {WORKLOADS} endpoints"),
        Duration::from_millis(500),
        |endpoints| {
            let attached = endpoints
                .iter()
                .filter(|e| e["attached"].as_bool() == Some(true))
                .count();
            if attached >= usize::from(WORKLOADS) {
                ControlFlow::Break(format!("{attached} endpoints attached"))
            } else {
                ControlFlow::Continue(format!(
                    "{} endpoints known, {attached} attached",
                    endpoints.len()
                ))
            }
        },
    )
}

fn traffic(workloads: &[Workload]) -> Result<()> {
    let [wl1, wl2, wl3] = workloads else {
        bail!("expected {WORKLOADS} workloads");
    };
    output::step("Traffic");
    output::explain("IPv4 ping wl1 → wl2 and wl1 → wl3, IPv6 ping wl2 → wl3:");
    ping(wl1, &wl2.ipv4.to_string(), false)?;
    ping(wl1, &wl3.ipv4.to_string(), false)?;
    ping(wl2, &wl3.ipv6.to_string(), true)?;
    output::explain(format!(
        "A TCP exchange: an echo server in wl3 ({}:{TCP_PORT}), a client in wl1:",
        wl3.ipv4
    ));
    let tcp = TcpEchoArgs {
        pair: NetnsPair {
            server_netns: wl3.netns.name().to_owned(),
            client_netns: wl1.netns.name().to_owned(),
            addr: SocketAddr::new(wl3.ipv4.into(), TCP_PORT),
        },
        message: format!("hello {} from {}", wl3.name, wl1.name),
    };
    if privileges::is_root() {
        tcp_echo(&tcp)
    } else {
        // Entering a namespace needs root: run this same exchange via sudo.
        tcp.pair
            .xtask_as_root("tcp-echo")?
            .args(["--message", &tcp.message])
            .run()?;
        Ok(())
    }
}

/// `cali` + 11 hex characters, like Calico's names (15 characters at most).
fn host_interface_name(seed: &str) -> String {
    // FNV-1a, then a SplitMix64 finalizer so similar seeds give dissimilar
    // names; it only needs to be small and deterministic.
    let mut hash = seed.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^= hash >> 31;
    format!("cali{hash:016x}")[..15].to_owned()
}

fn wire_workload(host: &Netns, wl: &Workload, mode: AttachMode) -> Result<()> {
    wl.wire(host)?;
    if mode == AttachMode::Xdp {
        wl.ethtool_for_xdp().run()?;
    }
    Ok(())
}

fn ping(from: &Workload, to: &str, ipv6: bool) -> Result<()> {
    signals::check_interrupted()?;
    let mut cmd = from.netns.command("ping");
    if ipv6 {
        cmd = cmd.arg("-6");
    }
    cmd.args(["-c", "3", "-i", "0.2", "-W", "2", to])
        .run()
        .with_context(|| format!("{} could not reach {to}", from.name))
}

/// A TCP echo: server thread in one namespace, client thread in another.
pub fn tcp_echo(args: &TcpEchoArgs) -> Result<()> {
    const TIMEOUT: Duration = Duration::from_secs(5);
    let addr = args.pair.addr;
    let (ready_tx, ready_rx) = mpsc::channel();

    let server = sockets::spawn_in_netns(&args.pair.server_netns, move || -> Result<()> {
        let (stream, peer) =
            sockets::accept_one(addr, &ready_tx, TIMEOUT, Duration::from_millis(20))?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        let mut line = String::new();
        BufReader::new(&stream)
            .read_line(&mut line)
            .context("server: reading the request")?;
        eprintln!(
            "    server {addr} got from {peer}: {:?}, echoing it",
            line.trim_end()
        );
        (&stream)
            .write_all(line.as_bytes())
            .context("server: writing the echo")?;
        Ok(())
    });
    if ready_rx.recv_timeout(TIMEOUT).is_err() {
        sockets::join(server, "server")?;
        bail!("the server did not start");
    }

    let message = args.message.clone();
    let client = sockets::spawn_in_netns(&args.pair.client_netns, move || -> Result<String> {
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT)
            .with_context(|| format!("client: cannot connect to {addr}"))?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        eprintln!(
            "    client {} sends: {message:?}",
            stream.local_addr().map_or("?".into(), |a| a.to_string())
        );
        (&stream)
            .write_all(format!("{message}\n").as_bytes())
            .context("client: sending")?;
        let mut reply = String::new();
        BufReader::new(&stream)
            .read_line(&mut reply)
            .context("client: reading the echo")?;
        Ok(reply.trim_end().to_owned())
    });
    let client_result = sockets::join(client, "client");
    let server_result = sockets::join(server, "server");
    let reply = client_result?;
    server_result?;
    eprintln!("    client got back: {reply:?}");
    if reply != args.message {
        bail!("the echo differs from what was sent: {reply:?}");
    }
    Ok(())
}

/// Sums forwarded packets per endpoint before and after, and prints the rise.
fn report_counter_difference(before: &str, after: &str) -> Result<()> {
    let before = forwarded_packets(before).context("parsing the counters before")?;
    let after = forwarded_packets(after).context("parsing the counters after")?;
    output::step("What the traffic did to the counters");
    let width = after.keys().map(String::len).max().unwrap_or(8).max(8);
    eprintln!(
        "    {:width$}  {:>10}  {:>10}  {:>8}",
        "endpoint", "before", "after", "rise"
    );
    let mut total = 0u64;
    for (name, &now) in &after {
        let then = before.get(name).copied().unwrap_or(0);
        let rise = now.saturating_sub(then);
        total += rise;
        eprintln!(
            "    {name:width$}  {then:>10}  {now:>10}  {:>8}",
            format!("+{rise}")
        );
    }
    if total > 0 {
        output::info(format!(
            "forwarded_packets rose by {total}: those packets were forwarded by the eBPF \
             programs, workload to workload, without the host's routing stack"
        ));
    } else {
        output::warn(
            "forwarded_packets did not rise: the traffic did not go through the eBPF \
             fast path (see the [agent] lines and `calico-loader dump counters` drops)",
        );
    }
    Ok(())
}

/// `name → forwarded_packets` from `dump counters -o json`.
fn forwarded_packets(json: &str) -> Result<BTreeMap<String, u64>> {
    let value: Value = serde_json::from_str(json)?;
    let Value::Array(entries) = value else {
        bail!("expected a JSON array");
    };
    let mut map = BTreeMap::new();
    for entry in entries {
        let name = entry["name"]
            .as_str()
            .map_or_else(|| format!("ifindex {}", entry["ifindex"]), str::to_owned);
        *map.entry(name).or_default() += entry["forwarded_packets"].as_u64().unwrap_or(0);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_interface_names_look_like_calicos() {
        let names: Vec<String> = (1..=3)
            .map(|i| host_interface_name(&format!("demo{i}")))
            .collect();
        for name in &names {
            assert_eq!(name.len(), 15, "{name}");
            assert!(name.starts_with("cali"), "{name}");
            assert!(name[4..].chars().all(|c| c.is_ascii_hexdigit()), "{name}");
        }
        assert_ne!(names[0], names[1]);
        assert_ne!(names[1], names[2]);
        assert_eq!(names[0], host_interface_name("demo1"), "deterministic");
    }

    #[test]
    fn forwarded_packets_are_summed_per_endpoint() {
        let json = r#"[
            {"ifindex": 2, "name": "wl1", "forwarded_packets": 3, "drops": {}},
            {"ifindex": 3, "name": "wl2", "forwarded_packets": 4},
            {"ifindex": 4, "forwarded_packets": 5}
        ]"#;
        let map = forwarded_packets(json).expect("valid counters");
        assert_eq!(map["wl1"], 3);
        assert_eq!(map["wl2"], 4);
        assert_eq!(map["ifindex 4"], 5);
        assert!(forwarded_packets("{}").is_err());
    }
}
