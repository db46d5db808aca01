//! Packet access and parsing: bounds-checked pointers into the packet, the header constants, and
//! what policy and conntrack need from a packet (its addresses, protocol and ports, TCP flags,
//! and for an ICMP error the flow it is about), read into a [`Flow`].
//!
//! Parsing works on the raw bytes `[data, data_end)` like the rest of the pipeline; every
//! access is checked against `data_end`. This module is the leaf of the crate: it uses no other
//! module of it, so every other part can build on it.

use aya_ebpf::{btf_maps::PerCpuArray, macros::btf_map};
use calico_ebpf_common::{ConntrackKey, ConntrackValue};

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const IPV4_MIN_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_SCTP: u8 = 132;
pub const IPPROTO_UDPLITE: u8 = 136;

/// IPv6 extension headers that [`parse_ipv6`] follows to the transport header.
pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_AH: u8 = 51;
pub const IPPROTO_DSTOPTS: u8 = 60;

/// The most IPv6 extension headers a packet may carry before its transport header; with more,
/// it is malformed (dropped and counted): judging it without its transport header would let
/// it past rules about ports and protocols.
pub const IPV6_MAX_EXTENSION_HEADERS: usize = 6;

/// The most bytes of IPv6 extension headers before the transport header; with more, the packet
/// is malformed. The TC programs pull this much (and the transport header, and what an ICMPv6
/// error quotes) into the linear area when the packet has extension headers.
pub const IPV6_MAX_EXTENSION_BYTES: usize = 256;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;

/// Returns a pointer to a `T` at `offset`, or `None` when the packet is too short.
#[inline(always)]
pub fn ptr_at<T>(data: usize, data_end: usize, offset: usize) -> Option<*mut T> {
    let start = data + offset;
    if start + core::mem::size_of::<T>() > data_end {
        return None;
    }
    Some(start as *mut T)
}

/// Whether IPv6 next-header value `next` is an extension header [`parse_ipv6`] follows.
#[inline(always)]
pub fn is_ipv6_extension(next: u8) -> bool {
    matches!(
        next,
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_FRAGMENT | IPPROTO_AH | IPPROTO_DSTOPTS
    )
}

/// Whether the packet is IPv6 with extension headers (as far as the linear area shows).
#[inline(always)]
pub fn has_ipv6_extension_headers(data: usize, data_end: usize) -> bool {
    let Some(eth_type) = ptr_at::<[u8; 2]>(data, data_end, 12) else {
        return false;
    };
    let Some(next) = ptr_at::<u8>(data, data_end, ETH_HLEN + 6) else {
        return false;
    };
    u16::from_be_bytes(unsafe { *eth_type }) == ETH_P_IPV6 && is_ipv6_extension(unsafe { *next })
}

/// Where the TCP, UDP, UDP-Lite or SCTP header of an IPv4 or IPv6 packet ends, read from a
/// linear IP header; `None` when the IP header is not linear, or for other protocols (an ICMP
/// error quotes headers, a neighbour solicitation carries options: they get the full pull).
#[inline(always)]
pub fn transport_header_end(data: usize, data_end: usize) -> Option<u32> {
    let eth_type = unsafe { *ptr_at::<[u8; 2]>(data, data_end, 12)? };
    let (l3_len, proto) = match u16::from_be_bytes(eth_type) {
        ETH_P_IP => {
            let hdr = unsafe { &*ptr_at::<[u8; 20]>(data, data_end, ETH_HLEN)? };
            let ihl = (hdr[0] & 0x0f) as u32 * 4;
            if ihl < 20 {
                return None;
            }
            (ihl, hdr[9])
        }
        ETH_P_IPV6 => {
            let hdr = unsafe { &*ptr_at::<[u8; 40]>(data, data_end, ETH_HLEN)? };
            (40, hdr[6])
        }
        _ => return None,
    };
    let l4_len = match proto {
        IPPROTO_TCP => 20,
        IPPROTO_UDP | IPPROTO_UDPLITE => 8,
        IPPROTO_SCTP => 12,
        _ => return None,
    };
    Some(ETH_HLEN as u32 + l3_len + l4_len)
}

