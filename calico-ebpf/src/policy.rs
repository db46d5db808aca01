//! Policy and connection tracking: whether a flow may pass.
//!
//! A packet of a tracked flow passes on its conntrack entry. A new flow gets the verdict of
//! the sending endpoint's egress policy and the receiving endpoint's ingress policy (each when
//! that side is a local workload), each found in a few hash lookups whatever the number of rules
//! (the layout is in `calico-ebpf-common`), and an allowed flow is tracked.
//!
//! Each entry remembers the policy ids that allowed it. When an endpoint's policy id changes
//! (the agent switched it to a newly compiled policy), the next packet of the flow is checked
//! against the new policy, and a flow the new policy denies is cut: its entry goes and the packet
//! is dropped.

use aya_ebpf::{
    cty::c_void,
    helpers::generated::{bpf_ktime_get_coarse_ns, bpf_loop},
};
use calico_ebpf_common::{
    AddressClass, ConntrackValue, LogEvent, PolicyAddrKeyV4, PolicyAddrKeyV6, PolicyPortKey,
    PolicyProtoKey, PolicyVerdict, PortClass, conntrack_flags, direction, mask_port, mask_v4,
    mask_v6, proto_kind, verdict_action, verdict_flags,
};

use crate::{
    flow::{Flow, IPPROTO_TCP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, flow_kind},
    maps::{
        CONNTRACK, LOG_EVENTS, POLICIES, POLICY_ADDRS_V4, POLICY_ADDRS_V6, POLICY_PORTS,
        POLICY_PROTOS, RULE_COUNTERS, SCRATCH, SEARCHES,
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
    pub const NONE: Side = Side {
        ifindex: 0,
        ingress_policy: 0,
        egress_policy: 0,
    };
}

/// Outcome of [`admit`].
pub enum Admission {
    Allowed,
    /// Denied by the policy of the workload behind `ifindex`.
    Denied {
        ifindex: u32,
    },
    /// The policy of the workload behind `ifindex` gave no verdict.
    NoVerdict {
        ifindex: u32,
    },
}

/// What the three steps found: the verdict (action 0 when a step missed) and the classes.
#[repr(C)]
pub struct Lookup {
    pub verdict: PolicyVerdict,
    pub address_class: u32,
    pub port_class: u32,
}

/// Finds the verdict of policy `policy` for `flow`, seen from the endpoint: for ingress the
/// local address is the destination, for egress the source.
#[inline(always)]
pub fn lookup(policy: u32, flow: &Flow, ingress: bool) -> Lookup {
    let mut result = Lookup {
        verdict: PolicyVerdict::default(),
        address_class: 0,
        port_class: 0,
    };
    calico_policy_lookup(policy, flow, u32::from(ingress), &mut result);
    result
}

/// [`lookup`] as a global BPF function: the verifier checks it once, on its own, instead of
/// once for every place the programs call it. Writes into `out`; returns 0.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn calico_policy_lookup(
    policy: u32,
    flow: *const Flow,
    ingress: u32,
    out: *mut Lookup,
) -> i32 {
    let (Some(flow), Some(out)) = (unsafe { flow.as_ref() }, unsafe { out.as_mut() }) else {
        return 0;
    };
    *out = policy_lookup(policy, flow, ingress != 0);
    0
}

#[inline(always)]
fn policy_lookup(policy: u32, flow: &Flow, ingress: bool) -> Lookup {
    let mut result = Lookup {
        verdict: PolicyVerdict::default(),
        address_class: 0,
        port_class: 0,
    };
    let Some(info) = POLICIES.get_ptr(policy) else {
        return result;
    };
    let info = unsafe { &*info };
    let (local, remote) = if ingress {
        (&flow.dst, &flow.src)
    } else {
        (&flow.src, &flow.dst)
    };
    let class = if flow.family == 4 {
        address_class_v4(policy, info.v4_lengths, local, remote)
    } else {
        address_class_v6(policy, &info.v6_lengths, local, remote)
    };
    let Some(class) = class else { return result };
    result.address_class = class.class;
    let Some(port_class) = port_class(&class, flow) else {
        return result;
    };
    result.port_class = port_class.port_class;
    if let Some(verdict) = verdict(&port_class, flow.dport) {
        result.verdict = verdict;
    }
    result
}

/// The highest set bit of `bits` (which is not 0).
#[inline(always)]
fn highest_bit(bits: u64) -> u32 {
    63 - bits.leading_zeros()
}

// Each step's longest-prefix search runs under `bpf_loop`: one callback call per prefix length
// the step uses, longest first, until an entry is found. The verifier checks a callback once,
// however many lengths there are.

/// Search state of the IPv4 address step.
#[repr(C)]
pub struct AddrSearchV4 {
    key: PolicyAddrKeyV4,
    remote: [u8; 4],
    bits: u64,
    found: AddressClass,
    hit: u32,
}

