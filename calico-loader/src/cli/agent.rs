//! `calico-loader run`, the agent, and `calico-loader cleanup`, which removes what an agent left
//! (an agent keeps its programs attached, its maps pinned and BIRD running when it exits, as
//! Calico does).

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};

use super::resources::DatastoreArgs;
use crate::{
    agent::{
        AgentConfig,
        node::{AddressSetting, NodeSettings},
        routing::{DEFAULT_RUN_DIR, RoutingConfig},
    },
    bgp::{Bird, BirdSettings},
    dataplane::{
        self,
        attach::AttachMode,
        bpffs::{DEFAULT_PIN_PATH, PinLayout},
        netlink::BIRD_ROUTE_PROTOCOL,
    },
    datastore::{
        DatastoreConfig, Kind, Resource, Store,
        resources::{
            AsNumber, DEFAULT_FELIX_CONFIGURATION, FelixConfiguration,
            NODE_FELIX_CONFIGURATION_PREFIX,
        },
    },
    felix_config::{self, LocalSources},
    felix_settings::FelixConfig,
    metrics::MonitoringConfig,
};

/// What routes between hosts (calico-node's `CALICO_NETWORKING_BACKEND`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum NetworkingBackend {
    /// BGP, with BIRD.
    Bird,
    /// Nothing: no BIRD (the Node is registered all the same).
    None,
}

// The arguments of `run` (its help text is the subcommand's).
#[derive(Args)]
pub struct RunArgs {
    /// The datastore to follow live: a local directory (default) or etcd v3.
    #[command(flatten)]
    pub datastore: DatastoreArgs,
    /// This node's name: the agent serves the endpoints whose spec.node matches.
    /// Defaults to the hostname.
    #[arg(long, env = "NODENAME")]
    pub node: Option<String>,
    /// Where maps and links are pinned (on a BPF filesystem).
    #[arg(long, default_value = DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,
    /// Hook for packets from workloads: tc (default, measured faster on veth) or xdp.
    #[arg(long, default_value = "tc")]
    pub attach_mode: AttachMode,
    /// Which of the host's interfaces are data interfaces (a regular expression on their
    /// names): packets from other hosts arriving there are delivered into local workloads by
    /// the programs attached to them. Overrides Felix's BPFDataIfacePattern (whose default is
    /// Calico's).
    #[arg(long, value_name = "REGEX")]
    pub data_interfaces: Option<String>,
    /// Detach programs and remove pins on exit. By default they stay, as in Calico, so
    /// traffic keeps flowing while the agent restarts.
    #[arg(long)]
    pub detach_on_exit: bool,
    /// Seconds between full resyncs (changes are applied as they happen regardless).
    #[arg(long, default_value_t = 10)]
    pub resync_interval: u64,
    /// Entries of the conntrack table. When it is full, the least recently used entry makes
    /// room, so active flows keep working. Overrides Felix's BPFMapSizeConntrack.
    #[arg(long)]
    pub conntrack_size: Option<String>,
    /// Entries of the endpoint map: the workload interfaces this host can serve. Endpoints
    /// beyond it are reported and left unprogrammed (their traffic is dropped). Overrides
    /// Felix's BPFMapSizeIfState.
    #[arg(long)]
    pub endpoint_map_size: Option<String>,
    /// Felix's configuration file (INI, section [global]); a missing file is no layer.
    #[arg(long, default_value = felix_config::DEFAULT_CONFIG_FILE)]
    pub felix_config_file: PathBuf,
    /// This node's IPv4 address for BGP, written to its Node: an address (its prefix length
    /// is the interface's unless given), `autodetect` (the first global address of an
    /// interface that is not a workload's, docker's...), or `none`. Not given: the Node's
    /// address is kept, and autodetected if it has none.
    #[arg(long, env = "IP", value_name = "ADDRESS|autodetect|none")]
    pub ip: Option<AddressSetting>,
    /// This node's IPv6 address for BGP: as --ip, but when not given the Node's is only kept.
    #[arg(long, env = "IP6", value_name = "ADDRESS|autodetect|none")]
    pub ip6: Option<AddressSetting>,
    /// This node's AS number, written to its Node (a number, or <0-65535>.<0-65535>). Not
    /// given: the Node's is kept (none: the cluster's).
    #[arg(long = "as", env = "AS", value_name = "AS")]
    pub as_number: Option<AsNumber>,
    /// BIRD's run directory: its configuration, control socket, pid file and log.
    #[arg(long, default_value = DEFAULT_RUN_DIR)]
    pub run_dir: PathBuf,
    /// What routes between hosts: bird (BGP) or none.
    #[arg(long, env = "CALICO_NETWORKING_BACKEND", default_value = "bird")]
    pub networking_backend: NetworkingBackend,
    #[command(flatten)]
    pub monitoring: MonitoringArgs,
}

