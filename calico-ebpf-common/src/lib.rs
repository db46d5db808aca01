//! Map layouts and constants shared by the kernel programs (`calico-ebpf`) and the agent
//! (`calico-loader`). This crate is the single source of truth for every map: its name, its key
//! and value types and its default size.
//!
//! Every type is `#[repr(C)]` with explicit padding so that the kernel and userspace agree on the
//! layout byte for byte, and so that `bpftool map dump` (which reads the BTF the kernel object
//! carries) prints named fields.

#![no_std]

/// Names of the maps, as they appear in the object file, in the kernel and under the pin
/// directory (`/sys/fs/bpf/calico/<name>` by default). Kernel map names are limited to 15
/// characters, so these stay short.
pub mod map_names {
    /// IPv4 routes: LPM trie of [`crate::RouteKeyV4`] → [`crate::RouteValue`].
    pub const ROUTES_V4: &str = "cali_routes_v4";
    /// IPv6 routes: LPM trie of [`crate::RouteKeyV6`] → [`crate::RouteValue`].
    pub const ROUTES_V6: &str = "cali_routes_v6";
    /// IPv4 allowed sources per interface: LPM trie of [`crate::SourceKeyV4`] → `u32` flags.
    pub const SOURCES_V4: &str = "cali_srcs_v4";
    /// IPv6 allowed sources per interface: LPM trie of [`crate::SourceKeyV6`] → `u32` flags.
    pub const SOURCES_V6: &str = "cali_srcs_v6";
    /// Workload interfaces: hash of ifindex (`u32`) → [`crate::EndpointInfo`].
    pub const ENDPOINTS: &str = "cali_endpoints";
    /// Per-CPU counters per workload interface: per-CPU hash of ifindex → [`crate::EndpointCounters`].
    pub const COUNTERS: &str = "cali_counters";

    /// Every map the agent pins.
    pub const ALL: [&str; 6] = [ROUTES_V4, ROUTES_V6, SOURCES_V4, SOURCES_V6, ENDPOINTS, COUNTERS];
}

/// Names of the programs in the object file.
pub mod program_names {
    /// TC ingress on the host side of a workload interface: packets *from* the workload.
    pub const TC_FROM_WORKLOAD: &str = "calico_tc_from_wl";
    /// TC egress on the host side of a workload interface: packets *to* the workload.
    pub const TC_TO_WORKLOAD: &str = "calico_tc_to_wl";
    /// XDP on the host side of a workload interface: packets *from* the workload.
    pub const XDP_FROM_WORKLOAD: &str = "calico_xdp_from_wl";
}

/// Default map sizes (entries). The LPM tries are not preallocated, so a large limit costs
/// nothing until it is used.
pub mod map_sizes {
    /// Routes per address family (Calico's default is 256k).
    pub const ROUTES: u32 = 262_144;
    /// Allowed-source prefixes per address family.
    pub const SOURCES: u32 = 65_536;
    /// Workload interfaces on one host (Calico's interface-state map is 1000, which users hit).
    pub const ENDPOINTS: u32 = 16_384;
}

/// The MAC the host side of every workload interface carries, as Calico's CNI plugin sets it.
pub const HOST_SIDE_MAC: [u8; 6] = [0xee; 6];

/// The IPv4 gateway every workload routes through (answered by the host side, never assigned).
pub const GATEWAY_V4: [u8; 4] = [169, 254, 1, 1];

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

/// Length of [`EndpointInfo::ifname`] (Linux `IFNAMSIZ`).
pub const IFNAME_LEN: usize = 16;

/// Length of [`EndpointInfo::name`].
pub const ENDPOINT_NAME_LEN: usize = 96;

/// Value of the endpoints map, keyed by the ifindex of the host side of the interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    /// Bits from [`endpoint_flags`].
    pub flags: u32,
    /// Reserved; keeps the MACs 4-byte aligned.
    pub _pad: u32,
    /// The workload's MAC (zero when unknown).
    pub mac: [u8; 6],
    /// The MAC of the host side of the interface.
    pub host_mac: [u8; 6],
    /// Name of the host side of the interface, NUL-padded.
    pub ifname: [u8; IFNAME_LEN],
    /// `namespace/name` of the WorkloadEndpoint, NUL-padded (truncated if longer).
    pub name: [u8; ENDPOINT_NAME_LEN],
}

impl Default for EndpointInfo {
    fn default() -> Self {
        Self {
            flags: 0,
            _pad: 0,
            mac: [0; 6],
            host_mac: [0; 6],
            ifname: [0; IFNAME_LEN],
            name: [0; ENDPOINT_NAME_LEN],
        }
    }
}

impl EndpointInfo {
    /// The stored endpoint name, up to the first NUL.
    pub fn name_bytes(&self) -> &[u8] {
        until_nul(&self.name)
    }

    /// The stored interface name, up to the first NUL.
    pub fn ifname_bytes(&self) -> &[u8] {
        until_nul(&self.ifname)
    }
}

fn until_nul(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    &bytes[..end]
}

/// Copies `text` into a NUL-padded fixed-size field, truncating it if it is too long.
pub fn fill_nul_padded<const N: usize>(text: &[u8]) -> [u8; N] {
    let mut field = [0u8; N];
    let len = text.len().min(N);
    field[..len].copy_from_slice(&text[..len]);
    field
}

