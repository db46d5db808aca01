//! What the policy kinds share: the rules (`Rule`, `EntityRule` and what they hold), the small
//! value types of policies (`Action`, `Order`, `PortSpec`...), and the checks and defaults that
//! `NetworkPolicy`, `GlobalNetworkPolicy` and `Profile` apply alike. The kinds themselves are
//! each in their own file.
//!
//! Field names follow Calico's Go API (`projectcalico/api`, `pkg/apis/projectcalico/v3`:
//! `policy_common.go` and `pkg/lib/numorstring`). The rules are those of libcalico-go's
//! validator (`libcalico-go/lib/validator/v3/validator.go`) and of the CRDs' schema (limits,
//! enums and CEL rules on the Go types), as of Calico v3.32. Each check names its Calico source.
//!
//! As for the other resources, checks on one value (a CIDR, a port, an enum) run while
//! deserializing; checks across fields run in the `validate` methods, after `apply_defaults`
//! has filled in what Calico defaults (policy `types`, `tier`).
//!
//! Selectors are kept as text: [`Rule::selector_fields`] and its siblings list every selector
//! with its field path, for the caller to parse.

use std::{collections::BTreeMap, fmt, str::FromStr};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, de};

use super::{
    fields::{
        AnyString, Check, CheckNumOrStr, Drive, FieldError, NumOrString, OrNull, PortName,
        Protocol, ResourceName, SelectorText, check_unique, is_dns_label, is_dns_subdomain, list,
        nullable, number, optional, required, string_enum,
    },
    meta::check_annotations,
};

/// Name of the tier policies belong to when they name none.
pub const DEFAULT_TIER: &str = "default";
/// Name of the tier Calico reserves for Kubernetes admin network policy.
pub const KUBE_ADMIN_TIER: &str = "kube-admin";
/// Name of the tier Calico reserves for Kubernetes baseline admin network policy.
pub const KUBE_BASELINE_TIER: &str = "kube-baseline";

/// CRD limit: rules per direction (`+kubebuilder:validation:MaxItems=1024`).
const MAX_RULES: usize = 1024;
/// CRD limit: `nets`/`notNets` entries (`MaxItems=256`).
const MAX_NETS: usize = 256;
/// CRD limit: `ports`/`notPorts` entries (`MaxItems=50`).
const MAX_PORTS: usize = 50;
/// CRD limit: HTTP methods and paths (`MaxItems=20`).
const MAX_HTTP_ITEMS: usize = 20;
/// CRD limit: length of an HTTP path (`MaxLength=1024`).
const MAX_HTTP_PATH_LEN: usize = 1024;

// ---------------------------------------------------------------------------------------------
// Small value types

string_enum! {
    /// What a rule does with the packets it matches (Calico's `Action`).
    Action, "action" {
        /// Accept the packet: no further policy or profile is consulted.
        Allow = "Allow",
        /// Drop the packet.
        Deny = "Deny",
        /// Log the packet and go on to the next rule.
        Log = "Log",
        /// Skip the rest of the tier: go on to the next tier (or the profiles).
        Pass = "Pass",
    }
}

string_enum! {
    /// A direction a policy applies to (Calico's `PolicyType`).
    PolicyType, "policy type" {
        /// Traffic to the selected endpoints.
        Ingress = "Ingress",
        /// Traffic from the selected endpoints.
        Egress = "Egress",
    }
}

string_enum! {
    /// A hint to the policy engine that never changes enforcement (Calico's
    /// `PolicyPerformanceHint`).
    PerformanceHint, "performance hint" {
        /// Act as if the policy applies to a local endpoint even if none matches (preload it).
        AssumeNeededOnEveryNode = "AssumeNeededOnEveryNode",
    }
}

string_enum! {
    /// What a tier does with traffic to or from an endpoint that some policy of the tier
    /// selected but no rule of the tier decided (a tier's `defaultAction`).
    TierDefaultAction, "default action" {
        /// Drop it (Calico's default).
        Deny = "Deny",
        /// Go on to the next tier.
        Pass = "Pass",
    }
}

impl Default for TierDefaultAction {
    /// [`TierDefaultAction::Deny`], as Calico defaults it.
    fn default() -> Self {
        TierDefaultAction::Deny
    }
}

/// A policy's or tier's `order`: a finite number; lower orders apply first.
///
/// Unlike `f64`, it is `Eq` and `Ord` (NaN and infinities are rejected, and `-0` is stored as
/// `0`). An absent order means "after every order" ([`f64::INFINITY`]): see
/// [`NetworkPolicySpec::effective_order`] and [`TierSpec::effective_order`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Order(f64);

impl Order {
    /// The order `value`, unless it is NaN or infinite.
    pub fn new(value: f64) -> Option<Self> {
        // `+ 0.0` turns -0 into 0, so that `Ord` agrees with `Eq`.
        value.is_finite().then_some(Self(value + 0.0))
    }

    /// Its value.
    pub fn value(self) -> f64 {
        self.0
    }
}

impl Eq for Order {}

impl Ord for Order {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

impl PartialOrd for Order {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Order {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl<'de> Deserialize<'de> for Order {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl de::Visitor<'_> for Visitor {
            type Value = Order;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number")
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Order, E> {
                Order::new(v).ok_or_else(|| E::custom(format!("invalid order {v}: must be finite")))
            }

