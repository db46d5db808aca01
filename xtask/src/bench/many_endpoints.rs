//! Many endpoints at once: one agent (TC mode, metrics on) in its own host namespace
//! `cbench-many-<pid>` with N veth pairs, and N WorkloadEndpoints written into its datastore
//! together, as a host that boots full of workloads (or an agent restarted on one) sees them.
//! Measured: the time until the agent reports all N programmed (its own
//! `felix_bpf_dataplane_endpoints` and `felix_active_local_endpoints`), the agent's CPU time
//! for it, its CPU use afterwards with nothing changing (resyncs every 10 s), its memory, and
//! the kernel memory of the maps it holds.

use std::{
    ops::ControlFlow,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use testbed::{Cmd, Netns, output};

use super::{
    attach::{create_veth_pairs, endpoint_yaml},
    control::{agent_maps, proc_status_kib},
    phase_agent::{AgentRun, PhaseAgent},
};
use crate::topology::{AttachMode, allow_all_profile_yaml};

/// The metrics port inside the phase's namespace.
const METRICS_PORT: u16 = 9091;
/// How long all endpoints may take before the phase fails.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(1200);

#[derive(Debug, Serialize)]
pub struct ManyEndpoints {
    pub endpoints: u32,
    pub agent_build: &'static str,
    /// From the first endpoint written to the agent reporting them all programmed.
    pub converge_s: f64,
    /// The agent's CPU time (user + system) over that interval.
    pub converge_cpu_s: f64,
    /// The agent's CPU use afterwards, nothing changing, in % of one CPU, and over how long.
    pub steady_cpu_percent: f64,
    pub steady_s: f64,
    pub vm_rss_kib: Option<u64>,
    pub vm_hwm_kib: Option<u64>,
    /// `bytes_memlock` of every map the agent holds, summed.
    pub maps_bytes: u64,
    /// What the agent's metrics said at the end.
    pub felix_active_local_endpoints: Option<f64>,
    pub felix_bpf_dataplane_endpoints: Option<f64>,
    pub felix_int_dataplane_failures: Option<f64>,
}

/// The agent's CPU time so far (user + system), from /proc/<pid>/stat.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / per_second)
}

/// One metric's value from the agent's `/metrics`, read inside `host`.
fn metric(host: &Netns, name: &str) -> Option<f64> {
    let out = Cmd::new("nsenter")
        .arg(format!("--net={}", host.path().display()))
        .args(["curl", "-s", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{METRICS_PORT}/metrics"))
        .privileged()
        .capture()
        .ok()?;
    parse_metric(&String::from_utf8_lossy(&out.stdout), name)
}

fn parse_metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == name).then(|| value.trim().parse().ok())?
    })
}

