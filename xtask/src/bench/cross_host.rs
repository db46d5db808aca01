//! The cross-host setups (`x-*`): gen on host A sends to the sink on host B through the
//! fabric, a veth pair between the hosts' data interfaces. Static routes to each other's
//! workload block stand in for BIRD (the bench measures forwarding, not BGP). The rounds
//! measure these setups with the same measurements as the one-host ones (`measure`); this
//! module builds their topology and datastore and runs an agent on each host.
//!
//! Network safety: four namespaces of our own (`cbench-xa-<pid>`, `cbench-xb-<pid>`,
//! `cbench-xgen-<pid>`, `cbench-xsink-<pid>`), the veths created inside them, addresses from
//! `198.18.0.0/15` and `2001:db8::/32` only.

use std::{
    ops::ControlFlow,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use testbed::{ChildGuard, Netns, output};

use super::{
    Ctx, Plan, Setup, frames,
    loader::{NAMESPACE, dump_cmd},
    topology::{
        AgentLog, AgentPlace, IperfServer, Topology, UdpSink, agent_log, create_workload,
        spawn_agent, stop_agent,
    },
};
use crate::{
    root,
    topology::{self as shared, AttachMode, PinGuard},
};

/// The setups, in the order each round runs them: `x-linux` first, the baseline of the others.
pub const SETUPS: [Setup; 3] = [
    Setup::CrossLinux,
    Setup::CrossOurs(AttachMode::Tc),
    Setup::CrossOurs(AttachMode::Xdp),
];

/// `--quick` checks that our programs carry the traffic across hosts, without the baseline.
pub const SETUPS_QUICK: [Setup; 2] = [
    Setup::CrossOurs(AttachMode::Tc),
    Setup::CrossOurs(AttachMode::Xdp),
];

/// The node names of the agents on host A (gen's) and host B (the sink's).
pub const NODE_A: &str = "bench-a";
pub const NODE_B: &str = "bench-b";
/// Each host's data interface: its end of the fabric veth. The agents' default
/// `--data-interfaces` pattern matches it.
pub const FABRIC_IF: &str = "eth0";
/// The pins of the data-interface programs under `<pins>/links/<FABRIC_IF>/`.
pub const FABRIC_HOOKS: [&str; 2] = ["data_tc_ingress", "data_xdp"];

/// One end of the fabric.
struct FabricEnd {
    mac: &'static str,
    v4: &'static str,
    v6: &'static str,
    /// The workload block routed to this host (as BIRD would install it on the other).
    block_v4: &'static str,
    block_v6: &'static str,
}

const FABRIC_A: FabricEnd = FabricEnd {
    mac: "02:00:00:00:fe:0a",
    v4: "198.19.254.1",
    v6: "2001:db8:fe::1",
    block_v4: "198.18.1.0/26",
    block_v6: "2001:db8:0:1::/122",
};
const FABRIC_B: FabricEnd = FabricEnd {
    mac: "02:00:00:00:fe:0b",
    v4: "198.19.254.2",
    v6: "2001:db8:fe::2",
    block_v4: "198.18.2.0/26",
    block_v6: "2001:db8:0:2::/122",
};

/// The pins of the agents on host A and host B.
pub fn pin_paths(pid: u32) -> [PathBuf; 2] {
    [
        shared::pin_path("bench-xa", pid),
        shared::pin_path("bench-xb", pid),
    ]
}

/// Everything the cross-host setups share over the rounds. Fields drop in declaration order:
/// the pins (cleaned up inside the hosts' namespaces), the sink's servers, then the namespaces.
pub struct CrossHost {
    _pins_b: PinGuard,
    _pins_a: PinGuard,
    _udp_sink: UdpSink,
    _iperf: IperfServer,
    pub topo: Topology,
    pub pins_a: PathBuf,
    pub pins_b: PathBuf,
    pub datastore: PathBuf,
    pub trafgen_config: PathBuf,
}

impl CrossHost {
    /// Builds the topology, writes the datastore and gen's trafgen configuration, starts the
    /// sink's iperf3 server and UDP socket.
    pub fn prepare(plan: &Plan, loader: &Path, scratch: &Path, pid: u32) -> Result<Self> {
        let topo = create_topology(pid)?;
        let dir = scratch.join("cross-host");
        let datastore = dir.join("datastore");
        write_datastore(&topo, &datastore)?;
        let trafgen_config = frames::write_trafgen_config(&dir, &topo, plan.generator_cpu)?;
        let iperf = IperfServer::start(&topo)?;
        let udp_sink = UdpSink::start(&topo)?;
        let [pins_a, pins_b] = pin_paths(pid);
        Ok(Self {
            _pins_b: PinGuard::new(loader, &topo.sink_host().path(), &pins_b),
            _pins_a: PinGuard::new(loader, &topo.host.path(), &pins_a),
            _udp_sink: udp_sink,
            _iperf: iperf,
            topo,
            pins_a,
            pins_b,
            datastore,
            trafgen_config,
        })
    }
}

/// Host A with gen (198.18.1.1), host B with the sink (198.18.2.1), the fabric between them.
pub fn create_topology(pid: u32) -> Result<Topology> {
    output::step("Creating the cross-host topology");
    output::explain(format!(
        "cbench-xa-{pid} and cbench-xb-{pid} play two nodes, joined by a veth pair between their\n\
         data interfaces ({FABRIC_IF}, {} and {}; no bridge: it would add the same cost to every\n\
         setup, and XDP frames cannot cross it). Each routes the other's workload block via the\n\
         other's fabric address (static routes standing in for BIRD), with permanent neighbour\n\
         entries: no ARP in any setup. gen (cbench-xgen-{pid}) is on host A, the sink\n\
         (cbench-xsink-{pid}) on host B.",
        FABRIC_A.v4, FABRIC_B.v4
    ));
    let host_a = create_host(&format!("cbench-xa-{pid}"))?;
    let host_b = create_host(&format!("cbench-xb-{pid}"))?;
    host_a.add_veth(FABRIC_IF, FABRIC_A.mac, &host_b, FABRIC_IF, FABRIC_B.mac)?;
    host_b.ip(["link", "set", FABRIC_IF, "up"]).run()?;
    for (host, own, peer) in [
        (&host_a, &FABRIC_A, &FABRIC_B),
        (&host_b, &FABRIC_B, &FABRIC_A),
    ] {
        let ip = |args: &[&str]| host.ip(args).run();
        ip(&["addr", "add", &format!("{}/24", own.v4), "dev", FABRIC_IF])?;
        ip(&[
            "-6",
            "addr",
            "add",
            &format!("{}/64", own.v6),
            "dev",
            FABRIC_IF,
            "nodad",
        ])?;
        for (addr, block) in [(peer.v4, peer.block_v4), (peer.v6, peer.block_v6)] {
            ip(&[
                "neigh",
                "replace",
                addr,
                "lladdr",
                peer.mac,
                "dev",
                FABRIC_IF,
                "nud",
                "permanent",
            ])?;
            ip(&["route", "add", block, "via", addr, "dev", FABRIC_IF])?;
        }
    }
    let gen_wl = create_workload(&host_a, pid, "xgen", 1, 1)?;
    let sink = create_workload(&host_b, pid, "xsink", 2, 1)?;
    Ok(Topology::new(gen_wl, sink, host_a, Some(host_b), pid))
}

/// A host namespace: loopback up, IPv4 forwarding on (as on a Calico host).
fn create_host(name: &str) -> Result<Netns> {
    let host = Netns::create(name)?;
    host.ip(["link", "set", "lo", "up"]).run()?;
    host.command("sysctl")
        .args(["-qw", "net.ipv4.ip_forward=1"])
        .run()?;
    Ok(host)
}

/// The WorkloadEndpoints of gen (on node A) and the sink (on node B), with the allow-all
/// profile: both agents read this directory.
pub fn write_datastore(topo: &Topology, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut yaml = shared::allow_all_profile_yaml();
    yaml.push_str(
        &topo
            .gen_wl
            .endpoint_yaml(NODE_A, NAMESPACE, &topo.gen_wl.name),
    );
    yaml.push_str(&topo.sink.endpoint_yaml(NODE_B, NAMESPACE, &topo.sink.name));
    let file = dir.join("workloadendpoints.yaml");
    std::fs::write(&file, yaml).with_context(|| format!("cannot write {}", file.display()))?;
    output::info(format!(
        "WorkloadEndpoints for gen (node {NODE_A}) and the sink (node {NODE_B}): {}",
        file.display()
    ));
    Ok(())
}

/// The agents of `x-ours-<hook>`: one on each host, with its own node name and pins, both
/// following the same datastore directory.
pub struct HostAgents {
    /// Dropped (stopped) first: B, then A.
    b: ChildGuard,
    a: ChildGuard,
    pub hook: AttachMode,
}

impl HostAgents {
    /// Starts both agents and waits until each has attached to its workload and its fabric
    /// interface.
    pub fn start(ctx: &Ctx<'_>, hook: AttachMode) -> Result<Self> {
        let places = places(ctx)?;
        let [place_a, place_b] = &places;
        let logs = [
            agent_log(ctx, &format!("{NODE_A}-{}", hook.as_str())),
            agent_log(ctx, &format!("{NODE_B}-{}", hook.as_str())),
        ];
        let spawn = |place: &AgentPlace<'_>, log: &AgentLog, prefix: &str| -> Result<ChildGuard> {
            let child = spawn_agent(ctx, place, hook, &log.path, prefix)?;
            Ok(ChildGuard::new(
                format!("the agent of node {} ({})", place.node, hook.as_str()),
                child,
                true,
            ))
        };
        let mut a = spawn(place_a, &logs[0], "[agent A]")?;
        let mut b = spawn(place_b, &logs[1], "[agent B]")?;
        wait_for_attachment(&mut a, ctx, place_a, &ctx.topo.gen_wl.host_if, hook)?;
        wait_for_attachment(&mut b, ctx, place_b, &ctx.topo.sink.host_if, hook)?;
        Ok(Self { b, a, hook })
    }

    /// Stops both (B first); each detaches and removes its pins.
    pub fn stop(mut self, ctx: &Ctx<'_>) -> Result<()> {
        let places = places(ctx)?;
        let stopped_b = stop_agent(&mut self.b, ctx.loader, &places[1]);
        let stopped_a = stop_agent(&mut self.a, ctx.loader, &places[0]);
        stopped_b.and(stopped_a)
    }
}

