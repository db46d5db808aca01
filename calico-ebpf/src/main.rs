//! calico-ebpf kernel programs: attached to the host side of every workload interface, and to
//! the host's data interfaces.
//!
//! - `calico_tc_from_wl` (TC ingress) and `calico_xdp_from_wl` (XDP): packets *from* a workload:
//!   anti-spoofing, gateway ARP, route lookup, and forwarding inside BPF to another local
//!   workload or, through the kernel's FIB, to a workload of another host; everything else goes
//!   to the kernel stack.
//! - `calico_tc_to_wl` (TC egress): packets *to* a workload through the kernel stack.
//! - `calico_tc_data` (TC ingress) and `calico_xdp_data` (XDP) on a data interface: packets
//!   from other hosts, delivered straight into a local workload; the rest passes untouched.
//! - `calico_tc_hep_in` (TC ingress) and `calico_tc_hep_out` (TC egress) on a data interface
//!   that a HostEndpoint covers: host endpoint policy on the host's own traffic and on
//!   forwarded traffic, then (ingress) the same delivery to local workloads.
//! - `calico_xdp_hep` (XDP) on a data interface that a HostEndpoint covers, in either attach
//!   mode: failsafe ports, then the endpoint's untracked (`doNotTrack`) ingress policy.
//!
//! The entry points are thin: they read the context and map the pipeline's [`Action`] onto the
//! hook's return codes.
//!
//! Modules, from the pipelines down: `workload` (the from/to-workload pipelines),
//! `data_interface` (packets from other hosts), `host_endpoint` and `trace`; `failsafe`; `forward` (the FIB lookup and what
//! differs between the hooks), `neighbour` (ARP and NDP answers), `routes` (anti-spoofing,
//! routes, per address family), `conntrack`, `policy`; `counters` (outcomes and their counters),
//! `maps`; `packet` (packet access and parsing, the leaf).
#![no_std]
#![no_main]

mod conntrack;
mod counters;
mod data_interface;
mod dhcp;
mod events;
mod failsafe;
mod forward;
mod host_endpoint;
mod maps;
mod nat;
mod neighbour;
mod packet;
mod policy;
mod routes;
mod trace;
mod untracked;
mod workload;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, xdp_action},
    helpers::generated::{bpf_redirect, bpf_redirect_peer, bpf_xdp_adjust_meta},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use calico_ebpf_common::{MARK_AGENT_REPLY, MARK_DELIVERED, XDP_META_UNTRACKED_ALLOWED, direction};
use counters::{Action, count_redirect_failure, count_to_workload};
use events::Headers;
use forward::{Tc, Xdp};

/// Bytes the pipeline reads directly: Ethernet, a maximal IPv4 header (60) and an ICMP error
/// quoting another maximal IPv4 header and eight bytes of its payload (8 + 60 + 8). That covers
/// IPv6 as well: a neighbour solicitation with its option (40 + 32) and an ICMPv6 error
/// (40 + 8 + 40 + 8).
const HEADROOM_TO_PULL: u32 = 14 + 60 + 8 + 60 + 8;

/// The same for IPv6 with extension headers: Ethernet, the IPv6 header, the most extension
/// headers the parse follows, and an ICMPv6 error quoting an IPv6 header and eight bytes.
const HEADROOM_WITH_EXTENSIONS: u32 =
    14 + 40 + packet::IPV6_MAX_EXTENSION_BYTES as u32 + 8 + 40 + 8;

/// Makes the headers the pipeline reads directly readable: direct packet access covers only the
/// linear part of the skb. A TCP or UDP packet whose IP header is already linear needs its
/// transport header, no more: pulling further would move payload out of a large segment's page
/// fragments into a reallocated head (a TSO segment's linear part ends with its TCP header).
/// Anything else gets the first [`HEADROOM_TO_PULL`] bytes (or the whole packet), and IPv6 with
/// extension headers [`HEADROOM_WITH_EXTENSIONS`].
#[inline(always)]
fn pull_headers(ctx: &TcContext) {
    pull(ctx, HEADROOM_TO_PULL);
    if packet::has_ipv6_extension_headers(ctx.data(), ctx.data_end()) {
        pull(ctx, HEADROOM_WITH_EXTENSIONS);
    }
}

