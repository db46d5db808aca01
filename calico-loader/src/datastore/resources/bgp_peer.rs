//! `BGPPeer`: a BGP session some nodes have, with a router at an address or with other Calico
//! nodes chosen by selector.
//!
//! Fields follow Calico's Go API (`api/pkg/apis/projectcalico/v3/bgppeer.go`, Calico v3.32);
//! checks are libcalico-go's validator (`validateBGPPeerSpec`, `IP:port`, `reachableBy`) and the
//! CRD's CEL rules, plus what BIRD requires of the values (a keepalive within the hold time, a
//! restart time that fits the capability, a password BIRD can read).
//!
//! The password: Calico reads it from a Kubernetes secret (`password.secretKeyRef`), and there
//! is no Kubernetes here. That shape is recognised and refused; calico-ebpf reads the password
//! from a file on the node (`password.file`, an absolute path) or from the agent's environment
//! (`password.env`, a variable name).
//!
//! Not built, so refused when set: `filters` (BGPFilter) and `localWorkloadSelector`.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Deserializer};

use super::{
    fields::{
        AnyString, AsNumber, Check, FieldError, Ip, LongSelectorText, ResourceName, duration, list,
        nullable, number, optional, string_enum,
    },
    kind::{Document, ResourceKind, document_parts},
    kind_info::KindInfo,
    meta::ObjectMeta,
};

/// CRD limit: length of `peerIP` (`MaxLength=64`).
const MAX_PEER_IP_LEN: usize = 64;
/// BIRD's hold time (240 s), which a keepalive time must not exceed.
pub const MAX_KEEPALIVE_SECS: u64 = 240;
/// The largest graceful restart time BGP's capability carries (12 bits).
pub const MAX_RESTART_SECS: u64 = 4095;
/// Linux's limit on a TCP MD5 key (`TCP_MD5SIG_MAXKEYLEN`).
pub const MAX_PASSWORD_LEN: usize = 80;

/// A `BGPPeer`: sessions between the nodes it selects and a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BgpPeer {
    /// Its metadata.
    pub metadata: ObjectMeta,
    /// Its specification.
    pub spec: BgpPeerSpec,
}

