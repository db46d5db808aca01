//! Where a packet may go, per address family: anti-spoofing (a workload's source prefixes), the
//! route of its destination, which destinations stay on the link, and the TTL/hop-limit rewrite
//! of a forwarded packet.
//!
//! [`Family`] gathers what differs between IPv4 and IPv6 (maps, key types, prefix lengths,
//! header fields), so that the workload pipeline has one path for both; each implementation is
//! a handful of inlined lines, so the generic path compiles to what two copies would.

use aya_ebpf::maps::lpm_trie::Key;
use calico_ebpf_common::{RouteKind, RouteValue, SourceKeyV4, SourceKeyV6};

use crate::{
    maps::{ROUTES_V4, ROUTES_V6, SOURCES_V4, SOURCES_V6},
    packet::{Flow, V4, V6, flow_kind, parse_ipv4, parse_ipv6},
};

/// Bytes at the start of the IP header that a forwarded packet has rewritten: they
/// hold the TTL (IPv4) or hop limit (IPv6), and the IPv4 header checksum.
pub const FORWARD_HEADER_LEN: usize = 12;

/// A destination that stays on the workload's link: never routed, only handed to the host.
pub enum OnLink {
    /// Not such a destination: anti-spoofing and routing follow.
    No,
    /// Host-bound traffic that meets the sender's egress policy (it goes to the kernel).
    Policed,
    /// Neighbour discovery and multicast listener traffic: to the kernel, without policy.
    Housekeeping,
}

/// What the workload pipeline needs to know of an address family.
pub trait Family {
    /// The value of `Flow::family`.
    const FAMILY: u8;

    /// Validates the IP header and reads it and the transport header into `flow`.
    fn parse(data: usize, data_end: usize, len: u64, flow: &mut Flow) -> Option<()>;

    /// Whether the destination stays on the link (IPv6 link-local and multicast).
    fn on_link(flow: &Flow) -> OnLink;

    /// Whether the workload behind `ifindex` may send from the flow's source address.
    fn source_allowed(ifindex: u32, flow: &Flow) -> bool;

    /// The longest-prefix route of the flow's destination.
    fn route(flow: &Flow) -> Option<&'static RouteValue>;

    /// The longest-prefix route of the flow's source.
    fn source_route(flow: &Flow) -> Option<&'static RouteValue>;

    /// Whether the flow (whose destination route is `route`) is addressed to the host itself:
    /// one of its addresses, or a broadcast or multicast group (IPv4; IPv6's link-local and
    /// multicast destinations are [`OnLink`]).
    #[inline(always)]
    fn to_host(flow: &Flow, route: Option<&RouteValue>) -> bool {
        route.is_some_and(|r| r.kind == RouteKind::Host as u32) || Self::group(flow)
    }

    /// Whether the flow's destination is a group address (IPv4 multicast or the limited
    /// broadcast; IPv6 multicast).
    fn group(flow: &Flow) -> bool;

    /// Whether the flow comes from the host itself: its source is one of the host's addresses,
    /// or unspecified (a DHCP client's first request).
    #[inline(always)]
    fn from_host(flow: &Flow) -> bool {
        Self::source_route(flow).is_some_and(|r| r.kind == RouteKind::Host as u32)
            || flow.src == [0; 16]
    }

    /// The TTL or hop limit, in the first [`FORWARD_HEADER_LEN`] bytes of the IP header.
    fn hop_limit(hdr: &[u8; FORWARD_HEADER_LEN]) -> u8;

    /// Decrements the TTL or hop limit (which is above 1), keeping the header valid.
    fn decrement_hop_limit(hdr: &mut [u8; FORWARD_HEADER_LEN]);

    /// The IP packet's length (header included), from the first [`FORWARD_HEADER_LEN`] bytes.
    fn ip_len(hdr: &[u8; FORWARD_HEADER_LEN]) -> u16;
}

impl Family for V4 {
    const FAMILY: u8 = 4;

    #[inline(always)]
    fn parse(data: usize, data_end: usize, len: u64, flow: &mut Flow) -> Option<()> {
        parse_ipv4(data, data_end, len, flow).map(|_| ())
    }

    #[inline(always)]
    fn on_link(_flow: &Flow) -> OnLink {
        OnLink::No
    }

    #[inline(always)]
    fn source_allowed(ifindex: u32, flow: &Flow) -> bool {
        let addr = [flow.src[0], flow.src[1], flow.src[2], flow.src[3]];
        let key = Key::new(64, SourceKeyV4 { ifindex, addr });
        SOURCES_V4.get(&key).is_some()
    }

