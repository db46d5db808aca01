//! Answers to the workload's neighbour questions: ARP requests and IPv6 neighbour
//! solicitations get a reply with the host side's MAC (proxy ARP and proxy NDP, as Calico's host
//! side gives them), rewritten in place and sent back out of the interface they came in on. The
//! workload's gateway then never depends on the host side's own addresses being ready.

use calico_ebpf_common::DropReason;

use crate::{
    counters::{Action, Counted, count_drop, count_neighbour_reply, count_pass},
    events::Headers,
    packet::{ETH_HLEN, IPPROTO_ICMPV6, IPV6_HLEN, ptr_at},
};

const ARP_LEN: usize = 28;
const ND_NEIGHBOUR_SOLICITATION: u8 = 135;
const ND_NEIGHBOUR_ADVERTISEMENT: u8 = 136;
/// An NS or NA without options: type, code, checksum, flags/reserved, target.
const ND_LEN: usize = 24;
/// The same with one link-layer address option.
const ND_WITH_LLA_LEN: usize = 32;

/// Answers an ARP request on behalf of the gateway (proxy ARP, as Calico's host side does), so
/// the workload resolves 169.254.1.1 (and anything else it asks for) to the host side's MAC.
#[inline(always)]
pub fn arp(data: usize, data_end: usize, host_mac: [u8; 6], counters: Counted, len: u64) -> Action {
    let Some(arp) = ptr_at::<[u8; ARP_LEN]>(data, data_end, ETH_HLEN) else {
        return count_drop(counters, DropReason::Malformed, Headers::Unread);
    };
    let arp = unsafe { &mut *arp };
    // Ethernet/IPv4 request only: htype 1, ptype 0x0800, hlen 6, plen 4, op 1.
    if arp[0..8] != [0, 1, 0x08, 0x00, 6, 4, 0, 1] {
        return count_pass(counters, len);
    }
    let sender_mac = [arp[8], arp[9], arp[10], arp[11], arp[12], arp[13]];
    let sender_ip = [arp[14], arp[15], arp[16], arp[17]];
    let target_ip = [arp[24], arp[25], arp[26], arp[27]];
    if target_ip == sender_ip || sender_ip == [0; 4] || target_ip == [0; 4] {
        // Gratuitous ARP, or an address conflict probe (RFC 5227: sender 0.0.0.0), which a
        // DHCP client sends for the address it was offered: nothing to answer. Answering the
        // probe would tell the client its address is taken.
        return count_pass(counters, len);
    }
    arp[7] = 2; // reply
    arp[8..14].copy_from_slice(&host_mac);
    arp[14..18].copy_from_slice(&target_ip);
    arp[18..24].copy_from_slice(&sender_mac);
    arp[24..28].copy_from_slice(&sender_ip);
    let Some(eth) = ptr_at::<[u8; 12]>(data, data_end, 0) else {
        return count_drop(counters, DropReason::Malformed, Headers::Unread);
    };
    let eth = unsafe { &mut *eth };
    eth[0..6].copy_from_slice(&sender_mac);
    eth[6..12].copy_from_slice(&host_mac);
    count_neighbour_reply(counters);
    Action::Reflect
}

