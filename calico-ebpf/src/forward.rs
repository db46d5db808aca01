//! The from-workload pipeline, shared by the TC and XDP entry points.
//!
//! It works on the raw packet bytes `[data, data_end)`, checks every access against
//! `data_end`, rewrites headers in place and returns what the hook should do with the packet.
//! Counting happens here too, so both hooks count the same way.

use aya_ebpf::maps::lpm_trie::Key;
use calico_ebpf_common::{
    DropReason, EndpointCounters, EndpointInfo, RouteKind, RouteValue, SourceKeyV4, SourceKeyV6,
    UNKNOWN_INTERFACE_COUNTERS,
};

use crate::{
    flow::{Flow, flow_kind, parse_transport},
    maps::{COUNTERS, ENDPOINTS, ROUTES_V4, ROUTES_V6, SCRATCH, SOURCES_V4, SOURCES_V6},
    policy::{Admission, Side, admit},
};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86DD;
const IPV4_MIN_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const ARP_LEN: usize = 28;
const IPPROTO_ICMPV6: u8 = 58;
const ND_NEIGHBOUR_SOLICITATION: u8 = 135;
const ND_NEIGHBOUR_ADVERTISEMENT: u8 = 136;
/// An NS or NA without options: type, code, checksum, flags/reserved, target.
const ND_LEN: usize = 24;
/// The same with one link-layer address option.
const ND_WITH_LLA_LEN: usize = 32;

/// What the hook does with the packet.
pub enum Action {
    /// Hand the packet to the kernel stack.
    Pass,
    /// Drop the packet (already counted).
    Drop,
    /// Deliver the (rewritten) packet to the workload behind this host-side ifindex.
    Redirect { ifindex: u32 },
    /// Send the (rewritten) packet back out of the interface it came in on.
    Reflect,
}

/// Returns a pointer to a `T` at `offset`, or `None` when the packet is too short.
#[inline(always)]
pub fn ptr_at<T>(data: usize, data_end: usize, offset: usize) -> Option<*mut T> {
    let start = data + offset;
    if start + core::mem::size_of::<T>() > data_end {
        return None;
    }
    Some(start as *mut T)
}

#[inline(always)]
fn count_drop(counters: *mut EndpointCounters, reason: DropReason) -> Action {
    if let Some(c) = unsafe { counters.as_mut() } {
        c.drops[reason as usize] += 1;
    }
    Action::Drop
}

#[inline(always)]
fn count_pass(counters: *mut EndpointCounters, len: u64) -> Action {
    if let Some(c) = unsafe { counters.as_mut() } {
        c.to_host_packets += 1;
        c.to_host_bytes += len;
    }
    Action::Pass
}

/// Counts a packet delivered to the workload behind `ifindex`.
#[inline(always)]
pub fn count_to_workload(ifindex: u32, len: u64) {
    if let Some(c) = COUNTERS.get_ptr_mut(ifindex) {
        let c = unsafe { &mut *c };
        c.to_wl_packets += 1;
        c.to_wl_bytes += len;
    }
}

/// The per-CPU scratch flow, reset for a new packet (in place: a `Flow` is too large to build
/// on the stack and copy).
#[inline(always)]
fn scratch_flow(family: u8, len: u64) -> Option<&'static mut Flow> {
    let flow = unsafe { &mut *SCRATCH.get_ptr_mut(0)? };
    flow.reset(family, len);
    Some(flow)
}

/// The policy side of the workload whose endpoint entry this is.
#[inline(always)]
fn side(ifindex: u32, endpoint: &EndpointInfo) -> Side {
    Side {
        ifindex,
        ingress_policy: endpoint.ingress_policy,
        egress_policy: endpoint.egress_policy,
    }
}

/// Counts a drop against the workload behind `ifindex` (the one whose policy decided).
#[inline(always)]
fn count_drop_for(ifindex: u32, reason: DropReason) -> Action {
    count_drop(
        COUNTERS
            .get_ptr_mut(ifindex)
            .unwrap_or(core::ptr::null_mut()),
        reason,
    )
}

/// Maps a policy refusal onto its drop.
#[inline(always)]
fn refused(admission: Admission) -> Option<Action> {
    match admission {
        Admission::Allowed => None,
        Admission::Denied { ifindex } => Some(count_drop_for(ifindex, DropReason::PolicyDenied)),
        Admission::NoVerdict { ifindex } => {
            Some(count_drop_for(ifindex, DropReason::PolicyMissing))
        }
    }
}

