//! Policy and connection tracking: whether a flow may pass.
//!
//! A packet of a tracked flow passes on its conntrack entry. A new flow gets the verdict of
//! the sending endpoint's egress policy and the receiving endpoint's ingress policy (each when
//! that side is a local workload), each found in three LPM lookups whatever the number of rules
//! (the layout is in `calico-ebpf-common`), and an allowed flow is tracked.
//!
//! Each entry remembers the policy ids that allowed it. When an endpoint's policy id changes
//! (the agent switched it to a newly compiled policy), the next packet of the flow is checked
//! against the new policy, and a flow the new policy denies is cut: its entry goes and the packet
//! is dropped.

use aya_ebpf::{helpers::bpf_ktime_get_ns, maps::lpm_trie::Key};
use calico_ebpf_common::{
    ConntrackValue, LogEvent, POLICY_ADDR_V4_FIXED_BITS, POLICY_ADDR_V6_FIXED_BITS,
    PolicyAddrKeyV4, PolicyAddrKeyV6, PolicyPortKey, PolicyProtoKey, PolicyVerdict,
    conntrack_flags, direction, verdict_action, verdict_flags,
};

use crate::{
    flow::{Flow, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, conntrack_key, flow_kind, IPPROTO_TCP},
    maps::{
        CONNTRACK_MAP, LOG_EVENTS, POLICY_ADDRS_V4, POLICY_ADDRS_V6, POLICY_PORTS_MAP,
        POLICY_PROTOS_MAP, RULE_COUNTERS, SCRATCH,
    },
};

/// A side of the flow that is a local workload, with its policies (0: none applies; both are
/// 0 when the side is not a local workload).
#[derive(Clone, Copy)]
pub struct Side {
    /// Host-side ifindex (0: not a local workload).
    pub ifindex: u32,
    pub ingress_policy: u32,
    pub egress_policy: u32,
}

impl Side {
    pub const NONE: Side = Side { ifindex: 0, ingress_policy: 0, egress_policy: 0 };
}

/// Outcome of [`admit`].
pub enum Admission {
    Allowed,
    /// Denied by the policy of the workload behind `ifindex`.
    Denied { ifindex: u32 },
    /// The policy of the workload behind `ifindex` gave no verdict.
    NoVerdict { ifindex: u32 },
}

/// What the three lookups found: the verdict (action 0 when a lookup missed) and the classes.
pub struct Lookup {
    pub verdict: PolicyVerdict,
    pub address_class: u32,
    pub port_class: u32,
}

/// Finds the verdict of policy `policy` for `flow`, seen from the endpoint: for ingress the
/// local address is the destination, for egress the source.
#[inline(never)]
pub fn lookup(policy: u32, flow: &Flow, ingress: bool) -> Lookup {
    let mut result = Lookup { verdict: PolicyVerdict::default(), address_class: 0, port_class: 0 };
    let (local, remote) = if ingress { (&flow.dst, &flow.src) } else { (&flow.src, &flow.dst) };
    let class = if flow.family == 4 {
        let key = PolicyAddrKeyV4 {
            policy,
            local: [local[0], local[1], local[2], local[3]],
            remote: [remote[0], remote[1], remote[2], remote[3]],
        };
        POLICY_ADDRS_V4.get(&Key::new(POLICY_ADDR_V4_FIXED_BITS + 32, key)).copied()
    } else {
        let key = PolicyAddrKeyV6 { policy, local: *local, remote: *remote };
        POLICY_ADDRS_V6.get(&Key::new(POLICY_ADDR_V6_FIXED_BITS + 128, key)).copied()
    };
    let Some(class) = class else { return result };
    result.address_class = class;
    let key = PolicyProtoKey { class, proto: flow.proto, sport: flow.sport.to_be_bytes(), _pad: 0 };
    let Some(&port_class) = POLICY_PROTOS_MAP.get(&Key::new(32 + 8 + 16, key)) else {
        return result;
    };
    result.port_class = port_class;
    let key = PolicyPortKey { class: port_class, dport: flow.dport.to_be_bytes(), _pad: [0; 2] };
    if let Some(verdict) = POLICY_PORTS_MAP.get(&Key::new(32 + 16, key)) {
        result.verdict = *verdict;
    }
    result
}

/// [`lookup`], then the live side effects: the deciding rule's counter and the Log event.
#[inline(always)]
fn evaluate(ifindex: u32, policy: u32, flow: &Flow, ingress: bool) -> PolicyVerdict {
    let verdict = lookup(policy, flow, ingress).verdict;
    if verdict.action == 0 {
        return verdict;
    }
    if let Some(counters) = RULE_COUNTERS.get_ptr_mut(verdict.rule) {
        let counters = unsafe { &mut *counters };
        counters.packets += 1;
        counters.bytes += flow.len as u64;
    }
    if verdict.flags & verdict_flags::LOG != 0 {
        let event = LogEvent {
            ifindex,
            log_rule: verdict.log_rule,
            rule: verdict.rule,
            action: verdict.action,
            direction: if ingress { direction::INGRESS } else { direction::EGRESS },
            family: flow.family,
            proto: flow.proto,
            src: flow.src,
            dst: flow.dst,
            sport: flow.sport,
            dport: flow.dport,
        };
        // A full ring loses the event, never the packet.
        let _ = LOG_EVENTS.output(&event, 0);
    }
    verdict
}

/// Checks one side of a new (or re-checked) flow: the sender's egress policy or the receiver's
/// ingress policy; `Ok(rule)` when it may pass.
#[inline(always)]
fn check(side: Side, flow: &Flow, ingress: bool) -> Result<u32, Admission> {
    let policy = if ingress { side.ingress_policy } else { side.egress_policy };
    if policy == 0 {
        return Ok(0);
    }
    let verdict = evaluate(side.ifindex, policy, flow, ingress);
    match verdict.action {
        verdict_action::ALLOW => Ok(verdict.rule),
        verdict_action::DENY => Err(Admission::Denied { ifindex: side.ifindex }),
        _ => Err(Admission::NoVerdict { ifindex: side.ifindex }),
    }
}

