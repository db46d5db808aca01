//! Connection tracking: a packet of a tracked flow passes on its entry; a new flow meets policy
//! once (the sender's egress, the receiver's ingress) and, when allowed, is tracked.
//!
//! Entries live in an LRU hash keyed by the flow's normalized key (side A is the lower
//! (address, port)) and its zone, so a flow and its replies share one entry per zone: the
//! workload legs' (zone 0) and the host endpoints' (see `conntrack_zone`). Each entry
//! remembers the policy ids that allowed it. When an endpoint's policy id changes (the agent
//! switched it to a newly compiled policy), the next packet of the flow is checked against the
//! new policy, and a flow the new policy denies is cut: its entry goes and the packet is
//! dropped.

use aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns;
use calico_ebpf_common::{ConntrackKey, ConntrackValue, conntrack_flags, direction};

use crate::{
    maps::{CONNTRACK, CONNTRACK_STATS},
    nat::flow_nat,
    packet::{
        Flow, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST,
        IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, OPENING_FLOW, SCRATCH, TCP_ACK, TCP_FIN,
        TCP_RST, TCP_SYN, compare_addrs, flow_kind,
    },
    policy::{Admission, Side, check},
};

/// Writes the flow's normalized conntrack key into `flow.key` (side A is the lower
/// (address, port)); returns whether the packet travels from side A.
#[inline(always)]
fn fill_key(flow: &mut Flow) -> bool {
    let src_first = match compare_addrs(&flow.src, &flow.dst) {
        core::cmp::Ordering::Less => true,
        core::cmp::Ordering::Greater => false,
        core::cmp::Ordering::Equal => flow.ct_sport <= flow.ct_dport,
    };
    let key = &mut flow.key;
    if src_first {
        key.addr_a = flow.src;
        key.addr_b = flow.dst;
        key.port_a = flow.ct_sport;
        key.port_b = flow.ct_dport;
    } else {
        key.addr_a = flow.dst;
        key.addr_b = flow.src;
        key.port_a = flow.ct_dport;
        key.port_b = flow.ct_sport;
    }
    key.proto = flow.proto;
    key.family = flow.family;
    key.zone = flow.zone;
    key._pad = 0;
    src_first
}

/// Writes into `out` what policy needs of `flow` as its opener sent it: the flow itself
/// when `reverse` is false, else the flow seen from the other side (this packet being a
/// reply), with ICMP echo replies turned into requests. Field by field: a whole-struct copy
/// costs the caller's stack.
#[inline(always)]
fn opening_into(flow: &Flow, out: &mut Flow, reverse: bool) {
    out.family = flow.family;
    out.proto = flow.proto;
    out.len = flow.len;
    out.tcp_flags = flow.tcp_flags;
    out.kind = flow.kind;
    if !reverse {
        out.src = flow.src;
        out.dst = flow.dst;
        out.sport = flow.sport;
        out.dport = flow.dport;
        return;
    }
    out.src = flow.dst;
    out.dst = flow.src;
    out.sport = flow.dport;
    out.dport = flow.sport;
    if flow.proto == IPPROTO_ICMP || flow.proto == IPPROTO_ICMPV6 {
        let icmp_type = (flow.dport >> 8) as u8;
        let request = match icmp_type {
            ICMP_ECHO_REPLY if flow.proto == IPPROTO_ICMP => ICMP_ECHO_REQUEST,
            ICMPV6_ECHO_REPLY if flow.proto == IPPROTO_ICMPV6 => ICMPV6_ECHO_REQUEST,
            other => other,
        };
        out.sport = 0;
        out.dport = (request as u16) << 8 | (flow.dport & 0xff);
    }
}

/// Decides whether the packet `flow`, from `sender` to `receiver`, may pass, tracking its flow.
/// Returns an `admission` value; a refusal is described in the flow (`flow.refused_*`).
///
/// A BPF subprogram of its own (not inlined): its stack frame is separate from the parser's.
/// It returns a register: a larger value would travel through the caller's stack, which costs
/// the verifier states along every path after it.
#[inline(never)]
pub fn admit(flow: &mut Flow, sender: &Side, receiver: &Side) -> u8 {
    let admission = admit_flow(flow, sender, receiver);
    if !admission.allowed() {
        flow.refused_ifindex = admission.ifindex;
        flow.refused_rule = admission.rule;
        flow.refused_direction = admission.direction;
    }
    admission.outcome
}