extern "C" fn addr_step_v4(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(searches) = SEARCHES.get_ptr_mut(0) else {
        return 1;
    };
    let search = unsafe { &mut (*searches).v4 };
    if search.bits == 0 {
        return 1;
    }
    let len = highest_bit(search.bits);
    search.bits &= !(1u64 << len);
    search.key.remote = mask_v4(search.remote, len);
    search.key.prefix_len = len;
    match POLICY_ADDRS_V4.get_ptr(&search.key) {
        Some(class) => {
            search.found = unsafe { *class };
            search.hit = 1;
            1
        }
        None => 0,
    }
}

/// Search state of the IPv6 address step: lengths 0..=128 in three words.
#[repr(C)]
pub struct AddrSearchV6 {
    key: PolicyAddrKeyV6,
    remote: [u8; 16],
    bits: [u64; 3],
    found: AddressClass,
    hit: u32,
}

extern "C" fn addr_step_v6(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(searches) = SEARCHES.get_ptr_mut(0) else {
        return 1;
    };
    let search = unsafe { &mut (*searches).v6 };
    let word = if search.bits[2] != 0 {
        2
    } else if search.bits[1] != 0 {
        1
    } else if search.bits[0] != 0 {
        0
    } else {
        return 1;
    };
    let bit = highest_bit(search.bits[word]);
    search.bits[word] &= !(1u64 << bit);
    let len = word as u32 * 64 + bit;
    search.key.remote = mask_v6(&search.remote, len);
    search.key.prefix_len = len;
    match POLICY_ADDRS_V6.get_ptr(&search.key) {
        Some(class) => {
            search.found = unsafe { *class };
            search.hit = 1;
            1
        }
        None => 0,
    }
}

/// Search state of the protocol/source-port step.
#[repr(C)]
pub struct ProtoSearch {
    key: PolicyProtoKey,
    sport: u16,
    bits: u64,
    found: PortClass,
    hit: u32,
}

extern "C" fn proto_step(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(searches) = SEARCHES.get_ptr_mut(0) else {
        return 1;
    };
    let search = unsafe { &mut (*searches).proto };
    if search.bits == 0 {
        return 1;
    }
    let len = highest_bit(search.bits);
    search.bits &= !(1u64 << len);
    search.key.sport = mask_port(search.sport, len as u8).to_be_bytes();
    search.key.sport_len = len as u8;
    match POLICY_PROTOS.get_ptr(&search.key) {
        Some(found) => {
            search.found = unsafe { *found };
            search.hit = 1;
            1
        }
        None => 0,
    }
}

/// Search state of the destination-port step.
#[repr(C)]
pub struct PortSearch {
    key: PolicyPortKey,
    dport: u16,
    bits: u64,
    found: PolicyVerdict,
    hit: u32,
}

extern "C" fn port_step(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(searches) = SEARCHES.get_ptr_mut(0) else {
        return 1;
    };
    let search = unsafe { &mut (*searches).port };
    if search.bits == 0 {
        return 1;
    }
    let len = highest_bit(search.bits);
    search.bits &= !(1u64 << len);
    search.key.dport = mask_port(search.dport, len as u8).to_be_bytes();
    search.key.dport_len = len as u8;
    match POLICY_PORTS.get_ptr(&search.key) {
        Some(found) => {
            search.found = unsafe { *found };
            search.hit = 1;
            1
        }
        None => 0,
    }
}

/// The per-CPU search states (too large for the stack the programs share with their calls).
#[repr(C)]
pub struct Searches {
    pub v4: AddrSearchV4,
    pub v6: AddrSearchV6,
    pub proto: ProtoSearch,
    pub port: PortSearch,
}

/// Runs `step` at most `lengths` times, until it returns 1.
#[inline(always)]
fn run_search(lengths: u32, step: extern "C" fn(u64, *mut c_void) -> i64) {
    unsafe {
        bpf_loop(lengths, step as *mut c_void, core::ptr::null_mut(), 0);
    }
}

/// Longest match among the IPv4 address entries of `policy`.
#[inline(always)]
fn address_class_v4(
    policy: u32,
    lengths: u64,
    local: &[u8; 16],
    remote: &[u8; 16],
) -> Option<AddressClass> {
    let state = unsafe { &mut (*SEARCHES.get_ptr_mut(0)?).v4 };
    state.key.policy = policy;
    state.key.local = [local[0], local[1], local[2], local[3]];
    state.remote = [remote[0], remote[1], remote[2], remote[3]];
    state.bits = lengths & ((1u64 << 33) - 1);
    state.hit = 0;
    run_search(33, addr_step_v4);
    (state.hit != 0).then_some(state.found)
}

/// Longest match among the IPv6 address entries of `policy`.
#[inline(always)]
fn address_class_v6(
    policy: u32,
    lengths: &[u64; 3],
    local: &[u8; 16],
    remote: &[u8; 16],
) -> Option<AddressClass> {
    let state = unsafe { &mut (*SEARCHES.get_ptr_mut(0)?).v6 };
    state.key.policy = policy;
    state.key.local = *local;
    state.remote = *remote;
    state.bits = [lengths[0], lengths[1], lengths[2] & 1];
    state.hit = 0;
    run_search(129, addr_step_v6);
    (state.hit != 0).then_some(state.found)
}

