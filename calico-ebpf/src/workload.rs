//! The workload pipelines: packets from a workload (shared by the TC and XDP entry points) and
//! packets the kernel sends to a workload (TC egress).
//!
//! They work on the raw packet bytes `[data, data_end)`, check every access against
//! `data_end`, rewrite headers in place and return what the hook should do with the packet.
//! Counting happens here too, so both hooks count the same way. IPv4 and IPv6 take one path,
//! generic over the address family ([`Family`]); what differs between the hooks is the
//! [`Hook`].

use aya_ebpf::cty::c_void;
use calico_ebpf_common::{
    DropReason, EndpointInfo, RouteKind, RouteValue, direction, endpoint_flags,
};

use crate::{
    conntrack::admit,
    counters::{
        Action, Counted, count_drop, count_forwarded, count_forwarded_remote, count_from_workload,
        count_pass, count_refusal, count_to_workload, count_unknown_interface,
    },
    dhcp,
    events::Headers,
    forward::{self, Hook},
    maps::ENDPOINTS,
    nat, neighbour,
    packet::{
        ETH_HLEN, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, Flow, Parsed, V4, V6, ipv6_header, parse_ip,
        ptr_at, scratch_flow,
    },
    policy::{Side, admission},
    routes::{FORWARD_HEADER_LEN, Family, OnLink},
};

/// The policy side of the workload whose endpoint entry this is.
#[inline(always)]
fn side(ifindex: u32, endpoint: &EndpointInfo) -> Side {
    Side {
        ifindex,
        ingress_policy: endpoint.ingress_policy,
        egress_policy: endpoint.egress_policy,
        flags: 0,
    }
}

/// Maps conntrack's `outcome` for the packet `flow` onto its drop, when it was refused.
#[inline(always)]
pub fn refused(outcome: u8, flow: &Flow) -> Option<Action> {
    let reason = match outcome {
        admission::ALLOWED => return None,
        admission::DENIED => DropReason::PolicyDenied,
        admission::UNTRACKED => DropReason::ConntrackFull,
        _ => DropReason::PolicyMissing,
    };
    Some(count_refusal(
        flow.refused_ifindex,
        flow.refused_direction,
        reason,
        flow.refused_rule,
    ))
}

/// Runs the pipeline for a packet that the workload behind `ifindex` sent.
///
/// `[data, data_end)` must hold at least the headers (the TC entry point pulls them into the
/// linear area); `len` is the whole packet's length, which may extend into fragments that
/// direct access cannot see, so length fields are checked against `len`.
///
/// `hook` is the hook the program runs on: it says whether delivery needs the target's MAC
/// (XDP: the receiving veth checks the destination MAC; such packets then go to the kernel),
/// and gives the context the FIB lookup for destinations on other hosts runs on.
#[inline(always)]
pub fn from_workload<H: Hook>(
    hook: &H,
    data: usize,
    data_end: usize,
    ifindex: u32,
    len: u64,
) -> Action {
    let Some(endpoint) = ENDPOINTS.get_ptr(ifindex) else {
        // Not an interface the agent manages (or one being removed): never forward for it.
        return count_unknown_interface(ifindex, direction::EGRESS);
    };
    let endpoint = unsafe { &*endpoint };
    let counters = Counted::egress(ifindex);
    count_from_workload(counters, len);
    let host_mac = endpoint.host_mac;
    let flags = endpoint.flags;
    let sender = side(ifindex, endpoint);

    let Some(eth_type) = ptr_at::<[u8; 2]>(data, data_end, 12) else {
        return count_drop(counters, DropReason::Malformed, Headers::Unread);
    };
    match u16::from_be_bytes(unsafe { *eth_type }) {
        ETH_P_IP => ip::<V4, H>(
            hook,
            data,
            data_end,
            ifindex,
            len,
            sender,
            counters,
            endpoint.dhcp_server,
            flags,
        ),
        ETH_P_IPV6 => {
            let Some(hdr) = ipv6_header(data, data_end, len) else {
                return count_drop(counters, DropReason::Malformed, Headers::Unread);
            };
            // Neighbour solicitations (for the gateway, normally) are answered here, like ARP,
            // so the workload's IPv6 gateway does not depend on the host side's own addresses
            // being ready.
            if let Some(action) = neighbour::solicitation(data, data_end, hdr, host_mac, counters) {
                return action;
            }
            ip::<V6, H>(
                hook,
                data,
                data_end,
                ifindex,
                len,
                sender,
                counters,
                [0; 4],
                flags & !endpoint_flags::FLOATING_IPS,
            )
        }
        ETH_P_ARP => neighbour::arp(data, data_end, host_mac, counters, len),
        _ => count_pass(counters, len),
    }
}

