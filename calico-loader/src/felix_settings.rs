//! Felix's settings as values: which settings there are (the ones implemented here, and the
//! ones Calico defines that are accepted and not used), their types, their parsers from Felix's
//! text form, and how layers of values resolve to the effective [`FelixConfig`] (later wins,
//! over the defaults).
//!
//! Names are Felix's, case-insensitive (`BPFMapSizeConntrack`, `bpfMapSizeConntrack`). Every
//! value is read in Felix's text form (a resource's JSON value is first turned into it, as Felix
//! does: [`resource_value_text`]), so one parser per setting serves all sources. Each effective
//! value keeps its [`Source`], for error messages and `calico-loader config show`.
//!
//! A setting this dataplane does not implement but Calico defines is accepted and not used
//! ([`is_accepted_unused`]); a name Calico does not define is refused, as is an invalid value,
//! with the source and the setting named ([`ConfigError`]).
//!
//! This module reads nothing and depends on no other part of the agent: the datastore checks a
//! `FelixConfiguration`'s fields with it ([`check_resource_field`]); `crate::felix_config`
//! reads the sources (the resources, `felix.cfg`, `FELIX_*`, the flags) into [`Layer`]s and
//! follows the configuration at run time; the dataplane turns the host's settings into its own
//! (`crate::dataplane::host_endpoints::HostSettings`).

use std::{collections::BTreeMap, fmt, path::PathBuf};

use regex::Regex;
use serde_json::Value;

/// Calico's default pattern of data interfaces (Felix's `BPFDataIfacePattern`): the host's
/// physical and bonded interfaces, by the kernel's and systemd's naming schemes.
pub const DEFAULT_DATA_INTERFACES: &str = "^((en|wl|ww|sl|ib)[Popsx].*|(eth|wlan|wwan|bond).*)";

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The built-in default.
    Default,
    /// A `FelixConfiguration` resource (`default` or `node.<nodename>`).
    Resource(String),
    /// Felix's configuration file.
    File(PathBuf),
    /// An environment variable, by its name as set.
    Env(String),
    /// A command-line flag.
    Flag(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("default"),
            Self::Resource(name) => write!(f, "FelixConfiguration {name}"),
            Self::File(path) => write!(f, "file {}", path.display()),
            Self::Env(name) => write!(f, "environment variable {name}"),
            Self::Flag(flag) => write!(f, "command-line flag {flag}"),
        }
    }
}

/// A configuration error: always names where, and which setting.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A value that does not parse or is out of range.
    #[error("{origin}: invalid {setting} {value:?}: {reason}")]
    Invalid {
        origin: Source,
        setting: &'static str,
        value: String,
        reason: String,
    },
    /// A name Felix does not define.
    #[error("{origin}: unknown setting {name:?} (not a Felix configuration setting)")]
    Unknown { origin: Source, name: String },
    /// The configuration file cannot be read or is not INI.
    #[error("file {}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
}

/// `LogSeverityScreen`'s levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogSeverity {
    Debug,
    Info,
    Warning,
    Error,
    Fatal,
}

impl LogSeverity {
    /// The `tracing` filter for this level.
    pub fn filter(self) -> &'static str {
        match self {
            Self::Debug => "debug,netlink_packet_route=error",
            Self::Info => "info,netlink_packet_route=error",
            Self::Warning => "warn",
            Self::Error | Self::Fatal => "error",
        }
    }
}

impl fmt::Display for LogSeverity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Debug => "Debug",
            Self::Info => "Info",
            Self::Warning => "Warning",
            Self::Error => "Error",
            Self::Fatal => "Fatal",
        })
    }
}

/// `DefaultEndpointToHostAction`: what happens to traffic from a workload to its host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointToHostAction {
    Drop,
    Return,
    Accept,
}

impl fmt::Display for EndpointToHostAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Drop => "Drop",
            Self::Return => "Return",
            Self::Accept => "Accept",
        })
    }
}

