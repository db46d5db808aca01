//! Workload endpoints as the programs see them: one entry per host-side interface, keyed by its
//! ifindex, with the endpoint's MACs, names and the ids of its compiled policies.
//!
//! The programs look the receiving interface up before anything else: a packet from an
//! interface without an entry is dropped (and counted under
//! [`crate::counters::UNKNOWN_INTERFACE_COUNTERS`]).

use crate::until_nul;

/// The MAC the host side of every workload interface carries, as Calico's CNI plugin sets it.
pub const HOST_SIDE_MAC: [u8; 6] = [0xee; 6];

/// The IPv4 gateway every workload routes through (answered by the host side, never assigned).
pub const GATEWAY_V4: [u8; 4] = [169, 254, 1, 1];

/// Length of [`EndpointInfo::ifname`] (Linux `IFNAMSIZ`).
pub const IFNAME_LEN: usize = 16;

/// Length of [`EndpointInfo::name`].
pub const ENDPOINT_NAME_LEN: usize = 96;

/// Value of the endpoints map, keyed by the ifindex of the host side of the interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    /// Bits from [`endpoint_flags`].
    pub flags: u32,
    /// Policy id of the endpoint's compiled ingress policy (first key part of the policy
    /// address tries); never 0 once the entry exists.
    pub ingress_policy: u32,
    /// Policy id of the endpoint's compiled egress policy.
    pub egress_policy: u32,
    /// The address this host answers DHCP as for the workload (server identifier and router:
    /// the endpoint's `ipv4Gateway`, else `169.254.1.1`), network byte order; all zeroes when
    /// the workload is not served DHCP (only taps are). DHCP requests to this address or to
    /// the broadcast address go to the agent whatever the endpoint's policy says.
    pub dhcp_server: [u8; 4],
    /// The workload's MAC (zero when unknown).
    pub mac: [u8; 6],
    /// The MAC of the host side of the interface.
    pub host_mac: [u8; 6],
    /// Name of the host side of the interface, NUL-padded.
    pub ifname: [u8; IFNAME_LEN],
    /// `namespace/name` of the WorkloadEndpoint, NUL-padded (truncated if longer).
    pub name: [u8; ENDPOINT_NAME_LEN],
}

impl Default for EndpointInfo {
    fn default() -> Self {
        Self {
            flags: 0,
            ingress_policy: 0,
            egress_policy: 0,
            dhcp_server: [0; 4],
            mac: [0; 6],
            host_mac: [0; 6],
            ifname: [0; IFNAME_LEN],
            name: [0; ENDPOINT_NAME_LEN],
        }
    }
}

impl EndpointInfo {
    /// The stored endpoint name, up to the first NUL.
    pub fn name_bytes(&self) -> &[u8] {
        until_nul(&self.name)
    }

    /// The stored interface name, up to the first NUL.
    pub fn ifname_bytes(&self) -> &[u8] {
        until_nul(&self.ifname)
    }
}

/// Bits of [`EndpointInfo::flags`].
pub mod endpoint_flags {
    /// The interface is a workload interface managed by the agent.
    pub const WORKLOAD: u32 = 1;
    /// The interface is a tap (a VM's): packets are delivered into it with `bpf_redirect`
    /// out of its egress, never with the peer redirect, and only with the VM's MAC.
    pub const TAP: u32 = 2;
    /// The endpoint has floating IPs (`ipNATs`): its packets from an internal address to
    /// outside the IP pools leave from the external address.
    pub const FLOATING_IPS: u32 = 4;
    /// The workload's traffic to the host itself is dropped once its egress policy allowed it
    /// (`DefaultEndpointToHostAction: Drop`); without it, the traffic goes to the kernel.
    pub const TO_HOST_DROP: u32 = 8;
}

/// `skb->mark` of a packet the from-workload or data-interface program has already judged and
/// counted, sent out of a tap's egress (`bpf_redirect`): the tap's `calico_tc_to_wl` clears the
/// mark and lets it through without judging or counting it again.
pub const MARK_DELIVERED: u32 = 0x0ca1_0e01;

/// `skb->mark` (`SO_MARK`) of the agent's own DHCP replies to a tap: the tap's
/// `calico_tc_to_wl` clears the mark, counts the packet and lets it through whatever the
/// endpoint's ingress policy says (a VM must be able to boot).
pub const MARK_AGENT_REPLY: u32 = 0x0ca1_0e02;

crate::user_pod!(EndpointInfo);
