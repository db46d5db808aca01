//! Upgrades from an earlier release under traffic: what replacing the agent of an earlier commit
//! (built by [`crate::upgrade_from`]) with this one costs the workloads, when the map layouts
//! changed in between and the new agent migrates the pinned maps.
//!
//! The topology and the flows are the restart phase's ([`super::restart`]): a host namespace
//! `cbench-upg-<pid>` with two workloads, a UDP flow of numbered datagrams (10,000 a second), a
//! TCP stream (4 MiB/s) and a ping every 10 ms from one to the other. The responder accepts
//! anything but opens nothing (no egress rule), so its replies (TCP's acknowledgements, ping's
//! echo replies) pass only as part of a tracked flow: a conntrack entry lost in the upgrade
//! would have them denied.
//!
//! Each run starts the earlier agent (without `--detach-on-exit`) on fresh pins, lets the flows
//! run for 1.5 s, stops it with SIGTERM as an operator upgrading would (its programs stay
//! attached), and starts this agent on the same pins at once. Per run: the datagrams, pings and
//! TCP segments lost, the time from the SIGTERM to the new agent's `/readiness` 200, the maps the
//! new agent migrated (its log's `upgrading the pinned maps` line), whether the stream's
//! conntrack entry is the one created before the upgrade (its age), and the packets policy
//! denied at the responder afterwards.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::Value;
use testbed::{Netns, TempDir, output, signals};

use super::{
    Plan,
    control::median,
    loader::{dump_cmd, endpoint_yaml},
    phase_agent::{AgentRun, PhaseAgent},
    report::{self, MachineInfo},
    under_traffic::{
        FlowFigures, FlowLosses, Flows, HEALTH_FLAGS, KILL_AFTER, PING_INTERVAL, READY_TIMEOUT,
        TCP_PORT, TCP_RATE, UDP_RATE, add_to_json as add_phase_to_json, both_attached,
        host_with_two_workloads, millis, modes, wait_ready,
    },
};
use crate::{
    root,
    topology::{self as shared, AttachMode, PinGuard, Workload, allow_all_profile_yaml},
    upgrade_from,
};

/// The release upgraded from by default: the last commit before the Felix configuration
/// work, whose maps predate the counters' version 3, the host endpoint maps, the conntrack
/// statistics and the drop events.
pub const DEFAULT_FROM: &str = "4511f18";

/// The responder's profile: it accepts anything and opens nothing.
const RESPONDER_PROFILE: &str = "bench-responder";

/// The log line in which the new agent names the maps it migrates.
const UPGRADING: &str = "upgrading the pinned maps";
/// The log line once the migrated maps took the old ones' pins.
const UPGRADED: &str = "upgrade of the pinned maps finished";

/// What the phase does: from which commit, in which modes, how many upgrades each, how long
/// the flows of each run.
pub struct UpgradePlan {
    pub from: String,
    pub hooks: Vec<AttachMode>,
    pub upgrades: u32,
    pub flows: Duration,
}

impl UpgradePlan {
    /// TC and XDP, two upgrades each (each from a fresh agent of `from` on fresh pins), 6 s of
    /// flows.
    pub fn new(from: &str) -> Self {
        Self {
            from: from.to_owned(),
            hooks: vec![AttachMode::Tc, AttachMode::Xdp],
            upgrades: 2,
            flows: Duration::from_secs(6),
        }
    }
}

/// The stream's conntrack entry before and after the upgrade.
#[derive(Debug, Serialize)]
pub struct ConntrackCheck {
    pub age_before_s: f64,
    pub age_after_s: f64,
    /// The entry after the upgrade is the one from before it: it aged by the time between the
    /// two looks (it was not created again).
    pub kept: bool,
}

