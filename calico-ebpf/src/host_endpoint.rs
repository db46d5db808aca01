//! The host endpoint pipelines: policy on a data interface that a HostEndpoint covers, in TC
//! ingress (packets arriving) and TC egress (packets leaving).
//!
//! A packet is either the host's own (to one of the host's addresses or a group address when
//! arriving; from one of its addresses when leaving) or forwarded. The host's own traffic meets
//! the host endpoint's host policy (pre-DNAT, then normal policy and profiles; failsafe ports
//! open whatever it says); forwarded traffic meets its forward policy (pre-DNAT, then
//! apply-on-forward policy; allowed when none decides), unless no policy applies to forwarded
//! traffic at all. Both are tracked in the host endpoint conntrack zone, so replies pass on
//! their entry, whatever the direction the flow was opened in. Arriving traffic for a local
//! workload is then delivered as the plain data-interface program delivers it, meeting the
//! workload's policy in the workload zone.
//!
//! Untracked policy comes first (`untracked.rs`): a packet its ingress policy allowed in XDP
//! arrives marked, and passes here without conntrack and without the endpoint's other policy
//! (a packet for a local workload still meets the workload's policy); on egress, the host's own
//! packets meet untracked egress policy before conntrack.
//!
//! An interface without an entry is treated as a plain data interface: nothing is judged,
//! local workloads still get their traffic.

use calico_ebpf_common::{
    DropReason, HostEndpointCounters, HostEndpointInfo, conntrack_zone, host_endpoint_flags,
};

use crate::{
    conntrack::admit,
    counters::{
        Action, HostPath, count_host_endpoint_drop, count_host_endpoint_packet,
        count_host_endpoint_pass, host_endpoint_counters,
    },
    data_interface::{self, to_local_workload},
    forward::Hook,
    maps::HOST_ENDPOINTS,
    packet::{ETH_P_IP, ETH_P_IPV6, Flow, V4, V6, flow_kind, ptr_at, scratch_flow},
    policy::{Side, admission, side_flags},
    routes::Family,
    untracked::{self, Untracked},
};

/// `skb->pkt_type` of a frame addressed to this host, to a group, or to another host.
pub const PACKET_HOST: u32 = 0;
const PACKET_BROADCAST: u32 = 1;
const PACKET_MULTICAST: u32 = 2;

/// The host endpoint's side for the host's own traffic (failsafe ports open), or for
/// forwarded traffic.
#[inline(always)]
fn side(ifindex: u32, hep: &HostEndpointInfo, host: bool) -> Side {
    if host {
        Side {
            ifindex,
            ingress_policy: hep.ingress_policy,
            egress_policy: hep.egress_policy,
            flags: side_flags::HOST,
        }
    } else {
        Side {
            ifindex,
            ingress_policy: hep.forward_ingress_policy,
            egress_policy: hep.forward_egress_policy,
            flags: 0,
        }
    }
}

/// Maps conntrack's `outcome` for the packet `flow` onto its counted (and reported) drop on
/// the host endpoint, when the host endpoint's policy refused it.
#[inline(always)]
fn refused(outcome: u8, flow: &Flow, counters: *mut HostEndpointCounters) -> Option<Action> {
    let reason = match outcome {
        admission::ALLOWED => return None,
        admission::DENIED => DropReason::PolicyDenied,
        admission::UNTRACKED => DropReason::ConntrackFull,
        _ => DropReason::PolicyMissing,
    };
    Some(count_host_endpoint_drop(
        counters,
        flow.refused_ifindex,
        flow.refused_direction,
        reason,
        flow.refused_rule,
    ))
}