/// Decides whether the packet `flow`, from `sender` to `receiver`, may pass, tracking its flow.
///
/// A BPF subprogram of its own (not inlined): its stack frame is separate from the parser's.
#[inline(never)]
pub fn admit(flow: &Flow, sender: &Side, receiver: &Side) -> Admission {
    let (sender, receiver) = (*sender, *receiver);
    if flow.kind == flow_kind::NEIGHBOUR_DISCOVERY {
        return Admission::Allowed;
    }
    let (key, from_a) =
        conntrack_key(flow.family, flow.proto, &flow.src, flow.ct_sport, &flow.dst, flow.ct_dport);
    let now = unsafe { bpf_ktime_get_ns() };
    let tcp = flow.proto == IPPROTO_TCP;
    let syn_only = tcp && flow.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;

    if let Some(entry) = CONNTRACK_MAP.get_ptr_mut(&key) {
        let entry = unsafe { &mut *entry };
        let closed = entry.flags & conntrack_flags::RST != 0
            || entry.flags & (conntrack_flags::FIN_FWD | conntrack_flags::FIN_REV)
                == conntrack_flags::FIN_FWD | conntrack_flags::FIN_REV;
        // A new SYN on a closed connection starts a new one (port reuse).
        if !entry.expired(flow.proto, now) && !(syn_only && closed) {
            return established(entry, flow, from_a, sender, receiver, now, &key);
        }
        let _ = CONNTRACK_MAP.remove(&key);
    }

    if flow.kind == flow_kind::ICMP_ERROR && CONNTRACK_MAP.get_ptr(&flow.related).is_some() {
        // An error about a tracked flow (unreachable, too big, time exceeded) is part of it.
        return Admission::Allowed;
    }

    let egress_rule = match check(sender, flow, false) {
        Ok(rule) => rule,
        Err(denied) => return denied,
    };
    let ingress_rule = match check(receiver, flow, true) {
        Ok(rule) => rule,
        Err(denied) => return denied,
    };
    // A TCP flow is tracked from its SYN only: a stray segment of a flow nobody tracks (or
    // whose entry a policy change removed) is judged on its own and opens nothing, so a cut
    // flow cannot come back through its other side.
    if !tcp || syn_only {
        let entry = ConntrackValue {
            created_ns: now,
            last_seen_ns: now,
            packets_fwd: 1,
            packets_rev: 0,
            flags: if syn_only { conntrack_flags::SYN_FWD } else { 0 },
            opener: if from_a { 0 } else { 1 },
            _pad: 0,
            egress_policy: sender.egress_policy,
            ingress_policy: receiver.ingress_policy,
            egress_rule,
            ingress_rule,
            _pad2: 0,
        };
        // A full table evicts its least recently used entry (LRU); live flows stay.
        let _ = CONNTRACK_MAP.insert(&key, &entry, 0);
    }
    Admission::Allowed
}

/// A packet of a tracked flow: re-check it if a policy changed, then update the entry.
#[inline(always)]
fn established(
    entry: &mut ConntrackValue,
    flow: &Flow,
    from_a: bool,
    sender: Side,
    receiver: Side,
    now: u64,
    key: &calico_ebpf_common::ConntrackKey,
) -> Admission {
    let forward = from_a == (entry.opener == 0);
    let (opener, responder) = if forward { (sender, receiver) } else { (receiver, sender) };
    let egress_changed = opener.egress_policy != 0 && opener.egress_policy != entry.egress_policy;
    let ingress_changed =
        responder.ingress_policy != 0 && responder.ingress_policy != entry.ingress_policy;
    if egress_changed || ingress_changed {
        // The flow as its opener's packet, in the second scratch slot (too large for the stack).
        let Some(opening) = SCRATCH.get_ptr_mut(1) else {
            return Admission::NoVerdict { ifindex: opener.ifindex };
        };
        let opening = unsafe { &mut *opening };
        if forward {
            *opening = *flow;
        } else {
            flow.reverse_into(opening);
        }
        if egress_changed {
            match check(opener, opening, false) {
                Ok(rule) => {
                    entry.egress_policy = opener.egress_policy;
                    entry.egress_rule = rule;
                }
                Err(denied) => {
                    let _ = CONNTRACK_MAP.remove(key);
                    return denied;
                }
            }
        }
        if ingress_changed {
            match check(responder, opening, true) {
                Ok(rule) => {
                    entry.ingress_policy = responder.ingress_policy;
                    entry.ingress_rule = rule;
                }
                Err(denied) => {
                    let _ = CONNTRACK_MAP.remove(key);
                    return denied;
                }
            }
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
    Admission::Allowed
}

/// Read-only conntrack check for `trace`: whether the packet would pass on an existing entry
/// for an endpoint whose `ingress`/egress policy is `policy`. Returns the rule id that allowed
/// the flow (0 when the entry passes it regardless, as for replies and related ICMP errors).
#[inline(always)]
pub fn tracked(flow: &Flow, policy: u32, ingress: bool) -> Option<u32> {
    let (key, from_a) =
        conntrack_key(flow.family, flow.proto, &flow.src, flow.ct_sport, &flow.dst, flow.ct_dport);
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(entry) = CONNTRACK_MAP.get_ptr(&key) {
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
    if flow.kind == flow_kind::ICMP_ERROR && CONNTRACK_MAP.get_ptr(&flow.related).is_some() {
        return Some(0);
    }
    None
}
