//! Routing: where a destination goes (the route maps, longest prefix first) and which sources
//! each workload interface may send from (the allowed-source maps, anti-spoofing).
//!
//! The agent writes one route per `ipNetworks` prefix of each endpoint (local ones lead to their
//! interface, other nodes' to their node) and one allowed-source entry per prefix a local
//! endpoint may send from; the programs look both up for every packet from a workload, and the
//! route of the destination for every packet arriving on a data interface.

/// What a route points at.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    /// A workload on this host, reached through its interface.
    LocalWorkload = 1,
    /// A workload on another host (Calico's `WORKLOAD` without `LOCAL`): a workload's own
    /// address, or later a block of addresses, that lives on [`RouteValue::node`]. The programs
    /// forward to it through the kernel's FIB (the route BIRD or an administrator installed).
    RemoteWorkload = 2,
    /// An address of this host.
    Host = 3,
    /// Traffic to this prefix is dropped.
    Blackhole = 4,
    /// A floating IP of a local workload (an external address of its `ipNATs`), reached
    /// through its interface after destination NAT to the internal address; `next_hop` holds
    /// the internal address.
    FloatingIp = 5,
    /// An IP pool's CIDR: addresses in it are workload addresses, here or elsewhere. Treated as
    /// no route (the kernel decides); it tells the programs that a destination is inside the
    /// pools (floating IPs translate only traffic to outside them).
    IpPool = 6,
}

impl RouteKind {
    /// The kind encoded in a [`RouteValue::kind`] field.
    pub const fn from_u32(value: u32) -> Option<Self> {
        match value {
            1 => Some(Self::LocalWorkload),
            2 => Some(Self::RemoteWorkload),
            3 => Some(Self::Host),
            4 => Some(Self::Blackhole),
            5 => Some(Self::FloatingIp),
            6 => Some(Self::IpPool),
            _ => None,
        }
    }

    /// A short lowercase name for tables and JSON.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::LocalWorkload => "local-workload",
            Self::RemoteWorkload => "remote-workload",
            Self::Host => "host",
            Self::Blackhole => "blackhole",
            Self::FloatingIp => "floating-ip",
            Self::IpPool => "ip-pool",
        }
    }
}

/// Data part of an IPv4 route key: the address in network byte order. The LPM trie key is
/// `{ prefix_len: u32, data: [u8; 4] }`.
pub type RouteKeyV4 = [u8; 4];
/// Data part of an IPv6 route key: the address in network byte order.
pub type RouteKeyV6 = [u8; 16];

/// Value of the route maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RouteValue {
    /// A [`RouteKind`] as `u32`.
    pub kind: u32,
    /// For a local workload: the ifindex of the host side of its interface.
    pub ifindex: u32,
    /// For a local workload: the workload's own MAC (destination MAC of forwarded frames).
    /// All zeroes when unknown; the kernel then resolves the neighbour itself.
    pub mac: [u8; 6],
    /// For a local workload: the MAC of the host side of its interface (source MAC of forwarded
    /// frames).
    pub host_mac: [u8; 6],
    /// For a remote workload: the node's address as a next hop (IPv4 in the first four bytes);
    /// all zeroes when unknown. The programs do not read it: the kernel's FIB decides the next
    /// hop. It is there for `dump` and `trace`, and for the blocks that come from IPAM.
    pub next_hop: [u8; 16],
    /// For a remote workload: the id of the node it lives on (a key of the nodes map, which
    /// holds its name); 0 when unknown.
    pub node: u32,
}

/// Length of [`NodeInfo::name`]: a DNS name (a Kubernetes node name) fits whole.
pub const NODE_NAME_LEN: usize = 256;

/// Value of the nodes map, keyed by the node id that [`RouteValue::node`] holds: what `dump`
/// and `trace` say about the node a remote route leads to. The programs never read it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node's name (`spec.node` of its endpoints), NUL-padded.
    pub name: [u8; NODE_NAME_LEN],
}

impl Default for NodeInfo {
    fn default() -> Self {
        Self {
            name: [0; NODE_NAME_LEN],
        }
    }
}

impl NodeInfo {
    /// The stored name, up to the first NUL.
    pub fn name_bytes(&self) -> &[u8] {
        crate::until_nul(&self.name)
    }
}

/// Data part of an allowed-source key: the ingress interface, then the address. The ifindex is
/// matched in full (prefix length = 32 + address prefix), so its byte order does not matter;
/// it is stored in host byte order so that `bpftool` shows the real ifindex.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SourceKeyV4 {
    pub ifindex: u32,
    pub addr: [u8; 4],
}

/// IPv6 variant of [`SourceKeyV4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SourceKeyV6 {
    pub ifindex: u32,
    pub addr: [u8; 16],
}

/// Bits of the allowed-source map's value.
pub mod source_flags {
    /// The prefix is one of the endpoint's own `ipNetworks`.
    pub const OWN_ADDRESS: u32 = 1;
    /// The prefix comes from the endpoint's `allowSpoofedSourcePrefixes`.
    pub const ALLOWED_SPOOF: u32 = 2;
}

crate::user_pod!(RouteValue, NodeInfo, SourceKeyV4, SourceKeyV6);