            // Orders are float64 in Calico: large integers round as they do there.
            #[allow(clippy::cast_precision_loss)]
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Order, E> {
                self.visit_f64(v as f64)
            }

            #[allow(clippy::cast_precision_loss)]
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Order, E> {
                self.visit_f64(v as f64)
            }
        }

        deserializer.deserialize_any(Visitor)
    }
}

/// An IP version a rule is restricted to (`ipVersion`: 4 or 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpVersion {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl IpVersion {
    /// 4 or 6.
    pub fn number(self) -> u8 {
        match self {
            IpVersion::V4 => 4,
            IpVersion::V6 => 6,
        }
    }

    /// The version of `net`.
    pub fn of(net: &IpNet) -> Self {
        match net {
            IpNet::V4(_) => IpVersion::V4,
            IpNet::V6(_) => IpVersion::V6,
        }
    }
}

impl fmt::Display for IpVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.number())
    }
}

impl<'de> Deserialize<'de> for IpVersion {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // `ipVersion` is an `*int` with enum 4;6 (policy_common.go).
        let convert = |value: NumOrString<'_>| match value {
            NumOrString::Num(4) => Ok(IpVersion::V4),
            NumOrString::Num(6) => Ok(IpVersion::V6),
            NumOrString::Num(n) => Err(format!("invalid ipVersion {n}: expected 4 or 6")),
            NumOrString::Str(s) => Err(format!(
                "invalid ipVersion {s:?}: expected the number 4 or 6"
            )),
        };
        CheckNumOrStr::new("4 or 6", convert).drive(deserializer)
    }
}

/// A port match in a rule's `ports`/`notPorts` (Calico's `numorstring.Port`): a number, a
/// `"lo:hi"` range (inclusive), or the name of a port of the endpoints (a WorkloadEndpoint's
/// `ports[].name`).
///
/// Port numbers are 1-65535. A range whose ends are equal is kept as [`PortSpec::Number`], as
/// Calico does (it stores a single port as a range of one).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortSpec {
    /// One port.
    Number(u16),
    /// Ports `lo` to `hi` inclusive, `lo < hi`.
    Range(u16, u16),
    /// A named port (an IANA service name, like `http`).
    Named(String),
}

impl PortSpec {
    /// Whether this is a named port.
    pub fn is_named(&self) -> bool {
        matches!(self, PortSpec::Named(_))
    }

    /// The inclusive range of numbers this matches, unless it is a named port.
    pub fn range(&self) -> Option<(u16, u16)> {
        match *self {
            PortSpec::Number(port) => Some((port, port)),
            PortSpec::Range(lo, hi) => Some((lo, hi)),
            PortSpec::Named(_) => None,
        }
    }

    fn from_number(n: i128) -> Result<Self, String> {
        match u16::try_from(n) {
            Ok(port) if port > 0 => Ok(PortSpec::Number(port)),
            _ => Err(format!("invalid port {n}: must be between 1 and 65535")),
        }
    }
}

impl FromStr for PortSpec {
    type Err = String;

    /// Parses as `numorstring.PortFromString` does (digits: one port; `digits:digits`: a range;
    /// anything else: a name), with the validator's checks (`validatePort`: no port 0, `lo <=
    /// hi`; `portName`: a valid IANA service name).
    fn from_str(s: &str) -> Result<Self, String> {
        let all_digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        if all_digits(s) {
            return match s.parse::<u16>() {
                Ok(port) if port > 0 => Ok(PortSpec::Number(port)),
                _ => Err(format!("invalid port {s:?}: must be between 1 and 65535")),
            };
        }
        if let Some((lo, hi)) = s.split_once(':')
            && all_digits(lo)
            && all_digits(hi)
        {
            let bound = |t: &str| match t.parse::<u16>() {
                Ok(port) if port > 0 => Ok(port),
                _ => Err(format!(
                    "invalid port range {s:?}: port numbers must be between 1 and 65535"
                )),
            };
            let (lo, hi) = (bound(lo)?, bound(hi)?);
            return match lo.cmp(&hi) {
                std::cmp::Ordering::Less => Ok(PortSpec::Range(lo, hi)),
                std::cmp::Ordering::Equal => Ok(PortSpec::Number(lo)),
                std::cmp::Ordering::Greater => Err(format!(
                    "invalid port range {s:?}: the minimum ({lo}) is greater than the maximum \
                     ({hi})"
                )),
            };
        }
        if s.contains(':') {
            return Err(format!(
                "invalid port {s:?}: expected a number, a range like \"8000:8080\" or a port name"
            ));
        }
        PortName::check(s).map(PortSpec::Named)
    }
}

impl fmt::Display for PortSpec {
    /// As Calico writes it: `80`, `8000:8080` or `http`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortSpec::Number(port) => write!(f, "{port}"),
            PortSpec::Range(lo, hi) => write!(f, "{lo}:{hi}"),
            PortSpec::Named(name) => f.write_str(name),
        }
    }
}

impl<'de> Deserialize<'de> for PortSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let convert = |value: NumOrString<'_>| match value {
            NumOrString::Num(n) => PortSpec::from_number(n),
            NumOrString::Str(s) => s.parse(),
        };
        CheckNumOrStr::new("a port number, range or name", convert).drive(deserializer)
    }
}

