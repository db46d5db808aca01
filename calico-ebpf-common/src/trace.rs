//! `calico-loader trace`: what the never-attached trace program found for one packet (which
//! step decided, the verdict, the rule, the classes the lookups found).

/// Values of [`TraceResult::decided_by`].
pub mod trace_decided_by {
    /// Policy: see [`crate::TraceResult::rule`].
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
    /// Counts runs, so the caller can tell that the program wrote this result.
    pub sequence: u64,
}

crate::user_pod!(TraceResult);