/// Metrics and health (Felix's `PrometheusMetrics*` and `Health*` settings). A flag given wins
/// over every other source of the setting ([`felix_config`]); unset, the setting comes from
/// the FelixConfigurations, `felix.cfg` or `FELIX_*`, else Felix's default.
#[derive(Args, Clone, Debug, Default)]
pub struct MonitoringArgs {
    /// Serve Prometheus metrics at http://HOST:PORT/metrics (default: false).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub prometheus_metrics_enabled: Option<String>,
    /// The address metrics are served on (empty: every address; default: empty).
    #[arg(long, value_name = "HOST")]
    pub prometheus_metrics_host: Option<String>,
    /// Default: 9091.
    #[arg(long, value_name = "PORT")]
    pub prometheus_metrics_port: Option<String>,
    /// Serve /liveness and /readiness at http://HOST:PORT (default: false).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub health_enabled: Option<String>,
    /// The address health is served on (empty: every address; default: localhost).
    #[arg(long, value_name = "HOST")]
    pub health_host: Option<String>,
    /// Default: 9099.
    #[arg(long, value_name = "PORT")]
    pub health_port: Option<String>,
}

impl MonitoringArgs {
    /// The flags given, as (Felix name, value, flag) for the configuration's flag layer.
    fn flags(&self) -> Vec<(&'static str, String, &'static str)> {
        [
            (
                "PrometheusMetricsEnabled",
                &self.prometheus_metrics_enabled,
                "--prometheus-metrics-enabled",
            ),
            (
                "PrometheusMetricsHost",
                &self.prometheus_metrics_host,
                "--prometheus-metrics-host",
            ),
            (
                "PrometheusMetricsPort",
                &self.prometheus_metrics_port,
                "--prometheus-metrics-port",
            ),
            ("HealthEnabled", &self.health_enabled, "--health-enabled"),
            ("HealthHost", &self.health_host, "--health-host"),
            ("HealthPort", &self.health_port, "--health-port"),
        ]
        .into_iter()
        .filter_map(|(name, value, flag)| Some((name, value.clone()?, flag)))
        .collect()
    }
}

/// Metrics and health as the effective configuration says.
fn monitoring(felix: &FelixConfig) -> MonitoringConfig {
    let (metrics, health) = (felix.prometheus_metrics(), felix.health());
    MonitoringConfig {
        prometheus_metrics_enabled: metrics.enabled,
        prometheus_metrics_host: metrics.host,
        prometheus_metrics_port: metrics.port,
        health_enabled: health.enabled,
        health_host: health.host,
        health_port: health.port,
    }
}

// The arguments of `cleanup`.
#[derive(Args)]
pub struct CleanupArgs {
    #[arg(long, default_value = DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,
    /// BIRD's run directory: the BIRD running there is stopped, and its routes removed.
    #[arg(long, default_value = DEFAULT_RUN_DIR)]
    pub run_dir: PathBuf,
}

/// `run`: the agent, until SIGINT or SIGTERM.
///
/// # Errors
///
/// No host name for a default node name, or the agent failing (see [`crate::agent::run`]).
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let node = node_name(args.node)?;
    let datastore = args.datastore.config();
    // Felix's configuration, before anything is touched: a bad value stops the agent here,
    // and what a previous agent left attached keeps forwarding.
    let sources = local_sources(
        &args.felix_config_file,
        SizeFlags {
            conntrack: args.conntrack_size.as_deref(),
            endpoints: args.endpoint_map_size.as_deref(),
        },
        args.data_interfaces.as_deref(),
        &args.monitoring,
    )?;
    let felix = effective_config(&datastore, &node, &sources, true)
        .await
        .context("Felix configuration refused; the agent does not start")?;
    let monitoring = monitoring(&felix);
    crate::agent::run(AgentConfig {
        datastore,
        node,
        layout: PinLayout::new(args.pin_path),
        mode: args.attach_mode,
        data_interfaces: felix.bpf_data_iface_pattern.value.0.clone(),
        detach_on_exit: args.detach_on_exit,
        resync_interval: Duration::from_secs(args.resync_interval.max(1)),
        conntrack_entries: felix.bpf_map_size_conntrack.value,
        endpoint_entries: felix.bpf_map_size_if_state.value,
        felix_sources: sources,
        felix,
        node_settings: NodeSettings {
            ipv4: args.ip.unwrap_or_default(),
            ipv6: args.ip6.unwrap_or_default(),
            as_number: args.as_number,
        },
        routing: RoutingConfig {
            enabled: args.networking_backend == NetworkingBackend::Bird,
            run_dir: args.run_dir,
        },
        monitoring,
    })
    .await
}