/// Specification of a [`BgpPeer`] (Calico's `BGPPeerSpec`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BgpPeerSpec {
    /// The one node that has these sessions. With neither `node` nor `nodeSelector`, every
    /// node has them.
    #[serde(default, deserialize_with = "optional::<_, ResourceName>")]
    pub node: Option<String>,
    /// The nodes that have these sessions (not with `node`).
    #[serde(default, deserialize_with = "optional::<_, LongSelectorText>")]
    pub node_selector: Option<String>,
    /// The peer's address, and port if not 179: `198.18.0.1`, `198.18.0.1:1790`,
    /// `2001:db8::1` or `[2001:db8::1]:1790`.
    #[serde(
        default,
        rename = "peerIP",
        deserialize_with = "optional::<_, PeerAddress>"
    )]
    pub peer_ip: Option<PeerAddress>,
    /// The peer's AS number (required with `peerIP`; not with `peerSelector`, where each
    /// node's own applies). 0 means none.
    #[serde(default, deserialize_with = "nonzero_as_number")]
    pub as_number: Option<AsNumber>,
    /// The AS number this side uses for these sessions, instead of the node's.
    #[serde(
        default,
        rename = "localASNumber",
        deserialize_with = "nonzero_as_number"
    )]
    pub local_as_number: Option<AsNumber>,
    /// The Calico nodes to peer with (not with `peerIP`), over IPv4 and IPv6 where both sides
    /// have an address of the family.
    #[serde(default, deserialize_with = "optional::<_, LongSelectorText>")]
    pub peer_selector: Option<String>,
    /// Deprecated form of `nextHopMode: Keep` (for eBGP peers only).
    #[serde(default, deserialize_with = "nullable")]
    pub keep_original_next_hop: bool,
    /// The next hop of routes sent to the peer: BIRD's default (`Auto`), this node (`Self`)
    /// or unchanged (`Keep`).
    #[serde(default, deserialize_with = "optional::<_, NextHopMode>")]
    pub next_hop_mode: Option<NextHopMode>,
    /// The sessions' TCP MD5 password.
    #[serde(default)]
    pub password: Option<BgpPassword>,
    /// Whether the sessions start from the node's address (`UseNodeIP`, the default) or
    /// from the address the kernel picks (`None`).
    #[serde(default, deserialize_with = "optional::<_, SourceAddress>")]
    pub source_address: Option<SourceAddress>,
    /// Graceful restart time (BIRD's 120s when absent); rounded to seconds.
    #[serde(default, deserialize_with = "duration")]
    pub max_restart_time: Option<Duration>,
    /// Delay between keepalive messages (BIRD's third of the hold time when absent);
    /// rounded to seconds.
    #[serde(default, deserialize_with = "duration")]
    pub keepalive_time: Option<Duration>,
    /// How many times this side's AS may appear in a received route's AS path.
    #[serde(
        default,
        rename = "numAllowedLocalASNumbers",
        deserialize_with = "allowed_local_as"
    )]
    pub num_allowed_local_as_numbers: Option<u32>,
    /// Hops to the peer, for the TTL security check (GTSM); 0 or absent turns it off.
    #[serde(default, deserialize_with = "ttl_security")]
    pub ttl_security: Option<u8>,
    /// A gateway to reach `peerIP` through, installed as a host route.
    #[serde(default, deserialize_with = "optional::<_, Ip>")]
    pub reachable_by: Option<IpAddr>,
    /// BGPFilter names. Not built: refused when set.
    #[serde(default, deserialize_with = "list::<_, ResourceName>")]
    pub filters: Vec<String>,
    /// Local workloads to peer with. Not built: refused when set.
    #[serde(default, deserialize_with = "optional::<_, LongSelectorText>")]
    pub local_workload_selector: Option<String>,
    /// Whether nodes selected by `peerSelector` (or at `peerIP`) get the reverse sessions
    /// without a BGPPeer of their own (`Auto`, the default) or not (`Manual`).
    #[serde(default, deserialize_with = "optional::<_, ReversePeering>")]
    pub reverse_peering: Option<ReversePeering>,
}

impl BgpPeerSpec {
    /// The source address setting in force (`UseNodeIP` unless given).
    pub fn effective_source_address(&self) -> SourceAddress {
        self.source_address.unwrap_or(SourceAddress::UseNodeIp)
    }

    /// Whether the peers get the reverse sessions automatically (unless `Manual`).
    pub fn automatic_reverse_peering(&self) -> bool {
        self.reverse_peering != Some(ReversePeering::Manual)
    }

    /// Whether the sessions are for every node (neither `node` nor `nodeSelector`).
    pub fn is_global(&self) -> bool {
        self.node.is_none() && self.node_selector.is_none()
    }

    /// The graceful restart time in whole seconds, as Calico rounds it.
    pub fn restart_time_secs(&self) -> Option<u32> {
        self.max_restart_time
            .and_then(|d| check_restart_time(d).ok())
    }

    /// The keepalive time in whole seconds, as Calico rounds it.
    pub fn keepalive_time_secs(&self) -> Option<u32> {
        self.keepalive_time
            .and_then(|d| check_keepalive_time(d).ok())
    }
}

/// A peer's address and optional port, as `peerIP` writes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerAddress {
    /// The address.
    pub ip: IpAddr,
    /// The port, when not BGP's 179.
    pub port: Option<u16>,
}

impl std::fmt::Display for PeerAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.ip, self.port) {
            (ip, None) => write!(f, "{ip}"),
            (IpAddr::V4(ip), Some(port)) => write!(f, "{ip}:{port}"),
            (IpAddr::V6(ip), Some(port)) => write!(f, "[{ip}]:{port}"),
        }
    }
}

