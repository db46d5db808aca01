//! Attach latency at scale: one agent (TC mode) in its own host namespace `cbench-scale-<pid>`,
//! and N veth pairs created there beforehand (both ends in that namespace: attaching needs only
//! the host side). Their WorkloadEndpoints are renamed into the agent's datastore one at a
//! time; for each, the time from the rename to the agent's "attached endpoint=…" log line (the
//! end of its apply for that endpoint) before the next is written. So the Nth figure is the
//! time to attach one more endpoint on a host that has N−1. At the end, the agent's resident
//! set (`VmRSS`, and its peak `VmHWM`) with N endpoints, next to `VmRSS` with none.

use std::{
    net::Ipv4Addr,
    ops::ControlFlow,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use testbed::{Netns, output};

use super::{
    control::proc_status_kib,
    loader::{NAMESPACE, NODE},
    phase_agent::PhaseAgent,
    policy::Staged,
    topology::{log_time, millis_between},
};
use crate::topology::{ALLOW_ALL_PROFILE, AttachMode, HOST_SIDE_MAC, allow_all_profile_yaml};

/// How long one endpoint may take before the phase fails.
const PER_ENDPOINT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Serialize)]
pub struct AttachScale {
    pub hook: &'static str,
    pub agent_build: &'static str,
    pub endpoints: u32,
    /// From the rename of each WorkloadEndpoint to the agent's "attached" line for it, in
    /// order (the first on an empty host, the last with `endpoints - 1` already attached).
    pub attach_ms: Vec<f64>,
    pub first_ms: f64,
    pub last_ms: f64,
    pub median_ms: f64,
    pub max_ms: f64,
    /// All of them, from the first rename to the last "attached".
    pub total_s: f64,
    pub vm_rss_kib_empty: Option<u64>,
    pub vm_rss_kib: Option<u64>,
    pub vm_hwm_kib: Option<u64>,
}

/// The `i`th endpoint's address (0-based, up to 40,000): 198.19.200.1 onwards.
pub(super) fn address(i: u32) -> Ipv4Addr {
    let [_, _, hi, lo] = (i / 200 * 256 + i % 200 + 1).to_be_bytes();
    Ipv4Addr::new(198, 19, 200u8.wrapping_add(hi), lo)
}

pub(super) fn interface(i: u32) -> String {
    format!("calisc{i}")
}

pub(super) fn endpoint_name(i: u32) -> String {
    format!("{NODE}-cni-sc{i}-eth0")
}

pub(super) fn endpoint_yaml(i: u32) -> String {
    format!(
        "apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\nmetadata:\n  \
         name: {name}\n  namespace: {NAMESPACE}\n  labels: {{app: scale}}\nspec:\n  \
         node: {NODE}\n  orchestrator: cni\n  workload: sc{i}\n  endpoint: eth0\n  \
         interfaceName: {iface}\n  mac: \"ca:fe:00:01:{:02x}:{:02x}\"\n  \
         ipNetworks: [\"{ip}/32\"]\n  profiles: [{ALLOW_ALL_PROFILE}]\n",
        i / 256,
        i % 256,
        name = endpoint_name(i),
        iface = interface(i),
        ip = address(i),
    )
}

/// Creates `count` veth pairs in `host`, both ends there (attaching needs only the host
/// side `interface(i)`), in one `ip -batch` run from the file `batch_file`.
pub(super) fn create_veth_pairs(host: &Netns, batch_file: &Path, count: u32) -> Result<()> {
    let mut batch = String::new();
    for i in 0..count {
        let iface = interface(i);
        batch.push_str(&format!(
            "link add {iface} address {HOST_SIDE_MAC} type veth peer name scp{i}\n\
             link set {iface} up\nlink set scp{i} up\n"
        ));
    }
    std::fs::write(batch_file, batch)
        .with_context(|| format!("cannot write {}", batch_file.display()))?;
    host.ip(["-batch"]).arg(batch_file).run()?;
    Ok(())
}

