//! Untracked (`doNotTrack`) host endpoint policy: stateless, before conntrack and any other
//! policy.
//!
//! Ingress runs in XDP on the host endpoint's interface (`calico_xdp_hep`, attached in either
//! attach mode), on every IP packet arriving through it, whatever its destination: first the
//! inbound failsafe ports (a packet to the host on one passes on, to be tracked as any failsafe
//! flow), then the endpoint's untracked ingress policy. Deny drops the packet there (counted as
//! `untracked-denied`); Allow passes it with a mark in its XDP metadata, which tells the TC
//! ingress program to let it through without conntrack and without the endpoint's other
//! policy; what no untracked policy decides passes unmarked, to the TC program's usual work.
//!
//! Egress runs in the TC egress program, on every packet the host itself sends through the
//! interface, before conntrack: Allow lets it out untracked, Deny drops it, and the rest goes on.
//! (As in Calico, untracked egress policy does not see forwarded traffic.)

use calico_ebpf_common::{DropReason, HostEndpointCounters, direction, verdict_action};

use crate::{
    counters::{Action, count_host_endpoint_drop, count_untracked_pass, host_endpoint_counters},
    failsafe,
    maps::HOST_ENDPOINTS,
    packet::{ETH_P_IP, ETH_P_IPV6, Flow, V4, V6, flow_kind, ptr_at, scratch_flow},
    policy,
    routes::Family,
};

/// What the XDP stage decided for an arriving packet.
pub enum Prefilter {
    /// Not decided here: on to the TC program, unmarked.
    Pass,
    /// Untracked policy denied it (counted and reported).
    Drop,
    /// Untracked policy allowed it: on to the TC program, marked as untracked.
    PassUntracked,
}

/// What untracked policy said about one packet.
pub enum Untracked {
    /// Let it through untracked.
    Allowed,
    /// Dropped (counted and reported): the action to return.
    Denied(Action),
    /// Not decided: on to conntrack and the endpoint's other policy.
    Undecided,
}

/// The XDP stage for a frame `[data, data_end)` arriving on the interface `ifindex`.
#[inline(always)]
pub fn ingress(data: usize, data_end: usize, ifindex: u32) -> Prefilter {
    let Some(hep) = HOST_ENDPOINTS.get_ptr(ifindex) else {
        return Prefilter::Pass;
    };
    let policy = unsafe { (*hep).untracked_ingress_policy };
    if policy == 0 {
        return Prefilter::Pass;
    }
    let Some(eth_type) = ptr_at::<[u8; 2]>(data, data_end, 12) else {
        return Prefilter::Pass;
    };
    match u16::from_be_bytes(unsafe { *eth_type }) {
        ETH_P_IP => ip_in::<V4>(data, data_end, ifindex, policy),
        ETH_P_IPV6 => ip_in::<V6>(data, data_end, ifindex, policy),
        _ => Prefilter::Pass,
    }
}

#[inline(always)]
fn ip_in<F: Family>(data: usize, data_end: usize, ifindex: u32, policy: u32) -> Prefilter {
    let len = (data_end - data) as u64;
    let Some(flow) = scratch_flow(F::FAMILY, len) else {
        return Prefilter::Pass;
    };
    // What does not parse is the kernel's to judge; neighbour discovery is link housekeeping.
    if F::parse(data, data_end, len, flow).is_none() || flow.kind == flow_kind::NEIGHBOUR_DISCOVERY
    {
        return Prefilter::Pass;
    }
    // The failsafe ports come before untracked policy too (counted when the TC program
    // opens the flow).
    if F::to_host(flow, F::route(flow)) && failsafe::open(flow, true) {
        return Prefilter::Pass;
    }
    let counters = host_endpoint_counters(ifindex);
    match check(ifindex, policy, flow, true, counters) {
        Untracked::Allowed => Prefilter::PassUntracked,
        Untracked::Denied(_) => Prefilter::Drop,
        Untracked::Undecided => Prefilter::Pass,
    }
}

/// Runs untracked policy `policy` of the host endpoint on `ifindex` for the parsed `flow`,
/// arriving (`ingress`) or leaving; counts what it allowed or denied.
#[inline(always)]
pub fn check(
    ifindex: u32,
    policy: u32,
    flow: &Flow,
    ingress: bool,
    counters: *mut HostEndpointCounters,
) -> Untracked {
    let verdict = policy::untracked_verdict(ifindex, policy, flow, ingress);
    match verdict.action {
        verdict_action::ALLOW => {
            count_untracked_pass(counters, ingress);
            Untracked::Allowed
        }
        verdict_action::DENY => Untracked::Denied(count_host_endpoint_drop(
            counters,
            ifindex,
            if ingress {
                direction::INGRESS
            } else {
                direction::EGRESS
            },
            DropReason::UntrackedDenied,
            verdict.rule,
        )),
        _ => Untracked::Undecided,
    }
}
