//! `Node`: a Calico node, with its BGP settings (address and prefix of each family, AS number,
//! route-reflector cluster), its tunnel addresses and what the orchestrator calls it. IPAM reads
//! its labels (an IP pool's `nodeSelector`); the BGP slice reads `spec.bgp`.
//!
//! Fields follow Calico v3.32's `NodeSpec` and `NodeStatus` (libcalico-go
//! `lib/apis/internalapi/node.go`); checks are libcalico-go's validator: the field tags
//! (`cidrv4`, `cidrv6`, `ipv4`, `ipv6`, `mac`, `net`, `ipType`, `name`, `wireguardPublicKey`)
//! and `validateNodeSpec` (a `bgp` section must not be empty). The AS number is numorstring's
//! `ASNumber`: a number, or a string holding a number or the dotted `a.b` form.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

use super::{
    fields::{
        AnyString, Check, CheckNumOrStr, FieldError, Ipv4, Ipv6, Mac, MacAddr, NumOrString, OrNull,
        ResourceName, list, nullable, optional, parse_cidr_or_ip, required, string_enum,
    },
    kind::{DocumentWithStatus, ResourceKind, document_parts},
    kind_info::KindInfo,
    meta::ObjectMeta,
};

/// A `Node`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Its metadata; the labels are what IP pools' `nodeSelector`s match.
    pub metadata: ObjectMeta,
    /// Its specification (empty when the document has none).
    pub spec: NodeSpec,
    /// Its status, as calico-node reports it (accepted, unused).
    pub status: Option<NodeStatus>,
}

impl Node {
    /// The node's name.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }
}

/// Specification of a [`Node`] (Calico's `NodeSpec`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeSpec {
    /// BGP settings of the node.
    #[serde(default)]
    pub bgp: Option<NodeBgpSpec>,
    /// IPv4 address of the VXLAN tunnel.
    #[serde(
        default,
        rename = "ipv4VXLANTunnelAddr",
        deserialize_with = "optional::<_, Ipv4>"
    )]
    pub ipv4_vxlan_tunnel_addr: Option<Ipv4Addr>,
    /// MAC address of the VXLAN tunnel.
    #[serde(
        default,
        rename = "vxlanTunnelMACAddr",
        deserialize_with = "optional::<_, Mac>"
    )]
    pub vxlan_tunnel_mac_addr: Option<MacAddr>,
    /// IPv6 address of the VXLAN tunnel.
    #[serde(
        default,
        rename = "ipv6VXLANTunnelAddr",
        deserialize_with = "optional::<_, Ipv6>"
    )]
    pub ipv6_vxlan_tunnel_addr: Option<Ipv6Addr>,
    /// MAC address of the IPv6 VXLAN tunnel.
    #[serde(
        default,
        rename = "vxlanTunnelMACAddrV6",
        deserialize_with = "optional::<_, Mac>"
    )]
    pub vxlan_tunnel_mac_addr_v6: Option<MacAddr>,
    /// The node as orchestrators know it.
    #[serde(default, deserialize_with = "nullable")]
    pub orch_refs: Vec<OrchRef>,
    /// WireGuard settings of the node.
    #[serde(default)]
    pub wireguard: Option<NodeWireguardSpec>,
    /// Addresses clients reach the node at.
    #[serde(default, deserialize_with = "nullable")]
    pub addresses: Vec<NodeAddress>,
    /// The node's interfaces.
    #[serde(default, deserialize_with = "nullable")]
    pub interfaces: Vec<NodeInterface>,
}

