//! This node's BGP sessions and announcements, computed as Calico's confd computes them
//! (`confd/pkg/backends/calico/client.go`, `updatePeersV1`, and `bgp_processor.go`).
//!
//! # Sessions
//!
//! - **Node-to-node mesh** (`Mesh_<ip>`), unless `nodeToNodeMeshEnabled: false` or this node is
//!   a route reflector: one session with each other node that has an address of the family,
//!   except route reflectors. Sessions start from this node's address; the side whose address
//!   is greater, compared as text (as Calico does), is passive, so the two nodes do not both
//!   connect.
//! - **BGPPeers.** First those for every node (neither `node` nor `nodeSelector`:
//!   `Global_<ip>`), then those for this node by `node` or `nodeSelector` (`Node_<ip>`), then
//!   the reverse sessions: a node selected by a BGPPeer's `peerSelector` (or found at its
//!   `peerIP` with its AS number) peers back with the nodes the BGPPeer is for (`Node_<ip>`),
//!   unless `reversePeering: Manual`. The first BGPPeer (by name) to give a session to an
//!   address and port wins, and a node-specific one is dropped when a global one exists for the
//!   same address and port.
//!   - `peerSelector` expands to each selected node's addresses, with its AS number (or the
//!     cluster's) and its listen port.
//!   - A session to this node's own address is dropped.
//!   - A global session to another Calico node's address is passive on the greater address,
//!     as the mesh is; node-specific sessions and those from `peerSelector` are never passive
//!     (Calico's rule).
//! - **Route reflection.** A node with a `routeReflectorClusterID` has no mesh sessions; its
//!   iBGP sessions with nodes outside its cluster make them its clients (`rr client; rr cluster
//!   id`). Clients reach reflectors through a BGPPeer with `peerSelector`.
//!
//! IPv4 sessions run between IPv4 addresses and carry IPv4 routes; IPv6 sessions between IPv6
//! addresses, IPv6 routes. A family without an address on this node has no sessions.
//!
//! # Announcements
//!
//! This node announces its confirmed blocks (blackholed locally), the addresses it borrowed
//! from other nodes' blocks (as /32 or /128, learned from the kernel's workload routes), other
//! routes inside the pools that are not inside one of its blocks, and the cluster's service
//! ranges. Nothing inside a pool with `disableBGPExport`, nothing outside the pools and service
//! ranges. See [`FamilyRouting::announced`].

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr},
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tracing::warn;

use super::BgpError;
use crate::datastore::{
    resources::{
        AsNumber, BgpConfiguration, BgpConfigurationSpec, BgpPassword, BgpPeer, DEFAULT_AS_NUMBER,
        DEFAULT_BGP_CONFIGURATION, DEFAULT_LISTEN_PORT, IpPool, IpipMode, LogSeverity,
        NODE_BGP_CONFIGURATION_PREFIX, NextHopMode, Node, PasswordSource, SourceAddress, VxlanMode,
        check_password,
    },
    selector::Selector,
};

/// The label with which Kubernetes excludes a node from announcing service ranges; Calico
/// honours it for BGP.
pub const EXCLUDE_SERVICE_ADVERTISEMENT_LABEL: &str =
    "node.kubernetes.io/exclude-from-external-load-balancers";

/// BIRD's preference for the routes the kernel protocol learns inside the pools (its default
/// is 10): above BGP's 100, so that a local workload's route stays in force when a peer
/// announces the same prefix, and below static's 200.
pub const LOCAL_ROUTE_PREFERENCE: u32 = 110;

// ---------------------------------------------------------------------------------------------
// Input

/// What BGP needs to know of a node (Calico's `Node` `spec.bgp` and labels).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// The node's name.
    pub name: String,
    /// Its IPv4 address, with the prefix length of its subnet.
    pub ipv4: Option<Ipv4Net>,
    /// Its IPv6 address, with the prefix length of its subnet.
    pub ipv6: Option<Ipv6Net>,
    /// Its AS number, if it has its own (else the cluster's).
    pub as_number: Option<AsNumber>,
    /// Its route reflector cluster id: set, the node is a route reflector.
    pub route_reflector_cluster_id: Option<Ipv4Addr>,
    /// Its labels, for `nodeSelector` and `peerSelector`.
    pub labels: BTreeMap<String, String>,
}

impl NodeFacts {
    /// The node's address of `family`.
    pub fn address(&self, family: Family) -> Option<IpAddr> {
        match family {
            Family::V4 => self.ipv4.map(|net| IpAddr::V4(net.addr())),
            Family::V6 => self.ipv6.map(|net| IpAddr::V6(net.addr())),
        }
    }

    /// Whether `ip` is one of the node's addresses.
    fn has_address(&self, ip: IpAddr) -> bool {
        self.address(Family::of(ip)) == Some(ip)
    }
}

