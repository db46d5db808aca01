//! `BGPConfiguration`: the cluster's BGP settings (`default`) and a node's overrides
//! (`node.<node name>`).
//!
//! Fields follow Calico's Go API (`api/pkg/apis/projectcalico/v3/bgpconfig.go`, Calico v3.32);
//! checks are libcalico-go's validator (`validateBGPConfigurationSpec`, the field tags), the CRD's
//! CEL rules, and libcalico-go's `ValidateDefaultOnlyFields` (fields that only the `default`
//! resource may set). Calico applies no defaults when it stores the resource; the values in
//! force when a field is absent are confd's (AS 64512, the node-to-node mesh on, log severity
//! Info), and [`BgpConfigurationSpec`]'s accessors give them.
//!
//! calico-ebpf renders BIRD's configuration from these settings (see `crate::bgp`). A field
//! whose feature is not built here is refused when set (the error says so), rather than
//! accepted and ignored: `serviceLoadBalancerIPs`, `communities`, `prefixAdvertisements`,
//! `bindMode: NodeIP`, `localWorkloadPeeringIPV4`/`IPV6`, `programClusterRoutes: Disabled`,
//! `serviceLoadBalancerAggregation: Disabled` and normal route priorities other than 1024.
//! Likewise, on a `node.<name>` resource, the fields that Calico only reads from `default` are
//! refused.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

use super::{
    bgp_peer::BgpPassword,
    fields::{
        AnyString, AsNumber, Check, EndpointNetwork, FieldError, Ipv4, Ipv6, ResourceName,
        duration, list, nullable, number, optional, string_enum,
    },
    kind::{Document, ResourceKind, document_parts},
    kind_info::KindInfo,
    meta::ObjectMeta,
};

/// The name of the cluster-wide BGPConfiguration.
pub const DEFAULT_BGP_CONFIGURATION: &str = "default";
/// The prefix of a node's BGPConfiguration: `node.<node name>`.
pub const NODE_BGP_CONFIGURATION_PREFIX: &str = "node.";
/// The AS number in force when `default` gives none (confd's default).
pub const DEFAULT_AS_NUMBER: AsNumber = AsNumber::new(64512);
/// The port BGP listens on when no BGPConfiguration gives one.
pub const DEFAULT_LISTEN_PORT: u16 = 179;
/// The route priority Calico's Felix gives workload routes, the only value accepted for
/// `ipv4NormalRoutePriority` and `ipv6NormalRoutePriority` (the live-migration priorities that
/// other values serve are not built).
pub const NORMAL_ROUTE_PRIORITY: u32 = 1024;

/// CRD limits on `communities` and `prefixAdvertisements` (`MaxItems=500`).
const MAX_COMMUNITIES: usize = 500;
/// The highest route priority Calico accepts.
const MAX_ROUTE_PRIORITY: i128 = 2_147_483_646;

/// A `BGPConfiguration`: `default` for the cluster, `node.<name>` for one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BgpConfiguration {
    /// Its metadata.
    pub metadata: ObjectMeta,
    /// Its specification, as written (see the accessors for the values in force).
    pub spec: BgpConfigurationSpec,
}

