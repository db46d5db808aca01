//! Host endpoints as the programs see them: one entry per data interface that a HostEndpoint
//! covers, keyed by its ifindex, with the ids of its compiled policies; its per-CPU counters;
//! and the failsafe ports that stay open to and from the host whatever the policy says.
//!
//! A data interface with an entry gets the host endpoint programs (TC ingress and egress)
//! instead of the plain data-interface program; an interface without one keeps the plain
//! program, and the host endpoint programs treat a missing entry the same way.

use crate::{DROP_REASONS, ENDPOINT_NAME_LEN, IFNAME_LEN, until_nul};

/// Value of the host endpoints map, keyed by the ifindex of the data interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostEndpointInfo {
    /// Bits from [`host_endpoint_flags`].
    pub flags: u32,
    /// Policy id of the compiled policy for traffic to the host (pre-DNAT, then normal
    /// policy, profiles, deny).
    pub ingress_policy: u32,
    /// Policy id of the compiled policy for traffic the host sends.
    pub egress_policy: u32,
    /// Policy id of the compiled policy for traffic forwarded in through the interface
    /// (pre-DNAT, then apply-on-forward policy; what none decides is allowed).
    pub forward_ingress_policy: u32,
    /// Policy id of the compiled policy for forwarded traffic leaving through the interface.
    pub forward_egress_policy: u32,
    /// Policy id of the compiled untracked (`doNotTrack`) ingress policy, which the XDP
    /// program runs on every packet arriving through the interface before anything else
    /// (0: no untracked policy applies in that direction). What it does not decide goes on.
    pub untracked_ingress_policy: u32,
    /// Policy id of the compiled untracked egress policy, which the TC egress program runs on
    /// every packet the host itself sends through the interface, before conntrack.
    pub untracked_egress_policy: u32,
    /// Name of the interface, NUL-padded.
    pub ifname: [u8; IFNAME_LEN],
    /// Name of the HostEndpoint, NUL-padded (truncated if longer).
    pub name: [u8; ENDPOINT_NAME_LEN],
}

impl Default for HostEndpointInfo {
    fn default() -> Self {
        Self {
            flags: 0,
            ingress_policy: 0,
            egress_policy: 0,
            forward_ingress_policy: 0,
            forward_egress_policy: 0,
            untracked_ingress_policy: 0,
            untracked_egress_policy: 0,
            ifname: [0; IFNAME_LEN],
            name: [0; ENDPOINT_NAME_LEN],
        }
    }
}

impl HostEndpointInfo {
    /// The stored endpoint name, up to the first NUL.
    pub fn name_bytes(&self) -> &[u8] {
        until_nul(&self.name)
    }

    /// The stored interface name, up to the first NUL.
    pub fn ifname_bytes(&self) -> &[u8] {
        until_nul(&self.ifname)
    }
}

/// Bits of [`HostEndpointInfo::flags`].
pub mod host_endpoint_flags {
    /// No policy applies to forwarded traffic in either direction: it passes untouched (and
    /// untracked), as through an interface without a host endpoint.
    pub const FORWARD_OPEN: u32 = 1;
}

/// What the XDP program of a host endpoint's interface leaves in the packet's metadata (the
/// four bytes before the frame, `bpf_xdp_adjust_meta`) when the endpoint's untracked ingress
/// policy allowed it: the TC ingress program then lets it through without conntrack and without
/// the endpoint's other policy. Only a BPF program can write metadata, and it lives only as
/// long as the packet's trip from XDP to TC on this interface.
pub const XDP_META_UNTRACKED_ALLOWED: u32 = 0x0ca1_0d01;

/// Per-CPU counters of one host endpoint's interface. "In" and "out" are seen from the host.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HostEndpointCounters {
    /// IP packets the ingress program saw (arriving on the interface).
    pub in_packets: u64,
    pub in_bytes: u64,
    /// IP packets the egress program saw (leaving through the interface).
    pub out_packets: u64,
    pub out_bytes: u64,
    /// Packets to the host itself that host policy (or conntrack) let through.
    pub to_host_packets: u64,
    /// Packets from the host itself that host policy (or conntrack) let through.
    pub from_host_packets: u64,
    /// Forwarded packets that came in through the interface and were let through.
    pub forward_in_packets: u64,
    /// Forwarded packets that left through the interface and were let through.
    pub forward_out_packets: u64,
    /// Flows to the host opened on an inbound failsafe port, whatever the policy said.
    pub failsafe_in: u64,
    /// Flows from the host opened to an outbound failsafe port.
    pub failsafe_out: u64,
    /// Dropped packets, indexed by [`crate::DropReason`].
    pub drops: [u64; DROP_REASONS],
    /// Packets arriving through the interface that untracked ingress policy allowed (XDP):
    /// let through without conntrack or the endpoint's other policy.
    pub untracked_in_packets: u64,
    /// Packets the host sent through the interface that untracked egress policy allowed.
    pub untracked_out_packets: u64,
}

impl HostEndpointCounters {
    /// Adds another CPU's counters to these.
    pub fn accumulate(&mut self, other: &Self) {
        self.in_packets += other.in_packets;
        self.in_bytes += other.in_bytes;
        self.out_packets += other.out_packets;
        self.out_bytes += other.out_bytes;
        self.to_host_packets += other.to_host_packets;
        self.from_host_packets += other.from_host_packets;
        self.forward_in_packets += other.forward_in_packets;
        self.forward_out_packets += other.forward_out_packets;
        self.failsafe_in += other.failsafe_in;
        self.failsafe_out += other.failsafe_out;
        for (mine, theirs) in self.drops.iter_mut().zip(other.drops.iter()) {
            *mine += *theirs;
        }
        self.untracked_in_packets += other.untracked_in_packets;
        self.untracked_out_packets += other.untracked_out_packets;
    }
}

/// Values of [`FailsafeKey::direction`].
pub mod failsafe_direction {
    /// To the host (`FailsafeInboundHostPorts`): the port is the host's, the net the source's.
    pub const INBOUND: u8 = 0;
    /// From the host (`FailsafeOutboundHostPorts`): the port and the net are the
    /// destination's.
    pub const OUTBOUND: u8 = 1;
}

/// Number of leading bits of a [`FailsafeKey`] before the address: direction, protocol,
/// port, family and padding, always matched in full.
pub const FAILSAFE_FIXED_BITS: u32 = 64;

/// Data part of a failsafe key (an LPM trie: the prefix length is [`FAILSAFE_FIXED_BITS`] plus
/// the length of the remote net; a port without a net has one entry per family, of length 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct FailsafeKey {
    /// A [`failsafe_direction`] value.
    pub direction: u8,
    /// IP protocol number (TCP, UDP or SCTP).
    pub proto: u8,
    /// The port, network byte order.
    pub port: [u8; 2],
    /// 4 or 6.
    pub family: u8,
    pub _pad: [u8; 3],
    /// The remote address (IPv4 in the first four bytes), its bits past the net's length zero.
    pub addr: [u8; 16],
}

crate::user_pod!(HostEndpointInfo, HostEndpointCounters, FailsafeKey);
