//! calico-ebpf kernel programs: attached to the host side of every workload interface.
//!
//! - `calico_tc_from_wl` (TC ingress) and `calico_xdp_from_wl` (XDP): packets *from* a workload:
//!   anti-spoofing, gateway ARP, route lookup, and forwarding to another local workload inside
//!   BPF; everything else goes to the kernel stack.
//! - `calico_tc_to_wl` (TC egress): packets *to* a workload through the kernel stack.
//!
//! The entry points are thin: they read the context and map the pipeline's [`Action`] onto the
//! hook's return codes.
//!
//! Modules, from the pipelines down: `workload` (the from/to-workload pipelines) and `trace`;
//! `neighbour` (ARP and NDP answers), `routes` (anti-spoofing, routes, per address family),
//! `conntrack`, `policy`; `counters` (outcomes and their counters), `maps`; `packet` (packet
//! access and parsing, the leaf).
#![no_std]
#![no_main]

mod conntrack;
mod counters;
mod maps;
mod neighbour;
mod packet;
mod policy;
mod routes;
mod trace;
mod workload;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, xdp_action},
    helpers::generated::{bpf_redirect, bpf_redirect_peer},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use counters::{Action, count_redirect_failure};

/// Bytes the pipeline reads directly: Ethernet, a maximal IPv4 header (60) and an ICMP error
/// quoting another maximal IPv4 header and eight bytes of its payload (8 + 60 + 8). That covers
/// IPv6 as well: a neighbour solicitation with its option (40 + 32) and an ICMPv6 error
/// (40 + 8 + 40 + 8).
const HEADROOM_TO_PULL: u32 = 14 + 60 + 8 + 60 + 8;

/// Makes the headers the pipeline reads directly readable: direct packet access covers only the
/// linear part of the skb. A TCP or UDP packet whose IP header is already linear needs its
/// transport header, no more: pulling further would move payload out of a large segment's page
/// fragments into a reallocated head (a TSO segment's linear part ends with its TCP header).
/// Anything else gets the first [`HEADROOM_TO_PULL`] bytes (or the whole packet).
#[inline(always)]
fn pull_headers(ctx: &TcContext) {
    let len = ctx.len();
    let full = len.min(HEADROOM_TO_PULL);
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
    match workload::from_workload(ctx.data(), ctx.data_end(), ifindex, len as u64, false) {
        Action::Pass => TC_ACT_OK,
        Action::Drop => TC_ACT_SHOT,
        Action::Redirect { ifindex: target } => {
            // Straight into the target workload's namespace, skipping the host's backlog.
            let ret = unsafe { bpf_redirect_peer(target, 0) } as i32;
            if ret != TC_ACT_REDIRECT {
                count_redirect_failure(ifindex);
            }
            ret
        }
        Action::Reflect => {
            let ret = unsafe { bpf_redirect(ifindex, 0) } as i32;
            if ret != TC_ACT_REDIRECT {
                count_redirect_failure(ifindex);
            }
            ret
        }
    }
}

#[classifier]
pub fn calico_tc_to_wl(ctx: TcContext) -> i32 {
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    pull_headers(&ctx);
    match workload::to_workload(ctx.data(), ctx.data_end(), ifindex, ctx.len() as u64) {
        Action::Drop => TC_ACT_SHOT,
        _ => TC_ACT_OK,
    }
}

/// Run by `calico-loader trace` only (BPF_PROG_TEST_RUN): `cb[0]` is the endpoint's ifindex,
/// `cb[1]` the direction (0 ingress, 1 egress). The result goes to the trace map.
#[classifier]
pub fn calico_trace(ctx: TcContext) -> i32 {
    let (ifindex, ingress) = {
        let cb = ctx.cb();
        (cb[0], cb[1] == 0)
    };
    pull_headers(&ctx);
    trace::trace(
        ctx.data(),
        ctx.data_end(),
        ifindex,
        ingress,
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
    match workload::from_workload(data, data_end, ifindex, (data_end - data) as u64, true) {
        Action::Pass => xdp_action::XDP_PASS,
        Action::Drop => xdp_action::XDP_DROP,
        Action::Redirect { ifindex: target } => {
            let ret = unsafe { bpf_redirect(target, 0) } as u32;
            if ret != xdp_action::XDP_REDIRECT {
                count_redirect_failure(ifindex);
            }
            ret
        }
        // Not XDP_TX: veth flushes XDP_TX frames to its peer only when the peer runs an XDP
        // program itself, so with a GRO-only peer they would sit in its ring. A redirect to the
        // same interface goes through ndo_xdp_xmit with a flush.
        Action::Reflect => {
            let ret = unsafe { bpf_redirect(ifindex, 0) } as u32;
            if ret != xdp_action::XDP_REDIRECT {
                count_redirect_failure(ifindex);
            }
            ret
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
