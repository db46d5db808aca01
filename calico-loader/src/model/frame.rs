//! What the kernel programs read from a frame, in userspace: the mirror of the parse in
//! `calico-ebpf/src/packet.rs` (IPv4 with its options and fragments, IPv6 with its extension
//! headers, the transport header, the packet an ICMP error quotes). The packet tests run
//! random and mutated frames through both and compare; the result feeds the reference
//! evaluator ([`super::compile::evaluate`]) as a [`PacketTuple`].
//!
//! It reads the frame as the programs do, byte for byte: lengths are checked against the
//! frame (an IPv4 total length or IPv6 payload length beyond it is malformed), ports are read
//! from wherever the transport header starts even if the IP length says the datagram is shorter.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::compile::PacketTuple;

const ETH_HLEN: usize = 14;
const IPV6_HLEN: usize = 40;

/// Protocol numbers the parse treats specially.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
    pub const SCTP: u8 = 132;
    pub const UDPLITE: u8 = 136;
    pub const HOPOPTS: u8 = 0;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const AH: u8 = 51;
    pub const DSTOPTS: u8 = 60;
}

/// The most IPv6 extension headers before the transport header (more: malformed), as in the
/// kernel's `IPV6_MAX_EXTENSION_HEADERS`.
pub const IPV6_MAX_EXTENSION_HEADERS: usize = 6;

/// The most bytes of IPv6 extension headers (more: malformed), as in the kernel's
/// `IPV6_MAX_EXTENSION_BYTES`.
pub const IPV6_MAX_EXTENSION_BYTES: usize = 256;

/// What kind of packet a flow is, as in the kernel's `flow_kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowKind {
    Normal,
    /// An ICMP error quoting a packet whose addresses and ports could be read.
    IcmpError,
    /// ICMPv6 neighbour discovery or multicast listener messages (types 130 to 137).
    NeighbourDiscovery,
}

/// An IP packet as policy and conntrack see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameFlow {
    /// Addresses, protocol (after IPv6 extension headers) and ports as policy matches them.
    pub tuple: PacketTuple,
    pub kind: FlowKind,
    /// TTL or hop limit.
    pub hop_limit: u8,
    /// False for a non-first fragment (no transport header: its ports are 0).
    pub first_fragment: bool,
    pub tcp_flags: u8,
}

/// What the parse makes of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame {
    Ip(FrameFlow),
    /// ARP.
    Arp,
    /// Neither IP nor ARP.
    Other,
    /// Truncated or invalid: the programs drop it and count it.
    Malformed,
}

/// Whether `next` is an IPv6 extension header the parse follows.
pub fn is_ipv6_extension(next: u8) -> bool {
    matches!(
        next,
        proto::HOPOPTS | proto::ROUTING | proto::FRAGMENT | proto::AH | proto::DSTOPTS
    )
}

/// Reads `frame` as the programs do.
pub fn parse(frame: &[u8]) -> Frame {
    let Some(eth_type) = frame.get(12..14) else {
        return Frame::Malformed;
    };
    let flow = match u16::from_be_bytes([eth_type[0], eth_type[1]]) {
        0x0800 => ipv4(frame),
        0x86dd => ipv6(frame),
        0x0806 => return Frame::Arp,
        _ => return Frame::Other,
    };
    flow.map_or(Frame::Malformed, Frame::Ip)
}