#[inline(always)]
fn admit_flow(flow: &mut Flow, sender: &Side, receiver: &Side) -> Admission {
    let (sender, receiver) = (*sender, *receiver);
    if flow.kind == flow_kind::NEIGHBOUR_DISCOVERY {
        return Admission::ALLOWED;
    }
    let from_a = fill_key(flow);
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let tcp = flow.proto == IPPROTO_TCP;
    let syn_only = tcp && flow.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;

    if let Some(entry) = CONNTRACK.get_ptr_mut(&flow.key) {
        let entry = unsafe { &mut *entry };
        let closed = entry.flags & conntrack_flags::RST != 0
            || entry.flags & (conntrack_flags::FIN_FWD | conntrack_flags::FIN_REV)
                == conntrack_flags::FIN_FWD | conntrack_flags::FIN_REV;
        // A new SYN on a closed connection starts a new one (port reuse).
        if !entry.expired(flow.proto, now) && !(syn_only && closed) {
            return established(entry, flow, from_a, sender, receiver, now);
        }
        forget(&flow.key);
    }

    flow.related.zone = flow.zone;
    if flow.kind == flow_kind::ICMP_ERROR && CONNTRACK.get_ptr(&flow.related).is_some() {
        // An error about a tracked flow (unreachable, too big, time exceeded) is part of it.
        return Admission::ALLOWED;
    }

    let egress = check(sender, flow, false);
    if !egress.allowed() {
        return egress;
    }
    let ingress = check(receiver, flow, true);
    if !ingress.allowed() {
        return ingress;
    }
    let (egress_rule, ingress_rule) = (egress.rule, ingress.rule);
    // A TCP flow is tracked from its SYN only: a stray segment of a flow nobody tracks (or
    // whose entry a policy change removed) is judged on its own and opens nothing, so a cut
    // flow cannot come back through its other side.
    if !tcp || syn_only {
        let entry = &mut flow.entry;
        entry.created_ns = now;
        entry.last_seen_ns = now;
        entry.packets_fwd = 1;
        entry.packets_rev = 0;
        entry.flags = if syn_only {
            conntrack_flags::SYN_FWD
        } else {
            0
        };
        if flow.nat & flow_nat::DNAT != 0 {
            entry.flags |= conntrack_flags::DNAT;
        }
        entry.opener = if from_a { 0 } else { 1 };
        entry._pad = 0;
        entry.egress_policy = sender.egress_policy;
        entry.ingress_policy = receiver.ingress_policy;
        entry.egress_rule = egress_rule;
        entry.ingress_rule = ingress_rule;
        entry._pad2 = 0;
        // A full table evicts its least recently used entry (LRU). Only when the kernel finds
        // no entry to take, even so, does the insert fail: the flow is then refused, as
        // tracking is what lets its replies through.
        let stats = CONNTRACK_STATS.get_ptr_mut(0);
        if CONNTRACK.insert(&flow.key, &flow.entry, 0).is_err() {
            if let Some(stats) = stats {
                unsafe { (*stats).insert_failed += 1 };
            }
            return if sender.ifindex != 0 {
                Admission::untracked(sender.ifindex, direction::EGRESS)
            } else {
                Admission::untracked(receiver.ifindex, direction::INGRESS)
            };
        }
        if let Some(stats) = stats {
            unsafe { (*stats).created += 1 };
        }
    }
    Admission::ALLOWED
}

/// Removes a flow's entry (closed and reused, expired, or cut by a policy change), counted so
/// that the agent can tell the entries the table evicted from those removed on purpose.
#[inline(always)]
fn forget(key: &ConntrackKey) {
    if CONNTRACK.remove(key).is_ok()
        && let Some(stats) = CONNTRACK_STATS.get_ptr_mut(0)
    {
        unsafe { (*stats).removed += 1 };
    }
}

