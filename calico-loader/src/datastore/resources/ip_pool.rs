//! `IPPool`: a range of addresses Calico's IPAM hands out to workloads (and tunnels), in blocks,
//! and how traffic from it is routed: encapsulation, outgoing NAT, BGP export.
//!
//! Fields follow Calico's Go API (`api/pkg/apis/projectcalico/v3/ippool.go`, Calico v3.32);
//! defaults are libcalico-go's (`clientv3/ippool.go`, `validateAndSetDefaults`); checks are
//! libcalico-go's validator (`validateIPPoolSpec`) and the IPPoolSpec CEL rules of the CRD.
//! Checks that need other resources (a pool overlapping another pool, a changed `cidr` or
//! `blockSize`, blocks already allocated) belong to whoever writes the pool, not to reading it.
//!
//! Every mode Calico accepts is accepted and kept (IPIP and VXLAN included), whether or not the
//! dataplane acts on it yet.

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

use super::{
    fields::{
        Check, FieldError, SelectorText, check_unique, list, nullable, number, optional, required,
        string_enum,
    },
    kind::{DocumentWithStatus, ResourceKind, document_parts},
    kind_info::KindInfo,
    meta::ObjectMeta,
};

/// The block size Calico gives an IPv4 pool that names none.
pub const DEFAULT_IPV4_BLOCK_SIZE: u8 = 26;
/// The block size Calico gives an IPv6 pool that names none.
pub const DEFAULT_IPV6_BLOCK_SIZE: u8 = 122;
/// The node selector Calico gives a pool that names none: every node.
pub const DEFAULT_NODE_SELECTOR: &str = "all()";
/// What a pool is for when it does not say (`allowedUses` absent or empty).
pub const DEFAULT_ALLOWED_USES: [IpPoolAllowedUse; 2] =
    [IpPoolAllowedUse::Workload, IpPoolAllowedUse::Tunnel];

/// The block sizes Calico accepts for IPv4 pools (the CRD's `blockSize` rule).
const IPV4_BLOCK_SIZES: std::ops::RangeInclusive<u8> = 20..=32;
/// The block sizes Calico accepts for IPv6 pools.
const IPV6_BLOCK_SIZES: std::ops::RangeInclusive<u8> = 116..=128;
/// CRD limit: entries of `allowedUses` (`MaxItems=10`).
const MAX_ALLOWED_USES: usize = 10;

/// An `IPPool`: addresses for workloads and tunnels, handed out in blocks of `blockSize`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpPool {
    /// Its metadata.
    pub metadata: ObjectMeta,
    /// Its specification, with Calico's defaults applied once parsed.
    pub spec: IpPoolSpec,
    /// Its status, as the API server reports it (accepted, unused).
    pub status: Option<IpPoolStatus>,
}

/// Specification of an [`IpPool`] (Calico's `IPPoolSpec`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IpPoolSpec {
    /// The pool's CIDR (required): a prefix length, host bits clear, outside the link-local
    /// ranges.
    #[serde(deserialize_with = "required::<_, PoolCidr>")]
    pub cidr: IpNet,
    /// VXLAN encapsulation of traffic to the pool's addresses (Never unless given).
    #[serde(default, deserialize_with = "vxlan_mode")]
    pub vxlan_mode: VxlanMode,
    /// IPIP encapsulation of traffic to the pool's addresses (Never unless given; IPv4 only).
    #[serde(default, deserialize_with = "ipip_mode")]
    pub ipip_mode: IpipMode,
    /// Masquerade traffic from the pool to destinations outside every pool.
    #[serde(default, deserialize_with = "nullable")]
    pub nat_outgoing: bool,
    /// IPAM hands out no new address from the pool.
    #[serde(default, deserialize_with = "nullable")]
    pub disabled: bool,
    /// Do not announce the pool's routes over BGP.
    #[serde(default, rename = "disableBGPExport", deserialize_with = "nullable")]
    pub disable_bgp_export: bool,
    /// Prefix length of the blocks IPAM hands to nodes. Once parsed, never 0: 26 for IPv4, 122
    /// for IPv6 when not given.
    #[serde(default, deserialize_with = "block_size")]
    pub block_size: u8,
    /// The nodes the pool serves (`all()` when not given).
    #[serde(default, deserialize_with = "node_selector")]
    pub node_selector: String,
    /// The namespaces whose workloads the pool serves, besides `nodeSelector`.
    #[serde(default, deserialize_with = "optional::<_, SelectorText>")]
    pub namespace_selector: Option<String>,
    /// What the pool is for, as written: empty when not given, which Calico takes as Workload
    /// and Tunnel ([`IpPoolSpec::allowed_uses`] says which uses apply).
    #[serde(
        default,
        rename = "allowedUses",
        deserialize_with = "list::<_, IpPoolAllowedUse>"
    )]
    pub written_allowed_uses: Vec<IpPoolAllowedUse>,
    /// How addresses are assigned from the pool (Automatic unless given).
    #[serde(default, deserialize_with = "assignment_mode")]
    pub assignment_mode: AssignmentMode,
    /// APIv1's `ipip`: Calico refuses it in v3 (`mustBeNil`); kept to say so.
    #[serde(default, rename = "ipip")]
    pub deprecated_ipip: Option<serde_json::Value>,
    /// APIv1's `nat-outgoing`: Calico refuses it in v3 (`mustBeFalse`); kept to say so.
    #[serde(default, rename = "nat-outgoing", deserialize_with = "nullable")]
    pub deprecated_nat_outgoing: bool,
}