impl From<&Node> for NodeFacts {
    /// A `Node`'s `spec.bgp` and labels. An address of the wrong family (which the datastore
    /// refuses) is left out.
    fn from(node: &Node) -> Self {
        let bgp = node.spec.bgp.clone().unwrap_or_default();
        Self {
            name: node.name().to_owned(),
            ipv4: match bgp.ipv4_address {
                Some(IpNet::V4(net)) => Some(net),
                _ => None,
            },
            ipv6: match bgp.ipv6_address {
                Some(IpNet::V6(net)) => Some(net),
                _ => None,
            },
            as_number: bgp.as_number.map(AsNumber::new),
            route_reflector_cluster_id: bgp.route_reflector_cluster_id,
            labels: node.metadata.labels.clone(),
        }
    }
}

/// An address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// Both families, IPv4 first.
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The family of `ip`.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The family of `net`.
    pub fn of_net(net: &IpNet) -> Self {
        Self::of(net.addr())
    }

    /// `4` or `6`, as in BIRD's names (`kernel4`) and `v4`/`v6` suffixes.
    pub fn number(self) -> u8 {
        match self {
            Family::V4 => 4,
            Family::V6 => 6,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// How traffic to a pool's addresses crosses between nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Encapsulation {
    /// Routed as is: BIRD installs the routes other nodes announce.
    #[default]
    None,
    /// IPIP (Calico installs such routes through the `tunl0` device).
    Ipip,
    /// VXLAN (Calico's Felix installs such routes, not BIRD).
    Vxlan,
}

/// What BGP needs to know of an IP pool.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolFacts {
    /// The pool's range.
    pub cidr: IpNet,
    /// No new addresses are handed out from it (its addresses are still announced, as in
    /// Calico).
    pub disabled: bool,
    /// Its routes are not announced.
    pub disable_bgp_export: bool,
    /// Traffic from it to outside the pools is masqueraded (no effect on BGP).
    pub nat_outgoing: bool,
    /// Its encapsulation.
    pub encapsulation: Encapsulation,
}

impl From<&IpPool> for PoolFacts {
    fn from(pool: &IpPool) -> Self {
        let spec = &pool.spec;
        let encapsulation = if spec.vxlan_mode != VxlanMode::Never {
            Encapsulation::Vxlan
        } else if spec.ipip_mode != IpipMode::Never {
            Encapsulation::Ipip
        } else {
            Encapsulation::None
        };
        Self {
            cidr: spec.cidr,
            disabled: spec.disabled,
            disable_bgp_export: spec.disable_bgp_export,
            nat_outgoing: spec.nat_outgoing,
            encapsulation,
        }
    }
}

/// Everything this node's BGP configuration is computed from.
#[derive(Clone, Debug, Default)]
pub struct BgpInput {
    /// This node.
    pub node: NodeFacts,
    /// Every other node (a node named like this one is ignored).
    pub other_nodes: Vec<NodeFacts>,
    /// Every `BGPConfiguration`: `default`, and `node.<name>` for any node.
    pub configurations: Vec<BgpConfiguration>,
    /// Every `BGPPeer`.
    pub peers: Vec<BgpPeer>,
    /// Every IP pool.
    pub pools: Vec<PoolFacts>,
    /// This node's confirmed blocks.
    pub blocks: Vec<IpNet>,
    /// Addresses of this node's workloads taken from other nodes' blocks.
    pub borrowed: Vec<IpAddr>,
    /// The floating IPs (`ipNATs` external addresses) of this node's workloads.
    pub floating_ips: Vec<IpAddr>,
}

/// Reads passwords from where resources say they are.
pub trait PasswordReader {
    /// The password at `from`, or what went wrong.
    fn read(&self, from: &PasswordSource) -> Result<String, String>;
}

/// Reads passwords from the node's files and the agent's environment. A file's one trailing
/// newline (`\n` or `\r\n`) is dropped.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemPasswords;

impl PasswordReader for SystemPasswords {
    fn read(&self, from: &PasswordSource) -> Result<String, String> {
        match from {
            PasswordSource::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
                let text = text.strip_suffix('\n').unwrap_or(&text);
                Ok(text.strip_suffix('\r').unwrap_or(text).to_owned())
            }
            PasswordSource::Env(name) => std::env::var(name).map_err(|e| match e {
                std::env::VarError::NotPresent => "the variable is not set".to_owned(),
                std::env::VarError::NotUnicode(_) => "the variable is not UTF-8".to_owned(),
            }),
        }
    }
}

/// A BGP password, read and checked. Its `Debug` form hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// The password itself, for BIRD's configuration.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<hidden>)")
    }
}

// ---------------------------------------------------------------------------------------------
// Output

