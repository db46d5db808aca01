//! Connection tracking: the table's key (a flow's addresses and ports, normalized so that both
//! directions find one entry), its value, the TCP state bits and Calico's idle timeouts.

/// Key of the conntrack map: the flow's addresses and ports, normalized so that both
/// directions find the same entry: side A is the lower (address, port) pair.
///
/// For ICMP echo both ports hold the identifier; for other protocols without ports both are 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct ConntrackKey {
    /// IPv4 addresses use the first four bytes, the rest zero.
    pub addr_a: [u8; 16],
    pub addr_b: [u8; 16],
    /// Host byte order.
    pub port_a: u16,
    pub port_b: u16,
    pub proto: u8,
    /// 4 or 6.
    pub family: u8,
    /// A [`conntrack_zone`] value: which programs' legs the entry tracks.
    pub zone: u8,
    pub _pad: u8,
}

/// Values of [`ConntrackKey::zone`]. A flow that crosses a workload's interface and a host
/// endpoint's has an entry in each zone, each with the policies of its own leg, so that each
/// leg's policy is checked once and neither leg mistakes the other's entry for its own.
pub mod conntrack_zone {
    /// Legs through workload interfaces (and the data interfaces' delivery to workloads).
    pub const WORKLOAD: u8 = 0;
    /// Legs through host endpoint interfaces.
    pub const HOST_ENDPOINT: u8 = 1;
}

/// Bits of [`ConntrackValue::flags`]. "Forward" is the direction of the flow's first packet.
pub mod conntrack_flags {
    /// The opener's SYN was seen.
    pub const SYN_FWD: u16 = 1;
    /// The responder's SYN-ACK was seen.
    pub const SYN_REV: u16 = 2;
    /// The handshake completed (the opener's ACK after the SYN-ACK).
    pub const ESTABLISHED: u16 = 4;
    /// A FIN from the opener.
    pub const FIN_FWD: u16 = 8;
    /// A FIN from the responder.
    pub const FIN_REV: u16 = 16;
    /// A RST from either side.
    pub const RST: u16 = 32;
    /// A reply was seen (any protocol).
    pub const REPLIED: u16 = 64;
    /// The opener addressed a floating IP and its packets were translated to the internal
    /// address: the responder's replies leave from the floating IP, whatever their
    /// destination.
    pub const DNAT: u16 = 128;
}

/// Value of the conntrack map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ConntrackValue {
    /// `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC_COARSE) when the entry was created.
    pub created_ns: u64,
    /// `bpf_ktime_get_coarse_ns` of the last packet.
    pub last_seen_ns: u64,
    /// Packets from the opener.
    pub packets_fwd: u64,
    /// Packets from the responder.
    pub packets_rev: u64,
    /// Bits from [`conntrack_flags`].
    pub flags: u16,
    /// 0 when side A of the key opened the flow, 1 when side B did.
    pub opener: u8,
    pub _pad: u8,
    /// Policy id of the opener's egress policy that allowed the flow (0: the opener is not a
    /// local workload). When the endpoint's policy id changes, the flow is checked again.
    pub egress_policy: u32,
    /// Policy id of the responder's ingress policy that allowed the flow (0: not a local
    /// workload).
    pub ingress_policy: u32,
    /// Rule ids that allowed it (0 when the side had no policy).
    pub egress_rule: u32,
    pub ingress_rule: u32,
    pub _pad2: u32,
    /// Only in the test-only `next-layout` build: a field the current layout does not have, so
    /// that an upgrade to that build must convert every entry.
    #[cfg(feature = "next-layout")]
    pub next_layout_field: u64,
}

const SECOND_NS: u64 = 1_000_000_000;

/// Calico's default conntrack timeouts (idle time since the last packet), in nanoseconds.
pub mod conntrack_timeouts {
    use super::SECOND_NS;
    pub const TCP_SYN_SENT: u64 = 20 * SECOND_NS;
    pub const TCP_ESTABLISHED: u64 = 3600 * SECOND_NS;
    pub const TCP_FINS_SEEN: u64 = 30 * SECOND_NS;
    pub const TCP_RESET: u64 = 40 * SECOND_NS;
    pub const UDP: u64 = 60 * SECOND_NS;
    pub const ICMP: u64 = 5 * SECOND_NS;
    pub const OTHER: u64 = 600 * SECOND_NS;
}

impl ConntrackValue {
    /// How long the entry may stay idle, given its protocol and state (Calico's defaults).
    #[inline(always)]
    pub fn timeout_ns(&self, proto: u8) -> u64 {
        use conntrack_flags::*;
        match proto {
            6 => {
                if self.flags & RST != 0 {
                    conntrack_timeouts::TCP_RESET
                } else if self.flags & (FIN_FWD | FIN_REV) == FIN_FWD | FIN_REV {
                    conntrack_timeouts::TCP_FINS_SEEN
                } else if self.flags & ESTABLISHED != 0 {
                    conntrack_timeouts::TCP_ESTABLISHED
                } else {
                    conntrack_timeouts::TCP_SYN_SENT
                }
            }
            17 | 136 => conntrack_timeouts::UDP,
            1 | 58 => conntrack_timeouts::ICMP,
            _ => conntrack_timeouts::OTHER,
        }
    }

    /// Whether the entry has expired at `now_ns`.
    #[inline(always)]
    pub fn expired(&self, proto: u8, now_ns: u64) -> bool {
        now_ns.saturating_sub(self.last_seen_ns) > self.timeout_ns(proto)
    }
}

crate::user_pod!(ConntrackKey, ConntrackValue);

/// Per-CPU counts of the programs' conntrack work (the one slot of the conntrack statistics
/// map).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ConntrackCounters {
    /// Entries created for new flows.
    pub created: u64,
    /// Entries the programs removed: a closed connection's port reused, an expired entry
    /// replaced, a flow cut by a policy change. (The table's own evictions are not seen.)
    pub removed: u64,
    /// New flows whose entry the table could not take; their packets were dropped
    /// (`conntrack-full`).
    pub insert_failed: u64,
}

impl ConntrackCounters {
    /// Adds another CPU's counts to these.
    pub fn accumulate(&mut self, other: &Self) {
        self.created += other.created;
        self.removed += other.removed;
        self.insert_failed += other.insert_failed;
    }
}

crate::user_pod!(ConntrackCounters);
