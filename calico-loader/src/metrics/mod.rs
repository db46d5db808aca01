//! The agent's Prometheus metrics and its health endpoints, as Felix serves them.
//!
//! - [`Metrics`]: Felix's metrics, under Felix's names (updated by the agent loop), the
//!   process' metrics, and the dataplane's own counters (read from the pinned maps at scrape
//!   time, see [`dataplane`]);
//! - [`summary`]: the summary type Felix uses for its apply times;
//! - [`health`]: liveness and readiness from components reporting with deadlines;
//! - [`server`]: `GET /metrics`, `/liveness` and `/readiness`.

pub mod dataplane;
pub mod health;
pub mod server;
pub mod summary;

use std::{net::SocketAddr, time::Duration};

use prometheus::{IntCounter, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use tracing::info;

pub use self::{health::Health, summary::SlidingSummary};
use crate::dataplane::bpffs::PinLayout;

/// Felix's default metrics port.
pub const DEFAULT_METRICS_PORT: u16 = 9091;
/// Felix's default health port.
pub const DEFAULT_HEALTH_PORT: u16 = 9099;
/// Felix's default health host.
pub const DEFAULT_HEALTH_HOST: &str = "localhost";

/// Whether and where the agent serves metrics and health (Felix's `PrometheusMetrics*` and
/// `Health*` settings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MonitoringConfig {
    pub prometheus_metrics_enabled: bool,
    /// Empty: every address.
    pub prometheus_metrics_host: String,
    pub prometheus_metrics_port: u16,
    pub health_enabled: bool,
    /// Empty: every address.
    pub health_host: String,
    pub health_port: u16,
}

impl Default for MonitoringConfig {
    fn default() -> Self {
        Self {
            prometheus_metrics_enabled: false,
            prometheus_metrics_host: String::new(),
            prometheus_metrics_port: DEFAULT_METRICS_PORT,
            health_enabled: false,
            health_host: DEFAULT_HEALTH_HOST.to_owned(),
            health_port: DEFAULT_HEALTH_PORT,
        }
    }
}

/// Why the metrics or health endpoints could not start.
#[derive(Debug, thiserror::Error)]
pub enum MonitoringError {
    #[error("{setting}: cannot resolve {host:?}: {source}")]
    Resolve {
        setting: &'static str,
        host: String,
        source: std::io::Error,
    },
    #[error("{setting}: cannot listen on {address}: {source}")]
    Bind {
        setting: &'static str,
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("registering metric: {0}")]
    Register(#[from] prometheus::Error),
}

/// The resync states of `felix_resync_state`.
pub mod resync_state {
    pub const WAITING: i64 = 1;
    pub const RESYNCING: i64 = 2;
    pub const IN_SYNC: i64 = 3;
}

/// The agent's metrics; clones share them.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub active_local_endpoints: IntGauge,
    pub active_local_policies: IntGauge,
    pub active_local_selectors: IntGauge,
    pub int_dataplane_apply_time: SlidingSummary,
    pub int_dataplane_failures: IntCounter,
    pub resyncs_started: IntCounter,
    pub resync_state: IntGauge,
    pub cluster_num_hosts: IntGauge,
    pub bpf_conntrack_used: IntGauge,
    pub bpf_conntrack_cleaned: IntGauge,
    pub bpf_conntrack_sweeps: IntCounter,
    pub bpf_conntrack_cleaner_seconds: SlidingSummary,
    pub bpf_dataplane_endpoints: IntGauge,
    /// Label `table`: `IPv4:254` and `IPv6:254` (the main table), as Felix names its tables.
    pub route_table_num_routes: IntGaugeVec,
    pub conntrack_max_entries: IntGauge,
    pub conntrack_evictions: IntCounter,
    pub endpoint_map_max_entries: IntGauge,
    pub endpoint_map_overflow: IntGauge,
}

