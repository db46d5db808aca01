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
    fmt::Write as _,
    fs::File,
    io::{BufRead, BufReader, IsTerminal as _, Write},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{
    build, setup,
    util::{self, ChildGuard, Cmd, Netns, TempDir},
};

const NODE: &str = "demo-node";
const WORKLOADS: u8 = 3;
/// The MAC every host-side workload interface gets, as in Calico.
const HOST_SIDE_MAC: &str = "ee:ee:ee:ee:ee:ee";
/// The IPv6 link-local address the kernel derives from `HOST_SIDE_MAC`.
const HOST_SIDE_LINK_LOCAL: &str = "fe80::ecee:eeff:feee:eeee";
/// Calico's fake next hop for IPv4 workloads.
const GATEWAY_V4: &str = "169.254.1.1";
const TCP_PORT: u16 = 7777;
const ATTACH_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// TC (clsact) programs on the host-side interfaces.
    Tc,
    /// XDP programs on the host-side interfaces.
    Xdp,
}

impl AttachMode {
    fn as_str(self) -> &'static str {
        match self {
            Self::Tc => "tc",
            Self::Xdp => "xdp",
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// How the agent attaches its programs.
    #[arg(long, value_enum, default_value_t = AttachMode::Tc)]
    pub attach_mode: AttachMode,
}

/// Internal: the demo's TCP exchange, run through sudo when not root.
#[derive(clap::Args, Debug)]
pub struct TcpEchoArgs {
    #[arg(long)]
    pub server_netns: String,
    #[arg(long)]
    pub client_netns: String,
    #[arg(long)]
    pub addr: SocketAddr,
    #[arg(long)]
    pub message: String,
}

/// One workload: its namespace and how it is wired to the host namespace.
struct Workload {
    index: u8,
    netns: Netns,
    host_if: String,
    mac: String,
    ipv4: Ipv4Addr,
    ipv6: Ipv6Addr,
}

impl Workload {
    fn name(&self) -> String {
        format!("wl{}", self.index)
    }

    fn endpoint_name(&self) -> String {
        format!("{NODE}-cni-{}-eth0", self.name())
    }
}

/// Removes the agent's pins: `calico-loader cleanup` (inside the host
/// namespace, where the interfaces are), then `rm -rf` as a fallback.
struct PinGuard {
    loader: PathBuf,
    host_netns: PathBuf,
    pin_path: PathBuf,
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        let cleanup = nsenter(&self.host_netns, &self.loader)
            .arg("cleanup")
            .arg("--pin-path")
            .arg(&self.pin_path)
            .cleanup();
        if let Err(err) = cleanup.run() {
            util::warn(format!("{err:#}; removing the pins by hand"));
        }
        let rm = Cmd::new("rm").arg("-rf").arg(&self.pin_path);
        if let Err(err) = rm.privileged().cleanup().run() {
            util::warn(format!("{err:#}"));
        }
    }
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
        util::step("Cleaning up");
        util::explain(
            "Stopping the agent (it detaches its programs: --detach-on-exit), removing its\n\
             pins, then deleting the namespaces (which deletes the veth pairs in them).",
        );
    }
}

pub fn demo(args: &DemoArgs) -> Result<()> {
    // SIGINT is already caught (see main); also clean up when told to stop.
    util::catch_signals(&[libc::SIGTERM, libc::SIGHUP]);
    let pid = std::process::id();
    let mode = args.attach_mode;

    util::step("calico-ebpf demo");
    util::explain(
        "Three workloads (network namespaces wl1..wl3) are wired to a \"host\" namespace\n\
         through veth pairs, the way Calico's CNI plugin does it: pure L3, a /32 (/128)\n\
         per workload, every workload routed via a fake gateway. calico-loader attaches\n\
         eBPF programs to the host-side interfaces and forwards between workloads itself.\n\
         Everything is torn down at the end (also on failure or Ctrl-C).",
    );

    util::ensure_can_become_root("the demo (namespaces, eBPF)")?;
    util::step("Setup and build");
    setup::setup()?;
    build::cargo_build(false)?;
    let loader = util::built_binary("calico-loader", false);
    if !loader.is_file() {
        bail!("{} is missing after the build", loader.display());
    }

    let mut demo = Demo::default();
    let result = run(&mut demo, &loader, pid, mode);
    if let Err(err) = &result {
        util::warn(format!("the demo failed: {err:#}"));
    }
    drop(demo);
    check_nothing_left(pid);
    if result.is_ok() {
        util::step("Done: the demo's namespaces, pins and files are gone");
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
        pin_path: PathBuf::from(format!("/sys/fs/bpf/calico-demo-{pid}")),
    };
    start_agent(demo, &agent, &datastore, mode)?;

    util::step("Endpoints");
    util::explain("The WorkloadEndpoints the agent found, and where it attached programs:");
    agent.dump("endpoints").run()?;
    util::step("Routes");
    util::explain(
        "The route map the programs look up: each workload address and the interface\n\
         (and MAC) to redirect to.",
    );
    agent.dump("routes").run()?;
    util::step("Counters before any traffic");
    agent.dump("counters").run()?;
    let before = agent
        .dump("counters")
        .args(["-o", "json"])
        .quiet()
        .output()?;

    traffic(&demo.workloads)?;

    util::step("Counters after the traffic");
    agent.dump("counters").run()?;
    let after = agent
        .dump("counters")
        .args(["-o", "json"])
        .quiet()
        .output()?;
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
        nsenter(&self.host_netns, &self.loader)
    }

    /// `calico-loader dump WHAT --pin-path P`.
    fn dump(&self, what: &str) -> Cmd {
        self.loader()
            .args(["dump", what, "--pin-path"])
            .arg(&self.pin_path)
    }
}