#[derive(Debug, Serialize)]
pub struct UpgradeRun {
    pub hook: &'static str,
    pub run: u32,
    /// From the SIGTERM to the earlier agent's exit (observed every 100 ms).
    pub old_exit_ms: f64,
    /// From the SIGTERM to the new agent's readiness 200.
    pub ready_ms: f64,
    /// The maps the new agent migrated, as its log names them (`name version a → b (how)`).
    pub migrated: Vec<String>,
    /// The new agent logged that the migrated maps took the old ones' pins.
    pub upgrade_finished: bool,
    pub conntrack: ConntrackCheck,
    /// Packets policy denied at the responder's interface after the upgrade (its replies are
    /// allowed only as part of a tracked flow).
    pub policy_denied_at_responder: u64,
    #[serde(flatten)]
    pub flows: FlowFigures,
}

#[derive(Debug, Serialize)]
pub struct HookSummary {
    pub hook: &'static str,
    pub upgrades: usize,
    pub ready_ms_median: f64,
    pub ready_ms_max: f64,
    pub conntrack_kept: usize,
    pub policy_denied_at_responder: u64,
    #[serde(flatten)]
    pub losses: FlowLosses,
}

#[derive(Debug, Serialize)]
pub struct Upgrades {
    /// The commit upgraded from, in full.
    pub from_commit: String,
    /// Its agent, built in release.
    pub from_agent: String,
    pub agent_build: &'static str,
    pub stop_signal: &'static str,
    pub udp_rate: u64,
    pub tcp_rate_bytes: u64,
    pub ping_interval_ms: u64,
    pub flows_s: f64,
    pub runs: Vec<UpgradeRun>,
    pub summary: Vec<HookSummary>,
}

/// Builds (or finds) the earlier agent, then runs the phase: each mode on its own host
/// namespace.
pub fn measure(from: &str, loader: &Path, pid: u32, release: bool) -> Result<Upgrades> {
    if !testbed::privileges::is_root() {
        bail!(
            "the upgrade phase enters namespaces in the bench's own threads: run `cargo xtask \
             bench` as root"
        );
    }
    let plan = UpgradePlan::new(from);
    let (old_loader, commit) = upgrade_from::agent(&plan.from)?;
    output::step(format!(
        "Upgrades from {} under traffic ({} per mode, {})",
        upgrade_from::short(&commit),
        plan.upgrades,
        modes(&plan.hooks)
    ));
    output::explain(format!(
        "Two workloads in cbench-upg-<pid>; UDP at {UDP_RATE}/s (numbered), a TCP stream at\n\
         {} MiB/s and a ping every {} ms from one to the other, {}s each run; the responder's\n\
         replies pass only as tracked flows. The agent of {} runs on fresh pins; after {:.1}s\n\
         it is stopped (SIGTERM, programs left attached) and this agent started on its pins,\n\
         migrating the maps whose layout changed. Lost packets are counted at both ends; the\n\
         upgrade time is SIGTERM -> /readiness 200.",
        TCP_RATE >> 20,
        PING_INTERVAL.as_millis(),
        plan.flows.as_secs(),
        upgrade_from::short(&commit),
        KILL_AFTER.as_secs_f64()
    ));
    let scratch =
        TempDir::create(std::env::temp_dir().join(format!("calico-bench-upgrade-{pid}")))?;
    let agents = Agents {
        old: &old_loader,
        new: loader,
    };
    let mut runs = Vec::new();
    for &hook in &plan.hooks {
        runs.extend(measure_hook(&agents, scratch.path(), pid, hook, &plan)?);
    }
    let summary = plan
        .hooks
        .iter()
        .map(|&hook| summarise(hook, &runs))
        .collect();
    Ok(Upgrades {
        from_commit: commit,
        from_agent: old_loader.display().to_string(),
        agent_build: if release { "release" } else { "debug" },
        stop_signal: "SIGTERM",
        udp_rate: UDP_RATE,
        tcp_rate_bytes: TCP_RATE,
        ping_interval_ms: PING_INTERVAL.as_millis() as u64,
        flows_s: plan.flows.as_secs_f64(),
        runs,
        summary,
    })
}

