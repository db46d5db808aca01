//! The agent: follows the datastore and the host's interfaces, and keeps the dataplane in line
//! with the endpoints of this node, and BGP (BIRD) in line with the cluster's routing.
//!
//! - [`node`]: this node's `Node` resource, created or updated at start (addresses, AS);
//! - [`routing`]: BIRD, configured from the datastore and supervised.

pub mod node;
pub mod routing;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    time::{Instant, sleep_until},
};
use tracing::{debug, error, info, warn};

use regex::Regex;

use self::{
    node::{NodeSettings, NodeUpdate},
    routing::{Routing, RoutingConfig, SUPERVISION_INTERVAL},
};
use crate::{
    dataplane::{
        ApplyReport, Dataplane, FULL_VERIFICATION_EVERY, HostDesired, Verification,
        attach::{AttachMode, Role},
        bpffs::PinLayout,
        host_endpoints::HostSettings,
        nat::NatPools,
        netlink,
    },
    datastore::{
        AgentDatastore, DatastoreConfig, Snapshot,
        resources::{IpPool, Node},
    },
    metrics::{Health, Metrics, MonitoringConfig, resync_state},
    model::{
        Conflict, LocalEndpoint,
        compile::{
            CompiledEndpoint, CompiledHostEndpoint, PolicyContext, compile_endpoint,
            compile_host_endpoint,
        },
        host_endpoints::{LocalHostEndpoint, local_host_endpoints},
        local_endpoints, remote_workloads,
        rules::RuleRegistry,
    },
};

/// Default directory of the local datastore.
pub const DEFAULT_DATASTORE_DIR: &str = "/etc/calico-ebpf/datastore";

/// How the agent runs.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The datastore to follow: a local directory or etcd.
    pub datastore: DatastoreConfig,
    pub node: String,
    pub layout: PinLayout,
    pub mode: AttachMode,
    /// Which of the host's interfaces are data interfaces (traffic from other hosts).
    pub data_interfaces: Regex,
    /// Detach programs and remove pins on exit (by default they stay, so traffic survives a
    /// restart).
    pub detach_on_exit: bool,
    /// Full resync period, as a safety net behind the event-driven updates.
    pub resync_interval: Duration,
    /// Entries of the conntrack table.
    pub conntrack_entries: u32,
    /// Entries of the endpoint map: the workload interfaces this host can serve.
    pub endpoint_entries: u32,
    /// Felix's configuration in force (`conntrack_entries` and `data_interfaces` are its
    /// values), and the sources other than the datastore, to check changes against.
    pub felix: crate::felix_settings::FelixConfig,
    pub felix_sources: crate::felix_config::LocalSources,
    /// What the agent sets on its Node at start.
    pub node_settings: NodeSettings,
    /// BGP: whether BIRD runs, and where its files are.
    pub routing: RoutingConfig,
    /// Whether and where metrics and health are served.
    pub monitoring: MonitoringConfig,
}

/// Where the agent's registration of its Node stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Registration {
    /// Still trying.
    Pending,
    /// Done: whether the Node was written (so the datastore's view may not show it yet).
    Finished { wrote: bool },
}

/// The file in the run directory that names the agent's process (for `node status`).
pub const AGENT_PID_FILE: &str = "calico-loader.pid";

/// Writes the agent's pid into the run directory (created, mode 0700, if missing).
fn write_pid_file(run_dir: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(run_dir)?;
    let path = run_dir.join(AGENT_PID_FILE);
    std::fs::write(&path, format!("{}\n", std::process::id()))?;
    Ok(path)
}