/// One failsafe port, as Felix's `FailsafeInboundHostPorts` and `FailsafeOutboundHostPorts`
/// write them: `port` (TCP), `protocol:port`, or `protocol:net:port` (an IPv6 net in
/// brackets, `tcp:[2001:db8::/32]:22`). The net limits the remote side: the source of inbound
/// traffic, the destination of outbound traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailsafePort {
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    /// The remote network it is limited to, if any.
    pub net: Option<ipnet::IpNet>,
    pub port: u16,
}

impl fmt::Display for FailsafePort {
    /// Felix's form: `protocol:port`, `protocol:net:port`, an IPv6 net in brackets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.net {
            Some(net @ ipnet::IpNet::V4(_)) => write!(f, "{}:{}:{}", self.protocol, net, self.port),
            Some(net @ ipnet::IpNet::V6(_)) => {
                write!(f, "{}:[{}]:{}", self.protocol, net, self.port)
            }
            None => write!(f, "{}:{}", self.protocol, self.port),
        }
    }
}

/// A list of failsafe ports, displayed as Felix writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailsafePorts(pub Vec<FailsafePort>);

impl fmt::Display for FailsafePorts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let items: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&items.join(","))
    }
}

/// A data-interface pattern (compared by its text).
#[derive(Clone, Debug)]
pub struct Pattern(pub Regex);

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

/// `BPFConntrackTimeouts`: the idle timeouts of conntrack entries. They are Calico's defaults,
/// built into the programs and the agent's sweep; a different value is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConntrackTimeouts;

impl fmt::Display for ConntrackTimeouts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items: Vec<String> = CONNTRACK_TIMEOUTS
            .iter()
            .map(|(name, secs)| format!("{name}={}", format_secs(*secs)))
            .collect();
        f.write_str(&items.join(","))
    }
}

/// The conntrack timeouts this dataplane has, by Calico's names, in seconds.
const CONNTRACK_TIMEOUTS: &[(&str, u64)] = &[
    ("CreationGracePeriod", 10),
    ("TCPSynSent", 20),
    ("TCPEstablished", 3600),
    ("TCPFinsSeen", 30),
    ("TCPResetSeen", 40),
    ("UDPTimeout", 60),
    ("GenericTimeout", 600),
    ("ICMPTimeout", 5),
];

fn format_secs(secs: u64) -> String {
    if secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

/// One effective setting and where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Setting<T> {
    pub value: T,
    pub source: Source,
}

/// The effective configuration. Prometheus and health settings are here for the endpoints that
/// serve them ([`FelixConfig::prometheus_metrics`], [`FelixConfig::health`]).
#[derive(Clone, Debug, PartialEq)]
pub struct FelixConfig {
    pub bpf_map_size_conntrack: Setting<u32>,
    pub bpf_map_size_if_state: Setting<u32>,
    pub bpf_map_size_route: Setting<u32>,
    pub bpf_conntrack_timeouts: Setting<ConntrackTimeouts>,
    pub bpf_data_iface_pattern: Setting<Pattern>,
    pub interface_prefix: Setting<String>,
    pub default_endpoint_to_host_action: Setting<EndpointToHostAction>,
    pub failsafe_inbound_host_ports: Setting<FailsafePorts>,
    pub failsafe_outbound_host_ports: Setting<FailsafePorts>,
    pub prometheus_metrics_enabled: Setting<bool>,
    pub prometheus_metrics_host: Setting<String>,
    pub prometheus_metrics_port: Setting<u16>,
    pub health_enabled: Setting<bool>,
    pub health_host: Setting<String>,
    pub health_port: Setting<u16>,
    pub log_severity_screen: Setting<LogSeverity>,
    /// Settings Calico defines that this dataplane accepts and does not use, by name as
    /// written, with where each was set.
    pub unused: Vec<(String, Source)>,
}

/// Where an HTTP endpoint listens, when it is enabled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub enabled: bool,
    /// The host to listen on (empty: every address).
    pub host: String,
    pub port: u16,
}

