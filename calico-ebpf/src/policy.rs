//! Policy: the verdict of an endpoint's policy for a flow.
//!
//! A new flow gets the verdict of the sending endpoint's egress policy and the receiving
//! endpoint's ingress policy (each when that side is a local workload or a host endpoint; a
//! host endpoint's host side opens its failsafe ports first), each found in a few hash
//! lookups whatever the number of rules (the layout is in `calico-ebpf-common`): the address
//! class of the remote address, the port class of the protocol and source port within it, and
//! the verdict of the destination port within that. Each step is a longest-prefix search over
//! the prefix lengths the policy uses, run under `bpf_loop`. A host endpoint's policy, compiled
//! for any local address, first finds the local address's class the same way. Conntrack (in
//! `conntrack.rs`) decides which packets meet policy at all.

use aya_ebpf::{btf_maps::PerCpuArray, cty::c_void, helpers::generated::bpf_loop, macros::btf_map};
use calico_ebpf_common::{
    AddressClass, LOCAL_CLASSES, LOCAL_STEP, LogEvent, PolicyAddrKeyV4, PolicyAddrKeyV6,
    PolicyInfo, PolicyPortKey, PolicyProtoKey, PolicyVerdict, PortClass, direction, mask_port,
    mask_v4, mask_v6, proto_kind, verdict_action, verdict_flags,
};

use crate::{
    counters::count_failsafe,
    failsafe,
    maps::{
        LOG_EVENTS, POLICIES, POLICY_ADDRS_V4, POLICY_ADDRS_V6, POLICY_PORTS, POLICY_PROTOS,
        RULE_COUNTERS,
    },
    packet::{Flow, V4, V6},
};

/// A side of the flow that is a local workload or a host endpoint, with its policies (0: none
/// applies; both are 0 when the side is neither).
#[derive(Clone, Copy)]
pub struct Side {
    /// Host-side ifindex of the workload, or the host endpoint's interface (0: neither).
    pub ifindex: u32,
    pub ingress_policy: u32,
    pub egress_policy: u32,
    /// Bits from [`side_flags`].
    pub flags: u32,
}

impl Side {
    pub const NONE: Side = Side {
        ifindex: 0,
        ingress_policy: 0,
        egress_policy: 0,
        flags: 0,
    };
}

/// Bits of [`Side::flags`].
pub mod side_flags {
    /// The host itself behind a host endpoint: the failsafe ports are open whatever its policy
    /// says.
    pub const HOST: u32 = 1;
}

/// Values of [`Admission::outcome`].
pub mod admission {
    /// The packet may pass.
    pub const ALLOWED: u8 = 0;
    /// A policy denied it.
    pub const DENIED: u8 = 1;
    /// A policy gave no verdict.
    pub const NO_VERDICT: u8 = 2;
    /// Policy allowed a new flow, but the conntrack table could not take its entry.
    pub const UNTRACKED: u8 = 3;
}

/// Outcome of admitting a packet (conntrack's `admit`), or of one side's check. A refusal
/// names the workload (host-side ifindex) whose policy refused and in which direction (a
/// `direction` value). A plain struct whose fields are always written: an enum with payloads
/// would be copied whole, unwritten bytes included, which the verifier refuses to read.
#[derive(Clone, Copy)]
pub struct Admission {
    /// An [`admission`] value.
    pub outcome: u8,
    pub direction: u8,
    pub ifindex: u32,
    /// The rule id that decided: that allowed (a check) or denied; 0 when none did.
    pub rule: u32,
}

impl Admission {
    pub const ALLOWED: Admission = Admission {
        outcome: admission::ALLOWED,
        direction: 0,
        ifindex: 0,
        rule: 0,
    };

    #[inline(always)]
    pub fn allowed(&self) -> bool {
        self.outcome == admission::ALLOWED
    }

    /// The policy of the workload behind `ifindex` gave no verdict in `direction`.
    #[inline(always)]
    pub fn no_verdict(ifindex: u32, direction: u8) -> Self {
        Self {
            outcome: admission::NO_VERDICT,
            direction,
            ifindex,
            rule: 0,
        }
    }

