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
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use testbed::{Netns, TempDir, output, signals};

use super::{
    Plan,
    control::median,
    loader::endpoint_yaml,
    phase_agent::{AgentRun, PhaseAgent},
    report::{self, MachineInfo},
    under_traffic::{
        FlowFigures, FlowLosses, Flows, HEALTH_FLAGS, KILL_AFTER, PING_INTERVAL, READY_TIMEOUT,
        TCP_RATE, UDP_RATE, add_to_json as add_phase_to_json, both_attached,
        host_with_two_workloads, millis, modes, wait_ready,
    },
};
use crate::{
    root,
    topology::{self as shared, AttachMode, PinGuard, Workload, allow_all_profile_yaml},
};

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
pub struct RestartRun {
    pub hook: &'static str,
    pub run: u32,
    /// From the SIGKILL to the new agent's readiness 200.
    pub restart_ms: f64,
    #[serde(flatten)]
    pub flows: FlowFigures,
}

#[derive(Debug, Serialize)]
pub struct HookSummary {
    pub hook: &'static str,
    pub restarts: usize,
    pub restart_ms_median: f64,
    pub restart_ms_max: f64,
    #[serde(flatten)]
    pub losses: FlowLosses,
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
        modes(&plan.hooks)
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
        losses: FlowLosses::total(mine.iter().map(|r| &r.flows)),
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
            both_attached,
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
    let running = Flows::start(from, to, flows)?;
    signals::sleep(KILL_AFTER)?;
    let killed_at = Instant::now();
    killed.push(agent.kill());
    let restarted = start()?;
    wait_ready(host, READY_TIMEOUT)?;
    let restart = killed_at.elapsed();
    let flows = running.finish()?;
    Ok((
        RestartRun {
            hook: "",
            run: 0,
            restart_ms: millis(restart),
            flows,
        },
        restarted,
    ))
}

fn describe(r: &RestartRun) -> String {
    format!(
        "{} restart {}: ready {:.0} ms after the kill; {}; longest silence {:.0} ms",
        r.hook,
        r.run,
        r.restart_ms,
        r.flows.describe(),
        r.flows.longest_gap_ms(),
    )
}

/// The report's lines.
pub fn print(restarts: &Restarts) {
    output::step("Agent restarts");
    for s in &restarts.summary {
        output::info(format!(
            "{:<4} {} restart(s): ready after {:.0} ms (median; max {:.0} ms); {}; longest \
             silence {:.0} ms",
            s.hook,
            s.restarts,
            s.restart_ms_median,
            s.restart_ms_max,
            s.losses.describe(),
            s.losses.longest_gap_ms,
        ));
    }
}

/// Adds the phase's figures to the bench's JSON file, as `restarts`.
pub fn add_to_json(json: &Path, restarts: &Restarts) -> Result<()> {
    add_phase_to_json(json, "restarts", restarts)
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
    report::write_alone(
        plan,
        machine,
        "--restart-only",
        serde_json::json!({ "restarts": restarts }),
        clock,
    )
}