impl IpPoolSpec {
    /// What the pool is for: as written, or Calico's default (Workload and Tunnel).
    pub fn allowed_uses(&self) -> &[IpPoolAllowedUse] {
        if self.written_allowed_uses.is_empty() {
            &DEFAULT_ALLOWED_USES
        } else {
            &self.written_allowed_uses
        }
    }

    /// Whether the pool allows `used`.
    pub fn allows(&self, used: IpPoolAllowedUse) -> bool {
        self.allowed_uses().contains(&used)
    }
}

/// Status of an [`IpPool`] (Calico's `IPPoolStatus`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpPoolStatus {
    /// Kubernetes conditions, kept as JSON.
    #[serde(default, deserialize_with = "nullable")]
    pub conditions: Vec<serde_json::Value>,
}

string_enum! {
    /// IPIP encapsulation of a pool (Calico's `IPIPMode`).
    #[derive(Default)]
    IpipMode, "IPIP mode" {
        /// No encapsulation (Calico's default).
        #[default]
        Never = "Never",
        /// Encapsulate all traffic to the pool's addresses on other nodes.
        Always = "Always",
        /// Encapsulate only traffic to nodes in another subnet.
        CrossSubnet = "CrossSubnet",
    }
}

string_enum! {
    /// VXLAN encapsulation of a pool (Calico's `VXLANMode`).
    #[derive(Default)]
    VxlanMode, "VXLAN mode" {
        /// No encapsulation (Calico's default).
        #[default]
        Never = "Never",
        /// Encapsulate all traffic to the pool's addresses on other nodes.
        Always = "Always",
        /// Encapsulate only traffic to nodes in another subnet.
        CrossSubnet = "CrossSubnet",
    }
}

string_enum! {
    /// A use a pool allows (Calico's `IPPoolAllowedUse`).
    IpPoolAllowedUse, "allowed use" {
        /// Workload addresses.
        Workload = "Workload",
        /// Tunnel addresses of nodes (IPIP, VXLAN, WireGuard).
        Tunnel = "Tunnel",
        /// Load balancer service addresses (not combined with the others).
        LoadBalancer = "LoadBalancer",
    }
}

string_enum! {
    /// How addresses are assigned from a pool (Calico's `AssignmentMode`).
    #[derive(Default)]
    AssignmentMode, "assignment mode" {
        /// IPAM picks addresses from the pool by itself (Calico's default).
        #[default]
        Automatic = "Automatic",
        /// Only addresses asked for explicitly.
        Manual = "Manual",
    }
}