/// A rule's `protocol`/`notProtocol`: one of Calico's names, exactly as spelled (`TCP`, `UDP`,
/// `ICMP`, `ICMPv6`, `SCTP`, `UDPLite`), or a number 1-255 (possibly as a string of digits,
/// which Calico reads as a number). `null` or an empty string: none.
///
/// Calico's `validateProtocol` rejects protocol 0 and any other name (including the lower-case
/// `tcp`/`udp`/`sctp` that WorkloadEndpoint ports accept).
fn rule_protocol<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Protocol>, D::Error> {
    fn from_number(n: i128) -> Result<Option<Protocol>, String> {
        match u8::try_from(n) {
            Ok(n) if n > 0 => Ok(Some(Protocol::Number(n))),
            _ => Err(format!(
                "invalid protocol number {n}: must be between 1 and 255"
            )),
        }
    }
    let convert = |value: NumOrString<'_>| match value {
        NumOrString::Num(n) => from_number(n),
        NumOrString::Str("") => Ok(None),
        NumOrString::Str(s) if s.bytes().all(|b| b.is_ascii_digit()) => {
            // Calico's Uint8OrString reads a string of digits that fits in a u8 as a number, and
            // keeps a larger one as an (invalid) name.
            s.parse::<u8>()
                .map_err(|_| format!("invalid protocol {s:?}: must be between 1 and 255"))
                .and_then(|n| from_number(n.into()))
        }
        NumOrString::Str(s) => match s {
            "TCP" => Ok(Some(Protocol::Tcp)),
            "UDP" => Ok(Some(Protocol::Udp)),
            "ICMP" => Ok(Some(Protocol::Icmp)),
            "ICMPv6" => Ok(Some(Protocol::IcmpV6)),
            "SCTP" => Ok(Some(Protocol::Sctp)),
            "UDPLite" => Ok(Some(Protocol::UdpLite)),
            _ => Err(format!(
                "invalid protocol {s:?}: expected TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite or a \
                 number 1-255"
            )),
        },
    };
    let value = deserializer.deserialize_option(OrNull(CheckNumOrStr::new(
        "a protocol name or number",
        convert,
    )))?;
    Ok(value.flatten())
}

/// A CIDR in a rule's `nets`/`notNets`: an address and a prefix length, host bits clear.
///
/// Calico's field validator (`net`) requires the host bits to be clear, and `validateRule`
/// parses each entry with `ParseCIDR`, which needs a prefix length: a bare address is rejected.
struct RuleNet;
impl Check for RuleNet {
    type Out = IpNet;
    fn check(s: &str) -> Result<IpNet, String> {
        if !s.contains('/') {
            return Err(format!(
                "invalid CIDR {s:?}: a prefix length is required (like 198.51.100.7/32)"
            ));
        }
        let net: IpNet = s.parse().map_err(|e| format!("invalid CIDR {s:?}: {e}"))?;
        let network = net.trunc();
        if network != net {
            return Err(format!(
                "invalid CIDR {s:?}: host bits are set (the network is {network})"
            ));
        }
        Ok(net)
    }
}

fn icmp_type<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u8>, D::Error> {
    // `validate:"omitempty,gte=0,lte=254"` (policy_common.go).
    number(deserializer, "an ICMP type", |n| match u8::try_from(n) {
        Ok(t) if t <= 254 => Ok(t),
        _ => Err(format!("invalid ICMP type {n}: must be between 0 and 254")),
    })
}

fn icmp_code<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u8>, D::Error> {
    // `validate:"omitempty,gte=0,lte=255"` (policy_common.go).
    number(deserializer, "an ICMP code", |n| {
        u8::try_from(n).map_err(|_| format!("invalid ICMP code {n}: must be between 0 and 255"))
    })
}

pub(super) fn tier_name<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    Ok(optional::<D, ResourceName>(deserializer)?.unwrap_or_else(|| DEFAULT_TIER.to_owned()))
}

pub(super) fn default_tier() -> String {
    DEFAULT_TIER.to_owned()
}

// ---------------------------------------------------------------------------------------------
// Rules

/// A rule: match criteria and an action (Calico's `Rule`). All criteria must match.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rule {
    /// What to do with matching packets (required).
    #[serde(deserialize_with = "required::<_, Action>")]
    pub action: Action,
    /// Only packets of this IP version.
    #[serde(default)]
    pub ip_version: Option<IpVersion>,
    /// Only packets of this protocol (compare protocols with [`Protocol::number`]: `6` and
    /// `TCP` are the same).
    #[serde(default, deserialize_with = "rule_protocol")]
    pub protocol: Option<Protocol>,
    /// Only ICMP packets of this type (and code); needs `protocol` ICMP or ICMPv6.
    #[serde(default)]
    pub icmp: Option<IcmpMatch>,
    /// Only packets not of this protocol.
    #[serde(default, deserialize_with = "rule_protocol")]
    pub not_protocol: Option<Protocol>,
    /// Only packets that are not ICMP of this type (and code).
    #[serde(default, rename = "notICMP")]
    pub not_icmp: Option<IcmpMatch>,
    /// Criteria on the source.
    #[serde(default, deserialize_with = "nullable")]
    pub source: EntityRule,
    /// Criteria on the destination.
    #[serde(default, deserialize_with = "nullable")]
    pub destination: EntityRule,
    /// HTTP criteria (application layer policy; Allow ingress rules only).
    #[serde(default)]
    pub http: Option<HttpMatch>,
    /// Annotations about the rule.
    #[serde(default)]
    pub metadata: Option<RuleMetadata>,
}