/// The from-workload pipeline of an IP packet: parsing, anti-spoofing, route, conntrack and
/// policy, then delivery to a local workload, forwarding to a workload of another host, or
/// hand-off to the kernel. `dhcp_server` is the address the agent answers DHCP as for this
/// workload (all zeroes: none); `flags` are the endpoint's: whether it has floating IPs (its
/// packets to outside the pools, and its replies to flows that addressed a floating IP, leave
/// from the external address), and whether its traffic to the host itself is dropped once its
/// egress policy allowed it (`DefaultEndpointToHostAction`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn ip<F: Family, H: Hook>(
    hook: &H,
    data: usize,
    data_end: usize,
    ifindex: u32,
    len: u64,
    sender: Side,
    counters: Counted,
    dhcp_server: [u8; 4],
    flags: u32,
) -> Action {
    let floating_ips = flags & endpoint_flags::FLOATING_IPS != 0;
    let to_host_drop = flags & endpoint_flags::TO_HOST_DROP != 0;
    let Some(flow) = scratch_flow(F::FAMILY, len) else {
        return count_drop(counters, DropReason::Malformed, Headers::Unread);
    };
    if F::parse(data, data_end, len, flow).is_none() {
        return count_drop(counters, DropReason::Malformed, Headers::Unread);
    }
    // A VM's DHCP request goes to the agent whatever its policy says; from 0.0.0.0, it is the
    // only thing that passes anti-spoofing.
    if dhcp::is_request(flow, dhcp_server)
        && (dhcp::from_unspecified(flow) || F::source_allowed(ifindex, flow))
        && let Some(action) = dhcp::to_agent(data, data_end, counters, len)
    {
        return action;
    }
    match F::on_link(flow) {
        OnLink::No => {}
        OnLink::Policed => {
            if let Some(drop) = refused(admit(flow, &sender, &Side::NONE), flow) {
                return drop;
            }
            if to_host_drop {
                return count_drop(counters, DropReason::EndpointToHost, Headers::Parsed);
            }
            return count_pass(counters, len);
        }
        OnLink::Housekeeping => return count_pass(counters, len),
    }

    if !F::source_allowed(ifindex, flow) {
        return count_drop(counters, DropReason::SpoofedSource, Headers::Parsed);
    }

    let route = F::route(flow);
    let (mut data, mut data_end) = (data, data_end);
    if let Some(r) = route
        && r.kind == RouteKind::FloatingIp as u32
    {
        // A floating IP of a local workload: to its internal address before conntrack and
        // policy see the packet.
        if !nat::dnat::<H>(hook.ctx(), data, data_end, flow) {
            return count_pass(counters, len);
        }
        (data, data_end) = hook.packet();
    }
    let mut remote = false;
    let local = match route.map(|r| RouteKind::from_u32(r.kind)) {
        Some(Some(RouteKind::LocalWorkload | RouteKind::FloatingIp)) => route,
        Some(Some(RouteKind::RemoteWorkload)) => {
            remote = true;
            None
        }
        Some(Some(RouteKind::Blackhole)) => {
            return count_drop(counters, DropReason::Blackhole, Headers::Parsed);
        }
        _ => None,
    };
    let (receiver, tap) = match receiver_side(local) {
        Ok(receiver) => receiver,
        Err(drop) => return drop,
    };
    if let Some(drop) = refused(admit(flow, &sender, &receiver), flow) {
        return drop;
    }
    // Traffic to the host itself, once egress policy allowed it: DefaultEndpointToHostAction.
    if to_host_drop && F::to_host(flow, route) {
        return count_drop(counters, DropReason::EndpointToHost, Headers::Parsed);
    }
    // Source NAT to the floating IP, after egress policy saw the internal address: to outside
    // the pools (no route), a reply to a flow that addressed the floating IP, or the workload
    // reaching its own floating IP (the hairpin: after destination NAT, source and destination
    // are the same address).
    // Whatever it did, the call leaves earlier packet pointers invalid (in TC it may have
    // rewritten the packet through helpers).
    let hairpin = flow.nat & nat::flow_nat::DNAT != 0 && flow.src == flow.dst;
    if floating_ips && (route.is_none() || flow.reply_to_dnat != 0 || hairpin) {
        nat::snat::<H>(hook.ctx(), data, data_end, flow);
        (data, data_end) = hook.packet();
    }
    let Some(route) = local else {
        if remote {
            let out = forward_to_remote::<F, H>(hook.ctx(), data, data_end, ifindex, flow);
            if out != 0 {
                count_forwarded_remote(counters, len);
                return Action::Forward { ifindex: out };
            }
        }
        return count_pass(counters, len);
    };
    let Some(hdr) = ptr_at::<[u8; FORWARD_HEADER_LEN]>(data, data_end, ETH_HLEN) else {
        return count_drop(counters, DropReason::Malformed, Headers::Parsed);
    };
    let hdr = unsafe { &mut *hdr };
    if F::hop_limit(hdr) <= 1 || ((H::XDP || tap) && route.mac == [0; 6]) {
        // Let the kernel send the ICMP time-exceeded error, or resolve the neighbour: XDP
        // cannot deliver without the target's MAC, and a VM takes only frames for its own.
        return count_pass(counters, len);
    }
    F::decrement_hop_limit(hdr);
    redirect_to_workload(data, data_end, route, tap, len, counters)
}