/// Specification of a [`BgpConfiguration`] (Calico's `BGPConfigurationSpec`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BgpConfigurationSpec {
    /// BIRD's logging: Debug logs everything, Info (the default) state changes, the others
    /// nothing.
    #[serde(default, deserialize_with = "optional::<_, LogSeverity>")]
    pub log_severity_screen: Option<LogSeverity>,
    /// Whether every node peers with every other node (`default` only; on unless `false`).
    #[serde(default)]
    pub node_to_node_mesh_enabled: Option<bool>,
    /// The AS number of nodes that give none (`default` only; 64512 when absent).
    #[serde(default, deserialize_with = "as_number")]
    pub as_number: Option<AsNumber>,
    /// LoadBalancer service ranges to announce (`default` only). Not built: refused when set.
    #[serde(
        default,
        rename = "serviceLoadBalancerIPs",
        deserialize_with = "nullable"
    )]
    pub service_load_balancer_ips: Vec<ServiceIpBlock>,
    /// External service ranges every node announces (`default` only). Single addresses are
    /// announced per service in Calico, so not at all here.
    #[serde(default, rename = "serviceExternalIPs", deserialize_with = "nullable")]
    pub service_external_ips: Vec<ServiceIpBlock>,
    /// Cluster IP ranges every node announces (`default` only).
    #[serde(default, rename = "serviceClusterIPs", deserialize_with = "nullable")]
    pub service_cluster_ips: Vec<ServiceIpBlock>,
    /// How LoadBalancer addresses are announced. Only `Enabled` (the default) is accepted.
    #[serde(
        default,
        deserialize_with = "optional::<_, ServiceLoadBalancerAggregation>"
    )]
    pub service_load_balancer_aggregation: Option<ServiceLoadBalancerAggregation>,
    /// Named BGP communities. Not built: refused when set.
    #[serde(default, deserialize_with = "nullable")]
    pub communities: Vec<Community>,
    /// Communities to attach per prefix. Not built: refused when set.
    #[serde(default, deserialize_with = "nullable")]
    pub prefix_advertisements: Vec<PrefixAdvertisement>,
    /// The port BGP listens on (1-65535; 179 when absent).
    #[serde(default, deserialize_with = "listen_port")]
    pub listen_port: Option<u16>,
    /// The password of the node-to-node mesh's sessions (`default` only; the mesh must be on).
    #[serde(default)]
    pub node_mesh_password: Option<BgpPassword>,
    /// Graceful restart time of the mesh's sessions (`default` only; the mesh must be on;
    /// BIRD's 120s when absent).
    #[serde(default, deserialize_with = "duration")]
    pub node_mesh_max_restart_time: Option<Duration>,
    /// Which addresses BGP listens on. Only `None` (all addresses) is accepted.
    #[serde(default, deserialize_with = "optional::<_, BindMode>")]
    pub bind_mode: Option<BindMode>,
    /// Interfaces whose routes BIRD does not read, besides workload interfaces.
    #[serde(default, deserialize_with = "list::<_, IgnoredInterface>")]
    pub ignored_interfaces: Vec<String>,
    /// Address local workloads peer with. Not built: refused when set.
    #[serde(
        default,
        rename = "localWorkloadPeeringIPV4",
        deserialize_with = "optional::<_, Ipv4>"
    )]
    pub local_workload_peering_ipv4: Option<Ipv4Addr>,
    /// Address local workloads peer with. Not built: refused when set.
    #[serde(
        default,
        rename = "localWorkloadPeeringIPV6",
        deserialize_with = "optional::<_, Ipv6>"
    )]
    pub local_workload_peering_ipv6: Option<Ipv6Addr>,
    /// Who programs routes to other nodes' workloads. Only `Enabled` (BIRD, the default) is
    /// accepted.
    #[serde(default, deserialize_with = "optional::<_, ProgramClusterRoutes>")]
    pub program_cluster_routes: Option<ProgramClusterRoutes>,
    /// Felix's IPv4 workload route priority. Only 1024 is accepted.
    #[serde(
        default,
        rename = "ipv4NormalRoutePriority",
        deserialize_with = "route_priority"
    )]
    pub ipv4_normal_route_priority: Option<u32>,
    /// Felix's IPv6 workload route priority. Only 1024 is accepted.
    #[serde(
        default,
        rename = "ipv6NormalRoutePriority",
        deserialize_with = "route_priority"
    )]
    pub ipv6_normal_route_priority: Option<u32>,
}

impl BgpConfigurationSpec {
    /// Whether the node-to-node mesh is on (it is unless set to `false`).
    pub fn node_to_node_mesh(&self) -> bool {
        self.node_to_node_mesh_enabled.unwrap_or(true)
    }

    /// The AS number in force: as written, else 64512.
    pub fn effective_as_number(&self) -> AsNumber {
        self.as_number.unwrap_or(DEFAULT_AS_NUMBER)
    }

    /// The port BGP listens on: as written, else 179.
    pub fn effective_listen_port(&self) -> u16 {
        self.listen_port.unwrap_or(DEFAULT_LISTEN_PORT)
    }

    /// The log severity in force: as written, else Info.
    pub fn effective_log_severity(&self) -> LogSeverity {
        self.log_severity_screen.unwrap_or_default()
    }

    /// The service ranges announced from every node: the cluster IP ranges, and the external
    /// IP ranges that are not single addresses (Calico announces those per service only).
    pub fn announced_service_ranges(&self) -> Vec<IpNet> {
        let cluster = self.service_cluster_ips.iter().map(|b| b.cidr);
        let external = self
            .service_external_ips
            .iter()
            .map(|b| b.cidr)
            .filter(|net| net.prefix_len() != net.max_prefix_len());
        let mut ranges: Vec<IpNet> = cluster.chain(external).collect();
        ranges.sort();
        ranges.dedup();
        ranges
    }
}

/// One service range (Calico's `ServiceClusterIPBlock`, `ServiceExternalIPBlock` and
/// `ServiceLoadBalancerIPBlock`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceIpBlock {
    /// The range: a CIDR with host bits clear, or an address.
    #[serde(deserialize_with = "service_cidr")]
    pub cidr: IpNet,
}

