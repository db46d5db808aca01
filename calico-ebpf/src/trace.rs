//! The trace program's work (`calico-loader trace`, through BPF_PROG_TEST_RUN): for one
//! endpoint and one direction, what conntrack (read only) and policy decide for a packet,
//! written to the trace map. Nothing live changes: no conntrack entry, no counter, no Log
//! event. It shares parsing, conntrack and the policy lookup with the live pipelines, so the
//! answer is the one they would give.
//!
//! For a workload endpoint: conntrack, then its policy, then (egress to the host itself)
//! `DefaultEndpointToHostAction`. For a host endpoint, the stages of its programs in their
//! order: failsafe ports, untracked policy, conntrack (the host endpoint zone), then the host
//! policy (pre-DNAT included) or, for forwarded traffic, the forward policy.

use calico_ebpf_common::{
    HostEndpointInfo, TraceResult, conntrack_zone, direction, endpoint_flags, host_endpoint_flags,
    trace_decided_by, trace_kind, trace_path, trace_stage, verdict_action,
};

use crate::{
    conntrack, failsafe,
    maps::{ENDPOINTS, HOST_ENDPOINTS, TRACE},
    packet::{Flow, Parsed, V4, V6, flow_kind, parse_ip, scratch_flow},
    policy,
    routes::{Family, OnLink},
};

/// The trace program's work: for the endpoint behind `ifindex` (a workload's or, for
/// [`trace_kind::HOST_ENDPOINT`], a host endpoint's interface) and one direction, what
/// conntrack (read only) and policy decide for the packet, written to the trace map.
#[inline(always)]
pub fn trace(data: usize, data_end: usize, ifindex: u32, ingress: bool, kind: u32, len: u64) {
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
    let parsed = parse_ip(data, data_end, len, flow);
    if kind == trace_kind::HOST_ENDPOINT {
        host_endpoint(&mut result, flow, parsed, ifindex, ingress);
    } else {
        workload(&mut result, flow, parsed, ifindex, ingress);
    }
    *slot = result;
}

/// A workload endpoint: conntrack, its policy, then `DefaultEndpointToHostAction`.
#[inline(always)]
fn workload(
    result: &mut TraceResult,
    flow: &mut Flow,
    parsed: Parsed,
    ifindex: u32,
    ingress: bool,
) {
    let Some(endpoint) = ENDPOINTS.get_ptr(ifindex) else {
        result.decided_by = trace_decided_by::NO_ENDPOINT;
        return;
    };
    if !matches!(parsed, Parsed::Ip) {
        result.decided_by = trace_decided_by::MALFORMED;
        return;
    }
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
        return;
    }
    tracked_or_policy(result, flow, policy_id, ingress);
    // Traffic to the host itself, once egress policy (or conntrack) let it through:
    // DefaultEndpointToHostAction, as the from-workload pipeline checks it.
    if !ingress
        && result.action == verdict_action::ALLOW
        && endpoint.flags & endpoint_flags::TO_HOST_DROP != 0
        && to_host(flow)
    {
        result.action = verdict_action::DENY;
        result.decided_by = trace_decided_by::ENDPOINT_TO_HOST;
    }
}

/// Whether the from-workload pipeline treats the flow as addressed to the host itself.
#[inline(always)]
fn to_host(flow: &Flow) -> bool {
    if flow.family == 4 {
        V4::to_host(flow, V4::route(flow))
    } else {
        matches!(V6::on_link(flow), OnLink::Policed) || V6::to_host(flow, V6::route(flow))
    }
}

/// Whether the flow is addressed to the host itself (arriving) or sent by it (leaving), as
/// the host endpoint's programs tell.
#[inline(always)]
fn hosts_own(flow: &Flow, ingress: bool) -> bool {
    match (flow.family == 4, ingress) {
        (true, true) => V4::to_host(flow, V4::route(flow)),
        (false, true) => V6::to_host(flow, V6::route(flow)),
        (true, false) => V4::from_host(flow),
        (false, false) => V6::from_host(flow),
    }
}