/// This node's BGP: its identity, its sessions and announcements, per family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BgpModel {
    /// The node's name.
    pub node_name: String,
    /// BIRD's router id: the node's IPv4 address.
    pub router_id: Ipv4Addr,
    /// The node's AS number (its own, else the cluster's).
    pub as_number: u32,
    /// The port BGP listens on, when one is configured (else BGP's 179).
    pub listen_port: Option<u16>,
    /// What BIRD logs.
    pub debug: BirdDebug,
    /// Interfaces whose routes BIRD does not read, besides workload interfaces.
    pub ignored_interfaces: Vec<String>,
    /// IPv4.
    pub ipv4: FamilyRouting,
    /// IPv6.
    pub ipv6: FamilyRouting,
}

impl BgpModel {
    /// The routing of `family`.
    pub fn family(&self, family: Family) -> &FamilyRouting {
        match family {
            Family::V4 => &self.ipv4,
            Family::V6 => &self.ipv6,
        }
    }

    /// Every session, IPv4 first, each family's by name.
    pub fn sessions(&self) -> impl Iterator<Item = &BgpSession> {
        self.ipv4.sessions.iter().chain(&self.ipv6.sessions)
    }

    /// The session called `name`.
    pub fn session(&self, name: &str) -> Option<&BgpSession> {
        self.sessions().find(|s| s.name == name)
    }
}

/// BIRD's logging, from `logSeverityScreen` (as confd maps it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BirdDebug {
    /// Nothing (`Warning`, `Error`, `Fatal`, and `Trace` as Calico maps it).
    None,
    /// Protocol state changes (`Info`, the default).
    #[default]
    States,
    /// Everything (`Debug`).
    All,
}

impl From<LogSeverity> for BirdDebug {
    fn from(severity: LogSeverity) -> Self {
        match severity {
            LogSeverity::Debug => BirdDebug::All,
            LogSeverity::Info => BirdDebug::States,
            _ => BirdDebug::None,
        }
    }
}

/// One family's sessions, routes and filters' inputs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyRouting {
    /// The family.
    pub family: Family,
    /// This node's address of the family (none: no sessions).
    pub address: Option<IpAddr>,
    /// The sessions, by name.
    pub sessions: Vec<BgpSession>,
    /// This node's confirmed blocks, sorted.
    pub blocks: Vec<IpNet>,
    /// The addresses this node borrowed, as host routes, sorted.
    pub borrowed: Vec<IpNet>,
    /// The floating IPs of this node's workloads, as host routes, sorted: announced wherever
    /// they are (outside the pools, as a rule).
    pub floating_ips: Vec<IpNet>,
    /// The pools of the family, sorted by range.
    pub pools: Vec<PoolFacts>,
    /// Service ranges this node announces (blackholed in BIRD, not installed in the kernel).
    pub service_ranges: Vec<IpNet>,
    /// Service ranges never installed in the kernel (all of them, announced or not).
    pub rejected_ranges: Vec<IpNet>,
    /// Host routes to BGP peers through a gateway (`reachableBy`), sorted.
    pub peer_routes: Vec<(IpNet, IpAddr)>,
}

impl FamilyRouting {
    /// What this node announces of its own routes, in the order its export filter decides:
    /// nothing inside a pool with `disableBGPExport`; its blocks; then its borrowed addresses
    /// inside a pool (not inside one of its blocks), its workloads' floating IPs and its service
    /// ranges.
    pub fn announced(&self) -> Vec<IpNet> {
        let not_exported = |net: &IpNet| {
            self.pools
                .iter()
                .any(|p| p.disable_bgp_export && p.cidr.contains(net))
        };
        let in_own_block = |net: &IpNet| self.blocks.iter().any(|b| b.contains(net));
        let in_pool = |net: &IpNet| self.pools.iter().any(|p| p.cidr.contains(net));
        let blocks = self.blocks.iter().copied();
        let borrowed = self
            .borrowed
            .iter()
            .copied()
            .filter(|net| in_pool(net) && !in_own_block(net));
        let mut announced: Vec<IpNet> = blocks
            .chain(borrowed)
            .chain(self.floating_ips.iter().copied())
            .chain(self.service_ranges.iter().copied())
            .filter(|net| !not_exported(net))
            .collect();
        announced.sort();
        announced.dedup();
        announced
    }

    /// The session called `name`.
    pub fn session(&self, name: &str) -> Option<&BgpSession> {
        self.sessions.iter().find(|s| s.name == name)
    }
}

/// Which of Calico's session kinds a session is; its protocol name starts with the kind's
/// prefix, which is how `calicoctl node status` classifies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SessionKind {
    /// The node-to-node mesh (`Mesh_`).
    Mesh,
    /// A BGPPeer for every node (`Global_`).
    Global,
    /// A BGPPeer for this node, by `node` or `nodeSelector`, or a reverse session
    /// (`Node_`).
    Node,
}

