//! Routing: where a destination goes (the route maps, longest prefix first) and which sources
//! each workload interface may send from (the allowed-source maps, anti-spoofing).
//!
//! The agent writes one route per `ipNetworks` prefix of each local endpoint and one
//! allowed-source entry per prefix an endpoint may send from; the programs look both up for
//! every packet from a workload.

/// What a route points at.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    /// A workload on this host, reached through its interface.
    LocalWorkload = 1,
    /// A workload on another host, reached through a next hop.
    RemoteWorkload = 2,
    /// An address of this host.
    Host = 3,
    /// Traffic to this prefix is dropped.
    Blackhole = 4,
}

impl RouteKind {
    /// The kind encoded in a [`RouteValue::kind`] field.
    pub const fn from_u32(value: u32) -> Option<Self> {
        match value {
            1 => Some(Self::LocalWorkload),
            2 => Some(Self::RemoteWorkload),
            3 => Some(Self::Host),
            4 => Some(Self::Blackhole),
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
    /// For a remote workload: the next hop (IPv4 in the first four bytes).
    pub next_hop: [u8; 16],
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

crate::user_pod!(RouteValue, SourceKeyV4, SourceKeyV6);