/// Runs the pipeline for a packet that the workload behind `ifindex` sent.
///
/// `[data, data_end)` must hold at least the headers (the TC entry point pulls them into the
/// linear area); `len` is the whole packet's length, which may extend into fragments that
/// direct access cannot see, so length fields are checked against `len`.
///
/// `redirect_needs_mac` says whether the hook can only deliver to a workload whose MAC is known
/// (XDP: the receiving veth checks the destination MAC); such packets then go to the kernel.
#[inline(always)]
pub fn from_workload(
    data: usize,
    data_end: usize,
    ifindex: u32,
    len: u64,
    redirect_needs_mac: bool,
) -> Action {
    let counters = COUNTERS
        .get_ptr_mut(ifindex)
        .unwrap_or(core::ptr::null_mut());
    let Some(endpoint) = ENDPOINTS.get_ptr(ifindex) else {
        // Not an interface the agent manages (or one being removed): never forward for it.
        let unknown = COUNTERS
            .get_ptr_mut(UNKNOWN_INTERFACE_COUNTERS)
            .unwrap_or(core::ptr::null_mut());
        return count_drop(unknown, DropReason::UnknownInterface);
    };
    let endpoint = unsafe { &*endpoint };
    if let Some(c) = unsafe { counters.as_mut() } {
        c.from_wl_packets += 1;
        c.from_wl_bytes += len;
    }
    let host_mac = endpoint.host_mac;
    let sender = side(ifindex, endpoint);

    let Some(eth_type) = ptr_at::<[u8; 2]>(data, data_end, 12) else {
        return count_drop(counters, DropReason::Malformed);
    };
    match u16::from_be_bytes(unsafe { *eth_type }) {
        ETH_P_IP => ipv4(
            data,
            data_end,
            ifindex,
            len,
            sender,
            counters,
            redirect_needs_mac,
        ),
        ETH_P_IPV6 => ipv6(
            data,
            data_end,
            ifindex,
            len,
            host_mac,
            sender,
            counters,
            redirect_needs_mac,
        ),
        ETH_P_ARP => arp(data, data_end, host_mac, counters, len),
        _ => count_pass(counters, len),
    }
}

