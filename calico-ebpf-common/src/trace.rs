//! `calico-loader trace`: what the never-attached trace program found for one packet (which
//! step decided, the verdict, the rule, the classes the lookups found).

/// Values of [`TraceResult::decided_by`].
pub mod trace_decided_by {
    /// Policy: see [`crate::TraceResult::rule`] (for a host endpoint, the policy of
    /// [`crate::TraceResult::path`]: pre-DNAT and host policy, or pre-DNAT and apply-on-forward
    /// policy; the rule's [`crate::RuleInfo::stage`] tells pre-DNAT rules apart).
    pub const POLICY: u8 = 1;
    /// An existing conntrack entry (the packet belongs to a tracked flow, or is an ICMP error
    /// about one).
    pub const CONNTRACK: u8 = 2;
    /// No endpoint is known for the interface.
    pub const NO_ENDPOINT: u8 = 3;
    /// The packet could not be parsed.
    pub const MALFORMED: u8 = 4;
    /// The endpoint's policy gave no verdict.
    pub const NO_VERDICT: u8 = 5;
    /// A failsafe port of the host (host endpoints only): open whatever the policy says.
    pub const FAILSAFE: u8 = 6;
    /// The host endpoint's untracked (`doNotTrack`) policy: see [`crate::TraceResult::rule`].
    pub const UNTRACKED: u8 = 7;
    /// No policy applies to forwarded traffic through the host endpoint: it passes untouched.
    pub const FORWARD_OPEN: u8 = 8;
    /// `DefaultEndpointToHostAction` Drop: a workload's packet to the host itself, dropped
    /// after its egress policy (or conntrack) let it through ([`crate::TraceResult::rule`]:
    /// the rule that allowed it).
    pub const ENDPOINT_TO_HOST: u8 = 9;
    /// The host endpoint's programs pass the packet unjudged, for the kernel: not IP, not
    /// parsable, or IPv6 neighbour discovery.
    pub const UNJUDGED: u8 = 10;
}

/// What the trace program is asked to trace (`cb[2]` of its context).
pub mod trace_kind {
    /// A workload endpoint's policy; `cb[0]` is its host-side ifindex.
    pub const WORKLOAD: u32 = 0;
    /// A host endpoint; `cb[0]` is its data interface's ifindex.
    pub const HOST_ENDPOINT: u32 = 1;
}

/// Values of [`TraceResult::path`].
pub mod trace_path {
    /// A workload endpoint's traffic.
    pub const WORKLOAD: u8 = 0;
    /// The host's own traffic through a host endpoint: to the host (arriving) or from it
    /// (leaving).
    pub const HOST: u8 = 1;
    /// Traffic the host forwards through a host endpoint.
    pub const FORWARD: u8 = 2;
}

/// Bits of [`TraceResult::stages`]: the stages before the deciding one that ran and did not
/// decide.
pub mod trace_stage {
    /// The failsafe ports: the packet is on none.
    pub const FAILSAFE: u8 = 1;
    /// Untracked policy: no untracked policy decided.
    pub const UNTRACKED: u8 = 2;
    /// Conntrack: no entry lets the packet through.
    pub const CONNTRACK: u8 = 4;
}

/// What the trace program found (value of the trace map).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TraceResult {
    /// A [`verdict_action`] value.
    pub action: u8,
    /// A [`trace_decided_by`] value.
    pub decided_by: u8,
    /// A [`direction`] value.
    pub direction: u8,
    /// [`verdict_flags`] of the policy verdict.
    pub flags: u8,
    /// Rule id that decided (policy), or that allowed the flow (conntrack).
    pub rule: u32,
    /// First Log rule that matched.
    pub log_rule: u32,
    /// The policy id used.
    pub policy: u32,
    /// The address and port classes the lookups found.
    pub address_class: u32,
    pub port_class: u32,
    /// A [`trace_path`] value.
    pub path: u8,
    /// [`trace_stage`] bits: the stages that ran before the deciding one.
    pub stages: u8,
    pub _pad: [u8; 2],
    /// The host endpoint's untracked policy id for the direction (0: none applies).
    pub untracked_policy: u32,
    /// Counts runs, so the caller can tell that the program wrote this result.
    pub sequence: u64,
}

crate::user_pod!(TraceResult);