/// `cleanup`: stops the BIRD of `--run-dir` and removes the routes BIRD installed, deletes the
/// kernel routes and the outgoing NAT tables the agent made, detaches every program and removes the pins under
/// `--pin-path`.
///
/// # Errors
///
/// Netlink or the BPF filesystem failing.
pub async fn cleanup(args: &CleanupArgs) -> anyhow::Result<()> {
    let layout = PinLayout::new(&args.pin_path);
    let netlink = dataplane::netlink::Netlink::connect()?;
    match Bird::adopt(BirdSettings::new(&args.run_dir)) {
        Ok(Some(bird)) => {
            let pid = bird.pid();
            bird.stop();
            let removed = netlink.del_routes_of_protocol(BIRD_ROUTE_PROTOCOL).await?;
            eprintln!("stopped BIRD (pid {pid}) and removed the {removed} route(s) it installed");
        }
        Ok(None) => {}
        Err(e) => eprintln!("BIRD not stopped: {e}"),
    }
    for route in netlink.our_routes().await? {
        netlink.del_route(route).await?;
    }
    if let Err(e) = dataplane::nat::remove_nat_tables() {
        eprintln!("outgoing NAT tables not removed: {e}");
    }
    dataplane::remove_pins(&layout)?;
    eprintln!(
        "detached all programs and removed {}",
        args.pin_path.display()
    );
    Ok(())
}

/// The map size flags, as given.
#[derive(Clone, Copy, Default)]
struct SizeFlags<'a> {
    conntrack: Option<&'a str>,
    endpoints: Option<&'a str>,
}

/// The file, the environment and the flags that set Felix settings.
fn local_sources(
    file: &std::path::Path,
    sizes: SizeFlags<'_>,
    data_interfaces: Option<&str>,
    monitoring: &MonitoringArgs,
) -> anyhow::Result<LocalSources> {
    let mut flags = monitoring.flags();
    if let Some(size) = sizes.conntrack {
        flags.push(("BPFMapSizeConntrack", size.to_string(), "--conntrack-size"));
    }
    if let Some(size) = sizes.endpoints {
        flags.push(("BPFMapSizeIfState", size.to_string(), "--endpoint-map-size"));
    }
    if let Some(pattern) = data_interfaces {
        flags.push((
            "BPFDataIfacePattern",
            pattern.to_string(),
            "--data-interfaces",
        ));
    }
    Ok(LocalSources::read(file, &flags)?)
}

/// How long reading the `FelixConfiguration`s at start may take (etcd may be unreachable).
const FELIX_CONFIGURATION_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The `FelixConfiguration`s `default` and `node.<node>` in the datastore, and the problems of
/// those that do not read (each naming its file and field).
///
/// # Errors
///
/// The datastore cannot be read.
async fn read_felix_configurations(
    datastore: &DatastoreConfig,
    node: &str,
) -> anyhow::Result<(FelixConfigurations, Vec<String>)> {
    let read = async {
        let mut store = Store::open(datastore).await?;
        store.list(Kind::FelixConfiguration, None).await
    };
    let (stored, errors) = tokio::time::timeout(FELIX_CONFIGURATION_READ_TIMEOUT, read)
        .await
        .map_err(|_| anyhow::anyhow!("no answer in {FELIX_CONFIGURATION_READ_TIMEOUT:?}"))??;
    let node_name = format!("{NODE_FELIX_CONFIGURATION_PREFIX}{node}");
    let mut found = FelixConfigurations::default();
    for stored in stored {
        if let Resource::FelixConfiguration(resource) = stored.resource {
            if resource.metadata.name == DEFAULT_FELIX_CONFIGURATION {
                found.default = Some(*resource);
            } else if resource.metadata.name == node_name {
                found.node = Some(*resource);
            }
        }
    }
    Ok((found, errors.iter().map(ToString::to_string).collect()))
}