/// The port class for the flow's protocol and source port within an address class: its
/// protocol's entries, longest source-port prefix first, else the class's default.
#[inline(always)]
fn port_class(class: &AddressClass, flow: &Flow) -> Option<PortClass> {
    let state = unsafe { &mut (*SEARCHES.get_ptr_mut(0)?).proto };
    state.key = PolicyProtoKey {
        class: class.class,
        kind: proto_kind::ONE,
        proto: flow.proto,
        sport: [0; 2],
        sport_len: 0,
        _pad: [0; 3],
    };
    state.sport = flow.sport;
    state.bits = u64::from(class.sport_lengths) & 0x1ffff;
    state.hit = 0;
    run_search(17, proto_step);
    if state.hit != 0 {
        return Some(state.found);
    }
    let key = PolicyProtoKey {
        class: class.class,
        kind: proto_kind::ANY,
        proto: 0,
        sport: [0; 2],
        sport_len: 0,
        _pad: [0; 3],
    };
    POLICY_PROTOS.get_ptr(&key).map(|found| unsafe { *found })
}

/// The verdict for the destination port within a port class, longest prefix first.
#[inline(always)]
fn verdict(port_class: &PortClass, dport: u16) -> Option<PolicyVerdict> {
    let state = unsafe { &mut (*SEARCHES.get_ptr_mut(0)?).port };
    state.key = PolicyPortKey {
        class: port_class.port_class,
        dport: [0; 2],
        dport_len: 0,
        _pad: 0,
    };
    state.dport = dport;
    state.bits = u64::from(port_class.dport_lengths) & 0x1ffff;
    state.hit = 0;
    run_search(17, port_step);
    (state.hit != 0).then_some(state.found)
}

/// [`lookup`], then the live side effects: the deciding rule's counter and the Log event.
/// A subprogram of its own, so that the Log event's stack space is counted once.
#[inline(never)]
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
            direction: if ingress {
                direction::INGRESS
            } else {
                direction::EGRESS
            },
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
    let policy = if ingress {
        side.ingress_policy
    } else {
        side.egress_policy
    };
    if policy == 0 {
        return Ok(0);
    }
    let verdict = evaluate(side.ifindex, policy, flow, ingress);
    match verdict.action {
        verdict_action::ALLOW => Ok(verdict.rule),
        verdict_action::DENY => Err(Admission::Denied {
            ifindex: side.ifindex,
        }),
        _ => Err(Admission::NoVerdict {
            ifindex: side.ifindex,
        }),
    }
}

/// Decides whether the packet `flow`, from `sender` to `receiver`, may pass, tracking its flow.
///
/// A BPF subprogram of its own (not inlined): its stack frame is separate from the parser's.
#[inline(never)]
pub fn admit(flow: &mut Flow, sender: &Side, receiver: &Side) -> Admission {
    let (sender, receiver) = (*sender, *receiver);
    if flow.kind == flow_kind::NEIGHBOUR_DISCOVERY {
        return Admission::Allowed;
    }
    let from_a = flow.fill_key();
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
        let _ = CONNTRACK.remove(&flow.key);
    }

    if flow.kind == flow_kind::ICMP_ERROR && CONNTRACK.get_ptr(&flow.related).is_some() {
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
        entry.opener = if from_a { 0 } else { 1 };
        entry._pad = 0;
        entry.egress_policy = sender.egress_policy;
        entry.ingress_policy = receiver.ingress_policy;
        entry.egress_rule = egress_rule;
        entry.ingress_rule = ingress_rule;
        entry._pad2 = 0;
        // A full table evicts its least recently used entry (LRU); live flows stay.
        let _ = CONNTRACK.insert(&flow.key, &flow.entry, 0);
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
) -> Admission {
    let forward = from_a == (entry.opener == 0);
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
        let Some(opening) = SCRATCH.get_ptr_mut(1) else {
            return Admission::NoVerdict {
                ifindex: opener.ifindex,
            };
        };
        let opening = unsafe { &mut *opening };
        flow.opening_into(opening, !forward);
        if egress_changed {
            match check(opener, opening, false) {
                Ok(rule) => {
                    entry.egress_policy = opener.egress_policy;
                    entry.egress_rule = rule;
                }
                Err(denied) => {
                    let _ = CONNTRACK.remove(&flow.key);
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
                    let _ = CONNTRACK.remove(&flow.key);
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
pub fn tracked(flow: &mut Flow, policy: u32, ingress: bool) -> Option<u32> {
    let from_a = flow.fill_key();
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
    if flow.kind == flow_kind::ICMP_ERROR && CONNTRACK.get_ptr(&flow.related).is_some() {
        return Some(0);
    }
    None
}