/// IPv4 as a type. What differs between the address families is a trait per mechanism (the
/// routes, the policy's address step), implemented for [`V4`] and [`V6`], so that their callers
/// take one generic path for both.
pub struct V4;

/// IPv6 as a type: see [`V4`].
pub struct V6;

/// Values of [`Flow::kind`].
pub mod flow_kind {
    /// A packet of its own flow.
    pub const NORMAL: u8 = 0;
    /// An ICMP error: [`super::Flow::related`] is the key of the flow it reports on.
    pub const ICMP_ERROR: u8 = 1;
    /// ICMPv6 neighbour discovery or multicast listener traffic: link housekeeping that
    /// policy does not apply to.
    pub const NEIGHBOUR_DISCOVERY: u8 = 2;
}

/// One packet's flow, as policy and conntrack see it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Flow {
    /// IPv4 addresses use the first four bytes.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Ports as policy matches them: TCP, UDP, UDP-Lite and SCTP ports; for ICMP the
    /// destination "port" is `type << 8 | code` and the source port 0; otherwise 0.
    pub sport: u16,
    pub dport: u16,
    /// Ports as conntrack keys them: the same, except ICMP echo (both hold the identifier)
    /// and other ICMP (both 0).
    pub ct_sport: u16,
    pub ct_dport: u16,
    /// The whole packet's length, for counters.
    pub len: u32,
    /// 4 or 6.
    pub family: u8,
    pub proto: u8,
    /// TCP flags byte (0 for other protocols).
    pub tcp_flags: u8,
    /// A [`flow_kind`] value.
    pub kind: u8,
    /// Translations applied to this packet (`nat::flow_nat` bits).
    pub nat: u8,
    /// Set by conntrack: the packet replies to a flow whose opener addressed a floating IP
    /// (its source goes back to the floating IP).
    pub reply_to_dnat: u8,
    /// The conntrack zone the next admission tracks the flow in (a `conntrack_zone` value).
    pub zone: u8,
    /// For an ICMP error, the conntrack key of the flow it reports on.
    pub related: ConntrackKey,
    /// Working space of conntrack (the flow lives in a per-CPU map, not on the small stack):
    /// the flow's own key, and a new entry being built.
    pub key: ConntrackKey,
    pub entry: ConntrackValue,
    /// Set by conntrack when it refuses the packet: the workload (host-side ifindex) or host
    /// endpoint (its interface's ifindex) whose policy refused it, the rule id that denied (0: none) and the direction.
    pub refused_ifindex: u32,
    pub refused_rule: u32,
    pub refused_direction: u8,
}

impl Flow {
    /// Clears every field for a new packet, in place.
    #[inline(always)]
    pub fn reset(&mut self, family: u8, len: u64) {
        self.src = [0; 16];
        self.dst = [0; 16];
        self.sport = 0;
        self.dport = 0;
        self.ct_sport = 0;
        self.ct_dport = 0;
        self.len = len as u32;
        self.family = family;
        self.proto = 0;
        self.tcp_flags = 0;
        self.kind = flow_kind::NORMAL;
        self.nat = 0;
        self.reply_to_dnat = 0;
        self.zone = 0;
    }
}

/// Per-CPU scratch space (too large for the 512-byte stack): slot 0 holds the packet's flow,
/// slot 1 the flow as its opener sent it, when a policy change makes conntrack check it again.
#[btf_map(name = "cali_scratch")]
pub static SCRATCH: PerCpuArray<Flow, 2> = PerCpuArray::new();

/// Slot of [`SCRATCH`] that holds the packet's flow.
pub const PACKET_FLOW: u32 = 0;
/// Slot of [`SCRATCH`] that holds the flow as its opener sent it.
pub const OPENING_FLOW: u32 = 1;

/// The per-CPU scratch flow, reset for a new packet (in place: a `Flow` is too large to build
/// on the stack and copy).
#[inline(always)]
pub fn scratch_flow(family: u8, len: u64) -> Option<&'static mut Flow> {
    let flow = unsafe { &mut *SCRATCH.get_ptr_mut(PACKET_FLOW)? };
    flow.reset(family, len);
    Some(flow)
}