/// Runs until SIGINT or SIGTERM.
pub async fn run(config: AgentConfig) -> anyhow::Result<()> {
    // Metrics and health are served from the start, so that readiness says "not yet" until
    // the datastore is in sync and the dataplane programmed.
    let metrics = Metrics::new(Some(config.layout.clone())).context("creating the metrics")?;
    let health = Health::default();
    health.register(HEALTH_DATAPLANE, crate::metrics::HEALTH_DEADLINE);
    health.register(HEALTH_DATASTORE, crate::metrics::HEALTH_DEADLINE);
    crate::metrics::serve(&config.monitoring, Some(&metrics), Some(&health))
        .await
        .context("serving metrics and health")?;
    let mut health_state = HealthState::default();
    health_state.report(&health);
    let mut health_reports = tokio::time::interval(crate::metrics::HEALTH_REPORT_INTERVAL);
    metrics.resyncs_started.inc();
    metrics.resync_state.set(resync_state::RESYNCING);

    // etcd is followed in the background: while it is unreachable, the last good state (or,
    // before the first listing, nothing) stays in force.
    let mut datastore = AgentDatastore::start(&config.datastore)
        .await
        .with_context(|| format!("opening the datastore ({})", config.datastore))?;
    let mut link_events = netlink::link_events().context("subscribing to link events")?;

    let mut felix = crate::felix_config::Watch::start(
        config.felix_sources.clone(),
        &config.node,
        config.felix.clone(),
    );
    let mut dataplane = Dataplane::start(
        config.layout.clone(),
        config.mode,
        crate::dataplane::MapSizes {
            conntrack: config.conntrack_entries,
            endpoints: config.endpoint_entries,
        },
        config.data_interfaces.clone(),
        config
            .felix
            .interface_prefix
            .value
            .split(',')
            .map(|prefix| prefix.trim().to_owned())
            .filter(|prefix| !prefix.is_empty())
            .collect(),
    )
    .context("loading the dataplane (this needs root, or CAP_BPF and CAP_NET_ADMIN)")?;
    let mut log_events = match dataplane.take_log_events() {
        // SAFETY: the ring buffer owns its fd and moves into the AsyncFd, which drops it last.
        Some(ring) => {
            Some(unsafe { AsyncFd::register(ring) }.context("watching the Log event ring buffer")?)
        }
        None => None,
    };
    let mut log_limiter = LogLimiter::default();
    let mut conntrack_scan = tokio::time::interval(crate::dataplane::conntrack::SCAN_INTERVAL);
    let mut conntrack_full = crate::dataplane::conntrack::FullWatch::default();
    metrics
        .conntrack_max_entries
        .set(i64::from(config.conntrack_entries));
    metrics
        .endpoint_map_max_entries
        .set(i64::from(config.endpoint_entries));
    info!(
        node = %config.node,
        datastore = %config.datastore,
        pins = %config.layout.root().display(),
        mode = config.mode.as_str(),
        data_interfaces = %config.data_interfaces,
        "dataplane loaded"
    );

    // DHCP for VMs on taps; without it the rest of the dataplane runs all the same.
    let dhcp = match crate::dhcp::Server::start() {
        Ok(server) => Some(server),
        Err(e) => {
            error!("VMs on taps get no DHCP: {e}");
            None
        }
    };

    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut log = ReportLog::default();
    let mut next_resync = Instant::now() + config.resync_interval;
    // The first apply, every FULL_VERIFICATION_EVERY-th resync and the one after a failure
    // read the whole kernel state back; the others only what may have changed.
    let mut verification = Verification::Full;
    let mut resyncs: u32 = 0;
    let mut registry = RuleRegistry::default();
    let mut policies = PolicyCache::default();
    // Restart to change: the Felix configuration watch says so.
    let host_settings = HostSettings::from(felix.running());

    let pid_file = match write_pid_file(&config.routing.run_dir) {
        Ok(path) => Some(path),
        Err(e) => {
            warn!(run_dir = %config.routing.run_dir.display(), "cannot write the agent's pid file: {e}");
            None
        }
    };
    // The Node is registered in the background: while the datastore cannot be reached, the
    // dataplane runs on the last good state anyway.
    let (registration_tx, mut registration) = tokio::sync::watch::channel(Registration::Pending);
    {
        let (datastore, node, settings) = (
            config.datastore.clone(),
            config.node.clone(),
            config.node_settings.clone(),
        );
        tokio::spawn(async move {
            let outcome = node::register(&datastore, &node, &settings).await;
            let _ = registration_tx.send(Registration::Finished {
                wrote: outcome == Some(NodeUpdate::Written),
            });
        });
    }
    let mut registration_pending = true;
    let mut node_known = false;
    let mut routing = Routing::new(&config.node, config.routing.clone());
    let mut supervision = tokio::time::interval(SUPERVISION_INTERVAL);
    let mut waiting_logged = false;

    loop {
        // The datastore logs each new problem with a file once; the last good version of that
        // file stays in the snapshot.
        let sync = datastore.sync();
        felix.check(&sync.snapshot);
        if health_state.in_sync && !sync.complete {
            metrics.resyncs_started.inc();
        }
        health_state.in_sync = sync.complete;
        metrics.resync_state.set(if sync.complete {
            resync_state::IN_SYNC
        } else {
            resync_state::RESYNCING
        });
        metrics
            .cluster_num_hosts
            .set(gauge_value(sync.snapshot.all::<Node>().count()));
        // Until the datastore has been read whole (etcd not listed yet), the dataplane is left
        // as it is: what an earlier agent programmed keeps forwarding and enforcing, instead of
        // being taken for stale against an empty view and detached.
        if sync.complete {
            let (endpoints, conflicts) = local_endpoints(&sync.snapshot, &config.node);
            log.conflicts(&conflicts);
            let (remote, remote_conflicts) =
                remote_workloads(&sync.snapshot, &sync.ipam, &config.node, &endpoints);
            log.remote_conflicts(&remote_conflicts);
            let host_endpoints = local_host_endpoints(&sync.snapshot, &config.node);
            policies.compile(
                &sync.snapshot,
                &endpoints,
                &host_endpoints,
                &mut registry,
                &mut log,
            );
            let nat_pools = NatPools::from_pools(sync.snapshot.all::<IpPool>());
            let apply_started = std::time::Instant::now();
            let host = HostDesired {
                endpoints: &host_endpoints,
                compiled: &policies.host_compiled,
                settings: &host_settings,
            };
            match dataplane
                .apply(
                    &endpoints,
                    &remote,
                    &policies.compiled,
                    host,
                    &mut registry,
                    &nat_pools,
                    verification,
                )
                .await
            {
                Ok(report) => {
                    verification = Verification::Incremental;
                    metrics
                        .int_dataplane_apply_time
                        .observe(apply_started.elapsed().as_secs_f64());
                    metrics
                        .active_local_endpoints
                        .set(gauge_value(endpoints.len() + host_endpoints.len()));
                    metrics
                        .active_local_policies
                        .set(gauge_value(active_policies(&registry)));
                    metrics
                        .active_local_selectors
                        .set(gauge_value(policies.selectors));
                    metrics
                        .bpf_dataplane_endpoints
                        .set(gauge_value(dataplane.attached().len()));
                    let routes = dataplane.managed_kernel_routes();
                    for (table, count) in [("IPv4:254", routes.v4), ("IPv6:254", routes.v6)] {
                        metrics
                            .route_table_num_routes
                            .with_label_values(&[table])
                            .set(gauge_value(count));
                    }
                    metrics
                        .endpoint_map_overflow
                        .set(gauge_value(report.over_capacity));
                    health_state.applied_in_sync |= sync.complete;
                    if let Some(dhcp) = &dhcp {
                        let pools: Vec<ipnet::Ipv4Net> = sync
                            .snapshot
                            .all::<IpPool>()
                            .filter_map(|pool| match pool.spec.cidr {
                                ipnet::IpNet::V4(net) => Some(net),
                                ipnet::IpNet::V6(_) => None,
                            })
                            .collect();
                        dhcp.set_leases(
                            report
                                .dhcp_clients
                                .iter()
                                .map(|c| (c.ifindex, crate::dhcp::Lease::for_client(c, &pools)))
                                .collect(),
                        );
                    }
                    log.log(&report, &endpoints, dataplane.mode());
                    let attached = dataplane.attached();
                    let workloads = attached.values().filter(|(_, r)| *r == Role::Workload);
                    log.summary(Summary {
                        endpoints: endpoints.len(),
                        attached: workloads.count(),
                        waiting: report.waiting.len(),
                        data_interfaces: attached.values().filter(|(_, r)| r.is_data()).count(),
                        remote_endpoints: remote.endpoints.len(),
                        remote_blocks: remote.blocks.len(),
                    });
                }
                Err(e) => {
                    verification = Verification::Full;
                    metrics.int_dataplane_failures.inc();
                    error!("programming the dataplane failed, will retry: {e:#}");
                }
            }
        } else if !waiting_logged {
            info!(
                "waiting for the datastore to be read whole before programming the dataplane; \
                 what is programmed stays in force"
            );
            waiting_logged = true;
        }
        health_state.report(&health);
        // BGP follows the datastore once it has been read whole and the Node registered (and,
        // if written, seen once), so that a partial view never stops a running BIRD.
        node_known = node_known
            || match *registration.borrow() {
                Registration::Pending => false,
                Registration::Finished { wrote } => {
                    !wrote || sync.snapshot.find::<Node>(None, &config.node).is_some()
                }
            };
        if sync.complete && node_known {
            routing.update(&sync.snapshot, &sync.ipam).await;
        }

        // Wait for something that calls for an apply; Log events and conntrack scans are
        // handled without one.
        let stop = loop {
            tokio::select! {
                changed = datastore.changed() => {
                    if changed.is_none() {
                        anyhow::bail!("the datastore watch ended");
                    }
                    break false;
                }
                event = netlink::next_link_event(&mut link_events) => {
                    if event.is_none() {
                        anyhow::bail!("the link event stream ended");
                    }
                    // Interfaces come and go in bursts (a veth pair is two events): let them settle.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    while let Ok(Some(_)) = tokio::time::timeout(Duration::ZERO, netlink::next_link_event(&mut link_events)).await {}
                    // Listed again by the apply that follows, after the events it has seen.
                    dataplane.interfaces_changed();
                    break false;
                }
                () = sleep_until(next_resync) => {
                    next_resync = Instant::now() + config.resync_interval;
                    resyncs = resyncs.wrapping_add(1);
                    if resyncs.is_multiple_of(FULL_VERIFICATION_EVERY) {
                        verification = Verification::Full;
                    }
                    break false;
                }
                ready = async { log_events.as_mut()?.readable_mut().await.ok() }, if log_events.is_some() => {
                    if let Some(mut guard) = ready {
                        let ring = guard.get_inner_mut();
                        while let Some(item) = ring.next() {
                            log_limiter.event(&item, &registry);
                        }
                        guard.clear_ready();
                    }
                }
                changed = registration.changed(), if registration_pending => {
                    registration_pending = false;
                    if changed.is_ok() {
                        break false;
                    }
                }
                _ = supervision.tick() => routing.supervise(),
                _ = conntrack_scan.tick() => {
                    let sweep_started = std::time::Instant::now();
                    match dataplane.sweep_conntrack() {
                        Ok(sweep) => {
                            metrics
                                .bpf_conntrack_cleaner_seconds
                                .observe(sweep_started.elapsed().as_secs_f64());
                            metrics.bpf_conntrack_sweeps.inc();
                            metrics.bpf_conntrack_used.set(gauge_value(sweep.used));
                            metrics.bpf_conntrack_cleaned.set(gauge_value(sweep.removed));
                            if sweep.removed > 0 {
                                debug!(removed = sweep.removed, "expired conntrack entries removed");
                            }
                            metrics.conntrack_evictions.inc_by(sweep.evicted as u64);
                            if conntrack_full.filled(sweep.evicted) {
                                warn!(
                                    entries = sweep.used,
                                    size = config.conntrack_entries,
                                    evicted = sweep.evicted,
                                    "the conntrack table is full: new flows evict the least \
                                     recently used entries, whose flows policy then judges again \
                                     on their next packet (raise BPFMapSizeConntrack)"
                                );
                            }
                        }
                        Err(e) => warn!("scanning conntrack: {e}"),
                    }
                }
                _ = health_reports.tick() => health_state.report(&health),
                _ = sigterm.recv() => break true,
                _ = sigint.recv() => break true,
            }
        };
        if stop {
            break;
        }
    }

    routing.finish(config.detach_on_exit).await;
    if let Some(path) = pid_file {
        let _ = std::fs::remove_file(path);
    }
    if config.detach_on_exit {
        info!("detaching programs and removing pins");
        dataplane
            .teardown()
            .await
            .context("tearing down the dataplane")?;
    } else {
        info!(
            pins = %config.layout.root().display(),
            "exiting; programs stay attached and maps stay pinned, so traffic keeps flowing \
             (`calico-loader cleanup` removes them)"
        );
    }
    Ok(())
}