/// The earlier agent and this one.
struct Agents<'a> {
    old: &'a Path,
    new: &'a Path,
}

fn summarise(hook: AttachMode, runs: &[UpgradeRun]) -> HookSummary {
    let mine: Vec<&UpgradeRun> = runs.iter().filter(|r| r.hook == hook.as_str()).collect();
    let mut ready: Vec<f64> = mine.iter().map(|r| r.ready_ms).collect();
    ready.sort_by(f64::total_cmp);
    HookSummary {
        hook: hook.as_str(),
        upgrades: mine.len(),
        ready_ms_median: median(&ready),
        ready_ms_max: ready.last().copied().unwrap_or(0.0),
        conntrack_kept: mine.iter().filter(|r| r.conntrack.kept).count(),
        policy_denied_at_responder: mine.iter().map(|r| r.policy_denied_at_responder).sum(),
        losses: FlowLosses::total(mine.iter().map(|r| &r.flows)),
    }
}

/// One mode: its namespace and workloads, and `plan.upgrades` runs, each on fresh pins.
fn measure_hook(
    agents: &Agents<'_>,
    scratch: &Path,
    pid: u32,
    hook: AttachMode,
    plan: &UpgradePlan,
) -> Result<Vec<UpgradeRun>> {
    let (host, from, to) = host_with_two_workloads("upg", 41, pid, hook)?;
    let datastore = scratch.join(format!("upgrade-datastore-{}", hook.as_str()));
    std::fs::create_dir_all(&datastore)
        .with_context(|| format!("cannot create {}", datastore.display()))?;
    std::fs::write(datastore.join("endpoints.yaml"), datastore_yaml(&from, &to))
        .context("cannot write the endpoints")?;
    let mut runs = Vec::new();
    for run in 1..=plan.upgrades {
        let topo = RunTopology {
            host: &host,
            from: &from,
            to: &to,
            datastore: &datastore,
            scratch,
        };
        let pin_path = shared::pin_path(&format!("bench-upg-{}-{run}", hook.as_str()), pid);
        let figures = upgrade_once(agents, &topo, &pin_path, hook, run, plan.flows)?;
        output::info(describe(&figures));
        runs.push(figures);
    }
    Ok(runs)
}

/// The host namespace, the workloads and the datastore of one mode.
struct RunTopology<'a> {
    host: &'a Netns,
    from: &'a Workload,
    to: &'a Workload,
    datastore: &'a Path,
    scratch: &'a Path,
}

/// `from` with the allow-all profile; `to` with a profile that accepts anything and has no
/// egress rule, so that its replies pass only as part of a tracked flow.
fn datastore_yaml(from: &Workload, to: &Workload) -> String {
    format!(
        "{}---\napiVersion: projectcalico.org/v3\nkind: Profile\nmetadata:\n  name: \
         {RESPONDER_PROFILE}\nspec:\n  ingress: [{{action: Allow}}]\n{}{}",
        allow_all_profile_yaml(),
        endpoint_yaml(from),
        endpoint_yaml(to).replace(
            &format!("profiles: [{}]", shared::ALLOW_ALL_PROFILE),
            &format!("profiles: [{RESPONDER_PROFILE}]")
        ),
    )
}