/// Orders two addresses as big-endian numbers (conntrack keys put the lower side first).
#[inline(always)]
pub fn compare_addrs(a: &[u8; 16], b: &[u8; 16]) -> core::cmp::Ordering {
    let a_hi = u64::from_be_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]);
    let b_hi = u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    if a_hi != b_hi {
        return a_hi.cmp(&b_hi);
    }
    let a_lo = u64::from_be_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]);
    let b_lo = u64::from_be_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]);
    a_lo.cmp(&b_lo)
}

/// What [`parse_ip`] found.
pub enum Parsed {
    /// An IPv4 or IPv6 packet, described in the flow.
    Ip,
    /// Not IP (ARP, for instance).
    Other,
    /// Truncated or invalid.
    Malformed,
}

/// Reads the IP and transport headers after the Ethernet header into `flow`.
#[inline(always)]
pub fn parse_ip(data: usize, data_end: usize, len: u64, flow: &mut Flow) -> Parsed {
    let Some(eth_type) = ptr_at::<[u8; 2]>(data, data_end, 12) else {
        return Parsed::Malformed;
    };
    match u16::from_be_bytes(unsafe { *eth_type }) {
        ETH_P_IP => match parse_ipv4(data, data_end, len, flow) {
            Some(_) => Parsed::Ip,
            None => Parsed::Malformed,
        },
        ETH_P_IPV6 => match parse_ipv6(data, data_end, len, flow) {
            Some(()) => Parsed::Ip,
            None => Parsed::Malformed,
        },
        _ => Parsed::Other,
    }
}

/// Validates an IPv4 header (honouring the IHL: the whole header, options included, must be
/// present, and the datagram must be at least as long as its header and no longer than the
/// frame) and reads it and the transport header into `flow`. Returns the header's length.
///
/// A BPF subprogram of its own, so that its temporaries do not add to the callers' stack.
#[inline(never)]
pub fn parse_ipv4(data: usize, data_end: usize, len: u64, flow: &mut Flow) -> Option<usize> {
    let hdr = unsafe { &*ptr_at::<[u8; IPV4_MIN_HLEN]>(data, data_end, ETH_HLEN)? };
    let version = hdr[0] >> 4;
    let header_len = ((hdr[0] & 0x0f) as usize) * 4;
    let total_len = u16::from_be_bytes([hdr[2], hdr[3]]) as u64;
    if version != 4
        || header_len < IPV4_MIN_HLEN
        || total_len < header_len as u64
        || data + ETH_HLEN + header_len > data_end
        || ETH_HLEN as u64 + total_len > len
    {
        return None;
    }
    flow.family = 4;
    flow.src[..4].copy_from_slice(&hdr[12..16]);
    flow.dst[..4].copy_from_slice(&hdr[16..20]);
    flow.proto = hdr[9];
    let first_fragment = u16::from_be_bytes([hdr[6], hdr[7]]) & 0x1fff == 0;
    parse_transport(data, data_end, ETH_HLEN + header_len, first_fragment, flow)?;
    Some(header_len)
}

/// The IPv6 header after the Ethernet header, when it is valid: version 6, and the payload
/// length within the packet's length `len`.
#[inline(always)]
pub fn ipv6_header(data: usize, data_end: usize, len: u64) -> Option<&'static mut [u8; IPV6_HLEN]> {
    let hdr = unsafe { &mut *ptr_at::<[u8; IPV6_HLEN]>(data, data_end, ETH_HLEN)? };
    let payload_len = u16::from_be_bytes([hdr[4], hdr[5]]) as u64;
    if hdr[0] >> 4 != 6 || (ETH_HLEN + IPV6_HLEN) as u64 + payload_len > len {
        return None;
    }
    Some(hdr)
}