/// The health components the agent's loop reports for.
const HEALTH_DATAPLANE: &str = "dataplane";
const HEALTH_DATASTORE: &str = "datastore";

/// What the agent's loop reports about its health.
#[derive(Default)]
struct HealthState {
    /// The datastore has been read whole.
    in_sync: bool,
    /// The dataplane was programmed from a complete view of the datastore.
    applied_in_sync: bool,
}

impl HealthState {
    /// Reports both components: the loop runs, so both are live.
    fn report(&self, health: &Health) {
        health.report(HEALTH_DATASTORE, true, self.in_sync);
        health.report(HEALTH_DATAPLANE, true, self.applied_in_sync);
    }
}

/// A count as a gauge's value.
fn gauge_value(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// The policies (and profiles) with at least one rule programmed for this node's endpoints.
fn active_policies(registry: &RuleRegistry) -> usize {
    registry
        .iter()
        .filter_map(|(_, entry)| match &entry.rule {
            crate::model::rules::RuleRef::PolicyRule { tier, .. } => {
                Some((Some(tier.clone()), entry.rule.owner()))
            }
            crate::model::rules::RuleRef::ProfileRule { .. } => Some((None, entry.rule.owner())),
            _ => None,
        })
        .collect::<BTreeSet<_>>()
        .len()
}

/// Logs the packets Log rules matched, at most [`LogLimiter::PER_SECOND`] a second; the rest
/// are counted and the count logged.
#[derive(Default)]
struct LogLimiter {
    window: Option<std::time::Instant>,
    logged: u32,
    suppressed: u64,
}

impl LogLimiter {
    const PER_SECOND: u32 = 20;

    fn event(&mut self, bytes: &[u8], registry: &RuleRegistry) {
        use calico_ebpf_common::{LogEvent, direction, verdict_action};
        if bytes.len() < std::mem::size_of::<LogEvent>() {
            return;
        }
        // SAFETY: LogEvent is plain data of this size; the ring buffer's bytes are unaligned.
        let event: LogEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let now = std::time::Instant::now();
        if self
            .window
            .is_none_or(|start| now.duration_since(start) >= Duration::from_secs(1))
        {
            if self.suppressed > 0 {
                warn!(
                    suppressed = self.suppressed,
                    "Log rule events dropped by the rate limit"
                );
            }
            self.window = Some(now);
            self.logged = 0;
            self.suppressed = 0;
        }
        if self.logged >= Self::PER_SECOND {
            self.suppressed += 1;
            return;
        }
        self.logged += 1;
        let addr = |b: &[u8; 16]| crate::dataplane::conntrack::key_addr(event.family, b);
        info!(
            target: "calico_loader::policy_log",
            rule = %registry.describe(event.log_rule),
            direction = if event.direction == direction::INGRESS { "ingress" } else { "egress" },
            ifindex = event.ifindex,
            protocol = %crate::dump::protocol_name(event.proto),
            src = %addr(&event.src),
            dst = %addr(&event.dst),
            sport = event.sport,
            dport = event.dport,
            verdict = if event.action == verdict_action::ALLOW { "allow" } else { "deny" },
            decided_by = %registry.describe(event.rule),
            "policy Log"
        );
    }
}

/// The compiled policies of this node's endpoints and host endpoints, redone only when the
/// resources change.
#[derive(Default)]
struct PolicyCache {
    /// The distinct rule selectors of the last compile.
    selectors: usize,
    snapshot: Option<Snapshot>,
    endpoints: BTreeSet<String>,
    host_endpoints: Vec<LocalHostEndpoint>,
    compiled: BTreeMap<String, CompiledEndpoint>,
    host_compiled: BTreeMap<String, CompiledHostEndpoint>,
}

impl PolicyCache {
    /// Compiles the policy of every endpoint in `endpoints` and every host endpoint in
    /// `host_endpoints`. One whose policy does not compile is left out (logged): the dataplane
    /// keeps its previous policy in force.
    fn compile(
        &mut self,
        snapshot: &Snapshot,
        endpoints: &BTreeMap<String, LocalEndpoint>,
        host_endpoints: &[LocalHostEndpoint],
        registry: &mut RuleRegistry,
        log: &mut ReportLog,
    ) {
        let keys: BTreeSet<String> = endpoints.values().map(|e| e.key.clone()).collect();
        if self.snapshot.as_ref() == Some(snapshot)
            && self.endpoints == keys
            && self.host_endpoints == host_endpoints
        {
            return;
        }
        let started = std::time::Instant::now();
        let context = PolicyContext::new(snapshot);
        let mut compiled = BTreeMap::new();
        let mut errors = BTreeSet::new();
        for endpoint in endpoints.values() {
            let Some((namespace, name)) = endpoint.key.split_once('/') else {
                continue;
            };
            let Some(wep) = snapshot.workload_endpoint(namespace, name) else {
                continue;
            };
            match compile_endpoint(&context, registry, wep) {
                Ok(policy) => {
                    compiled.insert(endpoint.key.clone(), policy);
                }
                Err(e) => {
                    errors.insert(format!(
                        "{e}; the endpoint keeps the policy it had (or, having none, drops all its traffic)"
                    ));
                }
            }
        }
        let mut host_compiled = BTreeMap::new();
        for local in host_endpoints {
            let Some(hep) = snapshot.find::<crate::datastore::HostEndpoint>(None, &local.name)
            else {
                continue;
            };
            match compile_host_endpoint(&context, registry, hep) {
                Ok(policy) => {
                    host_compiled.insert(local.name.clone(), policy);
                }
                Err(e) => {
                    errors.insert(format!(
                        "{e}; the host endpoint keeps the policy it had (or, having none, is not \
                         enforced)"
                    ));
                }
            }
        }
        log.compile_errors(errors);
        self.selectors = context.selector_count();
        info!(
            endpoints = compiled.len(),
            host_endpoints = host_compiled.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "policy compiled"
        );
        self.snapshot = Some(snapshot.clone());
        self.endpoints = keys;
        self.host_endpoints = host_endpoints.to_vec();
        self.compiled = compiled;
        self.host_compiled = host_compiled;
    }
}

/// What this node serves, in numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Summary {
    endpoints: usize,
    attached: usize,
    waiting: usize,
    data_interfaces: usize,
    remote_endpoints: usize,
    remote_blocks: usize,
}