impl Rule {
    /// A rule with this action and no criteria (it matches every packet).
    pub fn new(action: Action) -> Self {
        Self {
            action,
            ip_version: None,
            protocol: None,
            icmp: None,
            not_protocol: None,
            not_icmp: None,
            source: EntityRule::default(),
            destination: EntityRule::default(),
            http: None,
            metadata: None,
        }
    }

    /// Every selector of the rule, with its path relative to the rule (like
    /// `source.namespaceSelector`).
    pub fn selector_fields(&self) -> impl Iterator<Item = (String, &str)> {
        let source = self
            .source
            .selector_fields()
            .map(|(path, s)| (format!("source.{path}"), s));
        let destination = self
            .destination
            .selector_fields()
            .map(|(path, s)| (format!("destination.{path}"), s));
        source.chain(destination)
    }

    /// Checks the rule on its own (`validateRule`, `validateEntityRule`, the Rule and EntityRule
    /// CEL rules, and the CRDs' limits); `path` is the rule's path, like `spec.ingress[0]`.
    pub fn validate(&self, path: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        self.check_ports(path, &mut errors);
        self.check_http(path, &mut errors);
        self.check_icmp(path, &mut errors);
        self.check_nets(path, &mut errors);
        if let Some(icmp) = &self.icmp {
            errors.extend(icmp.validate(&format!("{path}.icmp")));
        }
        if let Some(icmp) = &self.not_icmp {
            errors.extend(icmp.validate(&format!("{path}.notICMP")));
        }
        errors.extend(self.source.validate(&format!("{path}.source")));
        errors.extend(self.destination.validate(&format!("{path}.destination")));
        if let Some(metadata) = &self.metadata {
            // validateRuleMetadata.
            errors.extend(check_annotations(
                &metadata.annotations,
                &format!("{path}.metadata.annotations"),
            ));
        }
        errors
    }

    /// `validateRule`: ports need a protocol that has them (TCP, UDP or SCTP); named ports may
    /// go without a protocol (the endpoint's port says which). The Rule CEL rules: a
    /// destination given as services takes its ports from the service.
    fn check_ports(&self, path: &str, errors: &mut Vec<FieldError>) {
        let port_lists = [
            ("source.ports", &self.source.ports),
            ("source.notPorts", &self.source.not_ports),
            ("destination.ports", &self.destination.ports),
            ("destination.notPorts", &self.destination.not_ports),
        ];
        match self.protocol {
            None => {
                for (name, ports) in port_lists {
                    if let Some(i) = ports.iter().position(|p| !p.is_named()) {
                        errors.push(FieldError::new(
                            format!("{path}.{name}[{i}]"),
                            "rules with a numeric port or port range must set protocol to TCP, \
                             UDP or SCTP",
                        ));
                    }
                }
            }
            Some(protocol) if !protocol.supports_ports() => {
                for (name, ports) in port_lists {
                    if !ports.is_empty() {
                        errors.push(FieldError::new(
                            format!("{path}.{name}"),
                            format!(
                                "protocol {protocol} has no ports: rules that specify ports must \
                                 set protocol to TCP, UDP or SCTP"
                            ),
                        ));
                    }
                }
            }
            Some(_) => {}
        }
        if self.destination.services.is_some() {
            for (name, ports) in [
                ("ports", &self.destination.ports),
                ("notPorts", &self.destination.not_ports),
            ] {
                if !ports.is_empty() {
                    errors.push(FieldError::new(
                        format!("{path}.destination.{name}"),
                        "ports and notPorts cannot be specified with services",
                    ));
                }
            }
        }
    }

    /// The Rule CEL rules (`validateRule` before them) on HTTP matches: Allow rules only, TCP
    /// or no protocol; and `validateHTTPRule`.
    fn check_http(&self, path: &str, errors: &mut Vec<FieldError>) {
        let Some(http) = &self.http else { return };
        if self.action != Action::Allow {
            errors.push(FieldError::new(
                format!("{path}.http"),
                format!(
                    "an HTTP match is only valid on Allow rules, not {}",
                    self.action
                ),
            ));
        }
        if let Some(protocol) = self.protocol
            && protocol.number() != Protocol::Tcp.number()
        {
            errors.push(FieldError::new(
                format!("{path}.protocol"),
                format!("rules with an HTTP match must have protocol TCP or none, not {protocol}"),
            ));
        }
        errors.extend(http.validate(&format!("{path}.http")));
    }