/// Validates an IPv6 header and reads it and the transport header into `flow`, following the
/// extension headers (hop-by-hop options, routing, fragment, destination options,
/// authentication) to the transport header: the flow's protocol is the first next-header
/// value that is not one of them. A non-first fragment carries no transport header: its
/// protocol is the fragment header's next header, its ports stay 0. `None` (malformed) when a
/// header is truncated, or when there are more than [`IPV6_MAX_EXTENSION_HEADERS`] extension
/// headers or more than [`IPV6_MAX_EXTENSION_BYTES`] of them.
#[inline(never)]
pub fn parse_ipv6(data: usize, data_end: usize, len: u64, flow: &mut Flow) -> Option<()> {
    let hdr = ipv6_header(data, data_end, len)?;
    flow.family = 6;
    flow.src.copy_from_slice(&hdr[8..24]);
    flow.dst.copy_from_slice(&hdr[24..40]);
    let mut next = hdr[6];
    let mut l4 = ETH_HLEN + IPV6_HLEN;
    let mut first_fragment = true;
    for _ in 0..IPV6_MAX_EXTENSION_HEADERS {
        if !is_ipv6_extension(next) || !first_fragment {
            break;
        }
        // Opaque to the optimiser: otherwise it hoists `data_end - 4` out of the loop, and the
        // verifier refuses arithmetic on the end pointer.
        let data_end = core::hint::black_box(data_end);
        let ext = unsafe { &*ptr_at::<[u8; 4]>(data, data_end, l4)? };
        let ext_len = match next {
            // Eight bytes; the fragment offset in the top 13 bits of bytes 2 and 3.
            IPPROTO_FRAGMENT => {
                first_fragment = u16::from_be_bytes([ext[2], ext[3]]) & 0xfff8 == 0;
                8
            }
            // The payload length in 4-byte units, minus 2.
            IPPROTO_AH => (ext[1] as usize + 2) * 4,
            // The length in 8-byte units, not counting the first 8 bytes.
            _ => (ext[1] as usize + 1) * 8,
        };
        next = ext[0];
        l4 += ext_len;
        if l4 > ETH_HLEN + IPV6_HLEN + IPV6_MAX_EXTENSION_BYTES {
            return None;
        }
    }
    if (is_ipv6_extension(next) && first_fragment) || data + l4 > data_end {
        return None;
    }
    flow.proto = next;
    parse_transport(data, data_end, l4, first_fragment, flow)
}

/// Whether an ICMP type (of `proto`) is an error message that quotes the packet it is about.
#[inline(always)]
fn is_icmp_error(proto: u8, icmp_type: u8) -> bool {
    if proto == IPPROTO_ICMP {
        // Destination unreachable, source quench, redirect, time exceeded, parameter problem.
        matches!(icmp_type, 3 | 4 | 5 | 11 | 12)
    } else {
        // Destination unreachable, packet too big, time exceeded, parameter problem.
        matches!(icmp_type, 1..=4)
    }
}