/// A pool's CIDR, as Calico takes it (`cnet.ParseCIDR` and the CRD's CEL rules): a prefix
/// length is required, the host bits must be clear (the CIDR "strictly masked"), and the pool
/// must not overlap the link-local ranges.
struct PoolCidr;
impl Check for PoolCidr {
    type Out = IpNet;
    fn check(s: &str) -> Result<IpNet, String> {
        if s.is_empty() {
            return Err("must not be empty".into());
        }
        if !s.contains('/') {
            return Err(format!(
                "invalid CIDR {s:?}: a prefix length is required (like 198.18.0.0/16)"
            ));
        }
        let net: IpNet = s.parse().map_err(|e| format!("invalid CIDR {s:?}: {e}"))?;
        let network = net.trunc();
        if network != net {
            return Err(format!(
                "invalid CIDR {s:?}: host bits are set (the network is {network}); an IP pool's \
                 CIDR must be strictly masked"
            ));
        }
        let (link_local, family) = match net {
            IpNet::V4(_) => ("169.254.0.0/16", "IPv4"),
            IpNet::V6(_) => ("fe80::/10", "IPv6"),
        };
        let link_local: IpNet = link_local
            .parse()
            .map_err(|e| format!("invalid link-local range: {e}"))?;
        if link_local.contains(&net.network()) || net.contains(&link_local.network()) {
            return Err(format!(
                "CIDR {net} overlaps the {family} link-local range {link_local}"
            ));
        }
        Ok(net)
    }
}

fn ipip_mode<'de, D: Deserializer<'de>>(deserializer: D) -> Result<IpipMode, D::Error> {
    Ok(optional::<D, IpipMode>(deserializer)?.unwrap_or_default())
}

fn vxlan_mode<'de, D: Deserializer<'de>>(deserializer: D) -> Result<VxlanMode, D::Error> {
    Ok(optional::<D, VxlanMode>(deserializer)?.unwrap_or_default())
}

fn assignment_mode<'de, D: Deserializer<'de>>(deserializer: D) -> Result<AssignmentMode, D::Error> {
    Ok(optional::<D, AssignmentMode>(deserializer)?.unwrap_or_default())
}

fn node_selector<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    Ok(optional::<D, SelectorText>(deserializer)?.unwrap_or_default())
}

/// `blockSize`: 0 to 128 (the CRD's bounds); 0 means "the default".
fn block_size<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u8, D::Error> {
    let check = |n: i128| match u8::try_from(n) {
        Ok(size) if size <= 128 => Ok(size),
        _ => Err(format!(
            "invalid block size {n}: must be a prefix length between 0 and 128"
        )),
    };
    Ok(number(deserializer, "a prefix length", check)?.unwrap_or(0))
}

impl IpPool {
    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }
}

impl ResourceKind for IpPool {
    const INFO: KindInfo =
        KindInfo::cluster("IPPool", "ippools", &["ipp", "ipps", "pool", "pools"]);

    /// The spec is required (its `cidr` is); a status is accepted.
    type Document = DocumentWithStatus<IpPoolSpec, IpPoolStatus>;

    document_parts!(spec, status);

    /// Calico's defaults (`validateAndSetDefaults`): the block size for the pool's family and
    /// `nodeSelector: all()`. The modes default to Never and Automatic as they deserialize;
    /// `allowedUses` stays as written (see [`IpPoolSpec::allowed_uses`]).
    fn apply_defaults(&mut self) {
        let spec = &mut self.spec;
        if spec.block_size == 0 {
            spec.block_size = match spec.cidr {
                IpNet::V4(_) => DEFAULT_IPV4_BLOCK_SIZE,
                IpNet::V6(_) => DEFAULT_IPV6_BLOCK_SIZE,
            };
        }
        if spec.node_selector.is_empty() {
            spec.node_selector = DEFAULT_NODE_SELECTOR.to_owned();
        }
    }