impl SessionKind {
    /// The prefix of the kind's protocol names.
    pub fn prefix(self) -> &'static str {
        match self {
            SessionKind::Mesh => "Mesh",
            SessionKind::Global => "Global",
            SessionKind::Node => "Node",
        }
    }

    /// The kind as `calicoctl node status` describes it.
    pub fn description(self) -> &'static str {
        match self {
            SessionKind::Mesh => "node-to-node mesh",
            SessionKind::Global => "global",
            SessionKind::Node => "node specific",
        }
    }

    /// The kind of the session a BIRD protocol called `name` is, if it is one of ours.
    pub fn of_protocol(name: &str) -> Option<SessionKind> {
        [SessionKind::Mesh, SessionKind::Global, SessionKind::Node]
            .into_iter()
            .find(|kind| {
                name.strip_prefix(kind.prefix())
                    .is_some_and(|rest| rest.starts_with('_'))
            })
    }
}

/// The TTL security setting of a session to a BGPPeer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TtlSecurity {
    /// Off, and the peer may be several hops away (Calico's `ttl security off; multihop;`).
    Off,
    /// On, with the peer this many hops away.
    Hops(u8),
}

/// The next hop of routes sent on a session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NextHop {
    /// BIRD's default.
    #[default]
    Default,
    /// This node.
    SelfHop,
    /// The route's own, unchanged.
    Keep,
}

/// One BGP session of this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BgpSession {
    /// BIRD's protocol name: `Mesh_198_18_0_2`, `Global_2001_db8__fe`,
    /// `Node_198_18_0_254_port_1790`.
    pub name: String,
    /// Its kind.
    pub kind: SessionKind,
    /// Where it comes from: `node-to-node mesh`, `BGPPeer tor`, or `BGPPeer rr (reverse)`.
    pub origin: String,
    /// The Calico node at the other end, when it is one.
    pub peer_node: Option<String>,
    /// The peer's address.
    pub peer_ip: IpAddr,
    /// The peer's port, when not 179.
    pub peer_port: Option<u16>,
    /// The peer's AS number.
    pub peer_as: u32,
    /// The AS number this side uses (`localASNumber`, else the node's).
    pub local_as: u32,
    /// The address sessions start from, when set.
    pub source_address: Option<IpAddr>,
    /// This side waits for the peer to connect.
    pub passive: bool,
    /// The peer is a route reflector client of this node, in this cluster.
    pub route_reflector_client: Option<Ipv4Addr>,
    /// The TCP MD5 password.
    pub password: Option<Password>,
    /// Graceful restart time, in seconds.
    pub graceful_restart_time: Option<u32>,
    /// Keepalive time, in seconds.
    pub keepalive_time: Option<u32>,
    /// TTL security (none for the mesh, whose peers are one hop away).
    pub ttl_security: Option<TtlSecurity>,
    /// The next hop of routes sent.
    pub next_hop: NextHop,
    /// How many times this side's AS may appear in received AS paths.
    pub allow_local_as: Option<u32>,
}

impl BgpSession {
    /// Whether the session is iBGP (the peer is in this side's AS).
    pub fn internal(&self) -> bool {
        self.peer_as == self.local_as
    }

    /// The session's family.
    pub fn family(&self) -> Family {
        Family::of(self.peer_ip)
    }
}

// ---------------------------------------------------------------------------------------------
// The cluster as BGP sees it

/// The nodes and the BGP configurations, with the lookups peer selection makes.
struct Cluster<'a> {
    /// Every node, by name (this one included).
    nodes: BTreeMap<&'a str, &'a NodeFacts>,
    /// The `default` BGPConfiguration, if any.
    default: Option<&'a BgpConfiguration>,
    /// `node.<name>` BGPConfigurations, by node name.
    per_node: BTreeMap<&'a str, &'a BgpConfiguration>,
}

impl<'a> Cluster<'a> {
    fn new(input: &'a BgpInput) -> Self {
        let mut nodes = BTreeMap::new();
        nodes.insert(input.node.name.as_str(), &input.node);
        for node in &input.other_nodes {
            if nodes.contains_key(node.name.as_str()) {
                warn!(node = %node.name, "a node is listed twice; the first is used for BGP");
                continue;
            }
            nodes.insert(node.name.as_str(), node);
        }
        let default = input
            .configurations
            .iter()
            .find(|c| c.name() == DEFAULT_BGP_CONFIGURATION);
        let per_node = input
            .configurations
            .iter()
            .filter_map(|c| {
                c.name()
                    .strip_prefix(NODE_BGP_CONFIGURATION_PREFIX)
                    .map(|node| (node, c))
            })
            .collect();
        Self {
            nodes,
            default,
            per_node,
        }
    }

    /// The cluster's AS number.
    fn global_as(&self) -> u32 {
        self.default
            .map_or(DEFAULT_AS_NUMBER, |c| c.spec.effective_as_number())
            .value()
    }

    /// A node's AS number: its own, else the cluster's.
    fn node_as(&self, node: &NodeFacts) -> u32 {
        node.as_number
            .map_or_else(|| self.global_as(), AsNumber::value)
    }