/// Reads the transport header at `l4` into `flow` (whose addresses, family and protocol are
/// set). `first_fragment` is false for a non-first fragment, which carries no transport
/// header: its ports stay 0. Returns `None` when the header is truncated.
#[inline(always)]
fn parse_transport(
    data: usize,
    data_end: usize,
    l4: usize,
    first_fragment: bool,
    flow: &mut Flow,
) -> Option<()> {
    if !first_fragment {
        return Some(());
    }
    match flow.proto {
        IPPROTO_TCP => {
            let tcp = unsafe { &*ptr_at::<[u8; 14]>(data, data_end, l4)? };
            flow.sport = u16::from_be_bytes([tcp[0], tcp[1]]);
            flow.dport = u16::from_be_bytes([tcp[2], tcp[3]]);
            flow.tcp_flags = tcp[13];
        }
        IPPROTO_UDP | IPPROTO_UDPLITE | IPPROTO_SCTP => {
            let ports = unsafe { &*ptr_at::<[u8; 4]>(data, data_end, l4)? };
            flow.sport = u16::from_be_bytes([ports[0], ports[1]]);
            flow.dport = u16::from_be_bytes([ports[2], ports[3]]);
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let icmp = unsafe { &*ptr_at::<[u8; 8]>(data, data_end, l4)? };
            let (icmp_type, code) = (icmp[0], icmp[1]);
            flow.dport = (icmp_type as u16) << 8 | code as u16;
            let echo = if flow.proto == IPPROTO_ICMP {
                icmp_type == ICMP_ECHO_REQUEST || icmp_type == ICMP_ECHO_REPLY
            } else {
                icmp_type == ICMPV6_ECHO_REQUEST || icmp_type == ICMPV6_ECHO_REPLY
            };
            if echo {
                let id = u16::from_be_bytes([icmp[4], icmp[5]]);
                flow.ct_sport = id;
                flow.ct_dport = id;
                return Some(());
            }
            // Neighbour discovery and errors only in the family's own ICMP: ICMPv6 carried
            // by IPv4 (or ICMP by IPv6) is no housekeeping and relates to no flow, whatever
            // its type says.
            let own = if flow.family == 4 {
                flow.proto == IPPROTO_ICMP
            } else {
                flow.proto == IPPROTO_ICMPV6
            };
            if !own {
                return Some(());
            }
            if flow.proto == IPPROTO_ICMPV6 && (130..=137).contains(&icmp_type) {
                flow.kind = flow_kind::NEIGHBOUR_DISCOVERY;
                return Some(());
            }
            if is_icmp_error(flow.proto, icmp_type)
                && quoted_flow(data, data_end, l4 + 8, flow).is_some()
            {
                flow.kind = flow_kind::ICMP_ERROR;
            }
            return Some(());
        }
        _ => {}
    }
    flow.ct_sport = flow.sport;
    flow.ct_dport = flow.dport;
    Some(())
}

/// Reads the packet an ICMP error quotes (its IP header and first eight bytes, at `at`) into
/// `flow.related`, ordered as conntrack orders its keys. `None` when it is truncated or not of
/// the same family.
#[inline(always)]
fn quoted_flow(data: usize, data_end: usize, at: usize, flow: &mut Flow) -> Option<()> {
    // The quoted packet's source and destination go straight into the key, then get ordered.
    let key = &mut flow.related;
    key.addr_a = [0; 16];
    key.addr_b = [0; 16];
    let (proto, l4) = if flow.family == 4 {
        let ip = unsafe { &*ptr_at::<[u8; 20]>(data, data_end, at)? };
        let header_len = ((ip[0] & 0x0f) as usize) * 4;
        if ip[0] >> 4 != 4 || header_len < 20 {
            return None;
        }
        key.addr_a[..4].copy_from_slice(&ip[12..16]);
        key.addr_b[..4].copy_from_slice(&ip[16..20]);
        (ip[9], at + header_len)
    } else {
        let ip = unsafe { &*ptr_at::<[u8; 40]>(data, data_end, at)? };
        if ip[0] >> 4 != 6 {
            return None;
        }
        key.addr_a.copy_from_slice(&ip[8..24]);
        key.addr_b.copy_from_slice(&ip[24..40]);
        (ip[6], at + 40)
    };
    let (sport, dport) = match proto {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_UDPLITE | IPPROTO_SCTP => {
            let ports = unsafe { &*ptr_at::<[u8; 4]>(data, data_end, l4)? };
            (
                u16::from_be_bytes([ports[0], ports[1]]),
                u16::from_be_bytes([ports[2], ports[3]]),
            )
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let icmp = unsafe { &*ptr_at::<[u8; 8]>(data, data_end, l4)? };
            let id = u16::from_be_bytes([icmp[4], icmp[5]]);
            (id, id)
        }
        _ => (0, 0),
    };
    let key = &mut flow.related;
    key.port_a = sport;
    key.port_b = dport;
    key.proto = proto;
    key.family = flow.family;
    key.zone = 0;
    key._pad = 0;
    let swap = match compare_addrs(&key.addr_a, &key.addr_b) {
        core::cmp::Ordering::Less => false,
        core::cmp::Ordering::Greater => true,
        core::cmp::Ordering::Equal => sport > dport,
    };
    if swap {
        core::mem::swap(&mut key.addr_a, &mut key.addr_b);
        core::mem::swap(&mut key.port_a, &mut key.port_b);
    }
    Some(())
}
