//! `calico-loader run`, the agent, and `calico-loader cleanup`, which removes what an agent left
//! (an agent keeps its programs attached, its maps pinned and BIRD running when it exits, as
//! Calico does).

use std::{path::PathBuf, time::Duration};

use clap::{Args, ValueEnum};
use regex::Regex;

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
    datastore::resources::AsNumber,
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
    /// the programs attached to them. Calico's default (Felix's BPFDataIfacePattern).
    #[arg(
        long,
        env = "FELIX_BPFDATAIFACEPATTERN",
        value_name = "REGEX",
        default_value = dataplane::DEFAULT_DATA_INTERFACES,
        value_parser = parse_pattern
    )]
    pub data_interfaces: Regex,
    /// Detach programs and remove pins on exit. By default they stay, as in Calico, so
    /// traffic keeps flowing while the agent restarts.
    #[arg(long)]
    pub detach_on_exit: bool,
    /// Seconds between full resyncs (changes are applied as they happen regardless).
    #[arg(long, default_value_t = 10)]
    pub resync_interval: u64,
    /// Entries of the conntrack table (Calico's default is 512k). When it is full, the
    /// least recently used entry makes room, so active flows keep working.
    #[arg(long, env = "FELIX_BPFMAPSIZECONNTRACK", default_value_t = <calico_ebpf_common::maps::Conntrack as calico_ebpf_common::maps::MapSpec>::DEF.max_entries)]
    pub conntrack_size: u32,
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

/// Metrics and health (Felix's `PrometheusMetrics*` and `Health*` settings).
#[derive(Args, Clone, Debug)]
pub struct MonitoringArgs {
    /// Serve Prometheus metrics at http://HOST:PORT/metrics.
    #[arg(long)]
    pub prometheus_metrics_enabled: bool,
    /// The address metrics are served on (empty: every address).
    #[arg(long, value_name = "HOST", default_value = "")]
    pub prometheus_metrics_host: String,
    #[arg(long, value_name = "PORT", default_value_t = crate::metrics::DEFAULT_METRICS_PORT)]
    pub prometheus_metrics_port: u16,
    /// Serve /liveness and /readiness at http://HOST:PORT.
    #[arg(long)]
    pub health_enabled: bool,
    /// The address health is served on (empty: every address).
    #[arg(long, value_name = "HOST", default_value = crate::metrics::DEFAULT_HEALTH_HOST)]
    pub health_host: String,
    #[arg(long, value_name = "PORT", default_value_t = crate::metrics::DEFAULT_HEALTH_PORT)]
    pub health_port: u16,
}

impl From<MonitoringArgs> for MonitoringConfig {
    fn from(args: MonitoringArgs) -> Self {
        Self {
            prometheus_metrics_enabled: args.prometheus_metrics_enabled,
            prometheus_metrics_host: args.prometheus_metrics_host,
            prometheus_metrics_port: args.prometheus_metrics_port,
            health_enabled: args.health_enabled,
            health_host: args.health_host,
            health_port: args.health_port,
        }
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
    crate::agent::run(AgentConfig {
        datastore: args.datastore.config(),
        node,
        layout: PinLayout::new(args.pin_path),
        mode: args.attach_mode,
        data_interfaces: args.data_interfaces,
        detach_on_exit: args.detach_on_exit,
        resync_interval: Duration::from_secs(args.resync_interval.max(1)),
        conntrack_entries: args.conntrack_size.max(1),
        node_settings: NodeSettings {
            ipv4: args.ip.unwrap_or_default(),
            ipv6: args.ip6.unwrap_or_default(),
            as_number: args.as_number,
        },
        routing: RoutingConfig {
            enabled: args.networking_backend == NetworkingBackend::Bird,
            run_dir: args.run_dir,
        },
        monitoring: args.monitoring.into(),
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

/// A data-interface pattern, with the regex error when it does not compile.
fn parse_pattern(text: &str) -> Result<Regex, String> {
    Regex::new(text).map_err(|e| format!("not a regular expression: {e}"))
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
