//! Floating IPs (`ipNATs`): 1:1 NAT between an external address and a local workload's
//! internal one, IPv4.
//!
//! - Destination NAT: a packet whose route is a floating IP (arriving on a data interface, or
//!   from a local workload) has its destination rewritten to the internal address before
//!   conntrack and policy see it, so policy applies to the internal address, and conntrack
//!   keys the flow on it.
//! - Source NAT: a packet from an endpoint with floating IPs, from an internal address, whose
//!   destination is outside every IP pool (no route), or that replies to a flow whose opener
//!   addressed the floating IP (the conntrack entry's `DNAT` flag), leaves from the external
//!   address; after policy, which saw the internal one.
//!
//! Replies need no state of their own: a reply to a source-NATed flow arrives for the external
//! address and is translated back by destination NAT; a reply to a destination-NATed flow is
//! source-NATed as above.
//!
//! Checksums: TC rewrites through the kernel's helpers (`bpf_l3_csum_replace`,
//! `bpf_l4_csum_replace` with the pseudo-header flag, which keep checksum offload and
//! `CHECKSUM_COMPLETE` right); XDP patches the IPv4 header checksum and the TCP or UDP
//! checksum incrementally (RFC 1624). A UDP datagram without checksum (0) keeps none.

use aya_ebpf::{
    bindings::{__sk_buff, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    cty::c_void,
    helpers::generated::{bpf_l3_csum_replace, bpf_l4_csum_replace, bpf_skb_store_bytes},
};
use calico_ebpf_common::{
    FloatingIpKey, FloatingIpValue, checksum_replace4, floating_ip_direction,
};

use crate::{
    forward::Hook,
    maps::{FLOATING_IP_COUNTERS, FLOATING_IPS},
    packet::{ETH_HLEN, Flow, IPPROTO_TCP, IPPROTO_UDP, ptr_at},
};

/// Offsets of the source and destination addresses in the IPv4 header.
const SOURCE: usize = 12;
const DESTINATION: usize = 16;

/// Values of [`Flow::nat`].
pub mod flow_nat {
    /// The packet's destination was translated from a floating IP.
    pub const DNAT: u8 = 1;
}

/// The floating IP entry of an IPv4 address, in `direction`.
#[inline(always)]
fn lookup(addr: &[u8; 16], direction: u8) -> Option<&'static FloatingIpValue> {
    let key = FloatingIpKey {
        addr: [
            addr[0], addr[1], addr[2], addr[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
        family: 4,
        direction,
        _pad: [0; 2],
    };
    unsafe { FLOATING_IPS.get(&key) }
}

/// Rewrites the destination of an IPv4 packet to a floating IP into the internal address, in
/// the packet and in `flow`. Returns whether it did (no entry, not IPv4, or a failed rewrite:
/// the packet is left to the kernel). `[data, data_end)` are stale afterwards in TC.
#[inline(never)]
pub fn dnat<H: Hook>(ctx: *mut c_void, data: usize, data_end: usize, flow: &mut Flow) -> bool {
    if flow.family != 4 {
        return false;
    }
    let Some(entry) = lookup(&flow.dst, floating_ip_direction::EXTERNAL) else {
        return false;
    };
    let internal = [entry.addr[0], entry.addr[1], entry.addr[2], entry.addr[3]];
    if !rewrite::<H>(ctx, data, data_end, DESTINATION, internal) {
        return false;
    }
    flow.dst[..4].copy_from_slice(&internal);
    flow.nat |= flow_nat::DNAT;
    if let Some(counters) = FLOATING_IP_COUNTERS.get_ptr_mut(0) {
        unsafe { (*counters).dnat_packets += 1 };
    }
    true
}

/// Rewrites the source of an IPv4 packet from an internal address into its floating IP, in
/// the packet and in `flow`; whether it did (an address without a floating IP is left alone).
#[inline(never)]
pub fn snat<H: Hook>(ctx: *mut c_void, data: usize, data_end: usize, flow: &mut Flow) -> bool {
    if flow.family != 4 {
        return false;
    }
    let Some(entry) = lookup(&flow.src, floating_ip_direction::INTERNAL) else {
        return false;
    };
    let external = [entry.addr[0], entry.addr[1], entry.addr[2], entry.addr[3]];
    if !rewrite::<H>(ctx, data, data_end, SOURCE, external) {
        return false;
    }
    flow.src[..4].copy_from_slice(&external);
    if let Some(counters) = FLOATING_IP_COUNTERS.get_ptr_mut(0) {
        unsafe { (*counters).snat_packets += 1 };
    }
    true
}

/// Writes `new` into the IPv4 address at `field` (12 source, 16 destination) and fixes the
/// header checksum and, in the first fragment of TCP or UDP, the transport checksum.
#[inline(always)]
fn rewrite<H: Hook>(
    ctx: *mut c_void,
    data: usize,
    data_end: usize,
    field: usize,
    new: [u8; 4],
) -> bool {
    let Some(ip) = ptr_at::<[u8; 20]>(data, data_end, ETH_HLEN) else {
        return false;
    };
    let ip = unsafe { &mut *ip };
    let old = if field == SOURCE {
        [ip[12], ip[13], ip[14], ip[15]]
    } else {
        [ip[16], ip[17], ip[18], ip[19]]
    };
    let header_len = ((ip[0] & 0x0f) as usize) * 4;
    let first_fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff == 0;
    let proto = ip[9];
    let l4_check = match proto {
        IPPROTO_TCP if first_fragment => Some(16),
        IPPROTO_UDP if first_fragment => Some(6),
        _ => None,
    };
    if H::XDP {
        if let Some(offset) = l4_check {
            let Some(check) = ptr_at::<[u8; 2]>(data, data_end, ETH_HLEN + header_len + offset)
            else {
                return false;
            };
            let check = unsafe { &mut *check };
            let stored = u16::from_be_bytes(*check);
            if !(proto == IPPROTO_UDP && stored == 0) {
                let mut updated = checksum_replace4(stored, old, new);
                if proto == IPPROTO_UDP && updated == 0 {
                    updated = 0xffff;
                }
                *check = updated.to_be_bytes();
            }
        }
        let updated = checksum_replace4(u16::from_be_bytes([ip[10], ip[11]]), old, new);
        ip[10..12].copy_from_slice(&updated.to_be_bytes());
        ip[field..field + 4].copy_from_slice(&new);
        return true;
    }
    let skb = ctx.cast::<__sk_buff>();
    let from = u64::from(u32::from_ne_bytes(old));
    let to = u64::from(u32::from_ne_bytes(new));
    if let Some(offset) = l4_check {
        let mut flags = u64::from(BPF_F_PSEUDO_HDR) | 4;
        if proto == IPPROTO_UDP {
            flags |= u64::from(BPF_F_MARK_MANGLED_0);
        }
        let at = (ETH_HLEN + header_len + offset) as u32;
        if unsafe { bpf_l4_csum_replace(skb, at, from, to, flags) } < 0 {
            return false;
        }
    }
    if unsafe { bpf_l3_csum_replace(skb, (ETH_HLEN + 10) as u32, from, to, 4) } < 0 {
        return false;
    }
    let at = (ETH_HLEN + field) as u32;
    let new_ptr = (&new as *const [u8; 4]).cast::<c_void>();
    unsafe { bpf_skb_store_bytes(skb, at, new_ptr, 4, 0) >= 0 }
}