impl Check for PeerAddress {
    type Out = PeerAddress;
    /// Calico's `IP:port` rule: an address, `<IPv4>:<port>` or `[<IPv6>]:<port>`, the port
    /// 1-65535.
    fn check(s: &str) -> Result<PeerAddress, String> {
        let invalid = |why: &str| {
            format!(
                "invalid peer address {s:?}: {why}; expected an IP address, <IPv4>:<port> or \
                 [<IPv6>]:<port>"
            )
        };
        if s.len() > MAX_PEER_IP_LEN {
            return Err(invalid("longer than 64 characters"));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(PeerAddress { ip, port: None });
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (host, port) = rest
                .split_once("]:")
                .ok_or_else(|| invalid("a bracketed IPv6 address needs a port"))?;
            let ip = host
                .parse::<std::net::Ipv6Addr>()
                .map_err(|_| invalid("not an IPv6 address in the brackets"))?;
            (IpAddr::V6(ip), port)
        } else {
            let (host, port) = s
                .rsplit_once(':')
                .ok_or_else(|| invalid("not an IP address"))?;
            let ip = host
                .parse::<std::net::Ipv4Addr>()
                .map_err(|_| invalid("not an IP address"))?;
            (IpAddr::V4(ip), port)
        };
        let port = match port.parse::<u16>() {
            Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => p,
            _ => return Err(invalid("the port must be between 1 and 65535")),
        };
        Ok(PeerAddress {
            ip: host,
            port: Some(port),
        })
    }
}

/// Where a BGP password comes from: Calico's `BGPPassword`, plus calico-ebpf's `file` and
/// `env`. Exactly one is given; `secretKeyRef` is recognised and refused.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BgpPassword {
    /// A key of a Kubernetes secret (Calico's way). Refused: there are no secrets here.
    #[serde(default)]
    pub secret_key_ref: Option<SecretKeySelector>,
    /// A file on the node holding the password (an absolute path; one trailing newline is
    /// dropped).
    #[serde(default, deserialize_with = "optional::<_, AbsolutePath>")]
    pub file: Option<PathBuf>,
    /// An environment variable of the agent holding the password.
    #[serde(default, deserialize_with = "optional::<_, EnvName>")]
    pub env: Option<String>,
}

/// Where to read a password.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PasswordSource {
    /// A file on the node.
    File(PathBuf),
    /// An environment variable of the agent.
    Env(String),
}

impl std::fmt::Display for PasswordSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PasswordSource::File(path) => write!(f, "file {}", path.display()),
            PasswordSource::Env(name) => write!(f, "environment variable {name}"),
        }
    }
}

impl BgpPassword {
    /// Where the password is read from (once validated, always one).
    pub fn source(&self) -> Option<PasswordSource> {
        match (&self.file, &self.env) {
            (Some(path), None) => Some(PasswordSource::File(path.clone())),
            (None, Some(name)) => Some(PasswordSource::Env(name.clone())),
            _ => None,
        }
    }

    /// Exactly one source, and not a Kubernetes secret. `field` is the password's path.
    pub(super) fn validate(&self, field: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if self.secret_key_ref.is_some() {
            errors.push(FieldError::new(
                format!("{field}.secretKeyRef"),
                format!(
                    "Kubernetes secrets are not available to calico-ebpf: give the password in \
                     a file on the node ({field}.file: /absolute/path) or in an environment \
                     variable of the agent ({field}.env: NAME)"
                ),
            ));
        }
        match (&self.file, &self.env) {
            (Some(_), Some(_)) => errors.push(FieldError::new(
                field,
                "give the password in a file or in an environment variable, not both",
            )),
            (None, None) if self.secret_key_ref.is_none() => errors.push(FieldError::new(
                field,
                "empty: give file (an absolute path) or env (a variable name)",
            )),
            _ => {}
        }
        errors
    }
}

/// A key of a Kubernetes secret (Kubernetes' `SecretKeySelector`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretKeySelector {
    /// The secret's name.
    #[serde(default, deserialize_with = "optional::<_, AnyString>")]
    pub name: Option<String>,
    /// The key within the secret (required).
    #[serde(deserialize_with = "super::fields::required::<_, AnyString>")]
    pub key: String,
    /// Whether the secret may be missing.
    #[serde(default)]
    pub optional: Option<bool>,
}