/// Pulls the transport header, or the first `headroom` bytes, into the linear area.
#[inline(always)]
fn pull(ctx: &TcContext, headroom: u32) {
    let len = ctx.len();
    let full = len.min(headroom);
    let linear = (ctx.data_end() - ctx.data()) as u32;
    if linear >= full {
        return;
    }
    let need = match packet::transport_header_end(ctx.data(), ctx.data_end()) {
        Some(end) => end.min(full),
        None => full,
    };
    if linear < need {
        let _ = ctx.pull_data(need);
    }
}

#[classifier]
pub fn calico_tc_from_wl(ctx: TcContext) -> i32 {
    try_tc_from_wl(&ctx)
}

fn try_tc_from_wl(ctx: &TcContext) -> i32 {
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let len = ctx.len();
    pull_headers(ctx);
    match workload::from_workload(&Tc(ctx), ctx.data(), ctx.data_end(), ifindex, len as u64) {
        Action::Pass => TC_ACT_OK,
        Action::Drop => TC_ACT_SHOT,
        Action::Redirect { ifindex: target } => {
            // Straight into the target workload's namespace, skipping the host's backlog.
            let ret = unsafe { bpf_redirect_peer(target, 0) } as i32;
            if ret != TC_ACT_REDIRECT {
                count_redirect_failure(ifindex, direction::EGRESS, Headers::Parsed);
            }
            ret
        }
        Action::Transmit { ifindex: target } => {
            let ret = transmit(ctx, target);
            if ret != TC_ACT_REDIRECT {
                count_redirect_failure(ifindex, direction::EGRESS, Headers::Parsed);
            }
            ret
        }
        Action::Forward { ifindex: out } => {
            // Out of the FIB's interface, with the MACs of the kernel's neighbour entry.
            let ret = forward::redirect_neigh(out) as i32;
            if ret != TC_ACT_REDIRECT {
                count_redirect_failure(ifindex, direction::EGRESS, Headers::Parsed);
            }
            ret
        }
        // A neighbour answer: never parsed into the flow.
        Action::Reflect => {
            let ret = unsafe { bpf_redirect(ifindex, 0) } as i32;
            if ret != TC_ACT_REDIRECT {
                count_redirect_failure(ifindex, direction::EGRESS, Headers::Unread);
            }
            ret
        }
    }
}

/// Sends a packet out of a tap's egress (TC): `bpf_redirect_peer` drops anything aimed at a
/// tap. The mark tells the tap's `calico_tc_to_wl` that the packet was judged and counted.
#[inline(always)]
fn transmit(ctx: &TcContext, target: u32) -> i32 {
    unsafe { (*ctx.skb.skb).mark = MARK_DELIVERED };
    unsafe { bpf_redirect(target, 0) as i32 }
}

#[classifier]
pub fn calico_tc_to_wl(ctx: TcContext) -> i32 {
    let skb = ctx.skb.skb;
    let ifindex = unsafe { (*skb).ifindex };
    match unsafe { (*skb).mark } {
        // Judged and counted by the program that sent it here (into a tap).
        MARK_DELIVERED => {
            unsafe { (*skb).mark = 0 };
            return TC_ACT_OK;
        }
        // The agent's DHCP reply to a VM: it passes whatever the endpoint's policy says.
        MARK_AGENT_REPLY => {
            unsafe { (*skb).mark = 0 };
            count_to_workload(ifindex, ctx.len() as u64);
            return TC_ACT_OK;
        }
        _ => {}
    }
    pull_headers(&ctx);
    match workload::to_workload(
        &Tc(&ctx),
        ctx.data(),
        ctx.data_end(),
        ifindex,
        ctx.len() as u64,
    ) {
        Action::Drop => TC_ACT_SHOT,
        _ => TC_ACT_OK,
    }
}

