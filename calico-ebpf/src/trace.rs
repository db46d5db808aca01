//! The trace program's work (`calico-loader trace`, through BPF_PROG_TEST_RUN): for one
//! endpoint and one direction, what conntrack (read only) and policy decide for a packet,
//! written to the trace map. Nothing live changes: no conntrack entry, no counter, no Log
//! event. It shares parsing, conntrack and the policy lookup with the live pipelines, so the
//! answer is the one they would give.

use calico_ebpf_common::{TraceResult, direction, trace_decided_by, verdict_action};

use crate::{
    conntrack,
    maps::{ENDPOINTS, TRACE},
    packet::{Parsed, flow_kind, parse_ip, scratch_flow},
    policy,
};

/// The trace program's work: for the endpoint behind `ifindex` and one direction, what
/// conntrack (read only) and policy decide for the packet, written to the trace map. Nothing
/// live changes: no conntrack entry, no counter, no Log event.
#[inline(always)]
pub fn trace(data: usize, data_end: usize, ifindex: u32, ingress: bool, len: u64) {
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
            } else if let Some(rule) = conntrack::tracked(flow, policy_id, ingress) {
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