impl FelixConfig {
    /// The Prometheus metrics endpoint (`PrometheusMetricsEnabled`, `...Host`, `...Port`).
    pub fn prometheus_metrics(&self) -> Endpoint {
        Endpoint {
            enabled: self.prometheus_metrics_enabled.value,
            host: self.prometheus_metrics_host.value.clone(),
            port: self.prometheus_metrics_port.value,
        }
    }

    /// The health endpoint (`HealthEnabled`, `HealthHost`, `HealthPort`).
    pub fn health(&self) -> Endpoint {
        Endpoint {
            enabled: self.health_enabled.value,
            host: self.health_host.value.clone(),
            port: self.health_port.value,
        }
    }

    /// Every implemented setting: its Felix name, its value as text, and its source.
    pub fn table(&self) -> Vec<(&'static str, String, &Source)> {
        macro_rules! rows {
            ($($name:literal => $field:ident,)*) => {
                vec![$(($name, self.$field.value.to_string(), &self.$field.source),)*]
            };
        }
        rows! {
            "BPFMapSizeConntrack" => bpf_map_size_conntrack,
            "BPFMapSizeIfState" => bpf_map_size_if_state,
            "BPFMapSizeRoute" => bpf_map_size_route,
            "BPFConntrackTimeouts" => bpf_conntrack_timeouts,
            "BPFDataIfacePattern" => bpf_data_iface_pattern,
            "InterfacePrefix" => interface_prefix,
            "DefaultEndpointToHostAction" => default_endpoint_to_host_action,
            "FailsafeInboundHostPorts" => failsafe_inbound_host_ports,
            "FailsafeOutboundHostPorts" => failsafe_outbound_host_ports,
            "PrometheusMetricsEnabled" => prometheus_metrics_enabled,
            "PrometheusMetricsHost" => prometheus_metrics_host,
            "PrometheusMetricsPort" => prometheus_metrics_port,
            "HealthEnabled" => health_enabled,
            "HealthHost" => health_host,
            "HealthPort" => health_port,
            "LogSeverityScreen" => log_severity_screen,
        }
    }

    /// The implemented settings whose value differs between `self` and `other`.
    pub fn changed(&self, other: &Self) -> Vec<&'static str> {
        self.table()
            .into_iter()
            .zip(other.table())
            .filter(|(a, b)| a.1 != b.1)
            .map(|(a, _)| a.0)
            .collect()
    }
}

/// The settings implemented here, by Felix name (matched case-insensitively).
const SUPPORTED: &[&str] = &[
    "BPFMapSizeConntrack",
    "BPFMapSizeIfState",
    "BPFMapSizeRoute",
    "BPFConntrackTimeouts",
    "BPFDataIfacePattern",
    "InterfacePrefix",
    "DefaultEndpointToHostAction",
    "FailsafeInboundHostPorts",
    "FailsafeOutboundHostPorts",
    "PrometheusMetricsEnabled",
    "PrometheusMetricsHost",
    "PrometheusMetricsPort",
    "HealthEnabled",
    "HealthHost",
    "HealthPort",
    "LogSeverityScreen",
];

/// The default conntrack table size (`BPFMapSizeConntrack`): 524288 (Calico's is 512000).
pub const DEFAULT_CONNTRACK_ENTRIES: u32 =
    <calico_ebpf_common::maps::Conntrack as calico_ebpf_common::maps::MapSpec>::DEF.max_entries;
/// The default size of the endpoint map (`BPFMapSizeIfState`): 16384 workload interfaces
/// (Calico's interface-state map holds 1000, which users hit).
pub const DEFAULT_ENDPOINT_ENTRIES: u32 =
    <calico_ebpf_common::maps::Endpoints as calico_ebpf_common::maps::MapSpec>::DEF.max_entries;
/// The size of the route maps: fixed, 262144 (Calico's default `BPFMapSizeRoute`).
pub const ROUTE_MAP_ENTRIES: u32 =
    <calico_ebpf_common::maps::RoutesV4 as calico_ebpf_common::maps::MapSpec>::DEF.max_entries;
