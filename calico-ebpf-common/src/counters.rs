//! Per-CPU counters: per endpoint (packets and bytes by path, drops by reason) and per rule id
//! (hits of the rule that decided a verdict).
//!
//! The programs only ever add to their own CPU's copy; readers (`calico-loader dump`) sum the
//! CPUs.

/// Why a packet was dropped. The value indexes [`EndpointCounters::drops`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The source address is not one the endpoint may send from.
    SpoofedSource = 0,
    /// The destination matched a blackhole route.
    Blackhole = 1,
    /// The packet is truncated or its headers are invalid.
    Malformed = 2,
    /// The packet arrived on an interface the agent does not know (no endpoint entry).
    UnknownInterface = 3,
    /// A redirect to the destination interface failed.
    RedirectFailed = 4,
    /// Policy denied the packet (a rule, a tier's default action, or no profile allowing it).
    PolicyDenied = 5,
    /// The endpoint's compiled policy gave no verdict (it should always give one): dropped,
    /// never allowed.
    PolicyMissing = 6,
    /// Traffic from a workload to the host itself, dropped by `DefaultEndpointToHostAction`
    /// after the workload's egress policy allowed it.
    EndpointToHost = 7,
    /// Policy allowed a new flow, but the conntrack table could not take its entry (the kernel
    /// found no free entry even by evicting one): dropped rather than let through untracked,
    /// whose replies policy would then judge on their own.
    ConntrackFull = 8,
    /// A host endpoint's untracked (`doNotTrack`) policy denied the packet: ingress in XDP,
    /// before conntrack and any other policy; egress in TC, for the host's own traffic.
    UntrackedDenied = 9,
}

/// Number of slots in [`EndpointCounters::drops`].
pub const DROP_REASONS: usize = 10;

impl DropReason {
    /// Every reason, in counter-index order.
    pub const ALL: [DropReason; 10] = [
        Self::SpoofedSource,
        Self::Blackhole,
        Self::Malformed,
        Self::UnknownInterface,
        Self::RedirectFailed,
        Self::PolicyDenied,
        Self::PolicyMissing,
        Self::EndpointToHost,
        Self::ConntrackFull,
        Self::UntrackedDenied,
    ];

    /// A short lowercase name for tables and JSON.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::SpoofedSource => "spoofed-source",
            Self::Blackhole => "blackhole",
            Self::Malformed => "malformed",
            Self::UnknownInterface => "unknown-interface",
            Self::RedirectFailed => "redirect-failed",
            Self::PolicyDenied => "policy-denied",
            Self::PolicyMissing => "policy-missing",
            Self::EndpointToHost => "endpoint-to-host",
            Self::ConntrackFull => "conntrack-full",
            Self::UntrackedDenied => "untracked-denied",
        }
    }
}

/// Key of the counters entry that collects packets from interfaces without an endpoint entry
/// (a program left attached to an interface the agent no longer knows). No interface has
/// ifindex 0.
pub const UNKNOWN_INTERFACE_COUNTERS: u32 = 0;

/// Per-CPU counters of one workload interface. "From" and "to" are seen from the workload.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EndpointCounters {
    /// Packets the workload sent (everything the from-workload program saw).
    pub from_wl_packets: u64,
    pub from_wl_bytes: u64,
    /// Packets delivered to the workload, by a redirect from another workload or through the
    /// kernel (the to-workload program).
    pub to_wl_packets: u64,
    pub to_wl_bytes: u64,
    /// Packets from this workload forwarded to another local workload inside BPF.
    pub fwd_packets: u64,
    pub fwd_bytes: u64,
    /// Packets from this workload handed to the kernel stack (the host's own addresses,
    /// destinations without a workload route, and what the FIB lookup could not decide).
    pub to_host_packets: u64,
    pub to_host_bytes: u64,
    /// ARP requests and IPv6 neighbour solicitations answered by the program on the
    /// gateway's behalf.
    pub neighbour_replies: u64,
    /// Dropped packets, indexed by [`DropReason`].
    pub drops: [u64; DROP_REASONS],
    /// Packets from this workload forwarded to a workload of another host inside BPF: a FIB
    /// lookup and a redirect out of the interface it names.
    pub fwd_remote_packets: u64,
    pub fwd_remote_bytes: u64,
    /// Packets that arrived on a data interface and were delivered to this workload inside BPF
    /// (also counted in `to_wl_*`).
    pub from_data_packets: u64,
    pub from_data_bytes: u64,
}

impl EndpointCounters {
    /// Adds another CPU's counters to these.
    pub fn accumulate(&mut self, other: &Self) {
        self.from_wl_packets += other.from_wl_packets;
        self.from_wl_bytes += other.from_wl_bytes;
        self.to_wl_packets += other.to_wl_packets;
        self.to_wl_bytes += other.to_wl_bytes;
        self.fwd_packets += other.fwd_packets;
        self.fwd_bytes += other.fwd_bytes;
        self.to_host_packets += other.to_host_packets;
        self.to_host_bytes += other.to_host_bytes;
        self.neighbour_replies += other.neighbour_replies;
        for (mine, theirs) in self.drops.iter_mut().zip(other.drops.iter()) {
            *mine += *theirs;
        }
        self.fwd_remote_packets += other.fwd_remote_packets;
        self.fwd_remote_bytes += other.fwd_remote_bytes;
        self.from_data_packets += other.from_data_packets;
        self.from_data_bytes += other.from_data_bytes;
    }
}

/// Per-CPU hits of one rule id: packets (and their bytes) whose verdict it decided, counted
/// when policy is evaluated (a flow's first packet, or every packet of an untracked one).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RuleCounters {
    pub packets: u64,
    pub bytes: u64,
}

crate::user_pod!(EndpointCounters, RuleCounters);
