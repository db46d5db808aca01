//! The phases of VM and container hosting, each on its own host namespace and agent after the
//! rounds: tap to tap (`taps`), container start with podman (`containers`), attach latency and
//! memory at scale (`attach`), and many endpoints at once (`many_endpoints`). Their goal checks, their lines of the report and their JSON.

use std::{path::Path, time::Instant};

use anyhow::{Context, Result};
use serde::Serialize;
use testbed::{TempDir, output};

use crate::{root, topology as shared};

use super::{
    Plan,
    attach::{self, AttachScale},
    containers::{self, ContainerStart},
    many_endpoints::{self, ManyEndpoints},
    report::{self, MachineInfo},
    taps::{self, TapPlan, TapToTap},
};

/// Endpoints of the attach phase: a full run, and `--quick`.
const ATTACH_ENDPOINTS: u32 = 500;
const ATTACH_ENDPOINTS_QUICK: u32 = 20;
/// Endpoints written at once, and how long the agent is then watched: a full run, `--quick`.
pub const MANY_ENDPOINTS: u32 = 5000;
pub const MANY_ENDPOINTS_QUICK: u32 = 50;
const MANY_STEADY: std::time::Duration = std::time::Duration::from_secs(30);
const MANY_STEADY_QUICK: std::time::Duration = std::time::Duration::from_secs(3);
/// `podman run` repetitions per network: a full run, and `--quick`.
const CONTAINER_RUNS: u32 = 10;
const CONTAINER_RUNS_QUICK: u32 = 1;
/// tap-ours-xdp must reach this multiple of tap-linux's packets/s.
pub const TAP_GOAL: f64 = 2.0;

#[derive(Serialize)]
pub struct Hosting {
    pub tap_to_tap: TapToTap,
    pub container_start: ContainerStart,
    pub attach_scale: AttachScale,
    pub many_endpoints: ManyEndpoints,
}

pub fn measure(plan: &Plan, loader: &Path, pid: u32, release: bool) -> Result<Hosting> {
    if !testbed::privileges::is_root() {
        anyhow::bail!(
            "the VM and container phases open /dev/net/tun and enter namespaces in the bench's \
             own threads: run `cargo xtask bench` as root"
        );
    }
    let scratch =
        TempDir::create(std::env::temp_dir().join(format!("calico-bench-hosting-{pid}")))?;
    let tap_plan = TapPlan {
        rounds: plan.rounds,
        warmup: plan.warmup,
        duration: plan.duration,
        generator_cpu: plan.generator_cpu,
        sink_cpu: usize::from(plan.cpus > 1 && plan.generator_cpu == 0),
        release,
    };
    let tap_to_tap = taps::measure(loader, scratch.path(), pid, &tap_plan)?;
    let container_start = containers::measure(
        loader,
        scratch.path(),
        pid,
        if plan.quick {
            CONTAINER_RUNS_QUICK
        } else {
            CONTAINER_RUNS
        },
    )?;
    let attach_scale = attach::measure(
        loader,
        scratch.path(),
        pid,
        if plan.quick {
            ATTACH_ENDPOINTS_QUICK
        } else {
            ATTACH_ENDPOINTS
        },
        release,
    )?;
    let many_endpoints = measure_many_endpoints(plan, loader, scratch.path(), pid, release)?;
    Ok(Hosting {
        tap_to_tap,
        container_start,
        attach_scale,
        many_endpoints,
    })
}

/// The many-endpoints phase with the plan's endpoint count.
fn measure_many_endpoints(
    plan: &Plan,
    loader: &Path,
    scratch: &Path,
    pid: u32,
    release: bool,
) -> Result<ManyEndpoints> {
    let steady = if plan.quick {
        MANY_STEADY_QUICK
    } else {
        MANY_STEADY
    };
    many_endpoints::measure(loader, scratch, pid, plan.many_endpoints, steady, release)
}

/// The report's lines, and the goal checks: (goal, measured, met).
pub fn print(hosting: &Hosting) {
    output::step("VMs and containers");
    let t = &hosting.tap_to_tap;
    for ((setup, pps), (_, per_cpu)) in t.median_pps.iter().zip(&t.median_per_generator_cpu_second)
    {
        output::info(format!(
            "{:<13} {:>9.0} packets/s into the receiving tap, {:>9.0} per generator CPU-second \
             (medians)",
            setup.as_str(),
            pps,
            per_cpu
        ));
    }
    let c = &hosting.container_start;
    output::info(c.describe());
    output::info(hosting.attach_scale.describe());
    output::info(hosting.many_endpoints.describe());
    for (goal, measured, met) in goal_checks(hosting) {
        output::info(format!(
            "goal: {goal}: {measured} -> {}",
            match met {
                Some(true) => "met",
                Some(false) => "NOT met",
                None => "n/a",
            }
        ));
    }
}