/// Runs the to-workload pipeline for a packet the kernel sends to the workload behind
/// `ifindex`: the workload's ingress policy, through conntrack.
#[inline(always)]
pub fn to_workload(data: usize, data_end: usize, ifindex: u32, len: u64) -> Action {
    let Some(endpoint) = ENDPOINTS.get_ptr(ifindex) else {
        let unknown = COUNTERS
            .get_ptr_mut(UNKNOWN_INTERFACE_COUNTERS)
            .unwrap_or(core::ptr::null_mut());
        return count_drop(unknown, DropReason::UnknownInterface);
    };
    let receiver = side(ifindex, unsafe { &*endpoint });
    let counters = COUNTERS
        .get_ptr_mut(ifindex)
        .unwrap_or(core::ptr::null_mut());
    let Some(flow) = scratch_flow(0, len) else {
        return count_drop(counters, DropReason::Malformed);
    };
    let parsed = match parse_ip(data, data_end, len, flow) {
        Parsed::Ip => true,
        Parsed::Other => false,
        Parsed::Malformed => return count_drop(counters, DropReason::Malformed),
    };
    if parsed && let Some(drop) = refused(admit(flow, &Side::NONE, &receiver)) {
        return drop;
    }
    count_to_workload(ifindex, len);
    Action::Pass
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
fn parse_ipv4(data: usize, data_end: usize, len: u64, flow: &mut Flow) -> Option<usize> {
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

/// Validates an IPv6 header and reads it and the transport header into `flow`. Extension
/// headers are not followed: the first next-header value is the flow's protocol.
#[inline(never)]
fn parse_ipv6(data: usize, data_end: usize, len: u64, flow: &mut Flow) -> Option<()> {
    let hdr = unsafe { &*ptr_at::<[u8; IPV6_HLEN]>(data, data_end, ETH_HLEN)? };
    let payload_len = u16::from_be_bytes([hdr[4], hdr[5]]) as u64;
    if hdr[0] >> 4 != 6 || (ETH_HLEN + IPV6_HLEN) as u64 + payload_len > len {
        return None;
    }
    flow.family = 6;
    flow.src.copy_from_slice(&hdr[8..24]);
    flow.dst.copy_from_slice(&hdr[24..40]);
    flow.proto = hdr[6];
    parse_transport(data, data_end, ETH_HLEN + IPV6_HLEN, true, flow)
}

/// Answers an ARP request on behalf of the gateway (proxy ARP, as Calico's host side does), so
/// the workload resolves 169.254.1.1 (and anything else it asks for) to the host side's MAC.
#[inline(always)]
fn arp(
    data: usize,
    data_end: usize,
    host_mac: [u8; 6],
    counters: *mut EndpointCounters,
    len: u64,
) -> Action {
    let Some(arp) = ptr_at::<[u8; ARP_LEN]>(data, data_end, ETH_HLEN) else {
        return count_drop(counters, DropReason::Malformed);
    };
    let arp = unsafe { &mut *arp };
    // Ethernet/IPv4 request only: htype 1, ptype 0x0800, hlen 6, plen 4, op 1.
    if arp[0..8] != [0, 1, 0x08, 0x00, 6, 4, 0, 1] {
        return count_pass(counters, len);
    }
    let sender_mac = [arp[8], arp[9], arp[10], arp[11], arp[12], arp[13]];
    let sender_ip = [arp[14], arp[15], arp[16], arp[17]];
    let target_ip = [arp[24], arp[25], arp[26], arp[27]];
    if target_ip == sender_ip || target_ip == [0; 4] {
        // Gratuitous ARP or a probe: nothing to answer.
        return count_pass(counters, len);
    }
    arp[7] = 2; // reply
    arp[8..14].copy_from_slice(&host_mac);
    arp[14..18].copy_from_slice(&target_ip);
    arp[18..24].copy_from_slice(&sender_mac);
    arp[24..28].copy_from_slice(&sender_ip);
    let Some(eth) = ptr_at::<[u8; 12]>(data, data_end, 0) else {
        return count_drop(counters, DropReason::Malformed);
    };
    let eth = unsafe { &mut *eth };
    eth[0..6].copy_from_slice(&sender_mac);
    eth[6..12].copy_from_slice(&host_mac);
    if let Some(c) = unsafe { counters.as_mut() } {
        c.neighbour_replies += 1;
    }
    Action::Reflect
}

#[inline(always)]
fn ipv4(
    data: usize,
    data_end: usize,
    ifindex: u32,
    len: u64,
    sender: Side,
    counters: *mut EndpointCounters,
    redirect_needs_mac: bool,
) -> Action {
    let Some(flow) = scratch_flow(4, len) else {
        return count_drop(counters, DropReason::Malformed);
    };
    let Some(_) = parse_ipv4(data, data_end, len, flow) else {
        return count_drop(counters, DropReason::Malformed);
    };
    let src = [flow.src[0], flow.src[1], flow.src[2], flow.src[3]];
    let dst = [flow.dst[0], flow.dst[1], flow.dst[2], flow.dst[3]];

    let src_key = Key::new(64, SourceKeyV4 { ifindex, addr: src });
    if SOURCES_V4.get(&src_key).is_none() {
        return count_drop(counters, DropReason::SpoofedSource);
    }

    let route = ROUTES_V4.get(&Key::new(32, dst));
    let local = match route.map(|r| RouteKind::from_u32(r.kind)) {
        Some(Some(RouteKind::LocalWorkload)) => route,
        Some(Some(RouteKind::Blackhole)) => return count_drop(counters, DropReason::Blackhole),
        _ => None,
    };
    let receiver = match receiver_side(local) {
        Ok(receiver) => receiver,
        Err(drop) => return drop,
    };
    if let Some(drop) = refused(admit(flow, &sender, &receiver)) {
        return drop;
    }
    let Some(route) = local else {
        return count_pass(counters, len);
    };
    let Some(hdr) = ptr_at::<[u8; IPV4_MIN_HLEN]>(data, data_end, ETH_HLEN) else {
        return count_drop(counters, DropReason::Malformed);
    };
    let hdr = unsafe { &mut *hdr };
    if hdr[8] <= 1 || (redirect_needs_mac && route.mac == [0; 6]) {
        // Let the kernel send the ICMP time-exceeded error, or resolve the neighbour.
        return count_pass(counters, len);
    }
    // Decrement the TTL and patch the header checksum incrementally (RFC 1624): the 16-bit word
    // holding TTL and protocol drops by 0x0100, so the checksum grows by 0x0100.
    hdr[8] -= 1;
    let mut check = u16::from_be_bytes([hdr[10], hdr[11]]) as u32 + 0x0100;
    check = (check & 0xffff) + (check >> 16);
    let check = (check as u16).to_be_bytes();
    hdr[10] = check[0];
    hdr[11] = check[1];
    redirect_to_workload(data, data_end, route, len, counters)
}

/// The receiving side of a packet routed to a local workload (none for other destinations).
/// A local workload whose endpoint entry is missing has no policy programmed yet: its traffic
/// is dropped, never let through unchecked.
#[inline(always)]
fn receiver_side(local: Option<&RouteValue>) -> Result<Side, Action> {
    let Some(route) = local else {
        return Ok(Side::NONE);
    };
    match ENDPOINTS.get_ptr(route.ifindex) {
        Some(endpoint) => Ok(side(route.ifindex, unsafe { &*endpoint })),
        None => Err(count_drop_for(route.ifindex, DropReason::PolicyMissing)),
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn ipv6(
    data: usize,
    data_end: usize,
    ifindex: u32,
    len: u64,
    host_mac: [u8; 6],
    sender: Side,
    counters: *mut EndpointCounters,
    redirect_needs_mac: bool,
) -> Action {
    let Some(hdr) = ptr_at::<[u8; IPV6_HLEN]>(data, data_end, ETH_HLEN) else {
        return count_drop(counters, DropReason::Malformed);
    };
    let hdr = unsafe { &mut *hdr };
    let payload_len = u16::from_be_bytes([hdr[4], hdr[5]]) as u64;
    if hdr[0] >> 4 != 6 || (ETH_HLEN + IPV6_HLEN) as u64 + payload_len > len {
        return count_drop(counters, DropReason::Malformed);
    }
    // Neighbour solicitations (for the gateway, normally) are answered here, like ARP, so the
    // workload's IPv6 gateway does not depend on the host side's own addresses being ready.
    if hdr[6] == IPPROTO_ICMPV6
        && let Some(action) = neighbour_solicitation(data, data_end, hdr, host_mac, counters)
    {
        return action;
    }
    let Some(flow) = scratch_flow(6, len) else {
        return count_drop(counters, DropReason::Malformed);
    };
    if parse_ipv6(data, data_end, len, flow).is_none() {
        return count_drop(counters, DropReason::Malformed);
    }
    // Other link-local and multicast destinations (MLD, DAD, router solicitations) are for the
    // host and are never forwarded; neighbour discovery and MLD bypass policy, the rest is the
    // workload's egress traffic to the host.
    let dst0 = flow.dst[0];
    let dst1 = flow.dst[1];
    if dst0 == 0xff || (dst0 == 0xfe && dst1 & 0xc0 == 0x80) {
        if let Some(drop) = refused(admit(flow, &sender, &Side::NONE)) {
            return drop;
        }
        return count_pass(counters, len);
    }
    if flow.kind == flow_kind::NEIGHBOUR_DISCOVERY {
        return count_pass(counters, len);
    }

    let src_key = Key::new(
        32 + 128,
        SourceKeyV6 {
            ifindex,
            addr: flow.src,
        },
    );
    if SOURCES_V6.get(&src_key).is_none() {
        return count_drop(counters, DropReason::SpoofedSource);
    }

    let route = ROUTES_V6.get(&Key::new(128, flow.dst));
    let local = match route.map(|r| RouteKind::from_u32(r.kind)) {
        Some(Some(RouteKind::LocalWorkload)) => route,
        Some(Some(RouteKind::Blackhole)) => return count_drop(counters, DropReason::Blackhole),
        _ => None,
    };
    let receiver = match receiver_side(local) {
        Ok(receiver) => receiver,
        Err(drop) => return drop,
    };
    if let Some(drop) = refused(admit(flow, &sender, &receiver)) {
        return drop;
    }
    let Some(route) = local else {
        return count_pass(counters, len);
    };
    if hdr[7] <= 1 || (redirect_needs_mac && route.mac == [0; 6]) {
        return count_pass(counters, len);
    }
    hdr[7] -= 1;
    redirect_to_workload(data, data_end, route, len, counters)
}

/// Rewrites the Ethernet header for delivery to a local workload and returns the redirect.
#[inline(always)]
fn redirect_to_workload(
    data: usize,
    data_end: usize,
    route: &RouteValue,
    len: u64,
    counters: *mut EndpointCounters,
) -> Action {
    let Some(eth) = ptr_at::<[u8; 12]>(data, data_end, 0) else {
        return count_drop(counters, DropReason::Malformed);
    };
    let eth = unsafe { &mut *eth };
    if route.mac != [0; 6] {
        eth[0..6].copy_from_slice(&route.mac);
    }
    eth[6..12].copy_from_slice(&route.host_mac);
    if let Some(c) = unsafe { counters.as_mut() } {
        c.fwd_packets += 1;
        c.fwd_bytes += len;
    }
    count_to_workload(route.ifindex, len);
    Action::Redirect {
        ifindex: route.ifindex,
    }
}

/// Counts a failed redirect against the sending workload.
#[inline(always)]
pub fn count_redirect_failure(ifindex: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(ifindex) {
        unsafe { (*c).drops[DropReason::RedirectFailed as usize] += 1 };
    }
}

/// Answers a neighbour solicitation from the workload with a neighbour advertisement for the
/// host side's MAC (proxy NDP), rewriting the packet in place. Returns `None` for anything that
/// is not a plain solicitation this can answer (DAD probes, unusual options), which then takes
/// the normal path to the kernel.
#[inline(always)]
fn neighbour_solicitation(
    data: usize,
    data_end: usize,
    ip: &mut [u8; IPV6_HLEN],
    host_mac: [u8; 6],
    counters: *mut EndpointCounters,
) -> Option<Action> {
    let payload_len = u16::from_be_bytes([ip[4], ip[5]]) as usize;
    // Hop limit 255 proves the sender is on this link (RFC 4861 §7.1.1); the unspecified source
    // marks duplicate address detection, which must stay unanswered.
    if ip[7] != 255 || ip[8..24] == [0u8; 16] {
        return None;
    }
    let offset = ETH_HLEN + IPV6_HLEN;
    let solicitation = ptr_at::<[u8; ND_LEN]>(data, data_end, offset)?;
    let header = unsafe { &*solicitation };
    if header[0] != ND_NEIGHBOUR_SOLICITATION || header[1] != 0 {
        return None;
    }
    let mut target = [0u8; 16];
    target.copy_from_slice(&header[8..24]);
    if target[..] == ip[8..24] {
        return None;
    }
    let with_option = match payload_len {
        ND_WITH_LLA_LEN => {
            let nd = unsafe { &*ptr_at::<[u8; ND_WITH_LLA_LEN]>(data, data_end, offset)? };
            // Only a source link-layer address option (type 1, 8 bytes) is expected.
            if nd[24] != 1 || nd[25] != 1 {
                return None;
            }
            true
        }
        ND_LEN => false,
        _ => return None,
    };

    // The advertisement goes back to the solicitor, from the target address.
    let mut solicitor = [0u8; 16];
    solicitor.copy_from_slice(&ip[8..24]);
    ip[8..24].copy_from_slice(&target);
    ip[24..40].copy_from_slice(&solicitor);
    let seed = pseudo_header_sum(ip, payload_len as u32);

    if with_option {
        let nd = unsafe { &mut *ptr_at::<[u8; ND_WITH_LLA_LEN]>(data, data_end, offset)? };
        write_advertisement_header(nd);
        // The source link-layer address option becomes the target link-layer address option,
        // carrying the host side's MAC.
        nd[24] = 2;
        nd[26..32].copy_from_slice(&host_mac);
        let checksum = (!fold(seed + sum16(nd))).to_be_bytes();
        nd[2] = checksum[0];
        nd[3] = checksum[1];
    } else {
        // A unicast solicitation without options: the answer needs none either.
        let nd = unsafe { &mut *solicitation };
        write_advertisement_header(nd);
        let checksum = (!fold(seed + sum16(nd))).to_be_bytes();
        nd[2] = checksum[0];
        nd[3] = checksum[1];
    }

    let eth = ptr_at::<[u8; 12]>(data, data_end, 0)?;
    let eth = unsafe { &mut *eth };
    let mut requester_mac = [0u8; 6];
    requester_mac.copy_from_slice(&eth[6..12]);
    eth[0..6].copy_from_slice(&requester_mac);
    eth[6..12].copy_from_slice(&host_mac);
    if let Some(c) = unsafe { counters.as_mut() } {
        c.neighbour_replies += 1;
    }
    Some(Action::Reflect)
}

/// Turns the first eight bytes of a solicitation into an advertisement's: type 136, code 0,
/// checksum zeroed for the computation, flags Router, Solicited and Override.
#[inline(always)]
fn write_advertisement_header<const N: usize>(nd: &mut [u8; N]) {
    nd[0] = ND_NEIGHBOUR_ADVERTISEMENT;
    nd[1] = 0;
    nd[2] = 0;
    nd[3] = 0;
    nd[4] = 0xe0;
    nd[5] = 0;
    nd[6] = 0;
    nd[7] = 0;
}

/// Sum of the ICMPv6 pseudo-header: addresses, upper-layer length and next header.
#[inline(always)]
fn pseudo_header_sum(ip: &[u8; IPV6_HLEN], upper_len: u32) -> u32 {
    let mut sum = 0u32;
    let mut i = 8;
    while i < IPV6_HLEN {
        sum += u16::from_be_bytes([ip[i], ip[i + 1]]) as u32;
        i += 2;
    }
    sum + (upper_len >> 16) + (upper_len & 0xffff) + IPPROTO_ICMPV6 as u32
}

#[inline(always)]
fn sum16<const N: usize>(bytes: &[u8; N]) -> u32 {
    let mut sum = 0u32;
    let mut i = 0;
    while i + 1 < N {
        sum += u16::from_be_bytes([bytes[i], bytes[i + 1]]) as u32;
        i += 2;
    }
    sum
}

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The trace program's work: for the endpoint behind `ifindex` and one direction, what
/// conntrack (read only) and policy decide for the packet, written to the trace map. Nothing
/// live changes: no conntrack entry, no counter, no Log event.
#[inline(always)]
pub fn trace(data: usize, data_end: usize, ifindex: u32, ingress: bool, len: u64) {
    use calico_ebpf_common::{TraceResult, direction, trace_decided_by, verdict_action};

    use crate::{maps::TRACE, policy};

    let Some(slot) = TRACE.get_ptr_mut(0) else {
        return;
    };
    let slot = unsafe { &mut *slot };
    let mut result = TraceResult {
        direction: if ingress {
            direction::INGRESS
        } else {
            direction::EGRESS
        },
        action: verdict_action::DENY,
        sequence: slot.sequence + 1,
        ..TraceResult::default()
    };
    let Some(flow) = scratch_flow(0, len) else {
        return;
    };
    match (
        ENDPOINTS.get_ptr(ifindex),
        parse_ip(data, data_end, len, flow),
    ) {
        (None, _) => result.decided_by = trace_decided_by::NO_ENDPOINT,
        (Some(_), Parsed::Other | Parsed::Malformed) => {
            result.decided_by = trace_decided_by::MALFORMED
        }
        (Some(endpoint), Parsed::Ip) => {
            let endpoint = unsafe { &*endpoint };
            let policy_id = if ingress {
                endpoint.ingress_policy
            } else {
                endpoint.egress_policy
            };
            result.policy = policy_id;
            if flow.kind == flow_kind::NEIGHBOUR_DISCOVERY {
                result.action = verdict_action::ALLOW;
                result.decided_by = trace_decided_by::CONNTRACK;
            } else if let Some(rule) = policy::tracked(flow, policy_id, ingress) {
                result.action = verdict_action::ALLOW;
                result.decided_by = trace_decided_by::CONNTRACK;
                result.rule = rule;
            } else {
                let found = policy::lookup(policy_id, flow, ingress);
                result.address_class = found.address_class;
                result.port_class = found.port_class;
                if found.verdict.action == 0 {
                    result.decided_by = trace_decided_by::NO_VERDICT;
                } else {
                    result.decided_by = trace_decided_by::POLICY;
                    result.action = found.verdict.action;
                    result.flags = found.verdict.flags;
                    result.rule = found.verdict.rule;
                    result.log_rule = found.verdict.log_rule;
                }
            }
        }
    }
    *slot = result;
}
