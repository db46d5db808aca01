//! Agent restarts under traffic: what a SIGKILL and a restart of the agent cost the workloads.
//! A host namespace `cbench-rst-<pid>` with two workloads (wired as Calico's CNI plugin does),
//! and the agent with health on 127.0.0.1:9099 of that namespace. While a UDP flow (numbered
//! datagrams, 10,000 a second), a TCP stream (4 MiB/s) and a ping every 10 ms run from one
//! workload to the other, the agent is killed with SIGKILL after 1.5 s and started again on its
//! pins at once. Per restart: the datagrams, pings and TCP segments lost (counted at both ends;
//! TCP's are its retransmissions the receiver did not report as duplicates), the longest silence
//! at each receiver, and the restart time, from the kill to the new agent's `/readiness`
//! answering 200 (it has read the datastore whole and programmed the dataplane from it).
//!
//! The flows use `testbed::flows`, as the restart integration tests do.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    ops::ControlFlow,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use testbed::{
    Netns, TempDir,
    flows::{Pace, PingFlow, PingReport, TcpFlow, TcpReport, UdpFlow, UdpReport},
    netns, output, signals,
};

use super::{
    Plan,
    control::median,
    loader::endpoint_yaml,
    phase_agent::{AgentRun, PhaseAgent},
    report::{self, MachineInfo},
};
use crate::{
    root,
    topology::{self as shared, AttachMode, PinGuard, Workload, allow_all_profile_yaml},
};

pub(super) const UDP_RATE: u64 = 10_000;
pub(super) const TCP_RATE: u64 = 4 << 20;
pub(super) const PING_INTERVAL: Duration = Duration::from_millis(10);
pub(super) const UDP_PORT: u16 = 6000;
pub(super) const TCP_PORT: u16 = 6001;
/// The flows run this long before the kill.
pub(super) const KILL_AFTER: Duration = Duration::from_millis(1500);
const HEALTH: &str = "127.0.0.1:9099";
pub(super) const HEALTH_FLAGS: [&str; 5] = [
    "--health-enabled",
    "--health-host",
    "127.0.0.1",
    "--health-port",
    "9099",
];
/// How long a restarted agent may take to be ready before the phase fails.
pub(super) const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// What the phase does: in which modes, how many restarts each, how long the flows of each run.
pub struct RestartPlan {
    pub hooks: Vec<AttachMode>,
    pub restarts: u32,
    pub flows: Duration,
}

impl RestartPlan {
    /// A full run: TC and XDP, three restarts each, 6 s of flows; `--quick`: one restart in TC
    /// mode, 4 s.
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                hooks: vec![AttachMode::Tc],
                restarts: 1,
                flows: Duration::from_secs(4),
            }
        } else {
            Self {
                hooks: vec![AttachMode::Tc, AttachMode::Xdp],
                restarts: 3,
                flows: Duration::from_secs(6),
            }
        }
    }
}

#[derive(Debug, Serialize)]
pub struct UdpFigures {
    pub sent: u64,
    /// Dropped by the sender's own interface (the host side had not drained the veth in time),
    /// although `send` said they were sent: they never left the sender.
    pub refused_by_sender_interface: u64,
    pub received: u64,
    /// Left the sender and never arrived.
    pub lost: u64,
    pub rate_per_s: f64,
    pub longest_gap_ms: f64,
}