/// Checks a password read from its source: what BIRD's configuration and the kernel's TCP MD5
/// option can carry.
pub fn check_password(password: &str) -> Result<(), String> {
    if password.is_empty() {
        return Err("the password is empty".into());
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(format!(
            "the password is {} bytes long, more than the {MAX_PASSWORD_LEN} a TCP MD5 key holds",
            password.len()
        ));
    }
    if password.chars().any(|c| c == '"' || c.is_control()) {
        return Err(
            "the password holds a double quote or a control character, which BIRD's \
             configuration cannot carry"
                .into(),
        );
    }
    Ok(())
}

/// An absolute path.
struct AbsolutePath;
impl Check for AbsolutePath {
    type Out = PathBuf;
    fn check(s: &str) -> Result<PathBuf, String> {
        if s.starts_with('/') {
            Ok(PathBuf::from(s))
        } else {
            Err(format!("invalid path {s:?}: must be absolute"))
        }
    }
}

/// An environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
struct EnvName;
impl Check for EnvName {
    type Out = String;
    fn check(s: &str) -> Result<String, String> {
        let mut bytes = s.bytes();
        let ok = bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if ok {
            Ok(s.to_owned())
        } else {
            Err(format!(
                "invalid environment variable name {s:?}: must match [A-Za-z_][A-Za-z0-9_]*"
            ))
        }
    }
}

string_enum! {
    /// The source address of a BGPPeer's sessions (Calico's `SourceAddress`).
    SourceAddress, "source address" {
        /// The node's address of the session's family (Calico's default).
        UseNodeIp = "UseNodeIP",
        /// Whatever the kernel picks.
        None = "None",
    }
}

string_enum! {
    /// The next hop of routes sent to a peer (Calico's `NextHopMode`).
    NextHopMode, "next hop mode" {
        /// BIRD's default.
        Auto = "Auto",
        /// This node.
        SelfHop = "Self",
        /// The route's own next hop, unchanged.
        Keep = "Keep",
    }
}

string_enum! {
    /// Whether reverse sessions are made automatically (Calico's `ReversePeering`).
    ReversePeering, "reverse peering" {
        /// They are (Calico's default).
        Auto = "Auto",
        /// They need a BGPPeer of their own.
        Manual = "Manual",
    }
}

/// An AS number where absent, `null` or 0 mean none.
fn nonzero_as_number<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<AsNumber>, D::Error> {
    let value = Option::<AsNumber>::deserialize(deserializer)?;
    Ok(value.filter(|asn| asn.value() != 0))
}

/// `ttlSecurity`: 0-255 hops; 0 means off.
fn ttl_security<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u8>, D::Error> {
    let check = |n: i128| {
        u8::try_from(n).map_err(|_| format!("invalid hop count {n}: must be between 0 and 255"))
    };
    Ok(number(deserializer, "a hop count", check)?.filter(|hops| *hops != 0))
}

/// `numAllowedLocalASNumbers`: 0 to 2147483647; 0 means none.
fn allowed_local_as<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    let check = |n: i128| match i32::try_from(n) {
        Ok(v) if v >= 0 => Ok(v.unsigned_abs()),
        _ => Err(format!(
            "invalid count {n}: must be between 0 and 2147483647"
        )),
    };
    Ok(number(deserializer, "a count", check)?.filter(|n| *n != 0))
}

/// A graceful restart time in whole seconds (rounded as Calico does), at most what the BGP
/// capability carries.
pub(super) fn check_restart_time(time: Duration) -> Result<u32, String> {
    let secs = time.as_secs_f64().round();
    if secs > MAX_RESTART_SECS as f64 {
        return Err(format!(
            "{}s is longer than the {MAX_RESTART_SECS}s a BGP graceful restart can announce",
            secs
        ));
    }
    Ok(secs as u32)
}

/// A keepalive time in whole seconds (rounded as Calico does), within BIRD's 1s to hold time.
fn check_keepalive_time(time: Duration) -> Result<u32, String> {
    let secs = time.as_secs_f64().round();
    if !(1.0..=MAX_KEEPALIVE_SECS as f64).contains(&secs) {
        return Err(format!(
            "{secs}s (rounded to seconds) is out of range: BIRD needs between 1s and the hold \
             time, {MAX_KEEPALIVE_SECS}s"
        ));
    }
    Ok(secs as u32)
}