/// BGP settings of a [`Node`] (Calico's `NodeBGPSpec`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeBgpSpec {
    /// The node's AS number; the global one (BGPConfiguration) when not given.
    #[serde(default, deserialize_with = "as_number")]
    pub as_number: Option<u32>,
    /// The node's IPv4 address and the prefix of its subnet (`198.18.0.1/24`); a bare address
    /// is taken as /32. Host bits are kept: the address is the node's.
    #[serde(default, deserialize_with = "optional::<_, CidrV4>")]
    pub ipv4_address: Option<IpNet>,
    /// The node's IPv6 address and prefix.
    #[serde(default, deserialize_with = "optional::<_, CidrV6>")]
    pub ipv6_address: Option<IpNet>,
    /// IPv4 address of the IPIP tunnel.
    #[serde(
        default,
        rename = "ipv4IPIPTunnelAddr",
        deserialize_with = "optional::<_, Ipv4>"
    )]
    pub ipv4_ipip_tunnel_addr: Option<Ipv4Addr>,
    /// Set: the node is a route reflector of this cluster ID (written as an IPv4 address).
    #[serde(
        default,
        rename = "routeReflectorClusterID",
        deserialize_with = "optional::<_, Ipv4>"
    )]
    pub route_reflector_cluster_id: Option<Ipv4Addr>,
}

impl NodeBgpSpec {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// An orchestrator's name for a [`Node`] (Calico's `OrchRef`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OrchRef {
    /// The node's name in the orchestrator.
    #[serde(default, deserialize_with = "optional::<_, AnyString>")]
    pub node_name: Option<String>,
    /// The orchestrator (`k8s`...).
    #[serde(default, deserialize_with = "nullable")]
    pub orchestrator: String,
}

/// WireGuard settings of a [`Node`] (Calico's `NodeWireguardSpec`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeWireguardSpec {
    /// Address of the IPv4 WireGuard interface.
    #[serde(
        default,
        rename = "interfaceIPv4Address",
        deserialize_with = "optional::<_, Ipv4>"
    )]
    pub interface_ipv4_address: Option<Ipv4Addr>,
    /// Address of the IPv6 WireGuard interface.
    #[serde(
        default,
        rename = "interfaceIPv6Address",
        deserialize_with = "optional::<_, Ipv6>"
    )]
    pub interface_ipv6_address: Option<Ipv6Addr>,
}

/// An address of a [`Node`] (Calico's `NodeAddress`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeAddress {
    /// The address: an IP, or a network with its host bits clear (Calico's `net`).
    #[serde(deserialize_with = "required::<_, StrictNetwork>")]
    pub address: IpNet,
    /// What kind of address it is.
    #[serde(
        default,
        rename = "type",
        deserialize_with = "optional::<_, NodeAddressType>"
    )]
    pub address_type: Option<NodeAddressType>,
}

string_enum! {
    /// The kind of a [`NodeAddress`] (Calico's `ipType` values).
    NodeAddressType, "address type" {
        /// The address calico-node detected as the node's.
        CalicoNodeIp = "CalicoNodeIP",
        /// An address inside the cluster.
        InternalIp = "InternalIP",
        /// An address outside the cluster.
        ExternalIp = "ExternalIP",
    }
}

/// An interface of a [`Node`] (Calico's `NodeInterface`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeInterface {
    /// The interface's name (Calico's `name` rule).
    #[serde(default, deserialize_with = "optional::<_, ResourceName>")]
    pub name: Option<String>,
    /// Its addresses, as reported (not checked, as in Calico).
    #[serde(default, deserialize_with = "list::<_, AnyString>")]
    pub addresses: Vec<String>,
}

/// Status of a [`Node`] (Calico's `NodeStatus`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeStatus {
    /// The node's IPv4 WireGuard public key.
    #[serde(default, deserialize_with = "optional::<_, WireguardKey>")]
    pub wireguard_public_key: Option<String>,
    /// The node's IPv6 WireGuard public key.
    #[serde(
        default,
        rename = "wireguardPublicKeyV6",
        deserialize_with = "optional::<_, WireguardKey>"
    )]
    pub wireguard_public_key_v6: Option<String>,
    /// The Kubernetes node's pod CIDRs.
    #[serde(
        default,
        rename = "podCIDRs",
        deserialize_with = "list::<_, AnyString>"
    )]
    pub pod_cidrs: Vec<String>,
}

