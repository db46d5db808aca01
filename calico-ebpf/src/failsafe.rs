//! Failsafe ports: the protocols and ports (`FailsafeInboundHostPorts`,
//! `FailsafeOutboundHostPorts`) that stay open to and from the host whatever its host endpoint
//! policy says, so that a policy mistake cannot cut the host off (SSH, DHCP, BGP, etcd, the
//! Kubernetes API). They apply to the host endpoints' host policy only, before any of it
//! (pre-DNAT policy included), when a flow is checked: its first packet, or again after a
//! policy change.

use aya_ebpf::maps::lpm_trie::Key;
use calico_ebpf_common::{FAILSAFE_FIXED_BITS, FailsafeKey, failsafe_direction};

use crate::{
    maps::FAILSAFES,
    packet::{Flow, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP},
};

/// Whether `flow` (as its opener sent it) is open whatever the policy: inbound (`ingress`: to
/// the host) on a failsafe port of the host from an allowed net, or outbound to a failsafe
/// port in an allowed net.
#[inline(never)]
pub fn open(flow: &Flow, ingress: bool) -> bool {
    if !matches!(flow.proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP) {
        return false;
    }
    let (direction, remote) = if ingress {
        (failsafe_direction::INBOUND, flow.src)
    } else {
        (failsafe_direction::OUTBOUND, flow.dst)
    };
    let width = if flow.family == 4 { 32 } else { 128 };
    let key = Key::new(
        FAILSAFE_FIXED_BITS + width,
        FailsafeKey {
            direction,
            proto: flow.proto,
            port: flow.dport.to_be_bytes(),
            family: flow.family,
            _pad: [0; 3],
            addr: remote,
        },
    );
    FAILSAFES.get(&key).is_some()
}
