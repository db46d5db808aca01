//! The agent: follows the datastore and the host's interfaces, and keeps the dataplane in line
//! with the endpoints of this node.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    time::{Instant, sleep_until},
};
use tracing::{error, info, warn};

use crate::{
    dataplane::{ApplyReport, Dataplane, attach::AttachMode, bpffs::PinLayout, netlink},
    datastore::local::{LocalDatastore, watch},
    model::{Conflict, LocalEndpoint, local_endpoints},
};

/// Default directory of the local datastore.
pub const DEFAULT_DATASTORE_DIR: &str = "/etc/calico-ebpf/datastore";

/// How the agent runs.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub datastore: PathBuf,
    pub node: String,
    pub layout: PinLayout,
    pub mode: AttachMode,
    /// Detach programs and remove pins on exit (by default they stay, so traffic survives a
    /// restart).
    pub detach_on_exit: bool,
    /// Full resync period, as a safety net behind the event-driven updates.
    pub resync_interval: Duration,
}

/// Runs until SIGINT or SIGTERM.
pub async fn run(config: AgentConfig) -> anyhow::Result<()> {
    if !config.datastore.exists() {
        std::fs::create_dir_all(&config.datastore)
            .with_context(|| format!("creating datastore directory {}", config.datastore.display()))?;
        info!(dir = %config.datastore.display(), "created empty datastore directory");
    }
    let mut datastore = LocalDatastore::new(&config.datastore);
    let mut datastore_changes = watch(&config.datastore)
        .with_context(|| format!("watching {}", config.datastore.display()))?;
    let mut link_events = netlink::link_events().context("subscribing to link events")?;

    let mut dataplane = Dataplane::start(config.layout.clone(), config.mode)
        .context("loading the dataplane (this needs root, or CAP_BPF and CAP_NET_ADMIN)")?;
    info!(
        node = %config.node,
        datastore = %config.datastore.display(),
        pins = %config.layout.root().display(),
        mode = config.mode.as_str(),
        "dataplane loaded"
    );

    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut log = ReportLog::default();
    let mut next_resync = Instant::now() + config.resync_interval;

    loop {
        // The datastore logs each new problem with a file once; the last good version of that
        // file stays in the snapshot.
        let sync = datastore.sync();
        let (endpoints, conflicts) = local_endpoints(&sync.snapshot, &config.node);
        log.conflicts(&conflicts);
        match dataplane.apply(&endpoints).await {
            Ok(report) => {
                log.log(&report, &endpoints, dataplane.mode());
                log.summary(endpoints.len(), dataplane.attached().len(), report.waiting.len());
            }
            Err(e) => error!("programming the dataplane failed, will retry: {e:#}"),
        }

        tokio::select! {
            changed = datastore_changes.recv() => {
                if changed.is_none() {
                    anyhow::bail!("the datastore watch ended");
                }
            }
            event = netlink::next_link_event(&mut link_events) => {
                if event.is_none() {
                    anyhow::bail!("the link event stream ended");
                }
                // Interfaces come and go in bursts (a veth pair is two events): let them settle.
                tokio::time::sleep(Duration::from_millis(20)).await;
                while let Ok(Some(_)) = tokio::time::timeout(Duration::ZERO, netlink::next_link_event(&mut link_events)).await {}
            }
            () = sleep_until(next_resync) => {
                next_resync = Instant::now() + config.resync_interval;
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }

    if config.detach_on_exit {
        info!("detaching programs and removing pins");
        dataplane.teardown().await.context("tearing down the dataplane")?;
    } else {
        info!(
            pins = %config.layout.root().display(),
            "exiting; programs stay attached and maps stay pinned, so traffic keeps flowing \
             (`calico-loader cleanup` removes them)"
        );
    }
    Ok(())
}

/// Logs what changed between applies, without repeating itself.
#[derive(Default)]
struct ReportLog {
    waiting: BTreeSet<(String, String)>,
    errors: BTreeSet<String>,
    conflicts: BTreeSet<String>,
    summary: Option<(usize, usize, usize)>,
}

impl ReportLog {
    /// One line saying what this node serves, whenever that changes.
    fn summary(&mut self, endpoints: usize, attached: usize, waiting: usize) {
        let summary = (endpoints, attached, waiting);
        if self.summary != Some(summary) {
            info!(
                "serving {endpoints} endpoint(s) of this node: {attached} interface(s) attached, \
                 {waiting} waiting for their interface"
            );
            self.summary = Some(summary);
        }
    }

    fn conflicts(&mut self, conflicts: &[Conflict]) {
        let current: BTreeSet<String> = conflicts.iter().map(ToString::to_string).collect();
        for conflict in current.difference(&self.conflicts) {
            error!("{conflict}; the endpoint is left out");
        }
        self.conflicts = current;
    }

    fn log(&mut self, report: &ApplyReport, endpoints: &BTreeMap<String, LocalEndpoint>, mode: AttachMode) {
        for (ifname, ifindex, key) in &report.attached {
            let addresses: Vec<String> = endpoints
                .get(ifname)
                .map(|e| e.networks.iter().map(ToString::to_string).collect())
                .unwrap_or_default();
            info!(
                endpoint = %key,
                interface = %ifname,
                ifindex,
                mode = mode.as_str(),
                addresses = %addresses.join(","),
                "attached"
            );
        }
        for ifname in &report.detached {
            info!(interface = %ifname, "detached");
        }
        let waiting: BTreeSet<(String, String)> = report.waiting.iter().cloned().collect();
        for (ifname, key) in waiting.difference(&self.waiting) {
            info!(endpoint = %key, interface = %ifname, "waiting for the interface to appear");
        }
        self.waiting = waiting;
        let errors: BTreeSet<String> = report.errors.iter().cloned().collect();
        for e in errors.difference(&self.errors) {
            warn!("{e}");
        }
        self.errors = errors;
        let changes = report.map_changes;
        if changes.written + changes.removed > 0 {
            info!(written = changes.written, removed = changes.removed, "map entries updated");
        }
    }
}