/// A named BGP community (Calico's `Community`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Community {
    /// Its name, for `prefixAdvertisements` to use.
    #[serde(deserialize_with = "community_name")]
    pub name: String,
    /// `aa:nn` (standard, 16-bit parts) or `aa:nn:mm` (large, 32-bit parts).
    #[serde(deserialize_with = "community_value")]
    pub value: String,
}

/// Communities attached to a prefix (Calico's `PrefixAdvertisement`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefixAdvertisement {
    /// The prefix.
    #[serde(deserialize_with = "service_cidr")]
    pub cidr: IpNet,
    /// Community values or names from `communities`.
    #[serde(default, deserialize_with = "list::<_, AnyString>")]
    pub communities: Vec<String>,
}

string_enum! {
    /// BIRD's log severity (Calico's `logSeverityScreen` values).
    #[derive(Default)]
    LogSeverity, "log severity" {
        /// Calico maps it to no BIRD logging.
        Trace = "Trace",
        /// Every BIRD event.
        Debug = "Debug",
        /// Protocol state changes (Calico's default).
        #[default]
        Info = "Info",
        /// No BIRD logging.
        Warning = "Warning",
        /// No BIRD logging.
        Error = "Error",
        /// No BIRD logging.
        Fatal = "Fatal",
    }
}

string_enum! {
    /// Which addresses BGP listens on (Calico's `BindMode`).
    BindMode, "bind mode" {
        /// Every address (Calico's default).
        None = "None",
        /// Only the node's address. Not built.
        NodeIp = "NodeIP",
    }
}

string_enum! {
    /// How LoadBalancer service addresses are announced (Calico's
    /// `ServiceLoadBalancerAggregation`).
    ServiceLoadBalancerAggregation, "service load balancer aggregation" {
        /// The whole range (Calico's default).
        Enabled = "Enabled",
        /// Each address. Not built.
        Disabled = "Disabled",
    }
}

string_enum! {
    /// Who programs routes to other nodes' workloads (Calico's `programClusterRoutes`).
    ProgramClusterRoutes, "programClusterRoutes value" {
        /// BIRD does (Calico's default).
        Enabled = "Enabled",
        /// Felix does. Not built.
        Disabled = "Disabled",
    }
}

/// An interface name pattern for `ignoredInterfaces`: 1-15 of `[a-zA-Z0-9_.*-]`, not `*`
/// alone (Calico's `ignoredInterface` rule).
struct IgnoredInterface;
impl Check for IgnoredInterface {
    type Out = String;
    fn check(s: &str) -> Result<String, String> {
        let ok = (1..=15).contains(&s.len())
            && s != "*"
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'*' | b'-'));
        if ok {
            Ok(s.to_owned())
        } else {
            Err(format!(
                "invalid interface pattern {s:?}: must be 1-15 characters from [a-zA-Z0-9_.*-], \
                 and not * alone"
            ))
        }
    }
}

/// A community value: `aa:nn` with 16-bit parts or `aa:nn:mm` with 32-bit parts.
fn parse_community_value(s: &str) -> Result<(), String> {
    let parts: Vec<&str> = s.split(':').collect();
    let digits = parts
        .iter()
        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let fits = |bits: u32| {
        parts
            .iter()
            .all(|p| p.parse::<u64>().is_ok_and(|v| v < (1u64 << bits)))
    };
    match parts.len() {
        2 if digits && fits(16) => Ok(()),
        3 if digits && fits(32) => Ok(()),
        2 if digits => Err(format!(
            "invalid community {s:?}: a standard community's parts are 16-bit numbers"
        )),
        3 if digits => Err(format!(
            "invalid community {s:?}: a large community's parts are 32-bit numbers"
        )),
        _ => Err(format!(
            "invalid community {s:?}: expected aa:nn or aa:nn:mm"
        )),
    }
}

fn community_value<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    struct Value;
    impl Check for Value {
        type Out = String;
        fn check(s: &str) -> Result<String, String> {
            parse_community_value(s).map(|()| s.to_owned())
        }
    }
    super::fields::required::<D, Value>(deserializer)
}

fn community_name<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    super::fields::required::<D, ResourceName>(deserializer)
}

fn service_cidr<'de, D: Deserializer<'de>>(deserializer: D) -> Result<IpNet, D::Error> {
    super::fields::required::<D, EndpointNetwork>(deserializer)
}

/// An AS number where absent, `null` or 0 mean none.
fn as_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<AsNumber>, D::Error> {
    let value = Option::<AsNumber>::deserialize(deserializer)?;
    Ok(value.filter(|asn| asn.value() != 0))
}