    /// The listen port configured for a node (`node.<name>`, else `default`), if any.
    fn listen_port(&self, node: &str) -> Option<u16> {
        self.per_node
            .get(node)
            .and_then(|c| c.spec.listen_port)
            .or_else(|| self.default.and_then(|c| c.spec.listen_port))
    }

    /// The nodes `selector` selects, by name.
    fn nodes_matching(
        &self,
        selector: &str,
        resource: &str,
        field: &str,
    ) -> Result<Vec<&'a NodeFacts>, BgpError> {
        let selector = Selector::parse(selector).map_err(|e| BgpError::Selector {
            resource: resource.to_owned(),
            field: field.to_owned(),
            message: e.to_string(),
        })?;
        Ok(self
            .nodes
            .values()
            .copied()
            .filter(|node| selector.matches(&node.labels))
            .collect())
    }

    /// The nodes a BGPPeer is for: by `nodeSelector`, by `node`, or all.
    fn local_nodes(&self, peer: &BgpPeer) -> Result<Vec<&'a NodeFacts>, BgpError> {
        let spec = &peer.spec;
        let resource = format!("BGPPeer {}", peer.name());
        if let Some(selector) = &spec.node_selector {
            self.nodes_matching(selector, &resource, "spec.nodeSelector")
        } else if let Some(node) = &spec.node {
            Ok(self.nodes.get(node.as_str()).copied().into_iter().collect())
        } else {
            Ok(self.nodes.values().copied().collect())
        }
    }

    /// The nodes at `ip` whose AS number is `as_number` and, when `port` is given, whose
    /// listen port is `port` (confd's `nodesWithIPPortAndAS`, comparing the port in force).
    fn nodes_at(&self, ip: IpAddr, as_number: u32, port: Option<u16>) -> Vec<&'a NodeFacts> {
        self.nodes
            .values()
            .copied()
            .filter(|node| node.has_address(ip) && self.node_as(node) == as_number)
            .filter(|node| {
                port.is_none_or(|port| {
                    self.listen_port(&node.name).unwrap_or(DEFAULT_LISTEN_PORT) == port
                })
            })
            .collect()
    }

    /// Whether `ip` is a Calico node's address.
    fn is_calico_node(&self, ip: IpAddr) -> bool {
        self.nodes.values().any(|node| node.has_address(ip))
    }
}

// ---------------------------------------------------------------------------------------------
// Peerings (confd's `bgpPeer` records)

/// Where a peering comes from, for messages and session descriptions.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Origin {
    /// `BGPPeer <name>`.
    resource: String,
    /// A reverse session.
    reverse: bool,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.resource)?;
        if self.reverse {
            f.write_str(" (reverse)")?;
        }
        Ok(())
    }
}

/// One peering a BGPPeer gives this node, before it becomes a session.
#[derive(Clone, Debug)]
struct Peering {
    ip: IpAddr,
    port: Option<u16>,
    as_number: u32,
    local_as: Option<u32>,
    rr_cluster_id: Option<Ipv4Addr>,
    password: Option<BgpPassword>,
    source_address: SourceAddress,
    restart_time: Option<u32>,
    keepalive_time: Option<u32>,
    calico_node: bool,
    allow_local_as: Option<u32>,
    ttl_security: Option<u8>,
    reachable_by: Option<IpAddr>,
    next_hop_mode: Option<NextHopMode>,
    keep_original_next_hop: bool,
    peer_node: Option<String>,
    origin: Origin,
}

/// Global peerings (every node has them) or this node's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Scope {
    Global,
    Node,
}

/// The peerings, keyed as confd keys them: the first for a scope, address and port wins.
#[derive(Default)]
struct Peerings(BTreeMap<(Scope, IpAddr, Option<u16>), Peering>);

impl Peerings {
    fn emit(&mut self, scope: Scope, peering: Peering) {
        let key = (scope, peering.ip, peering.port);
        if self.0.contains_key(&key) {
            return;
        }
        if scope == Scope::Node
            && self
                .0
                .contains_key(&(Scope::Global, peering.ip, peering.port))
        {
            return;
        }
        self.0.insert(key, peering);
    }
}

/// The peerings `peer` gives with the addresses of `node` (confd's `nodeAsBGPPeers`, then
/// `setPeerConfigFieldsFromV3Resource`).
fn node_as_peerings(
    cluster: &Cluster<'_>,
    node: &NodeFacts,
    families: &[Family],
    peer: &BgpPeer,
    origin: &Origin,
) -> Vec<Peering> {
    let spec = &peer.spec;
    families
        .iter()
        .filter_map(|&family| node.address(family))
        .map(|ip| Peering {
            ip,
            port: cluster.listen_port(&node.name),
            as_number: cluster.node_as(node),
            local_as: None,
            rr_cluster_id: node.route_reflector_cluster_id,
            password: spec.password.clone(),
            source_address: spec.effective_source_address(),
            restart_time: spec.restart_time_secs(),
            keepalive_time: spec.keepalive_time_secs(),
            calico_node: false,
            allow_local_as: None,
            ttl_security: spec.ttl_security,
            reachable_by: spec.reachable_by,
            next_hop_mode: spec.next_hop_mode,
            keep_original_next_hop: spec.keep_original_next_hop,
            peer_node: Some(node.name.clone()),
            origin: origin.clone(),
        })
        .collect()
}

