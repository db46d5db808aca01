//! Events the programs send to userspace, each through a ring buffer of its own:
//!
//! - [`LogEvent`]: packets that matched a Log rule, drained and logged by the agent;
//! - [`DropEvent`]: dropped packets, for `calico-loader events`. The programs build them only
//!   while a listener holds a lease in [`DropEventControl`], one in
//!   [`DropEventControl::sample`] drops, at most at the rate it set on each CPU; what they
//!   did with every drop seen while someone listened is counted per CPU in
//!   [`DropEventStats`].
//!
//! The two do not share a ring: a ring buffer has one consumer position, so the agent (which
//! drains the Log events) and the `events` command would take each other's records.

/// One packet that matched a Log rule (when its flow's verdict was computed).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LogEvent {
    /// Host-side ifindex of the endpoint whose policy logged.
    pub ifindex: u32,
    /// The Log rule's id.
    pub log_rule: u32,
    /// What decided the packet afterwards.
    pub rule: u32,
    /// A [`crate::verdict_action`] value.
    pub action: u8,
    /// A [`crate::direction`] value.
    pub direction: u8,
    /// 4 or 6.
    pub family: u8,
    pub proto: u8,
    /// IPv4 addresses use the first four bytes.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Host byte order (ICMP: type and code).
    pub sport: u16,
    pub dport: u16,
}

/// One dropped packet (a record of the drop event ring buffer).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DropEvent {
    /// When the packet was dropped: CLOCK_MONOTONIC nanoseconds (`bpf_ktime_get_ns`).
    pub timestamp_ns: u64,
    /// Host-side ifindex of the endpoint the drop is counted against: the sender's for its own
    /// packets, the receiver's when its ingress policy refused them. For an interface without
    /// an endpoint entry, that interface's ifindex.
    pub ifindex: u32,
    /// For a drop by policy, the rule id that denied (a rule, a tier's default action, or the
    /// final deny); 0 otherwise.
    pub rule: u32,
    /// A [`crate::DropReason`] value.
    pub reason: u8,
    /// A [`crate::direction`] value, seen from the endpoint.
    pub direction: u8,
    /// 4 or 6; 0 when the packet's addresses were not read (a malformed or non-IP packet).
    pub family: u8,
    pub proto: u8,
    /// Host byte order, as policy matches them (ICMP: the destination "port" is
    /// `type << 8 | code`).
    pub sport: u16,
    pub dport: u16,
    /// IPv4 addresses use the first four bytes.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// The packet's length in bytes.
    pub len: u32,
    pub _pad: u32,
}

/// The registration of a drop event listener (the one slot of the drop control map), written
/// by `calico-loader events`, read by the programs on every drop.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DropEventControl {
    /// Until when (CLOCK_MONOTONIC nanoseconds) a listener is registered; 0 when none is. The
    /// listener renews it while it runs and clears it when it exits; if it is killed, the
    /// lease runs out and the programs stop building events on their own.
    pub lease_until_ns: u64,
    /// Nanoseconds between events on one CPU (10^9 / the rate); 0: no rate limit.
    pub interval_ns: u64,
    /// How far ahead of now a CPU's schedule of events may run: the burst times the interval.
    /// A CPU sends up to a burst at once, then one event per interval.
    pub burst_ns: u64,
    /// One drop in `sample` is considered for an event (0 and 1: every drop).
    pub sample: u32,
    /// The listener's process id, to name it to a second listener.
    pub listener_pid: u32,
}

impl DropEventControl {
    /// Whether a listener holds the lease at `now_ns` (CLOCK_MONOTONIC).
    pub const fn listening(&self, now_ns: u64) -> bool {
        self.lease_until_ns != 0 && now_ns <= self.lease_until_ns
    }
}

/// Per-CPU state and counters of the drop events (the one slot of the drop statistics map).
/// Every drop seen while a listener is registered adds to `seen` and then to exactly one of
/// `sampled_out`, `rate_limited`, `ring_full` and `submitted`. Drops while nobody listens are
/// not seen here (the endpoint counters count every drop).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DropEventStats {
    /// Drops while a listener was registered.
    pub seen: u64,
    /// Skipped by the 1-in-N sample.
    pub sampled_out: u64,
    /// Over the rate limit of this CPU.
    pub rate_limited: u64,
    /// Lost: the ring buffer was full (the listener is not keeping up).
    pub ring_full: u64,
    /// Written to the ring buffer.
    pub submitted: u64,
    /// The rate limit's schedule on this CPU: the earliest time of its next event, plus what
    /// the burst allows ahead (CLOCK_MONOTONIC nanoseconds).
    pub next_ns: u64,
    /// Drops still to skip before the next one in the sample.
    pub skip: u32,
    pub _pad: u32,
}

impl DropEventStats {
    /// Adds another CPU's counters to these (the state fields are left alone).
    pub fn accumulate(&mut self, other: &Self) {
        self.seen += other.seen;
        self.sampled_out += other.sampled_out;
        self.rate_limited += other.rate_limited;
        self.ring_full += other.ring_full;
        self.submitted += other.submitted;
    }
}

crate::user_pod!(LogEvent, DropEvent, DropEventControl, DropEventStats);
