//! The data-interface pipeline: packets arriving from other hosts on the host's data
//! interfaces (those that match `--data-interfaces`), shared by the TC and XDP entry points.
//!
//! A packet for a local workload is delivered straight into it: the workload's ingress policy
//! and conntrack decide, the TTL or hop limit drops by one as a router's would, and the packet
//! is redirected into the workload, skipping the kernel's forwarding path (and the workload's
//! host-side TC egress, which would apply the same policy). Everything else is passed on
//! untouched: packets for the host itself, for other destinations, frames for other MACs,
//! non-IP frames, and whatever the kernel should judge (malformed headers, neighbour
//! discovery, an expiring TTL).

use calico_ebpf_common::{RouteKind, RouteValue};

use crate::{
    conntrack::admit,
    counters::{Action, count_from_data},
    forward::Hook,
    nat,
    packet::{ETH_HLEN, ETH_P_IP, ETH_P_IPV6, Flow, V4, V6, flow_kind, ptr_at, scratch_flow},
    policy::Side,
    routes::{FORWARD_HEADER_LEN, Family},
    workload::{delivery, receiver_side, refused},
};

/// Runs the pipeline for a packet that arrived on a data interface. `to_this_host` says whether
/// the frame is addressed to this host (TC: the skb's packet type is `PACKET_HOST`; XDP: the
/// destination MAC is unicast).
///
/// `[data, data_end)` must hold at least the headers; `len` is the whole packet's length.
#[inline(always)]
pub fn from_data_interface<H: Hook>(
    hook: &H,
    data: usize,
    data_end: usize,
    len: u64,
    to_this_host: bool,
) -> Action {
    if !to_this_host {
        return Action::Pass;
    }
    let Some(eth_type) = ptr_at::<[u8; 2]>(data, data_end, 12) else {
        return Action::Pass;
    };
    match u16::from_be_bytes(unsafe { *eth_type }) {
        ETH_P_IP => ip::<V4, H>(hook, data, data_end, len),
        ETH_P_IPV6 => ip::<V6, H>(hook, data, data_end, len),
        _ => Action::Pass,
    }
}

/// An IP packet from a data interface: delivered into a local workload when that is where it
/// goes and policy allows it, passed on otherwise.
#[inline(always)]
fn ip<F: Family, H: Hook>(hook: &H, data: usize, data_end: usize, len: u64) -> Action {
    let Some(flow) = scratch_flow(F::FAMILY, len) else {
        return Action::Pass;
    };
    if F::parse(data, data_end, len, flow).is_none() || flow.kind == flow_kind::NEIGHBOUR_DISCOVERY
    {
        return Action::Pass;
    }
    let Some(route) = F::route(flow) else {
        return Action::Pass;
    };
    to_local_workload::<F, H>(hook, data, data_end, len, flow, route)
}

/// Delivers a parsed packet from a data interface whose destination's route is `route` into a
/// local workload, when that is where it goes and the workload's policy allows it (tracked in
/// `flow.zone`); passes it on otherwise. A packet for a floating IP goes to its internal address
/// first (destination NAT), so policy and conntrack see that.
#[inline(always)]
pub fn to_local_workload<F: Family, H: Hook>(
    hook: &H,
    data: usize,
    data_end: usize,
    len: u64,
    flow: &mut Flow,
    route: &RouteValue,
) -> Action {
    let (mut data, mut data_end) = (data, data_end);
    match RouteKind::from_u32(route.kind) {
        Some(RouteKind::LocalWorkload) => {}
        Some(RouteKind::FloatingIp) => {
            if !nat::dnat::<H>(hook.ctx(), data, data_end, flow) {
                return Action::Pass;
            }
            (data, data_end) = hook.packet();
        }
        _ => return Action::Pass,
    }
    let (receiver, tap) = match receiver_side(Some(route)) {
        Ok(receiver) => receiver,
        Err(drop) => return drop,
    };
    if let Some(drop) = refused(admit(flow, &Side::NONE, &receiver), flow) {
        return drop;
    }
    let Some(hdr) = ptr_at::<[u8; FORWARD_HEADER_LEN]>(data, data_end, ETH_HLEN) else {
        return Action::Pass;
    };
    let hdr = unsafe { &mut *hdr };
    if F::hop_limit(hdr) <= 1 || ((H::XDP || tap) && route.mac == [0; 6]) {
        // The kernel sends the ICMP time-exceeded error, or resolves the workload's MAC.
        return Action::Pass;
    }
    F::decrement_hop_limit(hdr);
    deliver(data, data_end, route, tap, len)
}

/// Rewrites the Ethernet header for the workload the route leads to, counts the delivery and
/// returns the redirect.
#[inline(always)]
fn deliver(data: usize, data_end: usize, route: &RouteValue, tap: bool, len: u64) -> Action {
    let Some(eth) = ptr_at::<[u8; 12]>(data, data_end, 0) else {
        return Action::Pass;
    };
    let eth = unsafe { &mut *eth };
    if route.mac != [0; 6] {
        eth[0..6].copy_from_slice(&route.mac);
    }
    eth[6..12].copy_from_slice(&route.host_mac);
    count_from_data(route.ifindex, len);
    delivery(route.ifindex, tap)
}