    /// The Rule CEL rules on ICMP: `icmp` needs protocol ICMP or ICMPv6 (by name or number;
    /// Calico sets no such rule for `notICMP`), and ICMP is IPv4, ICMPv6 IPv6.
    fn check_icmp(&self, path: &str, errors: &mut Vec<FieldError>) {
        let is_icmp = |p: Option<Protocol>| p.is_some_and(|p| matches!(p.number(), 1 | 58));
        if self.icmp.is_some() && !is_icmp(self.protocol) {
            errors.push(FieldError::new(
                format!("{path}.icmp"),
                "ICMP fields require protocol to be ICMP or ICMPv6",
            ));
        }
        let Some(version) = self.ip_version else {
            return;
        };
        for (name, protocol) in [
            ("protocol", self.protocol),
            ("notProtocol", self.not_protocol),
        ] {
            let Some(protocol) = protocol else { continue };
            let needed = match protocol.number() {
                1 => IpVersion::V4,
                58 => IpVersion::V6,
                _ => continue,
            };
            if version != needed {
                errors.push(FieldError::new(
                    format!("{path}.ipVersion"),
                    format!("{name} {protocol} requires ipVersion {needed}, not {version}"),
                ));
            }
        }
    }

    /// `validateRule` on nets: they agree with `ipVersion` and with each other (across source
    /// and destination), and a negated catch-all is a contradiction.
    fn check_nets(&self, path: &str, errors: &mut Vec<FieldError>) {
        let net_lists = [
            ("source.nets", &self.source.nets, false),
            ("source.notNets", &self.source.not_nets, true),
            ("destination.nets", &self.destination.nets, false),
            ("destination.notNets", &self.destination.not_nets, true),
        ];
        let mut seen: Option<IpVersion> = None;
        let mut mixed = false;
        for (name, nets, negated) in net_lists {
            for (i, net) in nets.iter().enumerate() {
                let item = format!("{path}.{name}[{i}]");
                let version = IpVersion::of(net);
                if negated && net.prefix_len() == 0 {
                    errors.push(FieldError::new(
                        item.clone(),
                        format!(
                            "catch-all CIDR {net} in a negation creates a logical contradiction \
                             (matches no traffic)"
                        ),
                    ));
                }
                if let Some(rule_version) = self.ip_version
                    && rule_version != version
                {
                    errors.push(FieldError::new(
                        item.clone(),
                        format!(
                            "{net} is an IPv{version} CIDR but the rule's ipVersion is \
                             {rule_version}"
                        ),
                    ));
                }
                match seen {
                    Some(first) if first != version && !mixed => {
                        mixed = true;
                        errors.push(FieldError::new(
                            item,
                            "rule contains both IPv4 and IPv6 CIDRs",
                        ));
                    }
                    Some(_) => {}
                    None => seen = Some(version),
                }
            }
        }
    }
}

/// An ICMP type and code to match (Calico's `ICMPFields`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IcmpMatch {
    /// The ICMP type, 0-254 (8 is echo request).
    #[serde(default, rename = "type", deserialize_with = "icmp_type")]
    pub icmp_type: Option<u8>,
    /// The ICMP code, 0-255; only with a type.
    #[serde(default, deserialize_with = "icmp_code")]
    pub code: Option<u8>,
}

impl IcmpMatch {
    /// ICMPFields CEL rule (and the kernel's): a code needs a type.
    fn validate(&self, path: &str) -> Vec<FieldError> {
        if self.code.is_some() && self.icmp_type.is_none() {
            vec![FieldError::new(
                format!("{path}.code"),
                "ICMP code specified without an ICMP type",
            )]
        } else {
            Vec::new()
        }
    }
}

/// Criteria on one end (source or destination) of a rule (Calico's `EntityRule`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EntityRule {
    /// The address is in one of these networks.
    #[serde(default, deserialize_with = "list::<_, RuleNet>")]
    pub nets: Vec<IpNet>,
    /// The endpoint matches this selector (so it is a Calico endpoint or network set).
    #[serde(default, deserialize_with = "optional::<_, SelectorText>")]
    pub selector: Option<String>,
    /// The endpoint's namespace matches this selector (`global()`: not namespaced, that is
    /// global network sets and host endpoints).
    #[serde(default, deserialize_with = "optional::<_, SelectorText>")]
    pub namespace_selector: Option<String>,
    /// The endpoints of a Kubernetes service.
    #[serde(default)]
    pub services: Option<ServiceMatch>,
    /// The port matches one of these.
    #[serde(default, deserialize_with = "nullable")]
    pub ports: Vec<PortSpec>,
    /// The address is in none of these networks.
    #[serde(default, deserialize_with = "list::<_, RuleNet>")]
    pub not_nets: Vec<IpNet>,
    /// It is not an endpoint matching this selector.
    #[serde(default, deserialize_with = "optional::<_, SelectorText>")]
    pub not_selector: Option<String>,
    /// The port matches none of these.
    #[serde(default, deserialize_with = "nullable")]
    pub not_ports: Vec<PortSpec>,
    /// The endpoint is a pod running as one of these service accounts.
    #[serde(default)]
    pub service_accounts: Option<ServiceAccountMatch>,
}

impl EntityRule {
    /// Whether it has no criteria at all.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Every selector, with its path relative to the entity rule (`selector`,
    /// `notSelector`, `namespaceSelector`, `serviceAccounts.selector`).
    pub fn selector_fields(&self) -> impl Iterator<Item = (String, &str)> {
        [
            ("selector", self.selector.as_deref()),
            ("notSelector", self.not_selector.as_deref()),
            ("namespaceSelector", self.namespace_selector.as_deref()),
            (
                "serviceAccounts.selector",
                self.service_accounts
                    .as_ref()
                    .and_then(|sa| sa.selector.as_deref()),
            ),
        ]
        .into_iter()
        .filter_map(|(path, selector)| selector.map(|s| (path.to_owned(), s)))
    }