    /// The checks across fields: the IPPoolSpec CEL rules and `validateIPPoolSpec`.
    fn validate(&self) -> Vec<FieldError> {
        let spec = &self.spec;
        let mut errors = Vec::new();
        let (family, sizes) = match spec.cidr {
            IpNet::V4(_) => ("IPv4", IPV4_BLOCK_SIZES),
            IpNet::V6(_) => ("IPv6", IPV6_BLOCK_SIZES),
        };
        if !sizes.contains(&spec.block_size) {
            errors.push(FieldError::new(
                "spec.blockSize",
                format!(
                    "block size {} is out of range: an {family} pool's must be between {} and {}",
                    spec.block_size,
                    sizes.start(),
                    sizes.end()
                ),
            ));
        } else if !spec.disabled && spec.cidr.prefix_len() > spec.block_size {
            errors.push(FieldError::new(
                "spec.cidr",
                format!(
                    "pool {} is smaller than one block (/{}): an enabled pool must be at least \
                     as large as its block size",
                    spec.cidr, spec.block_size
                ),
            ));
        }
        let ipip = spec.ipip_mode != IpipMode::Never;
        let vxlan = spec.vxlan_mode != VxlanMode::Never;
        if ipip && vxlan {
            errors.push(FieldError::new(
                "spec.vxlanMode",
                "ipipMode and vxlanMode cannot both be enabled",
            ));
        }
        if ipip && matches!(spec.cidr, IpNet::V6(_)) {
            errors.push(FieldError::new(
                "spec.ipipMode",
                "IPIP is not supported on IPv6 pools",
            ));
        }
        for (field, selector) in [
            ("spec.nodeSelector", Some(spec.node_selector.as_str())),
            ("spec.namespaceSelector", spec.namespace_selector.as_deref()),
        ] {
            if selector.is_some_and(|s| s.contains("global(")) {
                errors.push(FieldError::new(
                    field,
                    "global() is not valid in an IP pool's selectors",
                ));
            }
        }
        errors.extend(self.validate_allowed_uses());
        if spec.deprecated_ipip.as_ref().is_some_and(|v| !v.is_null()) {
            errors.push(FieldError::new(
                "spec.ipip",
                "not allowed: an APIv1 field; use ipipMode",
            ));
        }
        if spec.deprecated_nat_outgoing {
            errors.push(FieldError::new(
                "spec.nat-outgoing",
                "not allowed: an APIv1 field; use natOutgoing",
            ));
        }
        errors
    }

    fn selector_fields(&self) -> Vec<(String, &str)> {
        let spec = &self.spec;
        [
            ("spec.nodeSelector", Some(spec.node_selector.as_str())),
            ("spec.namespaceSelector", spec.namespace_selector.as_deref()),
        ]
        .into_iter()
        .filter_map(|(field, s)| s.map(|s| (field.to_owned(), s)))
        .collect()
    }
}

impl IpPool {
    /// The CEL rules on `allowedUses`, as written (Calico's rules pass when it is absent):
    /// unique, at most ten, LoadBalancer alone, without encapsulation, exported over BGP and
    /// on every node; no namespaceSelector on a pool for tunnels.
    fn validate_allowed_uses(&self) -> Vec<FieldError> {
        let spec = &self.spec;
        let uses = &spec.written_allowed_uses;
        let field = "spec.allowedUses";
        let mut errors = check_unique(uses, field);
        if uses.len() > MAX_ALLOWED_USES {
            errors.push(FieldError::new(
                field,
                format!(
                    "{} uses, more than the limit of {MAX_ALLOWED_USES}",
                    uses.len()
                ),
            ));
        }
        if uses.contains(&IpPoolAllowedUse::LoadBalancer) {
            if uses.iter().any(|u| *u != IpPoolAllowedUse::LoadBalancer) {
                errors.push(FieldError::new(
                    field,
                    "LoadBalancer cannot be combined with Workload or Tunnel",
                ));
            }
            if spec.ipip_mode != IpipMode::Never || spec.vxlan_mode != VxlanMode::Never {
                errors.push(FieldError::new(
                    field,
                    "a LoadBalancer pool cannot have IPIP or VXLAN enabled",
                ));
            }
            if spec.disable_bgp_export {
                errors.push(FieldError::new(
                    "spec.disableBGPExport",
                    "a LoadBalancer pool cannot disable BGP export",
                ));
            }
            if spec.node_selector != DEFAULT_NODE_SELECTOR {
                errors.push(FieldError::new(
                    "spec.nodeSelector",
                    "a LoadBalancer pool's nodeSelector must be all()",
                ));
            }
        }
        if uses.contains(&IpPoolAllowedUse::Tunnel) && spec.namespace_selector.is_some() {
            errors.push(FieldError::new(
                "spec.namespaceSelector",
                "a pool allowing Tunnel cannot have a namespaceSelector",
            ));
        }
        errors
    }
}
