//! What the hook does with a packet ([`Action`]), and the per-CPU endpoint and host endpoint
//! counters that record it.
//!
//! An outcome is counted where it is decided: the functions that decide a drop or a pass
//! return it through these helpers, so the TC and XDP hooks count in the same way. The counters
//! are per-CPU hash entries keyed by the host-side ifindex (a host endpoint's: its interface's
//! ifindex); updates are plain increments. A drop is also reported to a drop event listener,
//! if one is registered (`events`).

use calico_ebpf_common::{
    DropReason, EndpointCounters, HostEndpointCounters, UNKNOWN_INTERFACE_COUNTERS, direction,
};

use crate::{
    events::{Headers, report_drop},
    maps::{COUNTERS, HOST_ENDPOINT_COUNTERS},
};

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

/// The endpoint a packet is counted against: its host-side ifindex and counters (null when it
/// has none), and which way the packet goes from its point of view (a [`direction`] value).
#[derive(Clone, Copy)]
pub struct Counted {
    pub ifindex: u32,
    pub counters: *mut EndpointCounters,
    pub direction: u8,
}

impl Counted {
    /// The endpoint behind `ifindex`, for a packet it sent.
    #[inline(always)]
    pub fn egress(ifindex: u32) -> Self {
        Self {
            ifindex,
            counters: endpoint_counters(ifindex),
            direction: direction::EGRESS,
        }
    }

    /// The endpoint behind `ifindex`, for a packet to it.
    #[inline(always)]
    pub fn ingress(ifindex: u32) -> Self {
        Self {
            ifindex,
            counters: endpoint_counters(ifindex),
            direction: direction::INGRESS,
        }
    }
}

/// The counters of the endpoint behind `ifindex` (null when it has none).
#[inline(always)]
pub fn endpoint_counters(ifindex: u32) -> *mut EndpointCounters {
    COUNTERS
        .get_ptr_mut(ifindex)
        .unwrap_or(core::ptr::null_mut())
}

/// Drops a packet: counted against `at`, and reported (with its flow when `headers` says the
/// packet was parsed).
#[inline(always)]
pub fn count_drop(at: Counted, reason: DropReason, headers: Headers) -> Action {
    if let Some(c) = unsafe { at.counters.as_mut() } {
        c.drops[reason as usize] += 1;
    }
    report_drop(at.ifindex, reason as u32, at.direction, 0, headers);
    Action::Drop
}

/// Drops a parsed packet that the policy of the workload behind `ifindex` refused in
/// `direction` (`rule`: the rule id that denied, 0 when none decided).
#[inline(always)]
pub fn count_refusal(ifindex: u32, direction: u8, reason: DropReason, rule: u32) -> Action {
    if let Some(c) = unsafe { endpoint_counters(ifindex).as_mut() } {
        c.drops[reason as usize] += 1;
    }
    report_drop(ifindex, reason as u32, direction, rule, Headers::Parsed);
    Action::Drop
}

#[inline(always)]
pub fn count_pass(at: Counted, len: u64) -> Action {
    if let Some(c) = unsafe { at.counters.as_mut() } {
        c.to_host_packets += 1;
        c.to_host_bytes += len;
    }
    Action::Pass
}

/// Drops a packet from (or to) an interface without an endpoint entry, counted under the
/// shared key and reported with the interface's ifindex.
#[inline(always)]
pub fn count_unknown_interface(ifindex: u32, direction: u8) -> Action {
    if let Some(c) = unsafe { endpoint_counters(UNKNOWN_INTERFACE_COUNTERS).as_mut() } {
        c.drops[DropReason::UnknownInterface as usize] += 1;
    }
    report_drop(
        ifindex,
        DropReason::UnknownInterface as u32,
        direction,
        0,
        Headers::Unread,
    );
    Action::Drop
}

/// Counts a packet the workload sent.
#[inline(always)]
pub fn count_from_workload(at: Counted, len: u64) {
    if let Some(c) = unsafe { at.counters.as_mut() } {
        c.from_wl_packets += 1;
        c.from_wl_bytes += len;
    }
}

/// Counts a packet forwarded inside BPF by the workload that sent it.
#[inline(always)]
pub fn count_forwarded(at: Counted, len: u64) {
    if let Some(c) = unsafe { at.counters.as_mut() } {
        c.fwd_packets += 1;
        c.fwd_bytes += len;
    }
}

/// Counts a packet forwarded inside BPF to another host by the workload that sent it.
#[inline(always)]
pub fn count_forwarded_remote(at: Counted, len: u64) {
    if let Some(c) = unsafe { at.counters.as_mut() } {
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
pub fn count_neighbour_reply(at: Counted) {
    if let Some(c) = unsafe { at.counters.as_mut() } {
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

/// Counts a failed redirect against the workload behind `ifindex` (the sender, `direction`
/// egress; the receiver of a packet from a data interface, ingress).
#[inline(always)]
pub fn count_redirect_failure(ifindex: u32, direction: u8, headers: Headers) {
    if let Some(c) = COUNTERS.get_ptr_mut(ifindex) {
        unsafe { (*c).drops[DropReason::RedirectFailed as usize] += 1 };
    }
    report_drop(
        ifindex,
        DropReason::RedirectFailed as u32,
        direction,
        0,
        headers,
    );
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

/// Drops a parsed packet on the host endpoint of interface `ifindex` (`counters`: its
/// counters), counted there and reported with the interface's ifindex, `direction` seen from
/// the host endpoint and `rule` the rule id that denied (0 when none did).
#[inline(always)]
pub fn count_host_endpoint_drop(
    counters: *mut HostEndpointCounters,
    ifindex: u32,
    direction: u8,
    reason: DropReason,
    rule: u32,
) -> Action {
    if let Some(c) = unsafe { counters.as_mut() } {
        c.drops[reason as usize] += 1;
    }
    report_drop(ifindex, reason as u32, direction, rule, Headers::Parsed);
    Action::Drop
}

/// Counts a packet untracked policy let through on a host endpoint: arriving (`ingress`, in
/// XDP) or leaving.
#[inline(always)]
pub fn count_untracked_pass(counters: *mut HostEndpointCounters, ingress: bool) {
    if let Some(c) = unsafe { counters.as_mut() } {
        if ingress {
            c.untracked_in_packets += 1;
        } else {
            c.untracked_out_packets += 1;
        }
    }
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