    /// `validateEntityRule`, the EntityRule CEL rules and the CRDs' limits; `path` is the
    /// entity rule's path.
    fn validate(&self, path: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut error = |field: String, message: &str| errors.push(FieldError::new(field, message));

        if self
            .selector
            .as_deref()
            .is_some_and(|s| s.contains("global("))
        {
            error(
                format!("{path}.selector"),
                "global() can only be used in an EntityRule namespaceSelector",
            );
        }
        if let Some(selector) = self.namespace_selector.as_deref()
            && selector.contains("global(")
            && !is_only_global(selector)
        {
            error(
                format!("{path}.namespaceSelector"),
                "global() cannot be combined with other selectors",
            );
        }

        if let Some(services) = &self.services {
            let field = format!("{path}.services");
            if services.name.is_none() {
                error(
                    format!("{field}.name"),
                    "services must specify a service name",
                );
            }
            if self.namespace_selector.is_some() {
                error(
                    field.clone(),
                    "cannot specify namespaceSelector and services on the same rule",
                );
            }
            if self.selector.is_some() || self.not_selector.is_some() {
                error(
                    field.clone(),
                    "cannot specify selector/notSelector and services on the same rule",
                );
            }
            if self.service_accounts.is_some() {
                error(
                    field.clone(),
                    "cannot specify serviceAccounts and services on the same rule",
                );
            }
            if !self.nets.is_empty() || !self.not_nets.is_empty() {
                error(
                    field,
                    "cannot specify nets/notNets and services on the same rule",
                );
            }
        }

        for (name, len, max) in [
            ("nets", self.nets.len(), MAX_NETS),
            ("notNets", self.not_nets.len(), MAX_NETS),
            ("ports", self.ports.len(), MAX_PORTS),
            ("notPorts", self.not_ports.len(), MAX_PORTS),
        ] {
            if len > max {
                error(
                    format!("{path}.{name}"),
                    &format!("{len} entries, more than the limit of {max}"),
                );
            }
        }
        errors
    }
}

/// Whether a selector that mentions `global(` is just `global()`, as Calico's tokenizer sees it
/// (whitespace around it, or between the parentheses, allowed).
fn is_only_global(selector: &str) -> bool {
    selector
        .trim()
        .strip_prefix("global(")
        .is_some_and(|rest| rest.trim() == ")")
}

/// Pods running as given service accounts (Calico's `ServiceAccountMatch`). Both criteria
/// must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceAccountMatch {
    /// The service account is one of these names.
    #[serde(default, deserialize_with = "list::<_, AnyString>")]
    pub names: Vec<String>,
    /// The service account's labels match this selector (the CRD sets no length limit on
    /// this one).
    #[serde(default, deserialize_with = "optional::<_, AnyString>")]
    pub selector: Option<String>,
}

/// A Kubernetes service (Calico's `ServiceMatch`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceMatch {
    /// The service's name (required).
    #[serde(default, deserialize_with = "optional::<_, ResourceName>")]
    pub name: Option<String>,
    /// Its namespace: for a NetworkPolicy, the policy's own by default; a GlobalNetworkPolicy
    /// must give it.
    #[serde(default, deserialize_with = "optional::<_, ResourceName>")]
    pub namespace: Option<String>,
}

/// HTTP request criteria (Calico's `HTTPMatch`). Both criteria must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpMatch {
    /// The method is one of these (`GET`, `PUT`...).
    #[serde(default, deserialize_with = "list::<_, AnyString>")]
    pub methods: Vec<String>,
    /// The path matches one of these.
    #[serde(default, deserialize_with = "nullable")]
    pub paths: Vec<HttpPath>,
}

impl HttpMatch {
    /// `validateHTTPRule` and the CRDs' limits.
    fn validate(&self, path: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut error =
            |field: String, message: String| errors.push(FieldError::new(field, message));
        for (name, len) in [("methods", self.methods.len()), ("paths", self.paths.len())] {
            if len > MAX_HTTP_ITEMS {
                error(
                    format!("{path}.{name}"),
                    format!("{len} entries, more than the limit of {MAX_HTTP_ITEMS}"),
                );
            }
        }
        for (i, method) in self.methods.iter().enumerate() {
            if self.methods[..i].contains(method) {
                error(
                    format!("{path}.methods[{i}]"),
                    format!("method {method:?} specified more than once"),
                );
            }
        }
        for (i, match_) in self.paths.iter().enumerate() {
            let item = format!("{path}.paths[{i}]");
            let (field, value) = match (&match_.exact, &match_.prefix) {
                (Some(_), Some(_)) => {
                    error(item, "only one of exact and prefix may be set".into());
                    continue;
                }
                (None, None) => {
                    error(item, "one of exact or prefix must be set".into());
                    continue;
                }
                (Some(exact), None) => ("exact", exact),
                (None, Some(prefix)) => ("prefix", prefix),
            };
            if !value.starts_with('/') || value.contains(['?', ' ', '#']) {
                error(
                    format!("{item}.{field}"),
                    format!(
                        "invalid path {value:?}: must start with '/' and not contain '?', '#' or \
                         spaces"
                    ),
                );
            } else if value.len() > MAX_HTTP_PATH_LEN {
                error(
                    format!("{item}.{field}"),
                    format!("path is longer than the limit of {MAX_HTTP_PATH_LEN} characters"),
                );
            }
        }
        errors
    }
}