const DEFAULT_FAILSAFE_INBOUND: &str =
    "tcp:22,udp:68,tcp:179,tcp:2379,tcp:2380,tcp:5473,tcp:6443,tcp:6666,tcp:6667";
const DEFAULT_FAILSAFE_OUTBOUND: &str =
    "udp:53,udp:67,tcp:179,tcp:2379,tcp:2380,tcp:5473,tcp:6443,tcp:6666,tcp:6667";

/// Whether `name` (any case) is a setting Calico defines that is accepted here and not used.
pub fn is_accepted_unused(name: &str) -> bool {
    ACCEPTED_UNUSED.contains(&name.to_ascii_lowercase().as_str())
}

fn supported_name(name: &str) -> Option<&'static str> {
    SUPPORTED
        .iter()
        .copied()
        .find(|s| s.eq_ignore_ascii_case(name))
}

// ---------------------------------------------------------------------------------------------
// Parsers, from Felix's text form

fn parse_u32_min1(text: &str) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err("not a number".into()),
    }
}

/// At least 1, and one less than the largest `u32` (the counters map has one entry more).
fn parse_endpoint_map_size(text: &str) -> Result<u32, String> {
    let n = parse_u32_min1(text)?;
    if n == u32::MAX {
        return Err("too large".into());
    }
    Ok(n)
}

fn parse_route_size(text: &str) -> Result<u32, String> {
    let n = parse_u32_min1(text)?;
    if n == ROUTE_MAP_ENTRIES {
        Ok(n)
    } else {
        Err(format!(
            "the route maps have a fixed size of {ROUTE_MAP_ENTRIES} entries here; \
             other sizes are not supported"
        ))
    }
}

fn parse_bool(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "t" | "yes" | "y" | "1" => Ok(true),
        "false" | "f" | "no" | "n" | "0" => Ok(false),
        _ => Err("not a boolean (true or false)".into()),
    }
}

fn parse_port(text: &str) -> Result<u16, String> {
    match text.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err("not a port (1 to 65535)".into()),
        Ok(n) => Ok(n),
    }
}

fn parse_string(text: &str) -> Result<String, String> {
    Ok(text.trim().to_string())
}

fn parse_interface_prefix(text: &str) -> Result<String, String> {
    let prefixes: Vec<&str> = text.split(',').map(str::trim).collect();
    if prefixes.iter().any(|p| {
        p.is_empty()
            || !p
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    }) {
        return Err("not a comma-separated list of interface name prefixes".into());
    }
    Ok(prefixes.join(","))
}

fn parse_pattern(text: &str) -> Result<Pattern, String> {
    Regex::new(text.trim())
        .map(Pattern)
        .map_err(|e| format!("not a regular expression: {e}"))
}

fn parse_action(text: &str) -> Result<EndpointToHostAction, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "drop" => Ok(EndpointToHostAction::Drop),
        "return" => Ok(EndpointToHostAction::Return),
        "accept" => Ok(EndpointToHostAction::Accept),
        _ => Err("must be Drop, Return or Accept".into()),
    }
}

fn parse_severity(text: &str) -> Result<LogSeverity, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "debug" => Ok(LogSeverity::Debug),
        "info" => Ok(LogSeverity::Info),
        "warning" | "warn" => Ok(LogSeverity::Warning),
        "error" => Ok(LogSeverity::Error),
        "fatal" => Ok(LogSeverity::Fatal),
        _ => Err("must be Debug, Info, Warning, Error or Fatal".into()),
    }
}