/// The peerings `peer` gives every node it is for (forward, not reverse).
fn forward_peerings(cluster: &Cluster<'_>, peer: &BgpPeer) -> Result<Vec<Peering>, BgpError> {
    let spec = &peer.spec;
    let origin = Origin {
        resource: format!("BGPPeer {}", peer.name()),
        reverse: false,
    };
    if let Some(selector) = &spec.peer_selector {
        let mut peerings = Vec::new();
        for node in cluster.nodes_matching(selector, &origin.resource, "spec.peerSelector")? {
            peerings.extend(node_as_peerings(cluster, node, &Family::ALL, peer, &origin));
        }
        return Ok(peerings);
    }
    let (Some(address), Some(as_number)) = (spec.peer_ip, spec.as_number) else {
        return Ok(Vec::new());
    };
    let node_at_peer = cluster.nodes_at(address.ip, as_number.value(), None);
    let port = address.port.or_else(|| {
        node_at_peer
            .first()
            .and_then(|node| cluster.listen_port(&node.name))
    });
    Ok(vec![Peering {
        ip: address.ip,
        port,
        as_number: as_number.value(),
        local_as: spec.local_as_number.map(AsNumber::value),
        rr_cluster_id: None,
        password: spec.password.clone(),
        source_address: spec.effective_source_address(),
        restart_time: spec.restart_time_secs(),
        keepalive_time: spec.keepalive_time_secs(),
        calico_node: cluster.is_calico_node(address.ip),
        allow_local_as: spec.num_allowed_local_as_numbers,
        ttl_security: spec.ttl_security,
        reachable_by: spec.reachable_by,
        next_hop_mode: spec.next_hop_mode,
        keep_original_next_hop: spec.keep_original_next_hop,
        peer_node: node_at_peer.first().map(|node| node.name.clone()),
        origin,
    }])
}

/// The reverse peerings `peer` gives `this` node, when `this` is one of the nodes the peer
/// selects (by `peerSelector`, or at `peerIP` with its AS number).
fn reverse_peerings(
    cluster: &Cluster<'_>,
    this: &NodeFacts,
    peer: &BgpPeer,
) -> Result<Vec<Peering>, BgpError> {
    let spec = &peer.spec;
    let origin = Origin {
        resource: format!("BGPPeer {}", peer.name()),
        reverse: true,
    };
    if !spec.automatic_reverse_peering() || spec.local_workload_selector.is_some() {
        return Ok(Vec::new());
    }
    let (selected, families): (Vec<&NodeFacts>, Vec<Family>) =
        if let Some(selector) = &spec.peer_selector {
            (
                cluster.nodes_matching(selector, &origin.resource, "spec.peerSelector")?,
                Family::ALL.to_vec(),
            )
        } else if let Some(address) = spec.peer_ip {
            let as_number = spec
                .as_number
                .map_or_else(|| cluster.global_as(), AsNumber::value);
            (
                cluster.nodes_at(address.ip, as_number, address.port),
                vec![Family::of(address.ip)],
            )
        } else {
            return Ok(Vec::new());
        };
    if !selected.iter().any(|node| node.name == this.name) {
        return Ok(Vec::new());
    }
    let mut peerings = Vec::new();
    for node in cluster.local_nodes(peer)? {
        peerings.extend(node_as_peerings(cluster, node, &families, peer, &origin));
    }
    Ok(peerings)
}

/// Every peering of this node, keyed and deduplicated as confd does: global BGPPeers, then
/// this node's, then reverse sessions; BGPPeers in name order.
fn peerings(cluster: &Cluster<'_>, input: &BgpInput) -> Result<Peerings, BgpError> {
    let mut peers: Vec<&BgpPeer> = input.peers.iter().collect();
    peers.sort_by(|a, b| a.name().cmp(b.name()));
    let this = &input.node;
    let mut peerings = Peerings::default();
    for peer in peers.iter().filter(|p| p.spec.is_global()) {
        for peering in forward_peerings(cluster, peer)? {
            peerings.emit(Scope::Global, peering);
        }
    }
    for peer in peers.iter().filter(|p| !p.spec.is_global()) {
        if !cluster
            .local_nodes(peer)?
            .iter()
            .any(|node| node.name == this.name)
        {
            continue;
        }
        for peering in forward_peerings(cluster, peer)? {
            peerings.emit(Scope::Node, peering);
        }
    }
    for peer in &peers {
        for peering in reverse_peerings(cluster, this, peer)? {
            peerings.emit(Scope::Node, peering);
        }
    }
    Ok(peerings)
}