/// An HTTP path to match (Calico's `HTTPPath`): exactly one of `exact` and `prefix`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpPath {
    /// The path is exactly this.
    #[serde(default, deserialize_with = "optional::<_, AnyString>")]
    pub exact: Option<String>,
    /// The path starts with this.
    #[serde(default, deserialize_with = "optional::<_, AnyString>")]
    pub prefix: Option<String>,
}

/// Extra information about a rule (Calico's `RuleMetadata`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleMetadata {
    /// Annotations (keys checked as for resource annotations).
    #[serde(default, deserialize_with = "nullable")]
    pub annotations: BTreeMap<String, String>,
}

/// Which resource rules belong to: the checks on their direction differ.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum RuleOwner {
    NetworkPolicy,
    GlobalNetworkPolicy,
    Profile,
}

/// Checks the rules of one direction: each rule, their number, and (for policies) what
/// `validateNetworkPolicySpec`/`validateGlobalNetworkPolicySpec` forbid in that direction.
/// `field` is the list's path, like `spec.ingress`.
pub(super) fn validate_rules(
    rules: &[Rule],
    direction: PolicyType,
    owner: RuleOwner,
    field: &str,
) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if rules.len() > MAX_RULES {
        errors.push(FieldError::new(
            field,
            format!("{} rules, more than the limit of {MAX_RULES}", rules.len()),
        ));
    }
    for (i, rule) in rules.iter().enumerate() {
        let path = format!("{field}[{i}]");
        errors.extend(rule.validate(&path));
        if owner == RuleOwner::Profile {
            continue;
        }
        // Services are a destination of egress rules and a source of ingress rules.
        let (wrong_end, wrong, right_end, right) = match direction {
            PolicyType::Egress => ("source", &rule.source, "destination", &rule.destination),
            PolicyType::Ingress => ("destination", &rule.destination, "source", &rule.source),
        };
        if wrong.services.is_some() {
            errors.push(FieldError::new(
                format!("{path}.{wrong_end}.services"),
                format!(
                    "not allowed in {} rule {wrong_end}",
                    direction.as_str().to_lowercase()
                ),
            ));
        }
        if owner == RuleOwner::GlobalNetworkPolicy
            && right
                .services
                .as_ref()
                .is_some_and(|s| s.namespace.is_none())
        {
            errors.push(FieldError::new(
                format!("{path}.{right_end}.services.namespace"),
                "must specify a namespace (a GlobalNetworkPolicy has none to default to)",
            ));
        }
        if direction == PolicyType::Egress && rule.http.is_some() {
            errors.push(FieldError::new(
                format!("{path}.http"),
                "not allowed in egress rules",
            ));
        }
    }
    errors
}

/// Selectors of a list of rules, with their full paths.
pub(super) fn rule_selectors<'a>(
    rules: &'a [Rule],
    field: &'a str,
) -> impl Iterator<Item = (String, &'a str)> + 'a {
    rules.iter().enumerate().flat_map(move |(i, rule)| {
        rule.selector_fields()
            .map(move |(path, s)| (format!("{field}[{i}].{path}"), s))
    })
}

// ---------------------------------------------------------------------------------------------
// Policy spec checks shared by NetworkPolicy and GlobalNetworkPolicy

/// Calico's default for `types` (`defaultPolicyTypesField`, api/pkg/defaults): Egress alone if
/// there are egress rules but no ingress rules, both if there are both, otherwise Ingress.
pub(super) fn default_types(ingress: &[Rule], egress: &[Rule]) -> Vec<PolicyType> {
    match (ingress.is_empty(), egress.is_empty()) {
        (_, true) => vec![PolicyType::Ingress],
        (true, false) => vec![PolicyType::Egress],
        (false, false) => vec![PolicyType::Ingress, PolicyType::Egress],
    }
}

/// Policy-level selectors must not use `global()` (the NetworkPolicySpec and
/// GlobalNetworkPolicySpec CEL rules).
pub(super) fn check_no_global(selectors: &[(&str, Option<&str>)]) -> Vec<FieldError> {
    selectors
        .iter()
        .filter(|(_, s)| s.is_some_and(|s| s.contains("global(")))
        .map(|(field, _)| {
            FieldError::new(
                *field,
                "global() can only be used in an EntityRule namespaceSelector",
            )
        })
        .collect()
}

/// `networkPolicyNameRegex`: a DNS label, two dot-separated labels, or `knp.default.` or
/// `ossg.default.` followed by a DNS subdomain.
pub(super) fn is_network_policy_name(name: &str) -> bool {
    if let Some(rest) = name
        .strip_prefix("knp.default.")
        .or_else(|| name.strip_prefix("ossg.default."))
        && is_dns_subdomain(rest)
    {
        return true;
    }
    is_global_network_policy_name(name)
}

/// `globalNetworkPolicyNameRegex`: a DNS label, or two dot-separated labels.
pub(super) fn is_global_network_policy_name(name: &str) -> bool {
    name.split('.').count() <= 2 && name.split('.').all(is_dns_label)
}

// ---------------------------------------------------------------------------------------------
// What NetworkPolicy and GlobalNetworkPolicy share

/// Calico's defaults for a policy: the tier `default`, and `types` inferred from the rules.
pub(super) fn apply_policy_defaults(
    tier: &mut String,
    types: &mut Vec<PolicyType>,
    ingress: &[Rule],
    egress: &[Rule],
) {
    if tier.is_empty() {
        *tier = default_tier();
    }
    if types.is_empty() {
        *types = default_types(ingress, egress);
    }
}

/// The fields both policy kinds check the same way.
pub(super) struct PolicyParts<'a> {
    pub(super) types: &'a [PolicyType],
    pub(super) performance_hints: &'a [PerformanceHint],
    /// The spec's own selector fields, with their paths.
    pub(super) selectors: &'a [(&'static str, Option<&'a str>)],
    pub(super) ingress: &'a [Rule],
    pub(super) egress: &'a [Rule],
}