fn parse_failsafe(text: &str) -> Result<FailsafePorts, String> {
    let text = text.trim();
    if text.is_empty() || text.eq_ignore_ascii_case("none") {
        return Ok(FailsafePorts(Vec::new()));
    }
    let mut ports = Vec::new();
    for item in text.split(',').map(str::trim) {
        let bad = || format!("{item:?} is not protocol:port or protocol:net:port");
        let (rest, port) = match item.rsplit_once(':') {
            Some((rest, port)) => (Some(rest), port),
            None => (None, item),
        };
        let port = parse_port(port).map_err(|_| bad())?;
        let (protocol, net) = match rest {
            None => ("tcp", None),
            Some(rest) => match rest.split_once(':') {
                None => (rest, None),
                Some((protocol, net)) => {
                    let net = net.trim_matches(|c| c == '[' || c == ']');
                    (
                        protocol,
                        Some(net.parse::<ipnet::IpNet>().map_err(|_| bad())?),
                    )
                }
            },
        };
        let protocol = protocol.to_ascii_lowercase();
        if !["tcp", "udp", "sctp"].contains(&protocol.as_str()) {
            return Err(format!("{item:?}: the protocol must be tcp, udp or sctp"));
        }
        ports.push(FailsafePort {
            protocol,
            net,
            port,
        });
    }
    Ok(FailsafePorts(ports))
}

fn parse_duration_secs(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let ms = match unit {
        "ms" => n,
        "s" => n.checked_mul(1000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        _ => return None,
    };
    ms.is_multiple_of(1000).then_some(ms / 1000)
}

fn parse_conntrack_timeouts(text: &str) -> Result<ConntrackTimeouts, String> {
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (name, value) = item
            .split_once('=')
            .ok_or_else(|| format!("{item:?} is not Name=duration"))?;
        let (name, ours) = CONNTRACK_TIMEOUTS
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.trim()))
            .ok_or_else(|| format!("{:?} is not a conntrack timeout", name.trim()))?;
        let value = value.trim();
        let same = if value.eq_ignore_ascii_case("auto") {
            *name == "TCPFinsSeen"
        } else {
            parse_duration_secs(value)
                .ok_or_else(|| format!("{name}: {value:?} is not a duration (like 30s, 10m)"))?
                == *ours
        };
        if !same {
            return Err(format!(
                "{name}={value}: the conntrack timeouts are fixed here ({})",
                ConntrackTimeouts
            ));
        }
    }
    Ok(ConntrackTimeouts)
}

/// Checks one value of a supported setting: the defaults with that value layered over them.
fn check_value(setting: &str, text: &str) -> Result<(), String> {
    let layer = Layer(vec![Entry {
        name: setting.to_string(),
        value: Ok(text.to_string()),
        source: Source::Default,
    }]);
    match resolve(&[layer]) {
        Ok(_) => Ok(()),
        Err(ConfigError::Invalid { reason, .. }) => Err(reason),
        Err(other) => Err(other.to_string()),
    }
}

// ---------------------------------------------------------------------------------------------
// Layers

/// One value as a source gives it: its name as written, its text form (or why it has none),
/// and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub value: Result<String, String>,
    pub source: Source,
}

/// The values of one source, in the order given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layer(pub Vec<Entry>);

/// A resource field's value in Felix's text form: numbers and booleans as written, lists
/// joined with commas (failsafe ports as `protocol:net:port`), maps as `Name=value` pairs.
/// `None` for `null`.
pub fn resource_value_text(value: &Value) -> Result<Option<String>, String> {
    Ok(match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Array(items) => {
            let mut texts = Vec::new();
            for item in items {
                texts.push(match item {
                    Value::Object(port) => {
                        let field = |name: &str| port.get(name).filter(|v| !v.is_null());
                        if let Some(unknown) = port
                            .keys()
                            .find(|k| !["protocol", "port", "net"].contains(&k.as_str()))
                        {
                            return Err(format!("unknown field {unknown:?} in a port"));
                        }
                        let protocol = match field("protocol") {
                            None => "tcp".to_string(),
                            Some(Value::String(p)) => p.clone(),
                            Some(_) => return Err("protocol is not a string".into()),
                        };
                        let port_number = match field("port") {
                            Some(Value::Number(n)) => n.to_string(),
                            _ => return Err("a port needs a number \"port\"".into()),
                        };
                        match field("net") {
                            None => format!("{protocol}:{port_number}"),
                            Some(Value::String(net)) if net.is_empty() => {
                                format!("{protocol}:{port_number}")
                            }
                            Some(Value::String(net)) => format!("{protocol}:[{net}]:{port_number}"),
                            Some(_) => return Err("net is not a string".into()),
                        }
                    }
                    Value::String(s) => s.clone(),
                    _ => return Err("not a list of strings or ports".into()),
                });
            }
            Some(if texts.is_empty() {
                "none".to_string()
            } else {
                texts.join(",")
            })
        }
        Value::Object(map) => {
            let mut pairs = Vec::new();
            for (key, value) in map {
                match value {
                    Value::Null => {}
                    Value::String(s) => pairs.push(format!("{key}={s}")),
                    _ => return Err(format!("{key}: not a string")),
                }
            }
            Some(pairs.join(","))
        }
    })
}