/// Run by `calico-loader trace` only (BPF_PROG_TEST_RUN): `cb[0]` is the endpoint's ifindex,
/// `cb[1]` the direction (0 ingress, 1 egress), `cb[2]` what to trace (a `trace_kind`: a
/// workload endpoint or a host endpoint). The result goes to the trace map.
#[classifier]
pub fn calico_trace(ctx: TcContext) -> i32 {
    let (ifindex, ingress, kind) = {
        let cb = ctx.cb();
        (cb[0], cb[1] == 0, cb[2])
    };
    pull_headers(&ctx);
    trace::trace(
        ctx.data(),
        ctx.data_end(),
        ifindex,
        ingress,
        kind,
        ctx.len() as u64,
    );
    TC_ACT_OK
}

#[xdp]
pub fn calico_xdp_from_wl(ctx: XdpContext) -> u32 {
    try_xdp_from_wl(&ctx)
}

fn try_xdp_from_wl(ctx: &XdpContext) -> u32 {
    let ifindex = ctx.ingress_ifindex() as u32;
    let (data, data_end) = (ctx.data(), ctx.data_end());
    match workload::from_workload(&Xdp(ctx), data, data_end, ifindex, (data_end - data) as u64) {
        Action::Pass => xdp_action::XDP_PASS,
        Action::Drop => xdp_action::XDP_DROP,
        // The MACs are rewritten already (the target's, or the FIB's next hop).
        Action::Redirect { ifindex: target }
        | Action::Transmit { ifindex: target }
        | Action::Forward { ifindex: target } => {
            let ret = unsafe { bpf_redirect(target, 0) } as u32;
            if ret != xdp_action::XDP_REDIRECT {
                count_redirect_failure(ifindex, direction::EGRESS, Headers::Parsed);
            }
            ret
        }
        // Not XDP_TX: veth flushes XDP_TX frames to its peer only when the peer runs an XDP
        // program itself, so with a GRO-only peer they would sit in its ring. A redirect to the
        // same interface goes through ndo_xdp_xmit with a flush.
        Action::Reflect => {
            let ret = unsafe { bpf_redirect(ifindex, 0) } as u32;
            if ret != xdp_action::XDP_REDIRECT {
                count_redirect_failure(ifindex, direction::EGRESS, Headers::Unread);
            }
            ret
        }
    }
}

#[classifier]
pub fn calico_tc_data(ctx: TcContext) -> i32 {
    let to_this_host = unsafe { (*ctx.skb.skb).pkt_type } == host_endpoint::PACKET_HOST;
    let len = ctx.len();
    pull_headers(&ctx);
    let action = data_interface::from_data_interface(
        &Tc(&ctx),
        ctx.data(),
        ctx.data_end(),
        len as u64,
        to_this_host,
    );
    tc_data_return(&ctx, action)
}

/// TC ingress of a data interface that a HostEndpoint covers: host endpoint policy, then the
/// data interface's delivery to local workloads.
#[classifier]
pub fn calico_tc_hep_in(ctx: TcContext) -> i32 {
    let (ifindex, pkt_type) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).pkt_type) };
    let len = ctx.len();
    // Read before the pull, which may move the packet.
    let untracked_allowed = untracked_mark(&ctx);
    pull_headers(&ctx);
    let action = host_endpoint::ingress(
        &Tc(&ctx),
        ctx.data(),
        ctx.data_end(),
        len as u64,
        ifindex,
        pkt_type,
        untracked_allowed,
    );
    tc_data_return(&ctx, action)
}