/// Both workloads attached, by `dump endpoints`.
fn upgrade_once(
    agents: &Agents<'_>,
    topo: &RunTopology<'_>,
    pin_path: &Path,
    hook: AttachMode,
    run: u32,
    flows: Duration,
) -> Result<UpgradeRun> {
    let log = |who: &str| {
        topo.scratch
            .join(format!("agent-upg-{}-{run}-{who}.log", hook.as_str()))
    };
    let start = |loader: &Path, run_args: &AgentRun<'_>, log: &Path| {
        PhaseAgent::start_with(
            loader,
            topo.host,
            topo.datastore,
            pin_path,
            run_args,
            log,
            both_attached,
        )
    };
    // The earlier agent as an operator runs it: its programs stay when it exits.
    let old = start(
        agents.old,
        &AgentRun {
            mode: hook,
            detach_on_exit: false,
            extra: &[],
        },
        &log("old"),
    )
    .context("starting the earlier agent")?;
    let running = Flows::start(topo.from, topo.to, flows)?;
    signals::sleep(KILL_AFTER)?;
    let before = stream_entry_age(agents.old, pin_path)
        .context("the stream's conntrack entry before the upgrade")?;
    let looked_before = Instant::now();

    let stopped_at = Instant::now();
    // Its pin guard goes after the new agent (declared first, dropped last).
    let (old_exit, _old_pins): (Duration, PinGuard) = old.terminate()?;
    let new = start(
        agents.new,
        &AgentRun {
            mode: hook,
            detach_on_exit: true,
            extra: &HEALTH_FLAGS,
        },
        &log("new"),
    )
    .context("starting this agent on the earlier agent's pins")?;
    wait_ready(topo.host, READY_TIMEOUT)?;
    let ready = stopped_at.elapsed();
    let after = stream_entry_age(agents.new, pin_path)
        .context("the stream's conntrack entry after the upgrade")?;
    let between = looked_before.elapsed().as_secs_f64();

    let flows = running.finish()?;
    let policy_denied = policy_denied(agents.new, pin_path, &topo.to.host_if)?;
    let lines = new.log.lines_from(0);
    new.stop();
    Ok(UpgradeRun {
        hook: hook.as_str(),
        run,
        old_exit_ms: millis(old_exit),
        ready_ms: millis(ready),
        migrated: migrated_maps(&lines),
        upgrade_finished: lines.iter().any(|l| l.contains(UPGRADED)),
        conntrack: ConntrackCheck {
            age_before_s: before,
            age_after_s: after,
            kept: entry_kept(before, after, between),
        },
        policy_denied_at_responder: policy_denied,
        flows,
    })
}

/// Whether an entry aged `before` seconds, then `after` seconds `between` seconds later, is
/// the same entry (up to the time `dump` itself takes).
fn entry_kept(before: f64, after: f64, between: f64) -> bool {
    after + 0.25 >= before + between
}

/// `loader dump WHAT -o json` on `pin_path` (each build reads its own layouts).
fn dump(loader: &Path, pin_path: &Path, what: &str) -> Result<Value> {
    let out = dump_cmd(loader, pin_path, what).quiet().output()?;
    serde_json::from_str(&out)
        .with_context(|| format!("`dump {what} -o json` printed invalid JSON"))
}

/// The age of the stream's conntrack entry (TCP to [`TCP_PORT`]).
fn stream_entry_age(loader: &Path, pin_path: &Path) -> Result<f64> {
    let rows = dump(loader, pin_path, "conntrack")?;
    let suffix = format!(":{TCP_PORT}");
    rows.as_array()
        .and_then(|rows| {
            rows.iter().find(|r| {
                r["protocol"] == 6
                    && r["responder"]
                        .as_str()
                        .is_some_and(|s| s.ends_with(&suffix))
            })
        })
        .and_then(|row| row["age_seconds"].as_f64())
        .with_context(|| format!("no conntrack entry for the stream in {rows}"))
}

/// Packets `dump counters` says policy denied on `ifname`.
fn policy_denied(loader: &Path, pin_path: &Path, ifname: &str) -> Result<u64> {
    let rows = dump(loader, pin_path, "counters")?;
    rows.as_array()
        .and_then(|rows| rows.iter().find(|r| r["interface"] == ifname))
        .and_then(|row| row["drops"]["policy-denied"].as_u64())
        .with_context(|| format!("no policy-denied count for {ifname} in {rows}"))
}