/// The check the datastore runs on each field of a `FelixConfiguration`: a Calico name, and for
/// a setting implemented here a valid value.
///
/// # Errors
///
/// What is wrong, as a message for the field.
pub fn check_resource_field(name: &str, value: &Value) -> Result<(), String> {
    match supported_name(name) {
        Some(setting) => match resource_value_text(value)? {
            Some(text) => check_value(setting, &text),
            None => Ok(()),
        },
        None if is_accepted_unused(name) => Ok(()),
        None => Err(format!(
            "unknown field {name:?}: not a FelixConfiguration field"
        )),
    }
}

/// Layers `layers` (later wins) over the defaults.
///
/// # Errors
///
/// The first unknown setting or invalid value, with its source.
pub fn resolve(layers: &[Layer]) -> Result<FelixConfig, ConfigError> {
    let mut effective: BTreeMap<&'static str, (String, Source)> = BTreeMap::new();
    let mut unused = Vec::new();
    for entry in layers.iter().flat_map(|layer| &layer.0) {
        let source = entry.source.clone();
        match supported_name(&entry.name) {
            Some(setting) => match &entry.value {
                Ok(value) => {
                    effective.insert(setting, (value.clone(), source));
                }
                Err(reason) => {
                    return Err(ConfigError::Invalid {
                        origin: source,
                        setting,
                        value: String::new(),
                        reason: reason.clone(),
                    });
                }
            },
            None if is_accepted_unused(&entry.name) => unused.push((entry.name.clone(), source)),
            None => {
                return Err(ConfigError::Unknown {
                    origin: source,
                    name: entry.name.clone(),
                });
            }
        }
    }
    fn take<T>(
        effective: &BTreeMap<&'static str, (String, Source)>,
        setting: &'static str,
        default: &str,
        parse: fn(&str) -> Result<T, String>,
    ) -> Result<Setting<T>, ConfigError> {
        let (text, source) = effective
            .get(setting)
            .cloned()
            .unwrap_or_else(|| (default.to_string(), Source::Default));
        match parse(&text) {
            Ok(value) => Ok(Setting { value, source }),
            Err(reason) => Err(ConfigError::Invalid {
                origin: source,
                setting,
                value: text,
                reason,
            }),
        }
    }
    let e = &effective;
    Ok(FelixConfig {
        bpf_map_size_conntrack: take(
            e,
            "BPFMapSizeConntrack",
            &DEFAULT_CONNTRACK_ENTRIES.to_string(),
            parse_u32_min1,
        )?,
        bpf_map_size_if_state: take(
            e,
            "BPFMapSizeIfState",
            &DEFAULT_ENDPOINT_ENTRIES.to_string(),
            parse_endpoint_map_size,
        )?,
        bpf_map_size_route: take(
            e,
            "BPFMapSizeRoute",
            &ROUTE_MAP_ENTRIES.to_string(),
            parse_route_size,
        )?,
        bpf_conntrack_timeouts: take(e, "BPFConntrackTimeouts", "", parse_conntrack_timeouts)?,
        bpf_data_iface_pattern: take(
            e,
            "BPFDataIfacePattern",
            DEFAULT_DATA_INTERFACES,
            parse_pattern,
        )?,
        interface_prefix: take(e, "InterfacePrefix", "cali", parse_interface_prefix)?,
        default_endpoint_to_host_action: take(
            e,
            "DefaultEndpointToHostAction",
            "Drop",
            parse_action,
        )?,
        failsafe_inbound_host_ports: take(
            e,
            "FailsafeInboundHostPorts",
            DEFAULT_FAILSAFE_INBOUND,
            parse_failsafe,
        )?,
        failsafe_outbound_host_ports: take(
            e,
            "FailsafeOutboundHostPorts",
            DEFAULT_FAILSAFE_OUTBOUND,
            parse_failsafe,
        )?,
        prometheus_metrics_enabled: take(e, "PrometheusMetricsEnabled", "false", parse_bool)?,
        prometheus_metrics_host: take(e, "PrometheusMetricsHost", "", parse_string)?,
        prometheus_metrics_port: take(e, "PrometheusMetricsPort", "9091", parse_port)?,
        health_enabled: take(e, "HealthEnabled", "false", parse_bool)?,
        health_host: take(e, "HealthHost", "localhost", parse_string)?,
        health_port: take(e, "HealthPort", "9099", parse_port)?,
        log_severity_screen: take(e, "LogSeverityScreen", "Info", parse_severity)?,
        unused,
    })
}