fn mount_bpffs() -> Result<()> {
    util::step("bpffs");
    util::explain("The agent pins its maps and programs in the BPF filesystem.");
    let mounted = Cmd::new("mountpoint")
        .args(["-q", "/sys/fs/bpf"])
        .status()?
        .success();
    if mounted {
        util::info("/sys/fs/bpf is mounted");
        Ok(())
    } else {
        Cmd::new("mount")
            .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
            .privileged()
            .run()
    }
}

fn create_topology(demo: &mut Demo, pid: u32, mode: AttachMode) -> Result<()> {
    util::step("Creating the host namespace");
    util::explain(format!(
        "cdemo-host-{pid} plays the node: the agent runs in it and the host side of\n\
         every workload's veth pair lives in it."
    ));
    let host = demo
        .host
        .insert(Netns::create(format!("cdemo-host-{pid}"))?);
    host.ip(["link", "set", "lo", "up"]).run()?;

    util::step("Creating workloads wl1..wl3");
    util::explain(format!(
        "Each workload gets a namespace and a veth pair: `cali…` (MAC {HOST_SIDE_MAC}) on the\n\
         host side, `eth0` in the workload, with a /32 and a /128, a link-scoped route to\n\
         {GATEWAY_V4} and default routes via {GATEWAY_V4} / {HOST_SIDE_LINK_LOCAL}."
    ));
    for index in 1..=WORKLOADS {
        let netns = Netns::create(format!("cdemo-wl{index}-{pid}"))?;
        let workload = Workload {
            index,
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
    util::step("Writing the datastore");
    let datastore = demo.datastore.insert(TempDir::create(
        std::env::temp_dir().join(format!("calico-demo-{pid}")),
    )?);
    let yaml = workload_endpoints_yaml(&demo.workloads);
    let file = datastore.path().join("workloadendpoints.yaml");
    std::fs::write(&file, &yaml).with_context(|| format!("cannot write {}", file.display()))?;
    util::explain(format!(
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
    util::step(format!(
        "Starting the agent (attach mode {})",
        mode.as_str()
    ));
    util::explain(format!(
        "Only the network namespace is switched (nsenter --net), so the agent shares our\n\
         bpffs; its pins go to {}. Its log lines are prefixed [agent].",
        agent.pin_path.display()
    ));
    demo.pins = Some(PinGuard {
        loader: agent.loader.clone(),
        host_netns: agent.host_netns.clone(),
        pin_path: agent.pin_path.clone(),
    });
    let mut run = agent.loader();
    if !std::io::stderr().is_terminal() {
        // Its log lines end up in a file or pipe: no colour codes there.
        run = run.env("NO_COLOR", "1");
    }
    let child = run
        .arg("run")
        .arg("--datastore")
        .arg(datastore)
        .args([
            "--node",
            NODE,
            "--attach-mode",
            mode.as_str(),
            "--detach-on-exit",
        ])
        .arg("--pin-path")
        .arg(&agent.pin_path)
        .spawn_prefixed("[agent]")?;
    let guard = demo.agent.insert(ChildGuard::new("the agent", child, true));
    wait_for_attachment(guard, agent)
}

fn traffic(workloads: &[Workload]) -> Result<()> {
    let [wl1, wl2, wl3] = workloads else {
        bail!("expected {WORKLOADS} workloads");
    };
    util::step("Traffic");
    util::explain("IPv4 ping wl1 → wl2 and wl1 → wl3, IPv6 ping wl2 → wl3:");
    ping(wl1, &wl2.ipv4.to_string(), false)?;
    ping(wl1, &wl3.ipv4.to_string(), false)?;
    ping(wl2, &wl3.ipv6.to_string(), true)?;
    util::explain(format!(
        "A TCP exchange: an echo server in wl3 ({}:{TCP_PORT}), a client in wl1:",
        wl3.ipv4
    ));
    let tcp = TcpEchoArgs {
        server_netns: wl3.netns.name().to_owned(),
        client_netns: wl1.netns.name().to_owned(),
        addr: SocketAddr::new(wl3.ipv4.into(), TCP_PORT),
        message: format!("hello {} from {}", wl3.name(), wl1.name()),
    };
    if util::is_root() {
        tcp_echo(&tcp)
    } else {
        // Entering a namespace needs root: run this same exchange via sudo.
        let exe = std::env::current_exe().context("cannot find the xtask binary")?;
        Cmd::new(exe)
            .arg("tcp-echo")
            .args(["--server-netns", &tcp.server_netns])
            .args(["--client-netns", &tcp.client_netns])
            .args(["--addr", &tcp.addr.to_string()])
            .args(["--message", &tcp.message])
            .privileged()
            .run()
    }
}

/// `nsenter --net=NETNS PROGRAM` as root.
fn nsenter(netns: &Path, program: &Path) -> Cmd {
    Cmd::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .arg(program)
        .privileged()
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
    let wl_ns = wl.netns.name();
    util::info(format!(
        "{}: {} (host side) <-> eth0 in {wl_ns}, {} / {}",
        wl.name(),
        wl.host_if,
        wl.ipv4,
        wl.ipv6
    ));
    // Created inside the host namespace, peer moved straight into the
    // workload namespace: nothing ever appears in the root namespace.
    host.ip([
        "link",
        "add",
        &wl.host_if,
        "address",
        HOST_SIDE_MAC,
        "type",
        "veth",
    ])
    .args(["peer", "name", "eth0", "address", &wl.mac, "netns", wl_ns])
    .run()?;
    host.ip(["link", "set", &wl.host_if, "up"]).run()?;
    let ip = |args: &[&str]| wl.netns.ip(args).run();
    ip(&["link", "set", "lo", "up"])?;
    ip(&["link", "set", "eth0", "up"])?;
    ip(&["addr", "add", &format!("{}/32", wl.ipv4), "dev", "eth0"])?;
    ip(&[
        "-6",
        "addr",
        "add",
        &format!("{}/128", wl.ipv6),
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
    if mode == AttachMode::Xdp {
        // Frames XDP-redirected into a veth are only received when the
        // peer has NAPI, which GRO turns on; and a redirected frame loses
        // the skb's pending-checksum state, so the workload must fill in
        // its checksums itself (transmit checksum offload off).
        wl.netns
            .exec("ethtool")
            .args(["-K", "eth0", "gro", "on", "tx", "off"])
            .run()?;
    }
    Ok(())
}

fn workload_endpoints_yaml(workloads: &[Workload]) -> String {
    let mut yaml = String::new();
    for wl in workloads {
        let _ = write!(
            yaml,
            "---\n\
             apiVersion: projectcalico.org/v3\n\
             kind: WorkloadEndpoint\n\
             metadata:\n  \
               name: {name}\n  \
               namespace: demo\n  \
               labels: {{app: demo}}\n\
             spec:\n  \
               node: {NODE}\n  \
               orchestrator: cni\n  \
               workload: {workload}\n  \
               endpoint: eth0\n  \
               interfaceName: {iface}\n  \
               mac: \"{mac}\"\n  \
               ipNetworks: [\"{v4}/32\", \"{v6}/128\"]\n",
            name = wl.endpoint_name(),
            workload = wl.name(),
            iface = wl.host_if,
            mac = wl.mac,
            v4 = wl.ipv4,
            v6 = wl.ipv6,
        );
    }
    yaml
}

/// Polls `dump endpoints -o json` until the three endpoints are attached.
fn wait_for_attachment(guard: &mut ChildGuard, agent: &AgentCli) -> Result<()> {
    let dump = agent.dump("endpoints").args(["-o", "json"]);
    util::info(format!(
        "waiting up to {}s for {WORKLOADS} attached endpoints: polling `{}`",
        ATTACH_TIMEOUT.as_secs(),
        dump.display()
    ));
    let dump = dump.quiet();
    let deadline = Instant::now() + ATTACH_TIMEOUT;
    let mut last: String;
    loop {
        if let Some(status) = guard.try_wait()? {
            bail!("the agent exited early ({status}); see its [agent] lines above");
        }
        let output = dump.capture()?;
        if output.status.success() {
            match serde_json::from_slice::<Value>(&output.stdout) {
                Ok(Value::Array(endpoints)) => {
                    let attached = endpoints
                        .iter()
                        .filter(|e| e["attached"].as_bool() == Some(true))
                        .count();
                    if attached >= usize::from(WORKLOADS) {
                        util::info(format!("{attached} endpoints attached"));
                        return Ok(());
                    }
                    last = format!("{} endpoints known, {attached} attached", endpoints.len());
                }
                Ok(other) => last = format!("unexpected JSON (not an array): {other}"),
                Err(err) => last = format!("invalid JSON: {err}"),
            }
        } else {
            last = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        }
        if Instant::now() >= deadline {
            bail!(
                "the agent did not attach to {WORKLOADS} endpoints within {}s (last: {last})",
                ATTACH_TIMEOUT.as_secs()
            );
        }
        util::sleep(Duration::from_millis(500))?;
    }
}

fn ping(from: &Workload, to: &str, ipv6: bool) -> Result<()> {
    util::bail_if_interrupted()?;
    let mut cmd = from.netns.exec("ping");
    if ipv6 {
        cmd = cmd.arg("-6");
    }
    cmd.args(["-c", "3", "-i", "0.2", "-W", "2", to])
        .run()
        .with_context(|| format!("{} could not reach {to}", from.name()))
}

/// Runs `f` on a new thread that has entered network namespace `netns`:
/// sockets it creates live in that namespace.
fn spawn_in_netns<T, F>(netns: &str, f: F) -> thread::JoinHandle<Result<T>>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let path = util::netns_path(netns);
    thread::spawn(move || {
        let file = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: setns on a valid namespace fd; it only affects this thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("cannot enter {}", path.display()));
        }
        f()
    })
}

fn join<T>(handle: thread::JoinHandle<Result<T>>, what: &str) -> Result<T> {
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("the {what} thread panicked"))?
}

/// A TCP echo: server thread in one namespace, client thread in another.
pub fn tcp_echo(args: &TcpEchoArgs) -> Result<()> {
    const TIMEOUT: Duration = Duration::from_secs(5);
    let addr = args.addr;
    let (ready_tx, ready_rx) = mpsc::channel();

    let server = spawn_in_netns(&args.server_netns, move || -> Result<()> {
        let listener =
            TcpListener::bind(addr).with_context(|| format!("server: cannot bind {addr}"))?;
        listener.set_nonblocking(true)?;
        let _ = ready_tx.send(());
        let deadline = Instant::now() + TIMEOUT;
        let (stream, peer) = loop {
            match listener.accept() {
                Ok(accepted) => break accepted,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        bail!("server: no connection within {TIMEOUT:?}");
                    }
                    util::sleep(Duration::from_millis(20))?;
                }
                Err(e) => return Err(e).context("server: accept failed"),
            }
        };
        stream.set_nonblocking(false)?;
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
        join(server, "server")?;
        bail!("the server did not start");
    }

    let message = args.message.clone();
    let client = spawn_in_netns(&args.client_netns, move || -> Result<String> {
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
    let client_result = join(client, "client");
    let server_result = join(server, "server");
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
    util::step("What the traffic did to the counters");
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
        util::info(format!(
            "forwarded_packets rose by {total}: those packets were forwarded by the eBPF \
             programs, workload to workload, without the host's routing stack"
        ));
    } else {
        util::warn(
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

/// Double-checks that the teardown left none of our namespaces or pins.
fn check_nothing_left(pid: u32) {
    let suffix = format!("-{pid}");
    let leftovers: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("cdemo-") && name.ends_with(&suffix))
        .collect();
    if !leftovers.is_empty() {
        util::warn(format!(
            "namespaces left behind: {} (remove with `ip netns del NAME`)",
            leftovers.join(" ")
        ));
    }
    let pins = PathBuf::from(format!("/sys/fs/bpf/calico-demo-{pid}"));
    if util::is_root() && pins.exists() {
        util::warn(format!("pins left behind: rm -rf {}", pins.display()));
    }
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