/// Whether the XDP program left [`XDP_META_UNTRACKED_ALLOWED`] in the packet's metadata.
#[inline(always)]
fn untracked_mark(ctx: &TcContext) -> bool {
    let (meta, data) = unsafe { ((*ctx.skb.skb).data_meta as usize, ctx.data()) };
    if meta + 4 > data {
        return false;
    }
    unsafe { core::ptr::read_unaligned(meta as *const u32) == XDP_META_UNTRACKED_ALLOWED }
}

/// TC egress of a data interface that a HostEndpoint covers: host endpoint policy for what
/// the host sends and what it forwards out.
#[classifier]
pub fn calico_tc_hep_out(ctx: TcContext) -> i32 {
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let len = ctx.len();
    pull_headers(&ctx);
    match host_endpoint::egress(ctx.data(), ctx.data_end(), len as u64, ifindex) {
        Action::Drop => TC_ACT_SHOT,
        _ => TC_ACT_OK,
    }
}

/// The TC return code of a data interface's ingress pipeline's action.
#[inline(always)]
fn tc_data_return(ctx: &TcContext, action: Action) -> i32 {
    match action {
        Action::Redirect { ifindex: target } => {
            // Straight into the workload's namespace.
            let ret = unsafe { bpf_redirect_peer(target, 0) } as i32;
            if ret != TC_ACT_REDIRECT {
                count_redirect_failure(target, direction::INGRESS, Headers::Parsed);
            }
            ret
        }
        Action::Transmit { ifindex: target } => {
            let ret = transmit(ctx, target);
            if ret != TC_ACT_REDIRECT {
                count_redirect_failure(target, direction::INGRESS, Headers::Parsed);
            }
            ret
        }
        Action::Drop => TC_ACT_SHOT,
        _ => TC_ACT_OK,
    }
}

#[xdp]
pub fn calico_xdp_data(ctx: XdpContext) -> u32 {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    // A group address (broadcast, multicast) has the low bit of its first byte set.
    let to_this_host = packet::ptr_at::<[u8; 6]>(data, data_end, 0)
        .is_some_and(|mac| unsafe { (*mac)[0] } & 1 == 0);
    match data_interface::from_data_interface(
        &Xdp(&ctx),
        data,
        data_end,
        (data_end - data) as u64,
        to_this_host,
    ) {
        Action::Redirect { ifindex: target } | Action::Transmit { ifindex: target } => {
            let ret = unsafe { bpf_redirect(target, 0) } as u32;
            if ret != xdp_action::XDP_REDIRECT {
                count_redirect_failure(target, direction::INGRESS, Headers::Parsed);
            }
            ret
        }
        Action::Drop => xdp_action::XDP_DROP,
        _ => xdp_action::XDP_PASS,
    }
}

/// XDP on a data interface that a HostEndpoint covers: the failsafe ports, then its untracked
/// ingress policy. What untracked policy allowed goes on marked in its metadata.
#[xdp]
pub fn calico_xdp_hep(ctx: XdpContext) -> u32 {
    let ifindex = ctx.ingress_ifindex() as u32;
    match untracked::ingress(ctx.data(), ctx.data_end(), ifindex) {
        untracked::Prefilter::Drop => xdp_action::XDP_DROP,
        untracked::Prefilter::PassUntracked => {
            mark_untracked(&ctx);
            xdp_action::XDP_PASS
        }
        untracked::Prefilter::Pass => xdp_action::XDP_PASS,
    }
}

/// Leaves [`XDP_META_UNTRACKED_ALLOWED`] in the packet's metadata. Where the driver keeps no
/// metadata, the packet goes on unmarked: tracked and judged by the endpoint's other policy.
#[inline(always)]
fn mark_untracked(ctx: &XdpContext) {
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -4) } != 0 {
        return;
    }
    let (meta, data) = unsafe { ((*ctx.ctx).data_meta as usize, (*ctx.ctx).data as usize) };
    if meta + 4 > data {
        return;
    }
    unsafe { core::ptr::write_unaligned(meta as *mut u32, XDP_META_UNTRACKED_ALLOWED) };
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