fn ipv4(frame: &[u8]) -> Option<FrameFlow> {
    let hdr = frame.get(ETH_HLEN..ETH_HLEN + 20)?;
    let header_len = usize::from(hdr[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([hdr[2], hdr[3]]));
    if hdr[0] >> 4 != 4
        || header_len < 20
        || total_len < header_len
        || ETH_HLEN + header_len > frame.len()
        || ETH_HLEN + total_len > frame.len()
    {
        return None;
    }
    let src = IpAddr::V4(Ipv4Addr::new(hdr[12], hdr[13], hdr[14], hdr[15]));
    let dst = IpAddr::V4(Ipv4Addr::new(hdr[16], hdr[17], hdr[18], hdr[19]));
    let first_fragment = u16::from_be_bytes([hdr[6], hdr[7]]) & 0x1fff == 0;
    transport(
        frame,
        ETH_HLEN + header_len,
        (src, dst, hdr[9], hdr[8]),
        first_fragment,
    )
}

fn ipv6(frame: &[u8]) -> Option<FrameFlow> {
    let hdr = frame.get(ETH_HLEN..ETH_HLEN + IPV6_HLEN)?;
    let payload_len = usize::from(u16::from_be_bytes([hdr[4], hdr[5]]));
    if hdr[0] >> 4 != 6 || ETH_HLEN + IPV6_HLEN + payload_len > frame.len() {
        return None;
    }
    let address = |bytes: &[u8]| {
        let octets: [u8; 16] = bytes.try_into().expect("16 bytes");
        IpAddr::V6(Ipv6Addr::from(octets))
    };
    let (src, dst) = (address(&hdr[8..24]), address(&hdr[24..40]));
    let mut next = hdr[6];
    let mut l4 = ETH_HLEN + IPV6_HLEN;
    let mut first_fragment = true;
    for _ in 0..IPV6_MAX_EXTENSION_HEADERS {
        if !is_ipv6_extension(next) || !first_fragment {
            break;
        }
        let ext = frame.get(l4..l4 + 4)?;
        let ext_len = match next {
            proto::FRAGMENT => {
                first_fragment = u16::from_be_bytes([ext[2], ext[3]]) & 0xfff8 == 0;
                8
            }
            proto::AH => (usize::from(ext[1]) + 2) * 4,
            _ => (usize::from(ext[1]) + 1) * 8,
        };
        next = ext[0];
        l4 += ext_len;
        if l4 > ETH_HLEN + IPV6_HLEN + IPV6_MAX_EXTENSION_BYTES {
            return None;
        }
    }
    if (is_ipv6_extension(next) && first_fragment) || l4 > frame.len() {
        return None;
    }
    transport(frame, l4, (src, dst, next, hdr[7]), first_fragment)
}

/// Reads the transport header at `l4`; `ip` is (source, destination, protocol, hop limit).
fn transport(
    frame: &[u8],
    l4: usize,
    (src, dst, protocol, hop_limit): (IpAddr, IpAddr, u8, u8),
    first_fragment: bool,
) -> Option<FrameFlow> {
    let mut flow = FrameFlow {
        tuple: PacketTuple {
            src,
            dst,
            proto: protocol,
            sport: 0,
            dport: 0,
        },
        kind: FlowKind::Normal,
        hop_limit,
        first_fragment,
        tcp_flags: 0,
    };
    if !first_fragment {
        return Some(flow);
    }
    let at = |len: usize| frame.get(l4..l4 + len);
    match protocol {
        proto::TCP => {
            let tcp = at(14)?;
            flow.tuple.sport = u16::from_be_bytes([tcp[0], tcp[1]]);
            flow.tuple.dport = u16::from_be_bytes([tcp[2], tcp[3]]);
            flow.tcp_flags = tcp[13];
        }
        proto::UDP | proto::UDPLITE | proto::SCTP => {
            let ports = at(4)?;
            flow.tuple.sport = u16::from_be_bytes([ports[0], ports[1]]);
            flow.tuple.dport = u16::from_be_bytes([ports[2], ports[3]]);
        }
        proto::ICMP | proto::ICMPV6 => {
            let icmp = at(8)?;
            let (icmp_type, code) = (icmp[0], icmp[1]);
            flow.tuple.dport = u16::from(icmp_type) << 8 | u16::from(code);
            let echo = if protocol == proto::ICMP {
                matches!(icmp_type, 0 | 8)
            } else {
                matches!(icmp_type, 128 | 129)
            };
            if echo {
                return Some(flow);
            }
            // Housekeeping and errors only in the family's own ICMP.
            let own = if src.is_ipv4() {
                protocol == proto::ICMP
            } else {
                protocol == proto::ICMPV6
            };
            if !own {
                return Some(flow);
            }
            if protocol == proto::ICMPV6 && (130..=137).contains(&icmp_type) {
                flow.kind = FlowKind::NeighbourDiscovery;
                return Some(flow);
            }
            let error = if protocol == proto::ICMP {
                matches!(icmp_type, 3 | 4 | 5 | 11 | 12)
            } else {
                matches!(icmp_type, 1..=4)
            };
            if error && quoted_readable(frame, l4 + 8, src.is_ipv4()) {
                flow.kind = FlowKind::IcmpError;
            }
        }
        _ => {}
    }
    Some(flow)
}

/// Whether the packet an ICMP error quotes at `at` can be read: an IP header of the error's
/// family and, for protocols with ports (or ICMP), their first bytes.
fn quoted_readable(frame: &[u8], at: usize, v4: bool) -> bool {
    let (protocol, l4) = if v4 {
        let Some(ip) = frame.get(at..at + 20) else {
            return false;
        };
        let header_len = usize::from(ip[0] & 0x0f) * 4;
        if ip[0] >> 4 != 4 || header_len < 20 {
            return false;
        }
        (ip[9], at + header_len)
    } else {
        let Some(ip) = frame.get(at..at + 40) else {
            return false;
        };
        if ip[0] >> 4 != 6 {
            return false;
        }
        (ip[6], at + 40)
    };
    match protocol {
        proto::TCP | proto::UDP | proto::UDPLITE | proto::SCTP => frame.get(l4..l4 + 4).is_some(),
        proto::ICMP | proto::ICMPV6 => frame.get(l4..l4 + 8).is_some(),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v6_frame(next: u8, extensions: &[u8], transport: &[u8]) -> Vec<u8> {
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
        let payload = (extensions.len() + transport.len()) as u16;
        frame.extend_from_slice(&payload.to_be_bytes());
        frame.extend_from_slice(&[next, 64]);
        frame.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        frame.extend_from_slice(&[0; 12]);
        frame.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        frame.extend_from_slice(&[0; 12]);
        frame.extend_from_slice(extensions);
        frame.extend_from_slice(transport);
        frame
    }

    const TCP_80: [u8; 20] = [
        0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 2, 0, 0, 0, 0, 0, 0,
    ];

    fn flow(frame: &[u8]) -> FrameFlow {
        match parse(frame) {
            Frame::Ip(flow) => flow,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn extension_headers_are_followed_to_the_transport_header() {
        // Hop-by-hop (8 bytes), destination options (16), routing (8), then TCP.
        let mut ext = vec![proto::DSTOPTS, 0, 0, 0, 0, 0, 0, 0];
        ext.extend_from_slice(&[proto::ROUTING, 1]);
        ext.extend_from_slice(&[0; 14]);
        ext.extend_from_slice(&[proto::TCP, 0, 0, 0, 0, 0, 0, 0]);
        let tcp = flow(&v6_frame(proto::HOPOPTS, &ext, &TCP_80));
        assert_eq!(
            (tcp.tuple.proto, tcp.tuple.sport, tcp.tuple.dport),
            (6, 40000, 80)
        );
        // AH counts its length in 4-byte units, plus 2.
        let ah = [proto::UDP, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let udp = flow(&v6_frame(proto::AH, &ah, &[0, 53, 0, 54, 0, 8, 0, 0]));
        assert_eq!((udp.tuple.proto, udp.tuple.sport), (17, 53));
    }

    #[test]
    fn a_non_first_fragment_has_no_ports() {
        let first = [proto::TCP, 0, 0, 1, 0, 0, 0, 7];
        let flow_first = flow(&v6_frame(proto::FRAGMENT, &first, &TCP_80));
        assert!(flow_first.first_fragment);
        assert_eq!(flow_first.tuple.dport, 80);
        let later = [proto::TCP, 0, 0x05, 0xa8, 0, 0, 0, 7];
        let flow_later = flow(&v6_frame(proto::FRAGMENT, &later, &TCP_80));
        assert!(!flow_later.first_fragment);
        assert_eq!(
            (
                flow_later.tuple.proto,
                flow_later.tuple.sport,
                flow_later.tuple.dport
            ),
            (6, 0, 0)
        );
    }

    #[test]
    fn too_many_or_too_long_extension_headers_are_malformed() {
        let chain = |count: usize| {
            let mut ext = Vec::new();
            for i in 0..count {
                let next = if i + 1 == count {
                    proto::TCP
                } else {
                    proto::DSTOPTS
                };
                ext.extend_from_slice(&[next, 0, 0, 0, 0, 0, 0, 0]);
            }
            v6_frame(proto::DSTOPTS, &ext, &TCP_80)
        };
        assert_eq!(flow(&chain(IPV6_MAX_EXTENSION_HEADERS)).tuple.dport, 80);
        assert_eq!(
            parse(&chain(IPV6_MAX_EXTENSION_HEADERS + 1)),
            Frame::Malformed
        );
        // 33 eight-byte units: 264 bytes of options.
        let mut long = vec![proto::TCP, 32];
        long.resize(264, 0);
        assert_eq!(
            parse(&v6_frame(proto::DSTOPTS, &long, &TCP_80)),
            Frame::Malformed
        );
        long[1] = 31;
        long.truncate(256);
        assert_eq!(
            flow(&v6_frame(proto::DSTOPTS, &long, &TCP_80)).tuple.dport,
            80
        );
    }

    #[test]
    fn icmpv6_carried_by_ipv4_is_neither_housekeeping_nor_an_error() {
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 28, 0, 0, 0, 0, 64, 58, 0, 0]);
        frame.extend_from_slice(&[198, 18, 0, 1, 198, 18, 0, 2]);
        frame.extend_from_slice(&[135, 0, 0, 0, 0, 0, 0, 0]);
        let ipv4 = flow(&frame);
        assert_eq!((ipv4.kind, ipv4.tuple.dport), (FlowKind::Normal, 135 << 8));
    }
}