/// Logs what changed between applies, without repeating itself.
#[derive(Default)]
struct ReportLog {
    waiting: BTreeSet<(String, String)>,
    errors: BTreeSet<String>,
    compile_errors: BTreeSet<String>,
    conflicts: BTreeSet<String>,
    remote_conflicts: BTreeSet<String>,
    summary: Option<Summary>,
}

impl ReportLog {
    /// One line saying what this node serves, whenever that changes.
    fn summary(&mut self, summary: Summary) {
        if self.summary != Some(summary) {
            let Summary {
                endpoints,
                attached,
                waiting,
                data_interfaces,
                remote_endpoints,
                remote_blocks,
            } = summary;
            info!(
                "serving {endpoints} endpoint(s) of this node: {attached} interface(s) attached, \
                 {waiting} waiting for their interface; {data_interfaces} data interface(s) \
                 attached; routes to {remote_endpoints} endpoint(s) and {remote_blocks} IPAM block(s) \
                 of other nodes"
            );
            self.summary = Some(summary);
        }
    }

    fn compile_errors(&mut self, current: BTreeSet<String>) {
        for e in current.difference(&self.compile_errors) {
            error!("{e}");
        }
        self.compile_errors = current;
    }

    fn conflicts(&mut self, conflicts: &[Conflict]) {
        let current: BTreeSet<String> = conflicts.iter().map(ToString::to_string).collect();
        for conflict in current.difference(&self.conflicts) {
            error!("{conflict}; the endpoint is left out");
        }
        self.conflicts = current;
    }