pub fn measure(
    loader: &Path,
    scratch: &Path,
    pid: u32,
    count: u32,
    steady: Duration,
    release: bool,
) -> Result<ManyEndpoints> {
    output::step(format!("{count} endpoints at once"));
    output::explain(format!(
        "One agent (tc, metrics on) in cbench-many-{pid} with {count} veth pairs. All\n\
         WorkloadEndpoints are written at once; the phase waits for the agent's metrics to\n\
         count them all programmed, then watches it for {} s with nothing changing.",
        steady.as_secs()
    ));
    if count == 0 {
        bail!("the many-endpoints phase needs at least one endpoint");
    }
    let host = Netns::create(format!("cbench-many-{pid}"))?;
    host.ip(["link", "set", "lo", "up"]).run()?;
    let links_started = Instant::now();
    create_veth_pairs(&host, &scratch.join("many-links.batch"), count)?;
    output::info(format!(
        "{count} veth pairs in {} ({:.1} s)",
        host.name(),
        links_started.elapsed().as_secs_f64()
    ));

    let datastore = scratch.join("many-datastore");
    std::fs::create_dir_all(&datastore)
        .with_context(|| format!("cannot create {}", datastore.display()))?;
    std::fs::write(datastore.join("profile.yaml"), allow_all_profile_yaml())
        .context("cannot write the profile")?;
    let pin_path = crate::topology::pin_path("bench-many", pid);
    let port = METRICS_PORT.to_string();
    let agent = PhaseAgent::start_with(
        loader,
        &host,
        &datastore,
        &pin_path,
        &AgentRun {
            mode: AttachMode::Tc,
            detach_on_exit: true,
            extra: &[
                "--prometheus-metrics-enabled",
                "true",
                "--prometheus-metrics-host",
                "127.0.0.1",
                "--prometheus-metrics-port",
                &port,
            ],
        },
        &scratch.join("agent-many.log"),
        |endpoints| {
            if endpoints.is_empty() {
                ControlFlow::Break("the agent is up, with no endpoint".to_owned())
            } else {
                ControlFlow::Continue(format!("{} endpoints", endpoints.len()))
            }
        },
    )?;

    // Every endpoint is written to a hidden name, then all are renamed at once.
    for i in 0..count {
        std::fs::write(
            datastore.join(format!(".workloadendpoint-sc{i}.yaml")),
            endpoint_yaml(i),
        )
        .context("cannot write an endpoint")?;
    }
    let cpu_before = cpu_seconds(agent.pid);
    let started = Instant::now();
    for i in 0..count {
        std::fs::rename(
            datastore.join(format!(".workloadendpoint-sc{i}.yaml")),
            datastore.join(format!("workloadendpoint-sc{i}.yaml")),
        )
        .context("cannot publish an endpoint")?;
    }
    let mut last_report = Instant::now();
    loop {
        let programmed = metric(&host, "felix_bpf_dataplane_endpoints").unwrap_or(0.0);
        if programmed >= f64::from(count) {
            break;
        }
        if started.elapsed() > CONVERGE_TIMEOUT {
            bail!(
                "only {programmed} of {count} endpoints programmed after {} s",
                CONVERGE_TIMEOUT.as_secs()
            );
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            output::info(format!(
                "{programmed} of {count} endpoints programmed after {:.0} s",
                started.elapsed().as_secs_f64()
            ));
            last_report = Instant::now();
        }
        thread::sleep(Duration::from_millis(200));
    }
    let converge_s = started.elapsed().as_secs_f64();
    let cpu_converged = cpu_seconds(agent.pid);
    thread::sleep(steady);
    let cpu_after = cpu_seconds(agent.pid);
    let maps_bytes = agent_maps(agent.pid)
        .map(|maps| maps.iter().map(|m| m.bytes_memlock).sum())
        .unwrap_or(0);
    let result = ManyEndpoints {
        endpoints: count,
        agent_build: if release { "release" } else { "debug" },
        converge_s,
        converge_cpu_s: match (cpu_before, cpu_converged) {
            (Some(a), Some(b)) => b - a,
            _ => f64::NAN,
        },
        steady_cpu_percent: match (cpu_converged, cpu_after) {
            (Some(a), Some(b)) => (b - a) / steady.as_secs_f64() * 100.0,
            _ => f64::NAN,
        },
        steady_s: steady.as_secs_f64(),
        vm_rss_kib: proc_status_kib(agent.pid, "VmRSS"),
        vm_hwm_kib: proc_status_kib(agent.pid, "VmHWM"),
        maps_bytes,
        felix_active_local_endpoints: metric(&host, "felix_active_local_endpoints"),
        felix_bpf_dataplane_endpoints: metric(&host, "felix_bpf_dataplane_endpoints"),
        felix_int_dataplane_failures: metric(&host, "felix_int_dataplane_failures"),
    };
    agent.stop();
    drop(host);
    if result.felix_active_local_endpoints != Some(f64::from(count)) {
        bail!(
            "the agent's felix_active_local_endpoints is {:?}, not {count}",
            result.felix_active_local_endpoints
        );
    }
    output::info(result.describe());
    Ok(result)
}

impl ManyEndpoints {
    pub fn describe(&self) -> String {
        let mib =
            |v: Option<u64>| v.map_or("?".into(), |v| format!("{:.1} MiB", v as f64 / 1024.0));
        format!(
            "{} endpoints at once ({} agent): all programmed in {:.1} s using {:.1} s of CPU; \
             then {:.1}% of a CPU over {:.0} s with nothing changing; agent VmRSS {} (peak {}); \
             maps {:.1} MiB; felix_active_local_endpoints {}, dataplane failures {}",
            self.endpoints,
            self.agent_build,
            self.converge_s,
            self.converge_cpu_s,
            self.steady_cpu_percent,
            self.steady_s,
            mib(self.vm_rss_kib),
            mib(self.vm_hwm_kib),
            self.maps_bytes as f64 / (1024.0 * 1024.0),
            self.felix_active_local_endpoints
                .map_or("?".into(), |v| format!("{v}")),
            self.felix_int_dataplane_failures
                .map_or("?".into(), |v| format!("{v}")),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_read_by_exact_name() {
        let text = "# HELP felix_active_local_endpoints x\n\
                    felix_active_local_endpoints 5000\n\
                    felix_active_local_endpoints_other 3\n\
                    felix_int_dataplane_failures 0\n";
        assert_eq!(
            parse_metric(text, "felix_active_local_endpoints"),
            Some(5000.0)
        );
        assert_eq!(
            parse_metric(text, "felix_int_dataplane_failures"),
            Some(0.0)
        );
        assert_eq!(parse_metric(text, "felix_resyncs_started"), None);
    }

    #[test]
    fn our_own_cpu_time_is_read() {
        let me = std::process::id();
        assert!(cpu_seconds(me).is_some_and(|s| s >= 0.0));
    }
}