/// Calico's settings (lower case) accepted here and not used.
#[rustfmt::skip]
const ACCEPTED_UNUSED: &[&str] = &[
    "allowipippacketsfromworkloads", "allowvxlanpacketsfromworkloads", "awssrcdstcheck",
    "bpfattachtype", "bpfconnecttimeloadbalancing", "bpfconnecttimeloadbalancingenabled",
    "bpfconntrackcleanupmode", "bpfconntrackloglevel", "bpfconntrackmode", "bpfctlblogfilter",
    "bpfdisablegroforifaces", "bpfdisableunprivileged", "bpfdsroptoutcidrs", "bpfenabled",
    "bpfenforcerpf", "bpfexcludecidrsfromnat", "bpfexportbuffersizemb",
    "bpfexternalservicemode", "bpfexttoserviceconnmark", "bpfforcetrackpacketsfromifaces",
    "bpfhostconntrackbypass", "bpfhostnetworkednatwithoutctlb",
    "bpfipfragmentreassemblyenabled", "bpfipfragtimeout", "bpfjithardening",
    "bpfkubeproxyhealthzport", "bpfkubeproxyiptablescleanupenabled",
    "bpfkubeproxyminsyncperiod", "bpfl3ifacepattern", "bpflogfilters", "bpfloglevel",
    "bpfmaglevmaxendpointsperservice", "bpfmaglevmaxservices",
    "bpfmapsizeconntrackcleanupqueue", "bpfmapsizeconntrackscaling",
    "bpfmapsizeipsets", "bpfmapsizenataffinity", "bpfmapsizenatbackend",
    "bpfmapsizenatfrontend", "bpfmapsizepercpuconntrack", "bpfoverlayhostsourceip",
    "bpfpolicydebugenabled", "bpfprofiling", "bpfpsnatports", "bpfredirecttopeer",
    "calicoversion", "cgroupv2path", "chaininsertmode", "clusterguid", "clustertype",
    "dataplanedriver", "dataplanewatchdogtimeout", "datastoretype", "debugbpfcgroupv2",
    "debugcpuprofilepath", "debugdisablelogdropping", "debughost", "debugmemoryprofilepath",
    "debugpanicafter", "debugport", "debugsimulatecalcgraphhangafter",
    "debugsimulatedataplaneapplydelay", "debugsimulatedataplanehangafter",
    "debugsimulatedatarace", "devicerouteprotocol", "deviceroutesourceaddress",
    "deviceroutesourceaddressipv6", "disableconntrackinvalidcheck", "endpointreportingdelay",
    "endpointreportingdelaysecs", "endpointreportingenabled", "endpointstatuspathprefix",
    "etcdaddr", "etcdcafile", "etcdcertfile", "etcdendpoints", "etcdkeyfile", "etcdscheme",
    "externalnodescidrlist", "externalnodeslist", "featuredetectoverride", "featuregates",
    "felixhostname", "floatingips", "flowlogscollectordebugtrace", "flowlogsflushinterval",
    "flowlogsgoldmaneserver", "flowlogslocalreporter", "flowlogspolicyevaluationmode",
    "genericxdpenabled", "gogcthreshold", "gomaxprocs", "gomemorylimitmb",
    "healthtimeoutoverrides", "interfaceexclude", "interfacerefreshinterval", "ipforwarding",
    "ipinipenabled", "ipinipmtu", "ipiniptunneladdr", "ipipenabled", "ipipmtu",
    "ipsetsrefreshinterval", "iptablesbackend", "iptablesfilterallowaction",
    "iptablesfilterdenyaction", "iptableslockprobeinterval", "iptableslockprobeintervalmillis",
    "iptablesmangleallowaction", "iptablesmarkmask", "iptablesnatoutgoinginterfacefilter",
    "iptablespostwritecheckinterval", "iptablespostwritecheckintervalsecs",
    "iptablesrefreshinterval", "ipv4elevatedroutepriority", "ipv4normalroutepriority",
    "ipv4vxlantunneladdr", "ipv6elevatedroutepriority", "ipv6normalroutepriority",
    "ipv6support", "ipv6vxlantunneladdr", "istioambientmode", "istiodscpmark",
    "kubenodeportranges", "livemigrationrouteconvergencetime", "localsubnetl2reachability",
    "localsubnetl2reachabilityrefreshinterval", "logactionratelimit",
    "logactionratelimitburst", "logdebugfilenameregex", "logfilepath", "logprefix",
    "logseverityfile", "logseveritysys", "maxipsetsize", "metadataaddr", "metadataport",
    "mtuifacepattern", "natoutgoingaddress", "natoutgoingexclusions", "natportrange",
    "netlinktimeout", "netlinktimeoutsecs", "nftablesfilterallowaction",
    "nftablesfilterdenyaction", "nftablesflowtabledataifacepattern",
    "nftablesflowtableoffload", "nftablesmangleallowaction", "nftablesmarkmask",
    "nftablesmode", "nftablesrefreshinterval", "nodeselector", "openstackregion",
    "policysyncpathprefix", "programclusterroutes", "prometheusgometricsenabled",
    "prometheusmetricscafile", "prometheusmetricscertfile", "prometheusmetricsclientauth",
    "prometheusmetricskeyfile", "prometheusprocessmetricsenabled",
    "prometheuswireguardmetricsenabled", "removeexternalroutes", "reportinginterval",
    "reportingintervalsecs", "reportingttl", "reportingttlsecs", "requiremtufile",
    "routerefreshinterval", "routesource", "routesyncdisabled", "routetablerange",
    "routetableranges", "serviceloopprevention", "sidecaraccelerationenabled", "typhaaddr",
    "typhacafile", "typhacertfile", "typhacn", "typhak8snamespace", "typhak8sservicename",
    "typhakeyfile", "typhareadtimeout", "typhaurisan", "typhawritetimeout",
    "usagereportingenabled", "usagereportinginitialdelay", "usagereportinginitialdelaysecs",
    "usagereportinginterval", "usagereportingintervalsecs", "useinternaldataplanedriver",
    "variant", "vxlanenabled", "vxlanmtu", "vxlanmtuv6", "vxlanport", "vxlantunnelmacaddr",
    "vxlantunnelmacaddrv6", "vxlanvni", "windowsmanagefirewallrules", "wireguardenabled",
    "wireguardenabledv6", "wireguardhostencryptionenabled", "wireguardinterfacename",
    "wireguardinterfacenamev6", "wireguardkeepalive", "wireguardlisteningport",
    "wireguardlisteningportv6", "wireguardmtu", "wireguardmtuv6",
    "wireguardpersistentkeepalive", "wireguardroutingrulepriority",
    "wireguardthreadingenabled", "workloadsourcespoofing", "xdpenabled", "xdprefreshinterval",];

#[cfg(test)]
mod tests;