    /// A new flow of the workload behind `ifindex` (`direction` seen from it) whose
    /// conntrack entry could not be created.
    #[inline(always)]
    pub fn untracked(ifindex: u32, direction: u8) -> Self {
        Self {
            outcome: admission::UNTRACKED,
            direction,
            ifindex,
            rule: 0,
        }
    }
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
    // A policy compiled for any local address (a host endpoint's) keys its address entries by
    // the local address's class, which its local step finds first.
    let mut local_class = [0u8; 16];
    let local = if info.v4_lengths & LOCAL_CLASSES != 0 {
        let step = policy | LOCAL_STEP;
        let Some(step_info) = POLICIES.get_ptr(step) else {
            return result;
        };
        let step_info = unsafe { &*step_info };
        let found = if flow.family == 4 {
            address_class::<V4>(step, step_info, &[0; 16], local)
        } else {
            address_class::<V6>(step, step_info, &[0; 16], local)
        };
        let Some(found) = found else { return result };
        let class = found.class.to_be_bytes();
        let at = if flow.family == 4 { 0 } else { 12 };
        local_class[at..at + 4].copy_from_slice(&class);
        &local_class
    } else {
        local
    };
    let class = if flow.family == 4 {
        address_class::<V4>(policy, info, local, remote)
    } else {
        address_class::<V6>(policy, info, local, remote)
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

/// What the address step's search needs of an address family.
pub trait AddrFamily: Sized {
    /// The policy's address key: policy id, local address, remote prefix and its length.
    type Key;
    /// The remote address.
    type Addr;
    /// The prefix lengths the policy uses, one bit per length.
    type Lengths;
    /// How many prefix lengths there are (0..=32, 0..=128).
    const LENGTHS: u32;

    /// This family's search state among the per-CPU searches.
    fn search(searches: &mut Searches) -> &mut AddrSearch<Self>;

    /// Sets up a search in `policy`: the key's policy and local address, the remote address,
    /// the lengths the policy uses.
    fn start(
        search: &mut AddrSearch<Self>,
        policy: u32,
        info: &PolicyInfo,
        local: &[u8; 16],
        remote: &[u8; 16],
    );

    /// Takes the longest length out of `bits`; `None` when none is left.
    fn take_longest(bits: &mut Self::Lengths) -> Option<u32>;

    /// Sets the key's remote prefix to `remote` masked to `len`.
    fn set_prefix(key: &mut Self::Key, remote: &Self::Addr, len: u32);

    /// The address class of the key's entry.
    fn get(key: &Self::Key) -> Option<*const AddressClass>;
}

/// Search state of the address step.
#[repr(C)]
pub struct AddrSearch<F: AddrFamily> {
    key: F::Key,
    remote: F::Addr,
    bits: F::Lengths,
    found: AddressClass,
    hit: u32,
}

extern "C" fn addr_step<F: AddrFamily>(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(searches) = SEARCHES.get_ptr_mut(0) else {
        return 1;
    };
    let search = F::search(unsafe { &mut *searches });
    let Some(len) = F::take_longest(&mut search.bits) else {
        return 1;
    };
    F::set_prefix(&mut search.key, &search.remote, len);
    match F::get(&search.key) {
        Some(class) => {
            search.found = unsafe { *class };
            search.hit = 1;
            1
        }
        None => 0,
    }
}

impl AddrFamily for V4 {
    type Key = PolicyAddrKeyV4;
    type Addr = [u8; 4];
    type Lengths = u64;
    const LENGTHS: u32 = 33;

    #[inline(always)]
    fn search(searches: &mut Searches) -> &mut AddrSearch<Self> {
        &mut searches.v4
    }

    #[inline(always)]
    fn start(
        search: &mut AddrSearch<Self>,
        policy: u32,
        info: &PolicyInfo,
        local: &[u8; 16],
        remote: &[u8; 16],
    ) {
        search.key.policy = policy;
        search.key.local = [local[0], local[1], local[2], local[3]];
        search.remote = [remote[0], remote[1], remote[2], remote[3]];
        search.bits = info.v4_lengths & ((1u64 << 33) - 1);
    }

    #[inline(always)]
    fn take_longest(bits: &mut u64) -> Option<u32> {
        if *bits == 0 {
            return None;
        }
        let len = highest_bit(*bits);
        *bits &= !(1u64 << len);
        Some(len)
    }

    #[inline(always)]
    fn set_prefix(key: &mut PolicyAddrKeyV4, remote: &[u8; 4], len: u32) {
        key.remote = mask_v4(*remote, len);
        key.prefix_len = len;
    }

    #[inline(always)]
    fn get(key: &PolicyAddrKeyV4) -> Option<*const AddressClass> {
        POLICY_ADDRS_V4.get_ptr(key)
    }
}

/// IPv6: lengths 0..=128 in three words.
impl AddrFamily for V6 {
    type Key = PolicyAddrKeyV6;
    type Addr = [u8; 16];
    type Lengths = [u64; 3];
    const LENGTHS: u32 = 129;

    #[inline(always)]
    fn search(searches: &mut Searches) -> &mut AddrSearch<Self> {
        &mut searches.v6
    }

    #[inline(always)]
    fn start(
        search: &mut AddrSearch<Self>,
        policy: u32,
        info: &PolicyInfo,
        local: &[u8; 16],
        remote: &[u8; 16],
    ) {
        let lengths = &info.v6_lengths;
        search.key.policy = policy;
        search.key.local = *local;
        search.remote = *remote;
        search.bits = [lengths[0], lengths[1], lengths[2] & 1];
    }

    #[inline(always)]
    fn take_longest(bits: &mut [u64; 3]) -> Option<u32> {
        let word = if bits[2] != 0 {
            2
        } else if bits[1] != 0 {
            1
        } else if bits[0] != 0 {
            0
        } else {
            return None;
        };
        let bit = highest_bit(bits[word]);
        bits[word] &= !(1u64 << bit);
        Some(word as u32 * 64 + bit)
    }

    #[inline(always)]
    fn set_prefix(key: &mut PolicyAddrKeyV6, remote: &[u8; 16], len: u32) {
        key.remote = mask_v6(remote, len);
        key.prefix_len = len;
    }

    #[inline(always)]
    fn get(key: &PolicyAddrKeyV6) -> Option<*const AddressClass> {
        POLICY_ADDRS_V6.get_ptr(key)
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
    pub v4: AddrSearch<V4>,
    pub v6: AddrSearch<V6>,
    pub proto: ProtoSearch,
    pub port: PortSearch,
}

/// Per-CPU state of the policy steps' prefix searches.
#[btf_map(name = "cali_searches")]
pub static SEARCHES: PerCpuArray<Searches, 1> = PerCpuArray::new();

/// Runs `step` at most `lengths` times, until it returns 1.
#[inline(always)]
fn run_search(lengths: u32, step: extern "C" fn(u64, *mut c_void) -> i64) {
    unsafe {
        bpf_loop(lengths, step as *mut c_void, core::ptr::null_mut(), 0);
    }
}

/// Longest match among the address entries of `policy` of the family `F`.
#[inline(always)]
fn address_class<F: AddrFamily>(
    policy: u32,
    info: &PolicyInfo,
    local: &[u8; 16],
    remote: &[u8; 16],
) -> Option<AddressClass> {
    let search = F::search(unsafe { &mut *SEARCHES.get_ptr_mut(0)? });
    F::start(search, policy, info, local, remote);
    search.hit = 0;
    run_search(F::LENGTHS, addr_step::<F>);
    (search.hit != 0).then_some(search.found)
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

/// The verdict of untracked policy `policy` of the host endpoint on `ifindex` for one packet
/// of `flow` (untracked policy judges every packet): counted and logged as any verdict; its
/// action is Allow, Deny or [`verdict_action::PASS`] (undecided), or 0 when a step missed.
#[inline(always)]
pub fn untracked_verdict(ifindex: u32, policy: u32, flow: &Flow, ingress: bool) -> PolicyVerdict {
    evaluate(ifindex, policy, flow, ingress)
}

/// Checks one side of a new (or re-checked) flow: the sender's egress policy or the receiver's
/// ingress policy. Allowed, with the rule that allowed, when it may pass.
#[inline(always)]
pub fn check(side: Side, flow: &Flow, ingress: bool) -> Admission {
    let policy = if ingress {
        side.ingress_policy
    } else {
        side.egress_policy
    };
    if policy == 0 {
        return Admission::ALLOWED;
    }
    if side.flags & side_flags::HOST != 0 && failsafe::open(flow, ingress) {
        count_failsafe(side.ifindex, ingress);
        return Admission::ALLOWED;
    }
    let verdict = evaluate(side.ifindex, policy, flow, ingress);
    let outcome = match verdict.action {
        verdict_action::ALLOW => admission::ALLOWED,
        verdict_action::DENY => admission::DENIED,
        _ => admission::NO_VERDICT,
    };
    Admission {
        outcome,
        direction: if ingress {
            direction::INGRESS
        } else {
            direction::EGRESS
        },
        ifindex: side.ifindex,
        rule: verdict.rule,
    }
}