/// The checks both policy kinds share: no repeated types or hints, no `global()` in the spec's
/// selectors, and every rule.
pub(super) fn validate_policy_common(parts: PolicyParts<'_>, owner: RuleOwner) -> Vec<FieldError> {
    let mut errors = Vec::new();
    errors.extend(check_unique(parts.types, "spec.types"));
    errors.extend(check_unique(
        parts.performance_hints,
        "spec.performanceHints",
    ));
    errors.extend(check_no_global(parts.selectors));
    errors.extend(validate_rules(
        parts.ingress,
        PolicyType::Ingress,
        owner,
        "spec.ingress",
    ));
    errors.extend(validate_rules(
        parts.egress,
        PolicyType::Egress,
        owner,
        "spec.egress",
    ));
    errors
}

/// Every selector of a policy with its field path: the spec's own, then the rules'.
pub(super) fn policy_selectors<'a, const N: usize>(
    spec_selectors: [(&'static str, Option<&'a str>); N],
    ingress: &'a [Rule],
    egress: &'a [Rule],
) -> impl Iterator<Item = (String, &'a str)> {
    spec_selectors
        .into_iter()
        .filter_map(|(path, s)| s.map(|s| (path.to_owned(), s)))
        .chain(rule_selectors(ingress, "spec.ingress"))
        .chain(rule_selectors(egress, "spec.egress"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse_as_calico_does() {
        assert_eq!("80".parse(), Ok(PortSpec::Number(80)));
        assert_eq!("8000:8080".parse(), Ok(PortSpec::Range(8000, 8080)));
        assert_eq!("443:443".parse(), Ok(PortSpec::Number(443)));
        assert_eq!("http".parse(), Ok(PortSpec::Named("http".into())));
        for bad in [
            "0", "65536", "0:10", "10:1", "1:65536", "1:2:3", "-1", "", "HTTP", "my--port", "a_b",
            "x:1",
        ] {
            assert!(bad.parse::<PortSpec>().is_err(), "{bad}");
        }
        assert_eq!(PortSpec::Range(1, 2).to_string(), "1:2");
        assert_eq!(PortSpec::Number(7).range(), Some((7, 7)));
        assert_eq!(PortSpec::Named("dns".into()).range(), None);
    }

    #[test]
    fn orders_are_totally_ordered() {
        assert!(Order::new(f64::NAN).is_none());
        assert!(Order::new(f64::INFINITY).is_none());
        assert_eq!(Order::new(-0.0), Order::new(0.0));
        assert_eq!(
            Order::new(-0.0).cmp(&Order::new(0.0)),
            std::cmp::Ordering::Equal
        );
        assert!(Order::new(1.5) < Order::new(2.0));
    }

    #[test]
    fn enums_are_case_sensitive() {
        assert_eq!("Allow".parse(), Ok(Action::Allow));
        assert!("allow".parse::<Action>().is_err());
        assert_eq!(
            "deny".parse::<Action>().unwrap_err(),
            "invalid action \"deny\": expected Allow, Deny, Log or Pass"
        );
        assert_eq!("Egress".parse(), Ok(PolicyType::Egress));
        assert_eq!("Pass".parse(), Ok(TierDefaultAction::Pass));
        assert!("Allow".parse::<TierDefaultAction>().is_err());
    }

    #[test]
    fn names() {
        assert!(is_network_policy_name("allow-web"));
        assert!(is_network_policy_name("security.allow-web"));
        assert!(is_network_policy_name("knp.default.allow.web"));
        assert!(is_network_policy_name("ossg.default.1234-abcd"));
        assert!(!is_network_policy_name("a.b.c"));
        assert!(!is_network_policy_name("knp.default."));
        assert!(is_global_network_policy_name("platform.deny-all"));
        assert!(!is_global_network_policy_name("knp.default.x"));
        assert!(is_only_global("global()"));
        assert!(is_only_global(" global( ) "));
        assert!(!is_only_global("global() && has(x)"));
        assert!(!is_only_global("global ()"));
    }

    #[test]
    fn types_default_as_calico_does() {
        let allow = || vec![Rule::new(Action::Allow)];
        assert_eq!(default_types(&[], &[]), [PolicyType::Ingress]);
        assert_eq!(default_types(&allow(), &[]), [PolicyType::Ingress]);
        assert_eq!(default_types(&[], &allow()), [PolicyType::Egress]);
        assert_eq!(
            default_types(&allow(), &allow()),
            [PolicyType::Ingress, PolicyType::Egress]
        );
    }
}
