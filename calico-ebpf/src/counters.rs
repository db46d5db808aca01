//! What the hook does with a packet ([`Action`]), and the per-CPU endpoint and host endpoint
//! counters that record it.
//!
//! An outcome is counted where it is decided: the functions that decide a drop or a pass
//! return it through these helpers, so the TC and XDP hooks count in the same way. The counters
//! are per-CPU hash entries keyed by the host-side ifindex; updates are plain increments.

use calico_ebpf_common::{
    DropReason, EndpointCounters, HostEndpointCounters, UNKNOWN_INTERFACE_COUNTERS,
};

use crate::maps::{COUNTERS, HOST_ENDPOINT_COUNTERS};

/// What the hook does with the packet.
pub enum Action {
    /// Hand the packet to the kernel stack.
    Pass,
    /// Drop the packet (already counted).
    Drop,
    /// Deliver the (rewritten) packet to the workload behind this host-side ifindex, a veth:
    /// TC uses the peer redirect, XDP `bpf_redirect`.
    Redirect { ifindex: u32 },
    /// Deliver the (rewritten) packet to the workload behind this host-side ifindex, a tap:
    /// `bpf_redirect` out of its egress (the peer redirect drops anything aimed at a tap). In
    /// TC the packet carries [`calico_ebpf_common::MARK_DELIVERED`], so that the tap's
    /// `calico_tc_to_wl` does not judge or count it again.
    Transmit { ifindex: u32 },
    /// Send the packet (one hop older) out of this interface to the next hop the FIB lookup
    /// found: towards a workload of another host.
    Forward { ifindex: u32 },
    /// Send the (rewritten) packet back out of the interface it came in on.
    Reflect,
}

/// The counters of the endpoint behind `ifindex` (null when it has none).
#[inline(always)]
pub fn endpoint_counters(ifindex: u32) -> *mut EndpointCounters {
    COUNTERS
        .get_ptr_mut(ifindex)
        .unwrap_or(core::ptr::null_mut())
}

#[inline(always)]
pub fn count_drop(counters: *mut EndpointCounters, reason: DropReason) -> Action {
    if let Some(c) = unsafe { counters.as_mut() } {
        c.drops[reason as usize] += 1;
    }
    Action::Drop
}

#[inline(always)]
pub fn count_pass(counters: *mut EndpointCounters, len: u64) -> Action {
    if let Some(c) = unsafe { counters.as_mut() } {
        c.to_host_packets += 1;
        c.to_host_bytes += len;
    }
    Action::Pass
}

/// Counts a drop against the workload behind `ifindex` (the one whose policy decided).
#[inline(always)]
pub fn count_drop_for(ifindex: u32, reason: DropReason) -> Action {
    count_drop(endpoint_counters(ifindex), reason)
}

/// Drops a packet from an interface without an endpoint entry, counted under the shared key.
#[inline(always)]
pub fn count_unknown_interface() -> Action {
    count_drop_for(UNKNOWN_INTERFACE_COUNTERS, DropReason::UnknownInterface)
}

/// Counts a packet the workload sent.
#[inline(always)]
pub fn count_from_workload(counters: *mut EndpointCounters, len: u64) {
    if let Some(c) = unsafe { counters.as_mut() } {
        c.from_wl_packets += 1;
        c.from_wl_bytes += len;
    }
}

/// Counts a packet forwarded inside BPF by the workload that sent it.
#[inline(always)]
pub fn count_forwarded(counters: *mut EndpointCounters, len: u64) {
    if let Some(c) = unsafe { counters.as_mut() } {
        c.fwd_packets += 1;
        c.fwd_bytes += len;
    }
}

/// Counts a packet forwarded inside BPF to another host by the workload that sent it.
#[inline(always)]
pub fn count_forwarded_remote(counters: *mut EndpointCounters, len: u64) {
    if let Some(c) = unsafe { counters.as_mut() } {
        c.fwd_remote_packets += 1;
        c.fwd_remote_bytes += len;
    }
}

/// Counts a packet from a data interface delivered to the workload behind `ifindex`.
#[inline(always)]
pub fn count_from_data(ifindex: u32, len: u64) {
    if let Some(c) = COUNTERS.get_ptr_mut(ifindex) {
        let c = unsafe { &mut *c };
        c.to_wl_packets += 1;
        c.to_wl_bytes += len;
        c.from_data_packets += 1;
        c.from_data_bytes += len;
    }
}

/// Counts an ARP or neighbour discovery answer sent back to the workload.
#[inline(always)]
pub fn count_neighbour_reply(counters: *mut EndpointCounters) {
    if let Some(c) = unsafe { counters.as_mut() } {
        c.neighbour_replies += 1;
    }
}

/// Counts a packet delivered to the workload behind `ifindex`.
#[inline(always)]
pub fn count_to_workload(ifindex: u32, len: u64) {
    if let Some(c) = COUNTERS.get_ptr_mut(ifindex) {
        let c = unsafe { &mut *c };
        c.to_wl_packets += 1;
        c.to_wl_bytes += len;
    }
}

/// Counts a failed redirect against the sending workload.
#[inline(always)]
pub fn count_redirect_failure(ifindex: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(ifindex) {
        unsafe { (*c).drops[DropReason::RedirectFailed as usize] += 1 };
    }
}

/// The counters of the host endpoint on the interface `ifindex` (null when it has none).
#[inline(always)]
pub fn host_endpoint_counters(ifindex: u32) -> *mut HostEndpointCounters {
    HOST_ENDPOINT_COUNTERS
        .get_ptr_mut(ifindex)
        .unwrap_or(core::ptr::null_mut())
}

/// Counts an IP packet a host endpoint program saw: arriving (`ingress`) or leaving.
#[inline(always)]
pub fn count_host_endpoint_packet(counters: *mut HostEndpointCounters, ingress: bool, len: u64) {
    if let Some(c) = unsafe { counters.as_mut() } {
        if ingress {
            c.in_packets += 1;
            c.in_bytes += len;
        } else {
            c.out_packets += 1;
            c.out_bytes += len;
        }
    }
}

/// Where a packet a host endpoint let through goes or comes from.
#[derive(Clone, Copy)]
pub enum HostPath {
    ToHost,
    FromHost,
    ForwardIn,
    ForwardOut,
}

/// Counts a packet a host endpoint let through, by its path.
#[inline(always)]
pub fn count_host_endpoint_pass(counters: *mut HostEndpointCounters, path: HostPath) {
    if let Some(c) = unsafe { counters.as_mut() } {
        match path {
            HostPath::ToHost => c.to_host_packets += 1,
            HostPath::FromHost => c.from_host_packets += 1,
            HostPath::ForwardIn => c.forward_in_packets += 1,
            HostPath::ForwardOut => c.forward_out_packets += 1,
        }
    }
}

/// Counts a packet a host endpoint dropped.
#[inline(always)]
pub fn count_host_endpoint_drop(counters: *mut HostEndpointCounters, reason: DropReason) -> Action {
    if let Some(c) = unsafe { counters.as_mut() } {
        c.drops[reason as usize] += 1;
    }
    Action::Drop
}

/// Counts a flow a failsafe port opened on the host endpoint of interface `ifindex`: inbound
/// (`ingress`) or outbound.
#[inline(always)]
pub fn count_failsafe(ifindex: u32, ingress: bool) {
    if let Some(c) = HOST_ENDPOINT_COUNTERS.get_ptr_mut(ifindex) {
        let c = unsafe { &mut *c };
        if ingress {
            c.failsafe_in += 1;
        } else {
            c.failsafe_out += 1;
        }
    }
}