/// A host endpoint: its stages in the order its programs run them.
#[inline(always)]
fn host_endpoint(
    result: &mut TraceResult,
    flow: &mut Flow,
    parsed: Parsed,
    ifindex: u32,
    ingress: bool,
) {
    let Some(hep) = HOST_ENDPOINTS.get_ptr(ifindex) else {
        result.decided_by = trace_decided_by::NO_ENDPOINT;
        return;
    };
    let hep = unsafe { &*hep };
    if !matches!(parsed, Parsed::Ip) || flow.kind == flow_kind::NEIGHBOUR_DISCOVERY {
        result.action = verdict_action::ALLOW;
        result.decided_by = trace_decided_by::UNJUDGED;
        return;
    }
    let host = hosts_own(flow, ingress);
    result.path = if host {
        trace_path::HOST
    } else {
        trace_path::FORWARD
    };
    // Untracked ingress policy sees every arriving packet; untracked egress policy only the
    // host's own. Failsafe ports come before it on the way in, after it on the way out.
    let untracked = match (ingress, host) {
        (true, _) => hep.untracked_ingress_policy,
        (false, true) => hep.untracked_egress_policy,
        (false, false) => 0,
    };
    result.untracked_policy = untracked;
    if ingress && host && failsafe::open(flow, true) {
        allow(result, trace_decided_by::FAILSAFE);
        return;
    }
    if untracked != 0 {
        let found = policy::lookup(untracked, flow, ingress);
        if found.verdict.action == verdict_action::ALLOW
            || found.verdict.action == verdict_action::DENY
        {
            result.decided_by = trace_decided_by::UNTRACKED;
            result.policy = untracked;
            result.action = found.verdict.action;
            result.flags = found.verdict.flags;
            result.rule = found.verdict.rule;
            result.log_rule = found.verdict.log_rule;
            result.address_class = found.address_class;
            result.port_class = found.port_class;
            return;
        }
        result.stages |= trace_stage::UNTRACKED;
    }
    if !host && hep.flags & host_endpoint_flags::FORWARD_OPEN != 0 {
        allow(result, trace_decided_by::FORWARD_OPEN);
        return;
    }
    flow.zone = conntrack_zone::HOST_ENDPOINT;
    let policy_id = policy_of(hep, host, ingress);
    result.policy = policy_id;
    // Conntrack first (as `admit` checks it); then, for a flow not yet tracked, the outbound
    // failsafe ports (the inbound ones were checked above), then the policy.
    if let Some(rule) = conntrack::tracked(flow, policy_id, ingress) {
        result.rule = rule;
        allow(result, trace_decided_by::CONNTRACK);
        return;
    }
    result.stages |= trace_stage::CONNTRACK;
    if host {
        if !ingress && failsafe::open(flow, false) {
            allow(result, trace_decided_by::FAILSAFE);
            return;
        }
        result.stages |= trace_stage::FAILSAFE;
    }
    decide(result, flow, policy_id, ingress);
}

/// The host endpoint's policy for the path: host policy or forward policy.
#[inline(always)]
fn policy_of(hep: &HostEndpointInfo, host: bool, ingress: bool) -> u32 {
    match (host, ingress) {
        (true, true) => hep.ingress_policy,
        (true, false) => hep.egress_policy,
        (false, true) => hep.forward_ingress_policy,
        (false, false) => hep.forward_egress_policy,
    }
}

#[inline(always)]
fn allow(result: &mut TraceResult, decided_by: u8) {
    result.action = verdict_action::ALLOW;
    result.decided_by = decided_by;
}

/// Conntrack (read only), then the policy `policy_id`.
#[inline(always)]
fn tracked_or_policy(result: &mut TraceResult, flow: &mut Flow, policy_id: u32, ingress: bool) {
    if let Some(rule) = conntrack::tracked(flow, policy_id, ingress) {
        result.rule = rule;
        allow(result, trace_decided_by::CONNTRACK);
        return;
    }
    result.stages |= trace_stage::CONNTRACK;
    decide(result, flow, policy_id, ingress);
}

/// The verdict of policy `policy_id`.
#[inline(always)]
fn decide(result: &mut TraceResult, flow: &Flow, policy_id: u32, ingress: bool) {
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