// ---------------------------------------------------------------------------------------------
// Sessions

/// A protocol name: `<prefix>_<address with . and : as _>[_port_<port>]`.
fn protocol_name(kind: SessionKind, ip: IpAddr, port: Option<u16>) -> String {
    let address: String = ip
        .to_string()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    match port {
        Some(port) => format!("{}_{address}_port_{port}", kind.prefix()),
        None => format!("{}_{address}", kind.prefix()),
    }
}

/// Calico's choice of the passive side: the greater address, compared as text.
fn greater_address(peer: IpAddr, this: IpAddr) -> bool {
    peer.to_string() > this.to_string()
}

/// Resolves passwords once per source, with errors naming where each is used.
struct Passwords<'a> {
    reader: &'a dyn PasswordReader,
    read: BTreeMap<PasswordSource, Password>,
}

impl Passwords<'_> {
    fn get(
        &mut self,
        password: Option<&BgpPassword>,
        resource: &str,
        field: &str,
    ) -> Result<Option<Password>, BgpError> {
        let Some(from) = password.and_then(BgpPassword::source) else {
            return Ok(None);
        };
        if let Some(known) = self.read.get(&from) {
            return Ok(Some(known.clone()));
        }
        let error = |message: String| BgpError::Password {
            resource: resource.to_owned(),
            field: field.to_owned(),
            from: from.clone(),
            message,
        };
        let text = self.reader.read(&from).map_err(error)?;
        check_password(&text).map_err(error)?;
        let password = Password(text);
        self.read.insert(from, password.clone());
        Ok(Some(password))
    }
}

/// The mesh sessions of `family`, configured by the `default` BGPConfiguration's `spec`.
fn mesh_sessions(
    cluster: &Cluster<'_>,
    this: &NodeFacts,
    family: Family,
    default: &BgpConfigurationSpec,
    passwords: &mut Passwords<'_>,
) -> Result<Vec<BgpSession>, BgpError> {
    let Some(address) = this.address(family) else {
        return Ok(Vec::new());
    };
    if this.route_reflector_cluster_id.is_some() || !default.node_to_node_mesh() {
        return Ok(Vec::new());
    }
    let password = passwords.get(
        default.node_mesh_password.as_ref(),
        &format!("BGPConfiguration {DEFAULT_BGP_CONFIGURATION}"),
        "spec.nodeMeshPassword",
    )?;
    let restart = default
        .node_mesh_max_restart_time
        .map(|d| d.as_secs_f64().round() as u32);
    let local_as = cluster.node_as(this);
    let mut seen = BTreeSet::new();
    let mut sessions = Vec::new();
    for node in cluster.nodes.values() {
        let Some(peer_ip) = node.address(family) else {
            continue;
        };
        if peer_ip == address || node.route_reflector_cluster_id.is_some() {
            continue;
        }
        if !seen.insert(peer_ip) {
            warn!(
                node = %node.name,
                address = %peer_ip,
                "two nodes have the same address; the mesh peers with the first"
            );
            continue;
        }
        sessions.push(BgpSession {
            name: protocol_name(SessionKind::Mesh, peer_ip, None),
            kind: SessionKind::Mesh,
            origin: "node-to-node mesh".to_owned(),
            peer_node: Some(node.name.clone()),
            peer_ip,
            peer_port: cluster.listen_port(&node.name),
            peer_as: cluster.node_as(node),
            local_as,
            source_address: Some(address),
            passive: greater_address(peer_ip, address),
            route_reflector_client: None,
            password: password.clone(),
            graceful_restart_time: restart,
            keepalive_time: None,
            ttl_security: None,
            next_hop: NextHop::Default,
            allow_local_as: None,
        });
    }
    Ok(sessions)
}

