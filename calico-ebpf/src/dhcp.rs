//! DHCP from a VM on a tap: the one thing a workload may send from `0.0.0.0`, and the one
//! thing it may send whatever its egress policy says, so that a VM can boot. The agent answers
//! it (its DHCP server reads the requests from a packet socket); the program only lets the
//! request through to the kernel, narrowly:
//!
//! - the endpoint is served DHCP (its entry names a server address: taps only);
//! - IPv4 without options (IHL 5), UDP from port 68 to port 67;
//! - to the broadcast address or to the server address;
//! - from `0.0.0.0` or from an address the endpoint may send from (anti-spoofing).
//!
//! A request unicast to the server address (a renewal) becomes a broadcast on the way, so that
//! the kernel takes it as local instead of routing it towards an address it does not have.

use crate::{
    counters::{Action, Counted, count_pass},
    packet::{ETH_HLEN, Flow, IPPROTO_UDP, ptr_at},
};

const BOOTPC: u16 = 68;
const BOOTPS: u16 = 67;
const BROADCAST: [u8; 4] = [255; 4];
/// IPv4 header without options (20) and the UDP header (8).
const REQUEST_HEADERS: usize = 28;

/// Whether `flow` is a DHCP request to `server` (or to everyone); `server` all zeroes means the
/// endpoint is not served DHCP.
#[inline(always)]
pub fn is_request(flow: &Flow, server: [u8; 4]) -> bool {
    let dst = [flow.dst[0], flow.dst[1], flow.dst[2], flow.dst[3]];
    server != [0; 4]
        && flow.family == 4
        && flow.proto == IPPROTO_UDP
        && flow.sport == BOOTPC
        && flow.dport == BOOTPS
        && (dst == BROADCAST || dst == server)
}

/// Whether the request comes from `0.0.0.0` (a client without an address yet).
#[inline(always)]
pub fn from_unspecified(flow: &Flow) -> bool {
    flow.src[0..4] == [0; 4]
}

/// Passes a DHCP request to the kernel for the agent, as a broadcast. `None` when the IPv4
/// header has options: not taken as DHCP.
#[inline(always)]
pub fn to_agent(data: usize, data_end: usize, counters: Counted, len: u64) -> Option<Action> {
    let hdr = unsafe { &mut *ptr_at::<[u8; REQUEST_HEADERS]>(data, data_end, ETH_HLEN)? };
    if hdr[0] != 0x45 {
        return None;
    }
    let dst = [hdr[16], hdr[17], hdr[18], hdr[19]];
    if dst != BROADCAST {
        let ip_csum = u16::from_be_bytes([hdr[10], hdr[11]]);
        let [a, b] = replace4(ip_csum, dst, BROADCAST).to_be_bytes();
        hdr[10] = a;
        hdr[11] = b;
        // The UDP checksum covers the destination through the pseudo-header; 0 means none.
        let udp_csum = u16::from_be_bytes([hdr[26], hdr[27]]);
        if udp_csum != 0 {
            let mut csum = replace4(udp_csum, dst, BROADCAST);
            if csum == 0 {
                csum = 0xffff;
            }
            let [a, b] = csum.to_be_bytes();
            hdr[26] = a;
            hdr[27] = b;
        }
        hdr[16..20].copy_from_slice(&BROADCAST);
    }
    Some(count_pass(counters, len))
}

/// An Internet checksum after a four-byte field changed from `old` to `new` (RFC 1624:
/// HC' = ~(~HC + ~m + m')).
#[inline(always)]
fn replace4(csum: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    let mut sum = u32::from(!csum);
    for i in [0, 2] {
        sum += u32::from(!u16::from_be_bytes([old[i], old[i + 1]]));
        sum += u32::from(u16::from_be_bytes([new[i], new[i + 1]]));
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}