pub fn measure(
    loader: &Path,
    scratch: &Path,
    pid: u32,
    count: u32,
    release: bool,
) -> Result<AttachScale> {
    output::step(format!("Attach at scale: {count} endpoints, one at a time"));
    output::explain(format!(
        "One agent (tc) in cbench-scale-{pid} with {count} veth pairs and no endpoint. Each\n\
         WorkloadEndpoint is renamed into its datastore in turn; the time to the agent's\n\
         \"attached\" line for it is taken before the next. Then the agent's VmRSS."
    ));
    if count == 0 {
        bail!("attach at scale needs at least one endpoint");
    }
    let host = Netns::create(format!("cbench-scale-{pid}"))?;
    create_veth_pairs(&host, &scratch.join("scale-links.batch"), count)?;
    output::info(format!("{count} veth pairs in {}", host.name()));

    let datastore = scratch.join("scale-datastore");
    std::fs::create_dir_all(&datastore)
        .with_context(|| format!("cannot create {}", datastore.display()))?;
    std::fs::write(datastore.join("profile.yaml"), allow_all_profile_yaml())
        .context("cannot write the profile")?;
    let pin_path = crate::topology::pin_path("bench-scale", pid);
    let agent = PhaseAgent::start(
        loader,
        &host,
        &datastore,
        &pin_path,
        AttachMode::Tc,
        &scratch.join("agent-scale.log"),
        |endpoints| {
            if endpoints.is_empty() {
                ControlFlow::Break("the agent is up, with no endpoint".to_owned())
            } else {
                ControlFlow::Continue(format!("{} endpoints", endpoints.len()))
            }
        },
    )?;
    let vm_rss_kib_empty = proc_status_kib(agent.pid, "VmRSS");
    let result = attach_all(&agent, &datastore, count);
    let vm_rss_kib = proc_status_kib(agent.pid, "VmRSS");
    let vm_hwm_kib = proc_status_kib(agent.pid, "VmHWM");
    agent.stop();
    drop(host);
    let (attach_ms, total_s) = result?;
    let mut sorted = attach_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let scale = AttachScale {
        hook: "tc",
        agent_build: if release { "release" } else { "debug" },
        endpoints: count,
        first_ms: attach_ms.first().copied().unwrap_or(f64::NAN),
        last_ms: attach_ms.last().copied().unwrap_or(f64::NAN),
        median_ms: sorted[sorted.len() / 2],
        max_ms: sorted.last().copied().unwrap_or(f64::NAN),
        attach_ms,
        total_s,
        vm_rss_kib_empty,
        vm_rss_kib,
        vm_hwm_kib,
    };
    output::info(scale.describe());
    Ok(scale)
}

fn attach_all(agent: &PhaseAgent, datastore: &Path, count: u32) -> Result<(Vec<f64>, f64)> {
    let started = Instant::now();
    let mut attach_ms = Vec::with_capacity(count as usize);
    for i in 0..count {
        let file = format!("workloadendpoint-sc{i}.yaml");
        let staged = Staged::write(datastore, &file, &endpoint_yaml(i))?;
        let offset = agent.log.len();
        let published = staged.publish()?;
        let wanted = format!("attached endpoint={NAMESPACE}/{} ", endpoint_name(i));
        let line = agent
            .log
            .wait_for(offset, &wanted, PER_ENDPOINT_TIMEOUT)?
            .with_context(|| {
                format!(
                    "endpoint {} of {count} ({}) not attached within {}s",
                    i + 1,
                    interface(i),
                    PER_ENDPOINT_TIMEOUT.as_secs()
                )
            })?;
        let at =
            log_time(&line).with_context(|| format!("no time in the agent's line {line:?}"))?;
        let ms = millis_between(published, at);
        attach_ms.push(ms);
        if i == 0 || (i + 1) % 100 == 0 || i + 1 == count {
            output::info(format!(
                "endpoint {} of {count}: attached in {ms:.0} ms",
                i + 1
            ));
        }
    }
    Ok((attach_ms, started.elapsed().as_secs_f64()))
}

impl AttachScale {
    pub fn describe(&self) -> String {
        let kib =
            |v: Option<u64>| v.map_or("?".into(), |v| format!("{:.1} MiB", v as f64 / 1024.0));
        format!(
            "attach at scale ({} agent, {}): 1st endpoint {:.0} ms, {}th {:.0} ms (median {:.0} ms, \
             max {:.0} ms, all in {:.1}s); agent VmRSS {} with {} endpoints ({} with none, peak {})",
            self.agent_build,
            self.hook,
            self.first_ms,
            self.endpoints,
            self.last_ms,
            self.median_ms,
            self.max_ms,
            self.total_s,
            kib(self.vm_rss_kib),
            self.endpoints,
            kib(self.vm_rss_kib_empty),
            kib(self.vm_hwm_kib),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_stay_in_the_benchmarking_range_and_differ() {
        let all: std::collections::BTreeSet<Ipv4Addr> = (0..2000).map(address).collect();
        assert_eq!(all.len(), 2000);
        assert!(
            all.iter()
                .all(|a| a.octets()[..2] == [198, 19] && a.octets()[3] != 0)
        );
        assert_eq!(address(0), Ipv4Addr::new(198, 19, 200, 1));
        assert_eq!(address(200), Ipv4Addr::new(198, 19, 201, 1));
    }
}