/// Bits of [`EndpointInfo::flags`].
pub mod endpoint_flags {
    /// The interface is a workload interface managed by the agent.
    pub const WORKLOAD: u32 = 1;
}

/// Why a packet was dropped. The value indexes [`EndpointCounters::drops`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The source address is not one the endpoint may send from.
    SpoofedSource = 0,
    /// The destination matched a blackhole route.
    Blackhole = 1,
    /// The packet is truncated or its headers are invalid.
    Malformed = 2,
    /// The packet arrived on an interface the agent does not know (no endpoint entry).
    UnknownInterface = 3,
    /// A redirect to the destination interface failed.
    RedirectFailed = 4,
}

/// Number of slots in [`EndpointCounters::drops`].
pub const DROP_REASONS: usize = 8;

impl DropReason {
    /// Every reason, in counter-index order.
    pub const ALL: [DropReason; 5] = [
        Self::SpoofedSource,
        Self::Blackhole,
        Self::Malformed,
        Self::UnknownInterface,
        Self::RedirectFailed,
    ];

    /// A short lowercase name for tables and JSON.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::SpoofedSource => "spoofed-source",
            Self::Blackhole => "blackhole",
            Self::Malformed => "malformed",
            Self::UnknownInterface => "unknown-interface",
            Self::RedirectFailed => "redirect-failed",
        }
    }
}

/// Key of the counters entry that collects packets from interfaces without an endpoint entry
/// (a program left attached to an interface the agent no longer knows). No interface has
/// ifindex 0.
pub const UNKNOWN_INTERFACE_COUNTERS: u32 = 0;

/// Per-CPU counters of one workload interface. "From" and "to" are seen from the workload.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EndpointCounters {
    /// Packets the workload sent (everything the from-workload program saw).
    pub from_wl_packets: u64,
    pub from_wl_bytes: u64,
    /// Packets delivered to the workload, by a redirect from another workload or through the
    /// kernel (the to-workload program).
    pub to_wl_packets: u64,
    pub to_wl_bytes: u64,
    /// Packets from this workload forwarded to another local workload inside BPF.
    pub fwd_packets: u64,
    pub fwd_bytes: u64,
    /// Packets from this workload handed to the kernel stack (host or remote destinations).
    pub to_host_packets: u64,
    pub to_host_bytes: u64,
    /// ARP requests and IPv6 neighbour solicitations answered by the program on the
    /// gateway's behalf.
    pub neighbour_replies: u64,
    /// Dropped packets, indexed by [`DropReason`].
    pub drops: [u64; DROP_REASONS],
}

impl EndpointCounters {
    /// Adds another CPU's counters to these.
    pub fn accumulate(&mut self, other: &Self) {
        self.from_wl_packets += other.from_wl_packets;
        self.from_wl_bytes += other.from_wl_bytes;
        self.to_wl_packets += other.to_wl_packets;
        self.to_wl_bytes += other.to_wl_bytes;
        self.fwd_packets += other.fwd_packets;
        self.fwd_bytes += other.fwd_bytes;
        self.to_host_packets += other.to_host_packets;
        self.to_host_bytes += other.to_host_bytes;
        self.neighbour_replies += other.neighbour_replies;
        for (mine, theirs) in self.drops.iter_mut().zip(other.drops.iter()) {
            *mine += *theirs;
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are `#[repr(C)]`, made only of integers and byte arrays, with every
    // padding byte spelled out as a field, so any bit pattern is valid.
    unsafe impl aya::Pod for super::RouteValue {}
    unsafe impl aya::Pod for super::SourceKeyV4 {}
    unsafe impl aya::Pod for super::SourceKeyV6 {}
    unsafe impl aya::Pod for super::EndpointInfo {}
    unsafe impl aya::Pod for super::EndpointCounters {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<RouteValue>(), 4 + 4 + 6 + 6 + 16);
        assert_eq!(size_of::<SourceKeyV4>(), 8);
        assert_eq!(size_of::<SourceKeyV6>(), 20);
        assert_eq!(size_of::<EndpointInfo>(), 4 + 4 + 6 + 6 + IFNAME_LEN + ENDPOINT_NAME_LEN);
        assert_eq!(size_of::<EndpointCounters>(), 9 * 8 + DROP_REASONS * 8);
    }

    #[test]
    fn route_kind_round_trips() {
        for kind in [RouteKind::LocalWorkload, RouteKind::RemoteWorkload, RouteKind::Host, RouteKind::Blackhole] {
            assert_eq!(RouteKind::from_u32(kind as u32), Some(kind));
        }
        assert_eq!(RouteKind::from_u32(0), None);
    }

    #[test]
    fn drop_reasons_fit_the_counter_array() {
        for (index, reason) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, index);
            assert!((*reason as usize) < DROP_REASONS);
        }
    }

    #[test]
    fn endpoint_name_stops_at_nul() {
        let info = EndpointInfo {
            name: fill_nul_padded(b"ns/name"),
            ifname: fill_nul_padded(b"cali0123456789abcdef"),
            ..EndpointInfo::default()
        };
        assert_eq!(info.name_bytes(), b"ns/name");
        assert_eq!(info.ifname_bytes(), b"cali0123456789ab");
    }
}