/// `listenPort`: 1-65535; 0 means none (Go's `omitempty`).
fn listen_port<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u16>, D::Error> {
    let check = |port: i128| {
        u16::try_from(port).map_err(|_| format!("invalid port {port}: must be between 1 and 65535"))
    };
    Ok(number(deserializer, "a port number", check)?.filter(|p| *p != 0))
}

/// A normal route priority: 1 to 2147483646.
fn route_priority<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    let check = |n: i128| match u32::try_from(n) {
        Ok(v) if (1..=MAX_ROUTE_PRIORITY).contains(&n) => Ok(v),
        _ => Err(format!(
            "invalid route priority {n}: must be between 1 and {MAX_ROUTE_PRIORITY}"
        )),
    };
    number(deserializer, "a route priority", check)
}

impl BgpConfiguration {
    /// The resource's name.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// Whether this is the cluster-wide `default`.
    pub fn is_default(&self) -> bool {
        self.metadata.name == DEFAULT_BGP_CONFIGURATION
    }

    /// The node this resource configures, for a `node.<name>` resource.
    pub fn node(&self) -> Option<&str> {
        self.metadata
            .name
            .strip_prefix(NODE_BGP_CONFIGURATION_PREFIX)
    }

    /// The fields only `default` may set: set here, with their path (libcalico-go's
    /// `ValidateDefaultOnlyFields`, and the fields confd reads from `default` only).
    fn default_only_fields_set(&self) -> Vec<&'static str> {
        let spec = &self.spec;
        [
            (
                "spec.nodeToNodeMeshEnabled",
                spec.node_to_node_mesh_enabled.is_some(),
            ),
            ("spec.asNumber", spec.as_number.is_some()),
            (
                "spec.serviceLoadBalancerIPs",
                !spec.service_load_balancer_ips.is_empty(),
            ),
            (
                "spec.serviceExternalIPs",
                !spec.service_external_ips.is_empty(),
            ),
            (
                "spec.serviceClusterIPs",
                !spec.service_cluster_ips.is_empty(),
            ),
            ("spec.nodeMeshPassword", spec.node_mesh_password.is_some()),
            (
                "spec.nodeMeshMaxRestartTime",
                spec.node_mesh_max_restart_time.is_some(),
            ),
            ("spec.bindMode", spec.bind_mode.is_some()),
            (
                "spec.ignoredInterfaces",
                !spec.ignored_interfaces.is_empty(),
            ),
            (
                "spec.serviceLoadBalancerAggregation",
                spec.service_load_balancer_aggregation.is_some(),
            ),
            (
                "spec.programClusterRoutes",
                spec.program_cluster_routes.is_some(),
            ),
            (
                "spec.ipv4NormalRoutePriority",
                spec.ipv4_normal_route_priority.is_some(),
            ),
            (
                "spec.ipv6NormalRoutePriority",
                spec.ipv6_normal_route_priority.is_some(),
            ),
        ]
        .into_iter()
        .filter_map(|(field, set)| set.then_some(field))
        .collect()
    }

    /// The fields whose feature is not built, when set to something other than Calico's
    /// default behaviour.
    fn unbuilt_fields_set(&self) -> Vec<(&'static str, &'static str)> {
        let spec = &self.spec;
        let priority = |p: Option<u32>| p.is_some_and(|p| p != NORMAL_ROUTE_PRIORITY);
        [
            (
                "spec.serviceLoadBalancerIPs",
                !spec.service_load_balancer_ips.is_empty(),
                "LoadBalancer services are not built",
            ),
            (
                "spec.communities",
                !spec.communities.is_empty(),
                "BGP communities are not built",
            ),
            (
                "spec.prefixAdvertisements",
                !spec.prefix_advertisements.is_empty(),
                "BGP communities are not built",
            ),
            (
                "spec.bindMode",
                spec.bind_mode == Some(BindMode::NodeIp),
                "listening on the node's address only is not built; use None",
            ),
            (
                "spec.localWorkloadPeeringIPV4",
                spec.local_workload_peering_ipv4.is_some(),
                "peering with local workloads is not built",
            ),
            (
                "spec.localWorkloadPeeringIPV6",
                spec.local_workload_peering_ipv6.is_some(),
                "peering with local workloads is not built",
            ),
            (
                "spec.programClusterRoutes",
                spec.program_cluster_routes == Some(ProgramClusterRoutes::Disabled),
                "BIRD programs the routes to other nodes' workloads here; only Enabled is built",
            ),
            (
                "spec.serviceLoadBalancerAggregation",
                spec.service_load_balancer_aggregation
                    == Some(ServiceLoadBalancerAggregation::Disabled),
                "LoadBalancer services are not built; only Enabled is accepted",
            ),
            (
                "spec.ipv4NormalRoutePriority",
                priority(spec.ipv4_normal_route_priority),
                "route priorities for live migration are not built; only 1024 is accepted",
            ),
            (
                "spec.ipv6NormalRoutePriority",
                priority(spec.ipv6_normal_route_priority),
                "route priorities for live migration are not built; only 1024 is accepted",
            ),
        ]
        .into_iter()
        .filter_map(|(field, set, why)| set.then_some((field, why)))
        .collect()
    }

    /// `validateBGPConfigurationSpec`'s community rules.
    fn validate_communities(&self) -> Vec<FieldError> {
        let spec = &self.spec;
        let mut errors = Vec::new();
        for (field, len) in [
            ("spec.communities", spec.communities.len()),
            (
                "spec.prefixAdvertisements",
                spec.prefix_advertisements.len(),
            ),
        ] {
            if len > MAX_COMMUNITIES {
                errors.push(FieldError::new(
                    field,
                    format!("{len} entries, more than the limit of {MAX_COMMUNITIES}"),
                ));
            }
        }
        if !spec.communities.is_empty() && spec.prefix_advertisements.is_empty() {
            errors.push(FieldError::new(
                "spec.communities",
                "communities are defined but not used in prefixAdvertisements",
            ));
        }
        for (i, advertisement) in spec.prefix_advertisements.iter().enumerate() {
            for (j, community) in advertisement.communities.iter().enumerate() {
                let known = parse_community_value(community).is_ok()
                    || spec.communities.iter().any(|c| &c.name == community);
                if !known {
                    errors.push(FieldError::new(
                        format!("spec.prefixAdvertisements[{i}].communities[{j}]"),
                        format!(
                            "{community:?} is neither a community value (aa:nn or aa:nn:mm) \
                             nor the name of one in spec.communities"
                        ),
                    ));
                }
            }
        }
        errors
    }
}