impl Metrics {
    /// Felix's metrics, the process' and, when `pins` is given, the dataplane counters read
    /// from the maps pinned there.
    ///
    /// # Errors
    ///
    /// A metric that cannot be registered (a bug: names are fixed).
    pub fn new(pins: Option<PinLayout>) -> Result<Self, MonitoringError> {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGauge> {
            let gauge = IntGauge::new(name, help)?;
            registry.register(Box::new(gauge.clone()))?;
            Ok(gauge)
        };
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let counter = IntCounter::new(name, help)?;
            registry.register(Box::new(counter.clone()))?;
            Ok(counter)
        };
        let int_dataplane_apply_time = SlidingSummary::new(
            "felix_int_dataplane_apply_time_seconds",
            "Time in seconds that it took to apply a dataplane update.",
        )?;
        registry.register(Box::new(int_dataplane_apply_time.clone()))?;
        let bpf_conntrack_cleaner_seconds = SlidingSummary::new(
            "felix_bpf_conntrack_cleaner_seconds",
            "Time in seconds that it took to run the BPF conntrack cleaner (one sweep).",
        )?;
        registry.register(Box::new(bpf_conntrack_cleaner_seconds.clone()))?;
        let route_table_num_routes = IntGaugeVec::new(
            Opts::new(
                "felix_route_table_num_routes",
                "Number of routes that the agent is managing in the particular routing table.",
            ),
            &["table"],
        )?;
        registry.register(Box::new(route_table_num_routes.clone()))?;
        let metrics = Self {
            active_local_endpoints: gauge(
                "felix_active_local_endpoints",
                "Number of active endpoints on this host.",
            )?,
            active_local_policies: gauge(
                "felix_active_local_policies",
                "Number of active policies on this host.",
            )?,
            active_local_selectors: gauge(
                "felix_active_local_selectors",
                "Number of active selectors on this host.",
            )?,
            int_dataplane_apply_time,
            int_dataplane_failures: counter(
                "felix_int_dataplane_failures",
                "Number of times dataplane updates failed and will be retried.",
            )?,
            resyncs_started: counter(
                "felix_resyncs_started",
                "Number of times Felix has started resyncing with the datastore.",
            )?,
            resync_state: gauge(
                "felix_resync_state",
                "Current datastore state (1 waiting, 2 resyncing, 3 in sync).",
            )?,
            cluster_num_hosts: gauge(
                "felix_cluster_num_hosts",
                "Total number of Calico hosts in the cluster.",
            )?,
            bpf_conntrack_used: gauge(
                "felix_bpf_conntrack_used",
                "Number of entries in the BPF conntrack table at the last sweep.",
            )?,
            bpf_conntrack_cleaned: gauge(
                "felix_bpf_conntrack_cleaned",
                "Number of entries cleaned from the BPF conntrack table during the last sweep.",
            )?,
            bpf_conntrack_sweeps: counter(
                "felix_bpf_conntrack_sweeps",
                "Number of BPF conntrack table sweeps made so far.",
            )?,
            bpf_conntrack_cleaner_seconds,
            route_table_num_routes,
            bpf_dataplane_endpoints: gauge(
                "felix_bpf_dataplane_endpoints",
                "Number of interfaces with BPF programs attached.",
            )?,
            endpoint_map_max_entries: gauge(
                "calico_ebpf_endpoint_map_max_entries",
                "Size of the endpoint map (BPFMapSizeIfState): the workload interfaces this \
                 host can serve.",
            )?,
            endpoint_map_overflow: gauge(
                "calico_ebpf_endpoint_map_overflow",
                "Endpoints of this node left unprogrammed (their traffic dropped) because the \
                 endpoint map is full.",
            )?,
            conntrack_evictions: counter(
                "calico_ebpf_conntrack_evictions",
                "Conntrack entries the full table evicted to make room for new flows, as the \
                 sweeps estimate them.",
            )?,
            conntrack_max_entries: gauge(
                "calico_ebpf_conntrack_max_entries",
                "Size of the BPF conntrack table (BPFMapSizeConntrack): when \
                 felix_bpf_conntrack_used reaches it, new flows evict the least recently used.",
            )?,
            registry,
        };
        metrics.resync_state.set(resync_state::WAITING);
        metrics.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        if let Some(pins) = pins {
            metrics
                .registry
                .register(Box::new(dataplane::DataplaneCollector::new(pins)?))?;
        }
        Ok(metrics)
    }

    /// Every metric, in the Prometheus text format.
    ///
    /// # Errors
    ///
    /// The encoder failing (a metric with invalid contents).
    pub fn encode(&self) -> prometheus::Result<String> {
        TextEncoder::new().encode_to_string(&self.registry.gather())
    }
}