/// A packet of a tracked flow: re-check it if a policy changed, then update the entry.
#[inline(always)]
fn established(
    entry: &mut ConntrackValue,
    flow: &mut Flow,
    from_a: bool,
    sender: Side,
    receiver: Side,
    now: u64,
) -> Admission {
    let forward = from_a == (entry.opener == 0);
    if !forward && entry.flags & conntrack_flags::DNAT != 0 {
        flow.reply_to_dnat = 1;
    }
    let (opener, responder) = if forward {
        (sender, receiver)
    } else {
        (receiver, sender)
    };
    let egress_changed = opener.egress_policy != 0 && opener.egress_policy != entry.egress_policy;
    let ingress_changed =
        responder.ingress_policy != 0 && responder.ingress_policy != entry.ingress_policy;
    if egress_changed || ingress_changed {
        // The flow as its opener's packet, in the second scratch slot (too large for the stack).
        let Some(opening) = SCRATCH.get_ptr_mut(OPENING_FLOW) else {
            return Admission::no_verdict(opener.ifindex, direction::EGRESS);
        };
        let opening = unsafe { &mut *opening };
        opening_into(flow, opening, !forward);
        if egress_changed {
            let checked = check(opener, opening, false);
            if !checked.allowed() {
                forget(&flow.key);
                return checked;
            }
            entry.egress_policy = opener.egress_policy;
            entry.egress_rule = checked.rule;
        }
        if ingress_changed {
            let checked = check(responder, opening, true);
            if !checked.allowed() {
                forget(&flow.key);
                return checked;
            }
            entry.ingress_policy = responder.ingress_policy;
            entry.ingress_rule = checked.rule;
        }
    }

    let mut flags = entry.flags;
    let tcp_flags = flow.tcp_flags;
    if flow.proto == IPPROTO_TCP {
        if tcp_flags & TCP_RST != 0 {
            flags |= conntrack_flags::RST;
        }
        if forward {
            if tcp_flags & TCP_FIN != 0 {
                flags |= conntrack_flags::FIN_FWD;
            }
            if tcp_flags & TCP_ACK != 0 && flags & conntrack_flags::SYN_REV != 0 {
                flags |= conntrack_flags::ESTABLISHED;
            }
        } else {
            if tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK {
                flags |= conntrack_flags::SYN_REV;
            }
            if tcp_flags & TCP_FIN != 0 {
                flags |= conntrack_flags::FIN_REV;
            }
        }
    }
    if !forward {
        flags |= conntrack_flags::REPLIED;
        entry.packets_rev += 1;
    } else {
        entry.packets_fwd += 1;
    }
    if flags != entry.flags {
        entry.flags = flags;
    }
    entry.last_seen_ns = now;
    Admission::ALLOWED
}

/// Read-only conntrack check for `trace`: whether the packet would pass on an existing entry
/// for an endpoint whose `ingress`/egress policy is `policy`. Returns the rule id that allowed
/// the flow (0 when the entry passes it regardless, as for replies and related ICMP errors).
#[inline(always)]
pub fn tracked(flow: &mut Flow, policy: u32, ingress: bool) -> Option<u32> {
    let from_a = fill_key(flow);
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if let Some(entry) = CONNTRACK.get_ptr(&flow.key) {
        let entry = unsafe { &*entry };
        if !entry.expired(flow.proto, now) {
            let forward = from_a == (entry.opener == 0);
            // On the opener's side (egress, forward) or the responder's (ingress, forward) the
            // entry holds for the policy that allowed it; a reply passes either way.
            let (stored, rule) = if ingress {
                (entry.ingress_policy, entry.ingress_rule)
            } else {
                (entry.egress_policy, entry.egress_rule)
            };
            if !forward {
                return Some(0);
            }
            if stored == policy {
                return Some(rule);
            }
        }
    }
    flow.related.zone = flow.zone;
    if flow.kind == flow_kind::ICMP_ERROR && CONNTRACK.get_ptr(&flow.related).is_some() {
        return Some(0);
    }
    None
}