impl ResourceKind for BgpConfiguration {
    const INFO: KindInfo = KindInfo::cluster(
        "BGPConfiguration",
        "bgpconfigurations",
        &["bgpconfig", "bgpconfigs"],
    );

    /// The spec may be left out: every value takes its default.
    type Document = Document<Option<BgpConfigurationSpec>>;

    document_parts!(optional spec);

    /// The name (`default` or `node.<name>`), the fields only `default` may set, the mesh
    /// settings that need the mesh, the community rules, the password's shape, and the fields
    /// not built here.
    fn validate(&self) -> Vec<FieldError> {
        let spec = &self.spec;
        let mut errors = Vec::new();
        if !self.is_default() && self.node().is_none_or(str::is_empty) {
            errors.push(FieldError::new(
                "metadata.name",
                format!(
                    "a BGPConfiguration is named {DEFAULT_BGP_CONFIGURATION} (for the cluster) \
                     or {NODE_BGP_CONFIGURATION_PREFIX}<node name> (for one node), not {:?}",
                    self.metadata.name
                ),
            ));
        }
        if !self.is_default() {
            for field in self.default_only_fields_set() {
                errors.push(FieldError::new(
                    field,
                    format!(
                        "only the {DEFAULT_BGP_CONFIGURATION} BGPConfiguration may set this \
                         (a node's may set listenPort and logSeverityScreen)"
                    ),
                ));
            }
        }
        if spec.node_to_node_mesh_enabled == Some(false) {
            for (field, set) in [
                ("spec.nodeMeshPassword", spec.node_mesh_password.is_some()),
                (
                    "spec.nodeMeshMaxRestartTime",
                    spec.node_mesh_max_restart_time.is_some(),
                ),
            ] {
                if set {
                    errors.push(FieldError::new(
                        field,
                        "cannot be set when nodeToNodeMeshEnabled is false",
                    ));
                }
            }
        }
        if let Some(restart) = spec.node_mesh_max_restart_time {
            errors.extend(
                super::bgp_peer::check_restart_time(restart)
                    .err()
                    .map(|m| FieldError::new("spec.nodeMeshMaxRestartTime", m)),
            );
        }
        if let Some(password) = &spec.node_mesh_password {
            errors.extend(password.validate("spec.nodeMeshPassword"));
        }
        errors.extend(self.validate_communities());
        for (field, why) in self.unbuilt_fields_set() {
            if errors.iter().any(|e| e.field == field) {
                continue;
            }
            errors.push(FieldError::new(
                field,
                format!("not supported by calico-ebpf: {why}"),
            ));
        }
        errors
    }
}