    /// Other nodes' endpoints whose addresses are routed elsewhere (their other addresses
    /// still get routes).
    fn remote_conflicts(&mut self, conflicts: &[Conflict]) {
        let current: BTreeSet<String> = conflicts.iter().map(ToString::to_string).collect();
        for conflict in current.difference(&self.remote_conflicts) {
            error!("{conflict}");
        }
        self.remote_conflicts = current;
    }

    fn log(
        &mut self,
        report: &ApplyReport,
        endpoints: &BTreeMap<String, LocalEndpoint>,
        mode: AttachMode,
    ) {
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
        for (ifname, ifindex) in &report.attached_unknown {
            info!(
                interface = %ifname,
                ifindex,
                "attached to an interface with a workload prefix (InterfacePrefix) but no \
                 endpoint: its traffic is dropped until an endpoint names it"
            );
        }
        for (ifname, ifindex) in &report.attached_data {
            match report.host_endpoints.iter().find(|(i, _)| i == ifname) {
                Some((_, hep)) => info!(
                    interface = %ifname,
                    ifindex,
                    host_endpoint = %hep,
                    "attached data interface with its host endpoint (TC both ways)"
                ),
                None => info!(
                    interface = %ifname,
                    ifindex,
                    mode = mode.as_str(),
                    "attached data interface"
                ),
            }
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
            info!(
                written = changes.written,
                removed = changes.removed,
                "map entries updated"
            );
        }
        for (endpoint, direction, policy_id, entries) in &report.policies {
            info!(endpoint = %endpoint, direction, policy_id, entries, "policy programmed");
        }
        if !report.policies.is_empty() || report.policy_entries_removed > 0 {
            info!(
                in_use = report.policy_entries,
                removed = report.policy_entries_removed,
                "policy map entries"
            );
        }
    }
}
