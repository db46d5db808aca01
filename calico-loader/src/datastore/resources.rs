//! `projectcalico.org/v3` resources: their types, how they deserialize and how they are
//! validated, one file per kind, and the registry that lists the kinds.
//!
//! Field names and rules follow Calico's Go API (`projectcalico/api` and libcalico-go's
//! `WorkloadEndpoint`) and libcalico-go's validator. Every field Calico defines is accepted,
//! unknown fields are rejected. As in Go, an empty string or `null` means the same as an absent
//! field.
//!
//! From the ground up:
//!
//! - `fields`: how one value deserializes and is checked, the shared value types
//!   ([`MacAddr`], [`Protocol`]...), and [`FieldError`];
//! - `kind_info`: a kind's facts ([`KindInfo`]) and etcd key layouts ([`EtcdKeys`]);
//! - `meta`: `apiVersion` and [`ObjectMeta`], what every resource carries;
//! - `kind`: the [`ResourceKind`] trait a typed kind implements, and the document shapes;
//! - `policy`: what the policy kinds share (rules, orders, ports...), and `policy_keys`, how
//!   they are keyed in etcd ([`PolicyKeys`]);
//! - one file per typed kind: `workload_endpoint`, `network_policy`, `global_network_policy`,
//!   `profile`, `tier`, `network_set` (with what both set kinds share), `global_network_set`,
//!   `host_endpoint`,
//!   `ip_pool`, `ipam_configuration`, `node`, `bgp_configuration`, `bgp_peer`,
//!   `felix_configuration`;
//! - `registry`: the list of kinds, which makes [`Kind`] and [`Resource`].
//!
//! Checks on a single value (an address, a name, a port) run while deserializing, so serde
//! reports them with the field's path and line; checks across fields run afterwards
//! ([`ObjectMeta::validate`], [`ResourceKind::validate`]).

mod bgp_configuration;
mod bgp_peer;
mod felix_configuration;
mod fields;
mod global_network_policy;
mod global_network_set;
mod host_endpoint;
mod ip_pool;
mod ipam_configuration;
mod kind;
mod kind_info;
mod meta;
mod network_policy;
mod network_set;
mod node;
mod policy;
mod policy_keys;
mod profile;
mod registry;
mod tier;
mod workload_endpoint;

pub use bgp_configuration::{
    BgpConfiguration, BgpConfigurationSpec, BindMode, Community, DEFAULT_AS_NUMBER,
    DEFAULT_BGP_CONFIGURATION, DEFAULT_LISTEN_PORT, LogSeverity, NODE_BGP_CONFIGURATION_PREFIX,
    NORMAL_ROUTE_PRIORITY, PrefixAdvertisement, ProgramClusterRoutes, ServiceIpBlock,
    ServiceLoadBalancerAggregation,
};
pub use bgp_peer::{
    BgpPassword, BgpPeer, BgpPeerSpec, MAX_KEEPALIVE_SECS, MAX_PASSWORD_LEN, MAX_RESTART_SECS,
    NextHopMode, PasswordSource, PeerAddress, ReversePeering, SecretKeySelector, SourceAddress,
    check_password,
};
pub use felix_configuration::{
    DEFAULT_FELIX_CONFIGURATION, FelixConfiguration, FelixConfigurationSpec,
    NODE_FELIX_CONFIGURATION_PREFIX,
};
pub use fields::{AsNumber, Dscp, FieldError, MacAddr, Protocol};
pub use global_network_policy::{GlobalNetworkPolicy, GlobalNetworkPolicySpec};
pub use global_network_set::{GlobalNetworkSet, GlobalNetworkSetSpec};
pub use host_endpoint::{ALL_INTERFACES, HostEndpoint, HostEndpointPort, HostEndpointSpec};
pub use ip_pool::{
    AssignmentMode, IpPool, IpPoolAllowedUse, IpPoolSpec, IpPoolStatus, IpipMode, VxlanMode,
};
pub use ipam_configuration::{
    IPAM_CONFIG_KEY, IPAM_CONFIGURATION_NAME, IpamConfigKeys, IpamConfiguration,
    IpamConfigurationSpec, StoredIpamConfig, VmAddressPersistence,
};
pub use kind::{Document, DocumentWithStatus, ResourceKind};
pub use kind_info::{EtcdKeys, KEY_PREFIX, KindInfo, StoredForm, V3Keys, is_v3_key_of};
pub use meta::{API_VERSION, DEFAULT_NAMESPACE, NAMESPACE_LABEL, ObjectMeta};
pub use network_policy::{NetworkPolicy, NetworkPolicySpec};
pub use network_set::{NetworkSet, NetworkSetSpec};
pub use node::{
    Node, NodeAddress, NodeAddressType, NodeBgpSpec, NodeInterface, NodeSpec, NodeStatus,
    NodeWireguardSpec, OrchRef,
};
pub use policy::{
    Action, DEFAULT_TIER, EntityRule, HttpMatch, HttpPath, IcmpMatch, IpVersion, KUBE_ADMIN_TIER,
    KUBE_BASELINE_TIER, Order, PerformanceHint, PolicyType, PortSpec, Rule, RuleMetadata,
    ServiceAccountMatch, ServiceMatch, TierDefaultAction,
};
pub use policy_keys::{POLICY_NAME_ANNOTATION, POLICY_TIER_LABEL, PolicyKeys};
pub use profile::{Profile, ProfileSpec};
pub use registry::{
    Kind, KindVisitor, Registered, Resource, ResourceKey, UntypedDocument, UntypedResource,
};
pub use tier::{Tier, TierSpec, TierStatus};
pub use workload_endpoint::{
    IpNat, QoSControls, WorkloadEndpoint, WorkloadEndpointPort, WorkloadEndpointSpec,
};