/// Runs the ingress pipeline for a packet that arrived on the data interface `ifindex`, whose
/// `skb->pkt_type` is `pkt_type`; `untracked_allowed`: the XDP program's untracked ingress
/// policy allowed it.
#[inline(always)]
pub fn ingress<H: Hook>(
    hook: &H,
    data: usize,
    data_end: usize,
    len: u64,
    ifindex: u32,
    pkt_type: u32,
    untracked_allowed: bool,
) -> Action {
    let to_this_host = pkt_type == PACKET_HOST;
    let Some(hep) = HOST_ENDPOINTS.get_ptr(ifindex) else {
        return data_interface::from_data_interface(hook, data, data_end, len, to_this_host);
    };
    let hep = unsafe { &*hep };
    let group = pkt_type == PACKET_BROADCAST || pkt_type == PACKET_MULTICAST;
    if !to_this_host && !group {
        // A frame for another host: the kernel drops it.
        return Action::Pass;
    }
    let Some(eth_type) = ptr_at::<[u8; 2]>(data, data_end, 12) else {
        return Action::Pass;
    };
    // Only an endpoint with untracked ingress policy has its packets marked.
    let untracked = untracked_allowed && hep.untracked_ingress_policy != 0;
    match u16::from_be_bytes(unsafe { *eth_type }) {
        ETH_P_IP => ip_in::<V4, H>(hook, data, data_end, len, ifindex, hep, group, untracked),
        ETH_P_IPV6 => ip_in::<V6, H>(hook, data, data_end, len, ifindex, hep, group, untracked),
        _ => Action::Pass,
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn ip_in<F: Family, H: Hook>(
    hook: &H,
    data: usize,
    data_end: usize,
    len: u64,
    ifindex: u32,
    hep: &HostEndpointInfo,
    group: bool,
    untracked: bool,
) -> Action {
    let Some(flow) = scratch_flow(F::FAMILY, len) else {
        return Action::Pass;
    };
    // What does not parse is the kernel's to judge (and drop); neighbour discovery is link
    // housekeeping that no policy applies to.
    if F::parse(data, data_end, len, flow).is_none() || flow.kind == flow_kind::NEIGHBOUR_DISCOVERY
    {
        return Action::Pass;
    }
    let counters = host_endpoint_counters(ifindex);
    count_host_endpoint_packet(counters, true, len);
    let route = F::route(flow);
    flow.zone = conntrack_zone::HOST_ENDPOINT;
    if group || F::to_host(flow, route) {
        if untracked {
            count_host_endpoint_pass(counters, HostPath::ToHost);
            return Action::Pass;
        }
        let host = side(ifindex, hep, true);
        if let Some(drop) = refused(admit(flow, &Side::NONE, &host), flow, counters) {
            return drop;
        }
        count_host_endpoint_pass(counters, HostPath::ToHost);
        return Action::Pass;
    }
    if !untracked && hep.flags & host_endpoint_flags::FORWARD_OPEN == 0 {
        let forward = side(ifindex, hep, false);
        if let Some(drop) = refused(admit(flow, &Side::NONE, &forward), flow, counters) {
            return drop;
        }
    }
    count_host_endpoint_pass(counters, HostPath::ForwardIn);
    let Some(route) = route else {
        return Action::Pass;
    };
    flow.zone = conntrack_zone::WORKLOAD;
    to_local_workload::<F, H>(hook, data, data_end, len, flow, route)
}

/// Runs the egress pipeline for a packet leaving through the data interface `ifindex`.
#[inline(always)]
pub fn egress(data: usize, data_end: usize, len: u64, ifindex: u32) -> Action {
    let Some(hep) = HOST_ENDPOINTS.get_ptr(ifindex) else {
        return Action::Pass;
    };
    let hep = unsafe { &*hep };
    let Some(eth_type) = ptr_at::<[u8; 2]>(data, data_end, 12) else {
        return Action::Pass;
    };
    match u16::from_be_bytes(unsafe { *eth_type }) {
        ETH_P_IP => ip_out::<V4>(data, data_end, len, ifindex, hep),
        ETH_P_IPV6 => ip_out::<V6>(data, data_end, len, ifindex, hep),
        _ => Action::Pass,
    }
}

#[inline(always)]
fn ip_out<F: Family>(
    data: usize,
    data_end: usize,
    len: u64,
    ifindex: u32,
    hep: &HostEndpointInfo,
) -> Action {
    let Some(flow) = scratch_flow(F::FAMILY, len) else {
        return Action::Pass;
    };
    if F::parse(data, data_end, len, flow).is_none() || flow.kind == flow_kind::NEIGHBOUR_DISCOVERY
    {
        return Action::Pass;
    }
    let counters = host_endpoint_counters(ifindex);
    count_host_endpoint_packet(counters, false, len);
    flow.zone = conntrack_zone::HOST_ENDPOINT;
    if F::from_host(flow) {
        if hep.untracked_egress_policy != 0 {
            match untracked::check(ifindex, hep.untracked_egress_policy, flow, false, counters) {
                Untracked::Allowed => {
                    count_host_endpoint_pass(counters, HostPath::FromHost);
                    return Action::Pass;
                }
                Untracked::Denied(drop) => return drop,
                Untracked::Undecided => {}
            }
        }
        let host = side(ifindex, hep, true);
        if let Some(drop) = refused(admit(flow, &host, &Side::NONE), flow, counters) {
            return drop;
        }
        count_host_endpoint_pass(counters, HostPath::FromHost);
        return Action::Pass;
    }
    if hep.flags & host_endpoint_flags::FORWARD_OPEN == 0 {
        let forward = side(ifindex, hep, false);
        if let Some(drop) = refused(admit(flow, &forward, &Side::NONE), flow, counters) {
            return drop;
        }
    }
    count_host_endpoint_pass(counters, HostPath::ForwardOut);
    Action::Pass
}