/// Resolves `host:port` (empty host: every address).
fn resolve(setting: &'static str, host: &str, port: u16) -> Result<SocketAddr, MonitoringError> {
    use std::net::ToSocketAddrs as _;
    let host = if host.is_empty() { "::" } else { host };
    let resolve_error = |source| MonitoringError::Resolve {
        setting,
        host: host.to_owned(),
        source,
    };
    (host, port)
        .to_socket_addrs()
        .map_err(resolve_error)?
        .next()
        .ok_or_else(|| {
            resolve_error(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no address",
            ))
        })
}

/// Starts the HTTP listeners `config` asks for (one when metrics and health share an address),
/// serving in background tasks that end with the runtime.
///
/// # Errors
///
/// An address that does not resolve or cannot be bound.
pub async fn serve(
    config: &MonitoringConfig,
    metrics: Option<&Metrics>,
    health: Option<&Health>,
) -> Result<(), MonitoringError> {
    let mut listeners: Vec<(SocketAddr, &'static str, server::Routes)> = Vec::new();
    if let (true, Some(metrics)) = (config.prometheus_metrics_enabled, metrics) {
        let address = resolve(
            "prometheus-metrics-host",
            &config.prometheus_metrics_host,
            config.prometheus_metrics_port,
        )?;
        listeners.push((
            address,
            "prometheus-metrics-port",
            server::Routes {
                metrics: Some(metrics.clone()),
                health: None,
            },
        ));
    }
    if let (true, Some(health)) = (config.health_enabled, health) {
        let address = resolve("health-host", &config.health_host, config.health_port)?;
        match listeners.iter_mut().find(|(a, _, _)| *a == address) {
            Some((_, _, routes)) => routes.health = Some(health.clone()),
            None => listeners.push((
                address,
                "health-port",
                server::Routes {
                    metrics: None,
                    health: Some(health.clone()),
                },
            )),
        }
    }
    for (address, setting, routes) in listeners {
        let listener = server::bind(address)
            .await
            .map_err(|source| MonitoringError::Bind {
                setting,
                address,
                source,
            })?;
        info!(
            %address,
            metrics = routes.metrics.is_some(),
            health = routes.health.is_some(),
            "serving HTTP"
        );
        tokio::spawn(server::serve(listener, routes));
    }
    Ok(())
}

/// How often the agent's loop reports its health when nothing else wakes it.
pub const HEALTH_REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// The deadline of the agent's components (Felix's internal dataplane has 90 s).
pub const HEALTH_DEADLINE: Duration = Duration::from_secs(90);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn felix_names_verbatim() {
        let metrics = Metrics::new(None).expect("metrics");
        metrics.active_local_endpoints.set(3);
        metrics.resyncs_started.inc();
        metrics.resync_state.set(resync_state::IN_SYNC);
        metrics.int_dataplane_apply_time.observe(0.5);
        metrics.bpf_conntrack_cleaner_seconds.observe(0.01);
        metrics
            .route_table_num_routes
            .with_label_values(&["IPv4:254"])
            .set(2);
        let text = metrics.encode().expect("encode");
        for line in [
            "# TYPE felix_active_local_endpoints gauge",
            "felix_active_local_endpoints 3",
            "# TYPE felix_resyncs_started counter",
            "felix_resyncs_started 1",
            "felix_resync_state 3",
            "# TYPE felix_int_dataplane_apply_time_seconds summary",
            "felix_int_dataplane_apply_time_seconds_count 1",
            "felix_int_dataplane_failures 0",
            "felix_bpf_conntrack_sweeps 0",
            "# TYPE felix_bpf_conntrack_cleaner_seconds summary",
            "felix_bpf_conntrack_cleaner_seconds_count 1",
            "felix_route_table_num_routes{table=\"IPv4:254\"} 2",
            "# TYPE process_cpu_seconds_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
        assert!(!text.contains("felix_resyncs_started_total"));
    }

    #[test]
    fn default_ports_are_felix_s() {
        let config = MonitoringConfig::default();
        assert_eq!(config.prometheus_metrics_port, 9091);
        assert_eq!(config.health_port, 9099);
        assert_eq!(config.health_host, "localhost");
        assert!(!config.prometheus_metrics_enabled && !config.health_enabled);
    }
}