impl From<&UdpReport> for UdpFigures {
    fn from(r: &UdpReport) -> Self {
        Self {
            sent: r.sent,
            refused_by_sender_interface: r.refused_by_sender_interface,
            received: r.received,
            lost: r.lost(),
            rate_per_s: r.achieved_rate(),
            longest_gap_ms: millis(r.longest_gap),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct PingFigures {
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
}

impl From<&PingReport> for PingFigures {
    fn from(r: &PingReport) -> Self {
        Self {
            sent: r.transmitted,
            received: r.received,
            lost: r.lost(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct TcpFigures {
    pub sent_bytes: u64,
    pub received_bytes: u64,
    /// A reset or a stall, if the stream broke.
    pub error: Option<String>,
    pub retransmits: u32,
    /// Retransmissions the receiver reported as duplicates: nothing was lost.
    pub duplicate_retransmits: u32,
    pub lost_segments: u32,
    pub longest_gap_ms: f64,
}

impl From<&TcpReport> for TcpFigures {
    fn from(r: &TcpReport) -> Self {
        Self {
            sent_bytes: r.sent,
            received_bytes: r.received,
            error: r.error.clone(),
            retransmits: r.retransmits,
            duplicate_retransmits: r.duplicate_retransmits,
            lost_segments: r.lost_segments(),
            longest_gap_ms: millis(r.longest_gap),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct RestartRun {
    pub hook: &'static str,
    pub run: u32,
    /// From the SIGKILL to the new agent's readiness 200.
    pub restart_ms: f64,
    pub udp: UdpFigures,
    pub ping: PingFigures,
    pub tcp: TcpFigures,
}

#[derive(Debug, Serialize)]
pub struct HookSummary {
    pub hook: &'static str,
    pub restarts: usize,
    pub restart_ms_median: f64,
    pub restart_ms_max: f64,
    pub udp_sent: u64,
    pub udp_lost: u64,
    pub udp_refused_by_sender_interface: u64,
    pub ping_sent: u64,
    pub ping_lost: u64,
    pub tcp_lost_segments: u64,
    pub tcp_errors: usize,
    pub longest_gap_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct Restarts {
    pub agent_build: &'static str,
    pub udp_rate: u64,
    pub tcp_rate_bytes: u64,
    pub ping_interval_ms: u64,
    pub flows_s: f64,
    pub runs: Vec<RestartRun>,
    pub summary: Vec<HookSummary>,
}

pub(super) fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs the phase: each mode on its own host namespace and agent.
pub fn measure(quick: bool, loader: &Path, pid: u32, release: bool) -> Result<Restarts> {
    if !testbed::privileges::is_root() {
        bail!(
            "the restart phase enters namespaces in the bench's own threads: run `cargo xtask \
             bench` as root"
        );
    }
    let plan = RestartPlan::new(quick);
    output::step(format!(
        "Agent restarts: SIGKILL and restart under traffic ({} restart(s) per mode, {})",
        plan.restarts,
        plan.hooks
            .iter()
            .map(|h| h.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    output::explain(format!(
        "Two workloads in cbench-rst-<pid>; UDP at {UDP_RATE}/s (numbered), a TCP stream at\n\
         {} MiB/s and a ping every {} ms from one to the other, {}s each run. The agent is\n\
         killed (SIGKILL) after {:.1}s and started again on its pins at once; lost packets are\n\
         counted at both ends, the restart time is kill -> /readiness 200.",
        TCP_RATE >> 20,
        PING_INTERVAL.as_millis(),
        plan.flows.as_secs(),
        KILL_AFTER.as_secs_f64()
    ));
    let scratch =
        TempDir::create(std::env::temp_dir().join(format!("calico-bench-restart-{pid}")))?;
    let mut runs = Vec::new();
    for &hook in &plan.hooks {
        runs.extend(measure_hook(loader, scratch.path(), pid, hook, &plan)?);
    }
    let summary = plan
        .hooks
        .iter()
        .map(|&hook| summarise(hook, &runs))
        .collect();
    Ok(Restarts {
        agent_build: if release { "release" } else { "debug" },
        udp_rate: UDP_RATE,
        tcp_rate_bytes: TCP_RATE,
        ping_interval_ms: PING_INTERVAL.as_millis() as u64,
        flows_s: plan.flows.as_secs_f64(),
        runs,
        summary,
    })
}

fn summarise(hook: AttachMode, runs: &[RestartRun]) -> HookSummary {
    let mine: Vec<&RestartRun> = runs.iter().filter(|r| r.hook == hook.as_str()).collect();
    let mut restart: Vec<f64> = mine.iter().map(|r| r.restart_ms).collect();
    restart.sort_by(f64::total_cmp);
    HookSummary {
        hook: hook.as_str(),
        restarts: mine.len(),
        restart_ms_median: median(&restart),
        restart_ms_max: restart.last().copied().unwrap_or(0.0),
        udp_sent: mine.iter().map(|r| r.udp.sent).sum(),
        udp_lost: mine.iter().map(|r| r.udp.lost).sum(),
        udp_refused_by_sender_interface: mine
            .iter()
            .map(|r| r.udp.refused_by_sender_interface)
            .sum(),
        ping_sent: mine.iter().map(|r| r.ping.sent).sum(),
        ping_lost: mine.iter().map(|r| r.ping.lost).sum(),
        tcp_lost_segments: mine.iter().map(|r| u64::from(r.tcp.lost_segments)).sum(),
        tcp_errors: mine.iter().filter(|r| r.tcp.error.is_some()).count(),
        longest_gap_ms: mine
            .iter()
            .flat_map(|r| [r.udp.longest_gap_ms, r.tcp.longest_gap_ms])
            .fold(0.0, f64::max),
    }
}

/// One mode: its namespace, workloads and agent, and `plan.restarts` runs.
fn measure_hook(
    loader: &Path,
    scratch: &Path,
    pid: u32,
    hook: AttachMode,
    plan: &RestartPlan,
) -> Result<Vec<RestartRun>> {
    let (host, from, to) = host_with_two_workloads("rst", 40, pid, hook)?;
    let datastore = scratch.join(format!("restart-datastore-{}", hook.as_str()));
    std::fs::create_dir_all(&datastore)
        .with_context(|| format!("cannot create {}", datastore.display()))?;
    std::fs::write(
        datastore.join("endpoints.yaml"),
        format!(
            "{}{}{}",
            allow_all_profile_yaml(),
            endpoint_yaml(&from),
            endpoint_yaml(&to)
        ),
    )
    .context("cannot write the endpoints")?;
    let pin_path = shared::pin_path(&format!("bench-rst-{}", hook.as_str()), pid);
    let agent_log = |run: u32| scratch.join(format!("agent-rst-{}-{run}.log", hook.as_str()));
    let run_args = AgentRun {
        mode: hook,
        detach_on_exit: true,
        extra: &HEALTH_FLAGS,
    };
    let start_agent = |log: &Path| {
        PhaseAgent::start_with(
            loader,
            &host,
            &datastore,
            &pin_path,
            &run_args,
            log,
            |endpoints| {
                let attached = endpoints
                    .iter()
                    .filter(|e| e["attached"].as_bool() == Some(true))
                    .count();
                if attached == 2 {
                    ControlFlow::Break("both workloads attached".to_owned())
                } else {
                    ControlFlow::Continue(format!("{attached} of 2 attached"))
                }
            },
        )
    };
    // The killed agents' pin guards go after the last agent (declared first, dropped last):
    // their clean-up would take the pins from under it.
    let mut killed: Vec<PinGuard> = Vec::new();
    let mut agent = start_agent(&agent_log(0))?;
    wait_ready(&host, READY_TIMEOUT)?;
    let mut runs = Vec::new();
    for run in 1..=plan.restarts {
        let (figures, restarted) =
            restart_once(&host, &from, &to, agent, &mut killed, plan.flows, || {
                start_agent(&agent_log(run))
            })?;
        agent = restarted;
        let figures = RestartRun {
            hook: hook.as_str(),
            run,
            ..figures
        };
        output::info(describe(&figures));
        runs.push(figures);
    }
    agent.stop();
    drop(killed);
    Ok(runs)
}

/// A host namespace `cbench-<tag>-<pid>` with two workloads wired to it, `<tag>1` at
/// 198.18.`net`.1 sending and `<tag>2` at 198.18.`net`.2 receiving, set up for `hook`. The flows
/// are IPv4; the workloads' IPv6 is off, as its chatter would only add noise.
pub fn host_with_two_workloads(
    tag: &str,
    net: u8,
    pid: u32,
    hook: AttachMode,
) -> Result<(Netns, Workload, Workload)> {
    let host = Netns::create(format!("cbench-{tag}-{pid}"))?;
    host.ip(["link", "set", "lo", "up"]).run()?;
    let workload = |i: u8| -> Result<Workload> {
        Ok(Workload {
            name: format!("{tag}{i}"),
            netns: Netns::create(format!("cbench-{tag}{i}-{pid}"))?,
            host_if: format!("cali{tag}{i}"),
            mac: format!("ca:fe:00:00:{net:02x}:{i:02x}"),
            ipv4: Ipv4Addr::new(198, 18, net, i),
            ipv6: Ipv6Addr::new(0x2001, 0xdb8, 0, u16::from(net), 0, 0, 0, u16::from(i)),
        })
    };
    let (from, to) = (workload(1)?, workload(2)?);
    for wl in [&from, &to] {
        wl.wire(&host)?;
        if hook == AttachMode::Xdp {
            wl.ethtool_for_xdp().run()?;
        }
        wl.netns
            .command("sysctl")
            .args(["-qw", "net.ipv6.conf.eth0.disable_ipv6=1"])
            .run()?;
    }
    Ok((host, from, to))
}

/// One run: the flows, the kill after [`KILL_AFTER`], the new agent (from `start`) until ready,
/// the flows to their end. Returns the figures (hook and run to be filled in) and the new agent.
fn restart_once(
    host: &Netns,
    from: &Workload,
    to: &Workload,
    agent: PhaseAgent,
    killed: &mut Vec<PinGuard>,
    flows: Duration,
    start: impl FnOnce() -> Result<PhaseAgent>,
) -> Result<(RestartRun, PhaseAgent)> {
    let (src, dst) = (from.netns.path(), to.netns.path());
    let pace = |rate| Pace {
        duration: flows,
        rate,
    };
    let udp = UdpFlow::start(
        &src,
        &dst,
        SocketAddr::new(to.ipv4.into(), UDP_PORT),
        pace(UDP_RATE),
    )?;
    let tcp = TcpFlow::start(
        &src,
        &dst,
        SocketAddr::new(to.ipv4.into(), TCP_PORT),
        pace(TCP_RATE),
    )?;
    let ping = PingFlow::start(
        &src,
        to.ipv4.into(),
        PING_INTERVAL,
        (flows.as_millis() / PING_INTERVAL.as_millis()) as u64,
    )?;
    signals::sleep(KILL_AFTER)?;
    let killed_at = Instant::now();
    killed.push(agent.kill());
    let restarted = start()?;
    wait_ready(host, READY_TIMEOUT)?;
    let restart = killed_at.elapsed();
    let ping = ping.finish()?;
    let tcp = tcp.finish()?;
    let udp = udp.finish(Duration::from_secs(1))?;
    Ok((
        RestartRun {
            hook: "",
            run: 0,
            restart_ms: millis(restart),
            udp: (&udp).into(),
            ping: (&ping).into(),
            tcp: (&tcp).into(),
        },
        restarted,
    ))
}

/// Waits until the agent in `host` answers `/readiness` with 200, polling every 10 ms.
pub(super) fn wait_ready(host: &Netns, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let path = host.path();
    loop {
        let path = path.clone();
        let ready = std::thread::spawn(move || -> bool {
            netns::enter_thread(&path).is_ok() && readiness_ok()
        })
        .join()
        .unwrap_or(false);
        if ready {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "the agent was not ready within {}s (see its log lines above)",
                timeout.as_secs()
            );
        }
        signals::sleep(Duration::from_millis(10))?;
    }
}

/// `GET /readiness` on [`HEALTH`] of the calling thread's namespace answers 200.
fn readiness_ok() -> bool {
    let Ok(address) = HEALTH.parse::<SocketAddr>() else {
        return false;
    };
    let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /readiness HTTP/1.1\r\nHost: {HEALTH}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
        .split_whitespace()
        .nth(1)
        .is_some_and(|code| code == "200")
}

fn describe(r: &RestartRun) -> String {
    format!(
        "{} restart {}: ready {:.0} ms after the kill; UDP {} sent ({:.0}/s), {} lost, {} refused \
         by the sender's interface; ping {} sent, {} lost; TCP {} lost segment(s) ({} \
         retransmissions, {} duplicates){}; longest silence {:.0} ms",
        r.hook,
        r.run,
        r.restart_ms,
        r.udp.sent,
        r.udp.rate_per_s,
        r.udp.lost,
        r.udp.refused_by_sender_interface,
        r.ping.sent,
        r.ping.lost,
        r.tcp.lost_segments,
        r.tcp.retransmits,
        r.tcp.duplicate_retransmits,
        r.tcp
            .error
            .as_ref()
            .map_or(String::new(), |e| format!(", the stream broke: {e}")),
        r.udp.longest_gap_ms.max(r.tcp.longest_gap_ms),
    )
}

/// The report's lines.
pub fn print(restarts: &Restarts) {
    output::step("Agent restarts");
    for s in &restarts.summary {
        output::info(format!(
            "{:<4} {} restart(s): ready after {:.0} ms (median; max {:.0} ms); lost: UDP {} of {}, \
             ping {} of {}, TCP {} segment(s){}; {} datagram(s) refused by the sender's \
             interface; longest silence {:.0} ms",
            s.hook,
            s.restarts,
            s.restart_ms_median,
            s.restart_ms_max,
            s.udp_lost,
            s.udp_sent,
            s.ping_lost,
            s.ping_sent,
            s.tcp_lost_segments,
            if s.tcp_errors > 0 {
                format!(", {} stream(s) broke", s.tcp_errors)
            } else {
                String::new()
            },
            s.udp_refused_by_sender_interface,
            s.longest_gap_ms,
        ));
    }
}

/// Adds the phase's figures to the bench's JSON file, as `restarts`.
pub fn add_to_json(json: &Path, restarts: &Restarts) -> Result<()> {
    let text =
        std::fs::read_to_string(json).with_context(|| format!("cannot read {}", json.display()))?;
    let mut document: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", json.display()))?;
    document["restarts"] = serde_json::to_value(restarts)?;
    std::fs::write(json, serde_json::to_string_pretty(&document)?)
        .with_context(|| format!("cannot write {}", json.display()))
}

/// `cargo xtask bench --restart-only`: this phase alone, its report and a JSON file of its own.
pub fn run_alone(
    plan: &Plan,
    machine: &MachineInfo,
    loader: &Path,
    pid: u32,
    release: bool,
    clock: Instant,
) -> Result<()> {
    root::mount_bpffs()?;
    let outcome = measure(plan.quick, loader, pid, release);
    shared::check_nothing_left("cbench-", pid, None);
    let restarts = outcome?;
    print(&restarts);
    let document = serde_json::json!({
        "tool": "cargo xtask bench --restart-only",
        "command": format!("{} --restart-only", plan.command),
        "started": report::timestamp(plan.started).iso,
        "elapsed_s": clock.elapsed().as_secs_f64(),
        "quick": plan.quick,
        "machine": machine,
        "restarts": restarts,
    });
    if let Some(dir) = plan.json.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(&plan.json, serde_json::to_string_pretty(&document)?)
        .with_context(|| format!("cannot write {}", plan.json.display()))?;
    output::info(format!(
        "the phase took {:.0}s; every figure is in {}",
        clock.elapsed().as_secs_f64(),
        plan.json.display()
    ));
    Ok(())
}