/// The session a peering gives this node (confd's `buildPeerFromData`), unless it is to this
/// node itself.
fn peering_session(
    cluster: &Cluster<'_>,
    this: &NodeFacts,
    scope: Scope,
    peering: &Peering,
    passwords: &mut Passwords<'_>,
) -> Result<Option<BgpSession>, BgpError> {
    let Some(address) = this.address(Family::of(peering.ip)) else {
        return Ok(None);
    };
    if peering.ip == address {
        return Ok(None);
    }
    let kind = match scope {
        Scope::Global => SessionKind::Global,
        Scope::Node => SessionKind::Node,
    };
    let local_as = peering.local_as.unwrap_or_else(|| cluster.node_as(this));
    let internal = peering.as_number == local_as;
    let next_hop = match peering.next_hop_mode {
        Some(NextHopMode::SelfHop) => NextHop::SelfHop,
        Some(NextHopMode::Keep) => NextHop::Keep,
        Some(NextHopMode::Auto) => NextHop::Default,
        None if peering.keep_original_next_hop && !internal => NextHop::Keep,
        None => NextHop::Default,
    };
    let route_reflector_client = match this.route_reflector_cluster_id {
        Some(cluster_id) if internal && peering.rr_cluster_id != Some(cluster_id) => {
            Some(cluster_id)
        }
        _ => None,
    };
    let passive =
        kind == SessionKind::Global && peering.calico_node && greater_address(peering.ip, address);
    Ok(Some(BgpSession {
        name: protocol_name(kind, peering.ip, peering.port),
        kind,
        origin: peering.origin.to_string(),
        peer_node: peering.peer_node.clone(),
        peer_ip: peering.ip,
        peer_port: peering.port,
        peer_as: peering.as_number,
        local_as,
        source_address: (peering.source_address == SourceAddress::UseNodeIp).then_some(address),
        passive,
        route_reflector_client,
        password: passwords.get(
            peering.password.as_ref(),
            &peering.origin.resource,
            "spec.password",
        )?,
        graceful_restart_time: peering.restart_time,
        keepalive_time: peering.keepalive_time,
        ttl_security: Some(
            peering
                .ttl_security
                .map_or(TtlSecurity::Off, TtlSecurity::Hops),
        ),
        next_hop,
        allow_local_as: peering.allow_local_as,
    }))
}

/// Host routes of `family` in a sorted list.
fn host_routes(addresses: &[IpAddr], family: Family) -> Vec<IpNet> {
    let mut routes: Vec<IpNet> = addresses
        .iter()
        .filter(|ip| Family::of(**ip) == family)
        .map(|ip| IpNet::from(*ip))
        .collect();
    routes.sort();
    routes.dedup();
    routes
}

/// The nets of `family` in a sorted list.
fn of_family(nets: impl IntoIterator<Item = IpNet>, family: Family) -> Vec<IpNet> {
    let mut nets: Vec<IpNet> = nets
        .into_iter()
        .filter(|net| Family::of_net(net) == family)
        .collect();
    nets.sort();
    nets.dedup();
    nets
}

/// This node's BGP model, from `input`, with passwords read through `passwords`.
pub fn build(input: &BgpInput, passwords: &dyn PasswordReader) -> Result<BgpModel, BgpError> {
    let this = &input.node;
    let router_id = this
        .ipv4
        .map(|net| net.addr())
        .ok_or_else(|| BgpError::NoRouterId {
            node: this.name.clone(),
        })?;
    let cluster = Cluster::new(input);
    let default_spec = cluster.default.map(|c| c.spec.clone()).unwrap_or_default();
    let own = cluster.per_node.get(this.name.as_str()).map(|c| &c.spec);
    let severity = own
        .and_then(|spec| spec.log_severity_screen)
        .unwrap_or_else(|| default_spec.effective_log_severity());
    let excluded_from_services = this
        .labels
        .get(EXCLUDE_SERVICE_ADVERTISEMENT_LABEL)
        .is_some_and(|v| v == "true");
    let service_ranges = default_spec.announced_service_ranges();

    let mut passwords = Passwords {
        reader: passwords,
        read: BTreeMap::new(),
    };
    let all_peerings = peerings(&cluster, input)?;
    let mut routing = |family: Family| -> Result<FamilyRouting, BgpError> {
        let mut sessions = mesh_sessions(&cluster, this, family, &default_spec, &mut passwords)?;
        let mut peer_routes = Vec::new();
        for ((scope, ip, _), peering) in &all_peerings.0 {
            if Family::of(*ip) != family {
                continue;
            }
            if let Some(session) = peering_session(&cluster, this, *scope, peering, &mut passwords)?
            {
                if let Some(gateway) = peering.reachable_by {
                    peer_routes.push((IpNet::from(*ip), gateway));
                }
                sessions.push(session);
            }
        }
        sessions.sort_by(|a, b| a.name.cmp(&b.name));
        peer_routes.sort();
        peer_routes.dedup();
        let mut pools: Vec<PoolFacts> = input
            .pools
            .iter()
            .filter(|p| Family::of_net(&p.cidr) == family)
            .cloned()
            .collect();
        pools.sort();
        let rejected_ranges = of_family(service_ranges.iter().copied(), family);
        Ok(FamilyRouting {
            family,
            address: this.address(family),
            sessions,
            blocks: of_family(input.blocks.iter().copied(), family),
            borrowed: host_routes(&input.borrowed, family),
            floating_ips: host_routes(&input.floating_ips, family),
            pools,
            service_ranges: if excluded_from_services {
                Vec::new()
            } else {
                rejected_ranges.clone()
            },
            rejected_ranges,
            peer_routes,
        })
    };
    Ok(BgpModel {
        node_name: this.name.clone(),
        router_id,
        as_number: cluster.node_as(this),
        listen_port: cluster.listen_port(&this.name),
        debug: severity.into(),
        ignored_interfaces: default_spec.ignored_interfaces.clone(),
        ipv4: routing(Family::V4)?,
        ipv6: routing(Family::V6)?,
    })
}