impl BgpPeer {
    /// The peer's name.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }
}

impl ResourceKind for BgpPeer {
    const INFO: KindInfo =
        KindInfo::cluster("BGPPeer", "bgppeers", &["bgpp", "bgpps", "bp", "bps"]);

    /// An absent spec is taken as empty (and refused: a peer needs `peerIP` or
    /// `peerSelector`).
    type Document = Document<Option<BgpPeerSpec>>;

    document_parts!(optional spec);

    /// `validateBGPPeerSpec` and the CEL rules, the times BIRD accepts, the password's shape,
    /// and the fields not built here.
    fn validate(&self) -> Vec<FieldError> {
        let spec = &self.spec;
        let mut errors = Vec::new();
        let mut refuse = |field: &str, message: &str| errors.push(FieldError::new(field, message));
        if spec.node.is_some() && spec.node_selector.is_some() {
            refuse("spec.node", "node and nodeSelector cannot both be set");
        }
        if spec.peer_ip.is_some() && spec.peer_selector.is_some() {
            refuse("spec.peerIP", "peerIP and peerSelector cannot both be set");
        }
        if spec.as_number.is_some() && spec.peer_selector.is_some() {
            refuse(
                "spec.asNumber",
                "must be empty when peerSelector is set (each selected node's AS applies)",
            );
        }
        if spec.peer_ip.is_some() && spec.as_number.is_none() {
            refuse(
                "spec.asNumber",
                "required with peerIP: the peer's AS number (1-4294967295)",
            );
        }
        if let Some(_selector) = &spec.local_workload_selector {
            if spec.peer_ip.is_some() {
                refuse(
                    "spec.peerIP",
                    "must be empty when localWorkloadSelector is set",
                );
            }
            if spec.peer_selector.is_some() {
                refuse(
                    "spec.peerSelector",
                    "must be empty when localWorkloadSelector is set",
                );
            }
            refuse(
                "spec.localWorkloadSelector",
                "not supported by calico-ebpf: peering with local workloads is not built",
            );
        } else if spec.peer_ip.is_none() && spec.peer_selector.is_none() {
            refuse(
                "spec",
                "a BGPPeer needs peerIP (an address to peer with) or peerSelector (the Calico \
                 nodes to peer with)",
            );
        }
        if let Some(gateway) = spec.reachable_by {
            match spec.peer_ip {
                None => refuse("spec.reachableBy", "must be empty when peerIP is empty"),
                Some(peer) if peer.ip.is_ipv4() != gateway.is_ipv4() => refuse(
                    "spec.reachableBy",
                    "reachableBy and peerIP are of different address families",
                ),
                Some(_) => {}
            }
        }
        if spec.keep_original_next_hop && spec.next_hop_mode.is_some() {
            refuse(
                "spec.keepOriginalNextHop",
                "keepOriginalNextHop and nextHopMode cannot both be set; keepOriginalNextHop \
                 is deprecated, use nextHopMode",
            );
        }
        if !spec.filters.is_empty() {
            refuse(
                "spec.filters",
                "not supported by calico-ebpf: BGPFilter is not built",
            );
        }
        if let Some(restart) = spec.max_restart_time
            && let Err(message) = check_restart_time(restart)
        {
            refuse("spec.maxRestartTime", &message);
        }
        if let Some(keepalive) = spec.keepalive_time
            && let Err(message) = check_keepalive_time(keepalive)
        {
            refuse("spec.keepaliveTime", &message);
        }
        if let Some(password) = &spec.password {
            errors.extend(password.validate("spec.password"));
        }
        errors
    }

    fn selector_fields(&self) -> Vec<(String, &str)> {
        let spec = &self.spec;
        [
            ("spec.nodeSelector", spec.node_selector.as_deref()),
            ("spec.peerSelector", spec.peer_selector.as_deref()),
            (
                "spec.localWorkloadSelector",
                spec.local_workload_selector.as_deref(),
            ),
        ]
        .into_iter()
        .filter_map(|(field, s)| s.map(|s| (field.to_owned(), s)))
        .collect()
    }
}