    #[inline(always)]
    fn route(flow: &Flow) -> Option<&'static RouteValue> {
        let dst = [flow.dst[0], flow.dst[1], flow.dst[2], flow.dst[3]];
        ROUTES_V4.get(&Key::new(32, dst))
    }

    #[inline(always)]
    fn source_route(flow: &Flow) -> Option<&'static RouteValue> {
        let src = [flow.src[0], flow.src[1], flow.src[2], flow.src[3]];
        ROUTES_V4.get(&Key::new(32, src))
    }

    /// 224.0.0.0/4 (multicast) and 255.255.255.255.
    #[inline(always)]
    fn group(flow: &Flow) -> bool {
        flow.dst[0] & 0xf0 == 0xe0 || flow.dst[..4] == [0xff; 4]
    }

    #[inline(always)]
    fn hop_limit(hdr: &[u8; FORWARD_HEADER_LEN]) -> u8 {
        hdr[8]
    }

    /// Decrements the TTL and patches the header checksum incrementally (RFC 1624): the 16-bit
    /// word holding TTL and protocol drops by 0x0100, so the checksum grows by 0x0100.
    #[inline(always)]
    fn decrement_hop_limit(hdr: &mut [u8; FORWARD_HEADER_LEN]) {
        hdr[8] -= 1;
        let mut check = u16::from_be_bytes([hdr[10], hdr[11]]) as u32 + 0x0100;
        check = (check & 0xffff) + (check >> 16);
        let check = (check as u16).to_be_bytes();
        hdr[10] = check[0];
        hdr[11] = check[1];
    }

    #[inline(always)]
    fn ip_len(hdr: &[u8; FORWARD_HEADER_LEN]) -> u16 {
        u16::from_be_bytes([hdr[2], hdr[3]])
    }
}

impl Family for V6 {
    const FAMILY: u8 = 6;

    #[inline(always)]
    fn parse(data: usize, data_end: usize, len: u64, flow: &mut Flow) -> Option<()> {
        parse_ipv6(data, data_end, len, flow)
    }

    /// Link-local and multicast destinations (MLD, DAD, router solicitations) are for the host
    /// and are never forwarded; neighbour discovery and MLD bypass policy, the rest is the
    /// workload's egress traffic to the host.
    #[inline(always)]
    fn on_link(flow: &Flow) -> OnLink {
        // Neighbour discovery and MLD first: they mostly go to link-local and multicast
        // addresses, and neither egress policy nor `DefaultEndpointToHostAction` may stop them
        // (Felix accepts them from workloads before either).
        if flow.kind == flow_kind::NEIGHBOUR_DISCOVERY {
            return OnLink::Housekeeping;
        }
        let dst0 = flow.dst[0];
        let dst1 = flow.dst[1];
        if dst0 == 0xff || (dst0 == 0xfe && dst1 & 0xc0 == 0x80) {
            return OnLink::Policed;
        }
        OnLink::No
    }

    #[inline(always)]
    fn source_allowed(ifindex: u32, flow: &Flow) -> bool {
        let key = Key::new(
            32 + 128,
            SourceKeyV6 {
                ifindex,
                addr: flow.src,
            },
        );
        SOURCES_V6.get(&key).is_some()
    }

    #[inline(always)]
    fn route(flow: &Flow) -> Option<&'static RouteValue> {
        ROUTES_V6.get(&Key::new(128, flow.dst))
    }

    #[inline(always)]
    fn source_route(flow: &Flow) -> Option<&'static RouteValue> {
        ROUTES_V6.get(&Key::new(128, flow.src))
    }

    /// ff00::/8.
    #[inline(always)]
    fn group(flow: &Flow) -> bool {
        flow.dst[0] == 0xff
    }

    #[inline(always)]
    fn hop_limit(hdr: &[u8; FORWARD_HEADER_LEN]) -> u8 {
        hdr[7]
    }

    /// IPv6 has no header checksum, and the L4 pseudo-headers do not include the hop limit.
    #[inline(always)]
    fn decrement_hop_limit(hdr: &mut [u8; FORWARD_HEADER_LEN]) {
        hdr[7] -= 1;
    }

    /// The payload length and the 40-byte header (a jumbogram's 0 stays small: the FIB
    /// lookup then finds no MTU problem, and the kernel's own checks still apply).
    #[inline(always)]
    fn ip_len(hdr: &[u8; FORWARD_HEADER_LEN]) -> u16 {
        u16::from_be_bytes([hdr[4], hdr[5]]).saturating_add(40)
    }
}