/// Calico's `cidrv4`: an IPv4 address, with or without a prefix length; host bits allowed.
struct CidrV4;
impl Check for CidrV4 {
    type Out = IpNet;
    fn check(s: &str) -> Result<IpNet, String> {
        match parse_cidr_or_ip(s)? {
            (IpAddr::V4(_), net) => Ok(net),
            _ => Err(format!("invalid IPv4 CIDR {s:?}: not an IPv4 address")),
        }
    }
}

/// Calico's `cidrv6`: an IPv6 address, with or without a prefix length; host bits allowed.
struct CidrV6;
impl Check for CidrV6 {
    type Out = IpNet;
    fn check(s: &str) -> Result<IpNet, String> {
        match parse_cidr_or_ip(s)? {
            (IpAddr::V6(_), net) => Ok(net),
            _ => Err(format!("invalid IPv6 CIDR {s:?}: not an IPv6 address")),
        }
    }
}

/// Calico's `net`: an address, or a network whose host bits are clear.
struct StrictNetwork;
impl Check for StrictNetwork {
    type Out = IpNet;
    fn check(s: &str) -> Result<IpNet, String> {
        let (ip, net) = parse_cidr_or_ip(s)?;
        if net.trunc().addr() != ip {
            return Err(format!(
                "invalid network {s:?}: host bits are set (the network is {})",
                net.trunc()
            ));
        }
        Ok(net)
    }
}

/// A WireGuard public key: 32 bytes in standard base64 (44 characters, one `=`).
struct WireguardKey;
impl Check for WireguardKey {
    type Out = String;
    fn check(s: &str) -> Result<String, String> {
        let ok = s.len() == 44
            && s.ends_with('=')
            && s[..43]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
            // The last character before `=` carries only 4 bits of the key: its 2 low bits must
            // be zero, so it is one of these.
            && s[42..43]
                .bytes()
                .all(|b| b"AEIMQUYcgkosw048".contains(&b));
        if ok {
            Ok(s.to_owned())
        } else {
            Err(format!(
                "invalid WireGuard public key {s:?}: must be 32 bytes in base64"
            ))
        }
    }
}

/// numorstring's `ASNumber`: a number up to 2^32-1, or a string holding one or the dotted
/// form `a.b` (two 16-bit halves).
fn as_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    let convert = |value: NumOrString<'_>| -> Result<Option<u32>, String> {
        match value {
            NumOrString::Num(n) => u32::try_from(n)
                .map(Some)
                .map_err(|_| format!("invalid AS number {n}: must be between 0 and 4294967295")),
            NumOrString::Str("") => Ok(None),
            NumOrString::Str(s) => parse_as_number(s).map(Some),
        }
    };
    let value =
        deserializer.deserialize_option(OrNull(CheckNumOrStr::new("an AS number", convert)))?;
    Ok(value.flatten())
}

/// An AS number written as text: decimal, or `a.b`.
fn parse_as_number(s: &str) -> Result<u32, String> {
    if let Ok(n) = s.parse::<u32>() {
        return Ok(n);
    }
    let invalid = || format!("invalid AS number format ({s})");
    let (high, low) = s.split_once('.').ok_or_else(invalid)?;
    let high: u16 = high.parse().map_err(|_| invalid())?;
    let low: u16 = low.parse().map_err(|_| invalid())?;
    Ok((u32::from(high) << 16) | u32::from(low))
}

impl ResourceKind for Node {
    const INFO: KindInfo = KindInfo::cluster("Node", "nodes", &["no", "nos"]);

    /// The spec may be left out; a status is accepted.
    type Document = DocumentWithStatus<Option<NodeSpec>, NodeStatus>;

    document_parts!(optional spec, status);

    /// `validateNodeSpec`: a `bgp` section, when given, must say something.
    fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if self.spec.bgp.as_ref().is_some_and(NodeBgpSpec::is_empty) {
            errors.push(FieldError::new("spec.bgp", "should not be empty"));
        }
        errors
    }
}