/// The maps named in the agent's `upgrading the pinned maps maps=A, B` log line.
fn migrated_maps(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .find(|l| l.contains(UPGRADING))
        .and_then(|l| l.split_once("maps="))
        .map(|(_, maps)| {
            maps.split(", ")
                .map(|m| m.trim().to_owned())
                .filter(|m| !m.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

fn describe(r: &UpgradeRun) -> String {
    format!(
        "{} upgrade {}: the earlier agent exited {:.0} ms after SIGTERM, this one was ready {:.0} \
         ms after it; migrated: {}; {}; the stream's conntrack entry {} (age {:.1} s, then \
         {:.1} s); {} denied at the responder after; longest silence {:.0} ms",
        r.hook,
        r.run,
        r.old_exit_ms,
        r.ready_ms,
        if r.migrated.is_empty() {
            "nothing".to_owned()
        } else {
            r.migrated.join(", ")
        },
        r.flows.describe(),
        if r.conntrack.kept {
            "was kept"
        } else {
            "was NOT kept"
        },
        r.conntrack.age_before_s,
        r.conntrack.age_after_s,
        r.policy_denied_at_responder,
        r.flows.longest_gap_ms(),
    )
}

/// The report's lines.
pub fn print(upgrades: &Upgrades) {
    output::step(format!(
        "Upgrades from {}",
        upgrade_from::short(&upgrades.from_commit)
    ));
    if let Some(run) = upgrades.runs.first() {
        output::info(format!(
            "maps migrated: {}",
            if run.migrated.is_empty() {
                "none".to_owned()
            } else {
                run.migrated.join(", ")
            }
        ));
    }
    for s in &upgrades.summary {
        output::info(format!(
            "{:<4} {} upgrade(s): ready after {:.0} ms (median; max {:.0} ms); {}; the stream's \
             conntrack entry kept in {} of {}; {} denied at the responder; longest silence {:.0} \
             ms",
            s.hook,
            s.upgrades,
            s.ready_ms_median,
            s.ready_ms_max,
            s.losses.describe(),
            s.conntrack_kept,
            s.upgrades,
            s.policy_denied_at_responder,
            s.losses.longest_gap_ms,
        ));
    }
}

/// Adds the phase's figures to the bench's JSON file, as `upgrades`.
pub fn add_to_json(json: &Path, upgrades: &Upgrades) -> Result<()> {
    add_phase_to_json(json, "upgrades", upgrades)
}

/// `cargo xtask bench --upgrade-only`: this phase alone, its report and a JSON file of its own.
pub fn run_alone(
    plan: &Plan,
    machine: &MachineInfo,
    loader: &Path,
    pid: u32,
    release: bool,
    clock: Instant,
) -> Result<()> {
    root::mount_bpffs()?;
    let outcome = measure(&plan.upgrade_from, loader, pid, release);
    shared::check_nothing_left("cbench-", pid, None);
    let upgrades = outcome?;
    print(&upgrades);
    report::write_alone(
        plan,
        machine,
        "--upgrade-only",
        serde_json::json!({ "upgrades": upgrades }),
        clock,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_migrated_maps_are_read_from_the_agent_log() {
        let lines = vec![
            "2026-12-07T10:00:00Z  INFO calico_loader::agent: starting".to_owned(),
            "2026-12-07T10:00:00Z  INFO calico_loader::dataplane::object: upgrading the pinned \
             maps maps=cali_counters version 2 → 3 (reset), cali_trace version 1 → 2 (reset)"
                .to_owned(),
            format!("2026-12-07T10:00:01Z  INFO calico_loader::dataplane: {UPGRADED}"),
        ];
        assert_eq!(
            migrated_maps(&lines),
            [
                "cali_counters version 2 → 3 (reset)",
                "cali_trace version 1 → 2 (reset)"
            ]
        );
        assert!(migrated_maps(&lines[..1]).is_empty());
    }

    #[test]
    fn an_entry_is_kept_when_it_aged_by_the_time_between_the_looks() {
        assert!(entry_kept(1.5, 2.4, 0.9));
        // dump's own time is allowed for.
        assert!(entry_kept(1.5, 2.3, 0.9));
        // Created again during the upgrade: younger than the time since the first look.
        assert!(!entry_kept(1.5, 0.6, 0.9));
    }
}