pub fn goal_checks(hosting: &Hosting) -> Vec<(String, String, Option<bool>)> {
    let t = &hosting.tap_to_tap;
    let c = &hosting.container_start;
    vec![
        (
            format!("tap-ours-xdp >= {TAP_GOAL}x tap-linux packets/s"),
            t.xdp_vs_linux
                .map_or("n/a".to_owned(), |r| format!("x{r:.2}")),
            t.xdp_vs_linux.map(|r| r >= TAP_GOAL),
        ),
        (
            format!("tap-ours-xdp >= {TAP_GOAL}x tap-linux per generator CPU-second"),
            t.xdp_vs_linux_per_cpu
                .map_or("n/a".to_owned(), |r| format!("x{r:.2}")),
            t.xdp_vs_linux_per_cpu.map(|r| r >= TAP_GOAL),
        ),
        (
            format!(
                "container start on ours <= on podman's bridge (+{} ms tolerance)",
                containers::TOLERANCE_MS
            ),
            format!(
                "{:.0} ms vs {:.0} ms (medians)",
                c.ours_median_ms, c.bridge_median_ms
            ),
            Some(c.ours_median_ms <= c.bridge_median_ms + containers::TOLERANCE_MS),
        ),
    ]
}

/// Adds the phases' figures and goal checks to the bench's JSON file, as `hosting`.
pub fn add_to_json(json: &Path, hosting: &Hosting) -> Result<()> {
    let text =
        std::fs::read_to_string(json).with_context(|| format!("cannot read {}", json.display()))?;
    let mut document: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", json.display()))?;
    let mut value = serde_json::to_value(hosting)?;
    value["goal_checks"] = goal_checks_json(hosting);
    document["hosting"] = value;
    std::fs::write(json, serde_json::to_string_pretty(&document)?)
        .with_context(|| format!("cannot write {}", json.display()))
}

/// `cargo xtask bench --hosting-only`: these phases alone, their report and a JSON file of
/// their own (the machine, the command, the figures).
pub fn run_alone(
    plan: &Plan,
    machine: &MachineInfo,
    loader: &Path,
    pid: u32,
    release: bool,
    clock: Instant,
) -> Result<()> {
    root::mount_bpffs()?;
    let outcome = measure(plan, loader, pid, release);
    shared::check_nothing_left("cbench-", pid, None);
    let hosting = outcome?;
    print(&hosting);
    let mut value = serde_json::to_value(&hosting)?;
    value["goal_checks"] = goal_checks_json(&hosting);
    report::write_alone(
        plan,
        machine,
        "--hosting-only",
        serde_json::json!({
            "rounds": plan.rounds,
            "duration_s": plan.duration.as_secs(),
            "hosting": value,
        }),
        clock,
    )
}

/// `cargo xtask bench --many-endpoints-only`: the many-endpoints phase alone, its line of the
/// report and a JSON file of its own.
pub fn run_many_endpoints_alone(
    plan: &Plan,
    machine: &MachineInfo,
    loader: &Path,
    pid: u32,
    release: bool,
    clock: Instant,
) -> Result<()> {
    root::mount_bpffs()?;
    let scratch =
        TempDir::create(std::env::temp_dir().join(format!("calico-bench-hosting-{pid}")))?;
    let outcome = measure_many_endpoints(plan, loader, scratch.path(), pid, release);
    drop(scratch);
    shared::check_nothing_left("cbench-", pid, None);
    let many = outcome?;
    output::step("Results");
    output::info(many.describe());
    report::write_alone(
        plan,
        machine,
        "--many-endpoints-only",
        serde_json::json!({ "hosting": { "many_endpoints": many } }),
        clock,
    )
}

fn goal_checks_json(hosting: &Hosting) -> serde_json::Value {
    goal_checks(hosting)
        .into_iter()
        .map(|(goal, measured, met)| serde_json::json!({"goal": goal, "measured": measured, "met": met}))
        .collect()
}