/// Prepares a packet for a workload of another host (policy and conntrack have let it through)
/// to leave through the program: the kernel's FIB names the egress interface and next hop, and
/// the packet becomes one hop older (in XDP, its MACs become the FIB's). Returns the egress
/// ifindex, or 0 when the kernel should forward the packet: an expiring TTL, no route, no
/// neighbour entry yet (the kernel resolves it, and forwards this packet), a packet too big for
/// the egress MTU.
///
/// A BPF subprogram of its own (`ctx` is the hook's context): the from-workload path of local
/// traffic does not carry its code.
#[inline(never)]
fn forward_to_remote<F: Family, H: Hook>(
    ctx: *mut c_void,
    data: usize,
    data_end: usize,
    ifindex: u32,
    flow: &Flow,
) -> u32 {
    let Some(hdr) = ptr_at::<[u8; FORWARD_HEADER_LEN]>(data, data_end, ETH_HLEN) else {
        return 0;
    };
    let hdr = unsafe { &mut *hdr };
    if F::hop_limit(hdr) <= 1 {
        return 0;
    }
    let Some(out) = forward::lookup::<H>(ctx, flow, ifindex, F::ip_len(hdr)) else {
        return 0;
    };
    if H::XDP {
        // XDP has no neighbour output: the MACs come from the lookup.
        let (Some((dmac, smac)), Some(eth)) =
            (forward::macs(), ptr_at::<[u8; 12]>(data, data_end, 0))
        else {
            return 0;
        };
        let eth = unsafe { &mut *eth };
        eth[0..6].copy_from_slice(&dmac);
        eth[6..12].copy_from_slice(&smac);
    }
    F::decrement_hop_limit(hdr);
    out
}

/// The receiving side of a (parsed) packet routed to a local workload (none for other
/// destinations), and whether its interface is a tap. A local workload whose endpoint entry is
/// missing has no policy programmed yet: its traffic is dropped, never let through unchecked.
#[inline(always)]
pub fn receiver_side(local: Option<&RouteValue>) -> Result<(Side, bool), Action> {
    let Some(route) = local else {
        return Ok((Side::NONE, false));
    };
    match ENDPOINTS.get_ptr(route.ifindex) {
        Some(endpoint) => {
            let endpoint = unsafe { &*endpoint };
            let tap = endpoint.flags & endpoint_flags::TAP != 0;
            Ok((side(route.ifindex, endpoint), tap))
        }
        None => Err(count_refusal(
            route.ifindex,
            direction::INGRESS,
            DropReason::PolicyMissing,
            0,
        )),
    }
}

/// Rewrites the Ethernet header for delivery to a local workload and returns the redirect:
/// into a veth's peer, or out of a tap.
#[inline(always)]
fn redirect_to_workload(
    data: usize,
    data_end: usize,
    route: &RouteValue,
    tap: bool,
    len: u64,
    counters: Counted,
) -> Action {
    let Some(eth) = ptr_at::<[u8; 12]>(data, data_end, 0) else {
        return count_drop(counters, DropReason::Malformed, Headers::Parsed);
    };
    let eth = unsafe { &mut *eth };
    if route.mac != [0; 6] {
        eth[0..6].copy_from_slice(&route.mac);
    }
    eth[6..12].copy_from_slice(&route.host_mac);
    count_forwarded(counters, len);
    count_to_workload(route.ifindex, len);
    delivery(route.ifindex, tap)
}

/// How a packet reaches the workload behind `ifindex`: through the peer of a veth, or out of
/// a tap (its egress queues the frame for the VM).
#[inline(always)]
pub fn delivery(ifindex: u32, tap: bool) -> Action {
    if tap {
        Action::Transmit { ifindex }
    } else {
        Action::Redirect { ifindex }
    }
}

/// Runs the to-workload pipeline for a packet the kernel sends to the workload behind
/// `ifindex`: destination NAT of its floating IPs (the kernel routes them to its interface),
/// then the workload's ingress policy, through conntrack.
#[inline(always)]
pub fn to_workload<H: Hook>(
    hook: &H,
    data: usize,
    data_end: usize,
    ifindex: u32,
    len: u64,
) -> Action {
    let Some(endpoint) = ENDPOINTS.get_ptr(ifindex) else {
        return count_unknown_interface(ifindex, direction::INGRESS);
    };
    let endpoint = unsafe { &*endpoint };
    let floating_ips = endpoint.flags & endpoint_flags::FLOATING_IPS != 0;
    let receiver = side(ifindex, endpoint);
    let counters = Counted::ingress(ifindex);
    let Some(flow) = scratch_flow(0, len) else {
        return count_drop(counters, DropReason::Malformed, Headers::Unread);
    };
    let parsed = match parse_ip(data, data_end, len, flow) {
        Parsed::Ip => true,
        Parsed::Other => false,
        Parsed::Malformed => {
            return count_drop(counters, DropReason::Malformed, Headers::Unread);
        }
    };
    if parsed && floating_ips {
        nat::dnat::<H>(hook.ctx(), data, data_end, flow);
    }
    if parsed && let Some(drop) = refused(admit(flow, &Side::NONE, &receiver), flow) {
        return drop;
    }
    count_to_workload(ifindex, len);
    Action::Pass
}