/// The `FelixConfiguration`s that apply to a node.
#[derive(Default)]
struct FelixConfigurations {
    default: Option<FelixConfiguration>,
    node: Option<FelixConfiguration>,
}

/// The effective configuration of `node`: its `FelixConfiguration`s under `sources`. When the
/// datastore cannot be read (etcd unreachable), the agent starts on the local sources and says
/// so; an invalid `FelixConfiguration` or setting is an error.
async fn effective_config(
    datastore: &DatastoreConfig,
    node: &str,
    sources: &LocalSources,
    tolerate_unreachable: bool,
) -> anyhow::Result<FelixConfig> {
    let found = match read_felix_configurations(datastore, node).await {
        Ok((_, problems)) if !problems.is_empty() => {
            anyhow::bail!("a FelixConfiguration is invalid:\n{}", problems.join("\n"));
        }
        Ok((found, _)) => found,
        Err(e) if tolerate_unreachable => {
            tracing::warn!(
                "FelixConfiguration not read ({e:#}): starting on the file, the environment \
                 and the flags; a FelixConfiguration read later needs a restart"
            );
            FelixConfigurations::default()
        }
        Err(e) => return Err(e.context("reading the FelixConfigurations")),
    };
    Ok(sources.resolve(found.default.as_ref(), found.node.as_ref())?)
}

// The arguments of `config`.
#[derive(Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub command: ConfigCommand,
}

/// `config` subcommands.
#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Print Felix's effective settings for a node, and where each came from (default,
    /// FelixConfiguration default or node.<name>, the file, an environment variable, a flag).
    Show(ConfigShowArgs),
}

// The arguments of `config show`: the agent's, as far as configuration goes.
#[derive(Args)]
pub struct ConfigShowArgs {
    #[command(flatten)]
    pub datastore: DatastoreArgs,
    /// The node (default: NODENAME, else the hostname).
    #[arg(long, env = "NODENAME")]
    pub node: Option<String>,
    /// As `run --conntrack-size`.
    #[arg(long)]
    pub conntrack_size: Option<String>,
    /// As `run --endpoint-map-size`.
    #[arg(long)]
    pub endpoint_map_size: Option<String>,
    /// As `run --data-interfaces`.
    #[arg(long, value_name = "REGEX")]
    pub data_interfaces: Option<String>,
    /// As `run --felix-config-file`.
    #[arg(long, default_value = felix_config::DEFAULT_CONFIG_FILE)]
    pub felix_config_file: PathBuf,
}

/// `config show`: the effective settings, as `run` would resolve them, one per line.
///
/// # Errors
///
/// As `run` refuses a configuration: the source and the setting named.
pub async fn config(args: ConfigArgs) -> anyhow::Result<()> {
    let ConfigCommand::Show(args) = args.command;
    let node = node_name(args.node)?;
    let sources = local_sources(
        &args.felix_config_file,
        SizeFlags {
            conntrack: args.conntrack_size.as_deref(),
            endpoints: args.endpoint_map_size.as_deref(),
        },
        args.data_interfaces.as_deref(),
        &MonitoringArgs::default(),
    )?;
    let config = effective_config(&args.datastore.config(), &node, &sources, false).await?;
    let rows = config.table();
    let width = rows
        .iter()
        .map(|(name, _, _)| name.len())
        .max()
        .unwrap_or(0);
    for (name, value, source) in rows {
        println!("{name:width$}  {value}  ({source})");
    }
    for (name, source) in &config.unused {
        println!("{name:width$}  accepted, not used  ({source})");
    }
    Ok(())
}

/// The node name: `explicit` (`--node` or `NODENAME`), else the host name.
///
/// # Errors
///
/// No name given and `gethostname` failing.
pub fn node_name(explicit: Option<String>) -> anyhow::Result<String> {
    anyhow::Context::context(
        crate::agent::node::node_name(explicit),
        "finding the node name (gethostname)",
    )
}