/// Where the two agents run.
fn places<'a>(ctx: &Ctx<'a>) -> Result<[AgentPlace<'a>; 2]> {
    let sink_pins = ctx
        .sink_pin_path
        .context("the cross-host setups need the pins of host B's agent")?;
    Ok([
        AgentPlace {
            host: &ctx.topo.host,
            node: NODE_A,
            pin_path: ctx.pin_path,
        },
        AgentPlace {
            host: ctx.topo.sink_host(),
            node: NODE_B,
            pin_path: sink_pins,
        },
    ])
}

/// The pin of a data-interface program in this attach mode.
fn fabric_hook(hook: AttachMode) -> &'static str {
    match hook {
        AttachMode::Tc => FABRIC_HOOKS[0],
        AttachMode::Xdp => FABRIC_HOOKS[1],
    }
}

/// Polls `dump endpoints -o json` of one agent until its workload is attached, and its
/// fabric interface's program is pinned.
fn wait_for_attachment(
    child: &mut ChildGuard,
    ctx: &Ctx<'_>,
    place: &AgentPlace<'_>,
    workload_if: &str,
    hook: AttachMode,
) -> Result<()> {
    let data_pin = place
        .pin_path
        .join("links")
        .join(FABRIC_IF)
        .join(fabric_hook(hook));
    shared::wait_for_attachment(
        child,
        dump_cmd(ctx.loader, place.pin_path, "endpoints"),
        &format!(
            "node {}: {workload_if} and {FABRIC_IF} attached",
            place.node
        ),
        &format!("to {workload_if} and {FABRIC_IF} on node {}", place.node),
        std::time::Duration::from_millis(200),
        |endpoints| {
            let workload = endpoints.iter().any(|e| {
                e["interface"].as_str() == Some(workload_if)
                    && e["attached"].as_bool() == Some(true)
            });
            let data = root::exists_as_root(&data_pin);
            if workload && data {
                ControlFlow::Break(format!(
                    "node {}: {workload_if} and {FABRIC_IF} attached",
                    place.node
                ))
            } else {
                ControlFlow::Continue(format!(
                    "{workload_if} attached: {workload}, {} pinned: {data}",
                    data_pin.display()
                ))
            }
        },
    )
}