/// Answers a neighbour solicitation from the workload with a neighbour advertisement for the
/// host side's MAC (proxy NDP), rewriting the packet in place; `ip` is its (valid) IPv6 header.
/// Returns `None` for anything that is not a plain solicitation this can answer (DAD probes,
/// unusual options), which then takes the normal path to the kernel.
#[inline(always)]
pub fn solicitation(
    data: usize,
    data_end: usize,
    ip: &mut [u8; IPV6_HLEN],
    host_mac: [u8; 6],
    counters: Counted,
) -> Option<Action> {
    if ip[6] != IPPROTO_ICMPV6 {
        return None;
    }
    let payload_len = u16::from_be_bytes([ip[4], ip[5]]) as usize;
    // Hop limit 255 proves the sender is on this link (RFC 4861 §7.1.1); the unspecified source
    // marks duplicate address detection, which must stay unanswered.
    if ip[7] != 255 || ip[8..24] == [0u8; 16] {
        return None;
    }
    let offset = ETH_HLEN + IPV6_HLEN;
    let solicitation = ptr_at::<[u8; ND_LEN]>(data, data_end, offset)?;
    let header = unsafe { &*solicitation };
    if header[0] != ND_NEIGHBOUR_SOLICITATION || header[1] != 0 {
        return None;
    }
    let mut target = [0u8; 16];
    target.copy_from_slice(&header[8..24]);
    if target[..] == ip[8..24] {
        return None;
    }
    let with_option = match payload_len {
        ND_WITH_LLA_LEN => {
            let nd = unsafe { &*ptr_at::<[u8; ND_WITH_LLA_LEN]>(data, data_end, offset)? };
            // Only a source link-layer address option (type 1, 8 bytes) is expected.
            if nd[24] != 1 || nd[25] != 1 {
                return None;
            }
            true
        }
        ND_LEN => false,
        _ => return None,
    };

    // The advertisement goes back to the solicitor, from the target address.
    let mut solicitor = [0u8; 16];
    solicitor.copy_from_slice(&ip[8..24]);
    ip[8..24].copy_from_slice(&target);
    ip[24..40].copy_from_slice(&solicitor);
    let seed = pseudo_header_sum(ip, payload_len as u32);

    if with_option {
        let nd = unsafe { &mut *ptr_at::<[u8; ND_WITH_LLA_LEN]>(data, data_end, offset)? };
        write_advertisement_header(nd);
        // The source link-layer address option becomes the target link-layer address option,
        // carrying the host side's MAC.
        nd[24] = 2;
        nd[26..32].copy_from_slice(&host_mac);
        let checksum = (!fold(seed + sum16(nd))).to_be_bytes();
        nd[2] = checksum[0];
        nd[3] = checksum[1];
    } else {
        // A unicast solicitation without options: the answer needs none either.
        let nd = unsafe { &mut *solicitation };
        write_advertisement_header(nd);
        let checksum = (!fold(seed + sum16(nd))).to_be_bytes();
        nd[2] = checksum[0];
        nd[3] = checksum[1];
    }

    let eth = ptr_at::<[u8; 12]>(data, data_end, 0)?;
    let eth = unsafe { &mut *eth };
    let mut requester_mac = [0u8; 6];
    requester_mac.copy_from_slice(&eth[6..12]);
    eth[0..6].copy_from_slice(&requester_mac);
    eth[6..12].copy_from_slice(&host_mac);
    count_neighbour_reply(counters);
    Some(Action::Reflect)
}

/// Turns the first eight bytes of a solicitation into an advertisement's: type 136, code 0,
/// checksum zeroed for the computation, flags Router, Solicited and Override.
#[inline(always)]
fn write_advertisement_header<const N: usize>(nd: &mut [u8; N]) {
    nd[0] = ND_NEIGHBOUR_ADVERTISEMENT;
    nd[1] = 0;
    nd[2] = 0;
    nd[3] = 0;
    nd[4] = 0xe0;
    nd[5] = 0;
    nd[6] = 0;
    nd[7] = 0;
}

/// Sum of the ICMPv6 pseudo-header: addresses, upper-layer length and next header.
#[inline(always)]
fn pseudo_header_sum(ip: &[u8; IPV6_HLEN], upper_len: u32) -> u32 {
    let mut sum = 0u32;
    let mut i = 8;
    while i < IPV6_HLEN {
        sum += u16::from_be_bytes([ip[i], ip[i + 1]]) as u32;
        i += 2;
    }
    sum + (upper_len >> 16) + (upper_len & 0xffff) + IPPROTO_ICMPV6 as u32
}

#[inline(always)]
fn sum16<const N: usize>(bytes: &[u8; N]) -> u32 {
    let mut sum = 0u32;
    let mut i = 0;
    while i + 1 < N {
        sum += u16::from_be_bytes([bytes[i], bytes[i + 1]]) as u32;
        i += 2;
    }
    sum
}

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}
